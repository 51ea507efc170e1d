"""HTTP/1.1 transport on ``http.client``: a pool of keep-alive connections, retries, streams.

Retry rules (contract §1.5):

* 425 and 429 mean "rejected before any processing": every request is replayed, POST
  included, after ``Retry-After`` (delta seconds or an HTTP date; capped by
  ``max_retry_delay``).
* 502/503/504 and dropped connections are replayed only for idempotent requests (GET, HEAD,
  PUT, DELETE, and uploads, which are content-addressed). A spawn or an import whose connection
  breaks after it was sent raises :class:`TransportError` with ``maybe_accepted=True``: it is
  never replayed blindly, since the server may have started it.
* A connection that could not be opened is retried for every method (nothing was sent).

Before a pooled connection is reused, the SDK checks that the server has not closed it (the
server drops idle connections after 60 s), so a stale socket does not turn into an ambiguous
POST failure.
"""
from __future__ import annotations

import email.utils
import gzip
import http.client
import json
import pathlib
import platform
import select
import socket
import ssl
import threading
import time
import urllib.parse
import zlib
from typing import Any, Mapping, Sequence, Union

from ._config import ResolvedConfig
from ._errors import ApiError, TransportError, error_for_status

__version__ = "0.1.0"

QueryValue = Union[str, int, float, bool, None, Sequence[Union[str, int]]]
Body = Union[bytes, pathlib.Path, None]

_IDEMPOTENT = frozenset({"GET", "HEAD", "PUT", "DELETE", "OPTIONS"})
_RETRY_ANY = frozenset({425, 429})
_RETRY_IDEMPOTENT = frozenset({502, 503, 504})
_MAX_IDLE = 128
_NETWORK_ERRORS = (OSError, http.client.HTTPException)


def quote(segment: str) -> str:
    """Percent-encodes a path parameter with no safe characters (``a/b`` -> ``a%2Fb``)."""
    return urllib.parse.quote(str(segment), safe="")


def encode_query(query: Mapping[str, QueryValue] | None) -> str:
    """URL-encodes query values (``/`` kept literal), repeating keys for sequences, sending
    booleans as ``1`` and leaving out None and False."""
    if not query:
        return ""
    pairs: list[tuple[str, str]] = []
    for k, v in query.items():
        if v is None or v is False:
            continue
        if v is True:
            pairs.append((k, "1"))
        elif isinstance(v, (list, tuple)):
            pairs.extend((k, str(x)) for x in v)
        else:
            pairs.append((k, str(v)))
    return "?" + urllib.parse.urlencode(pairs, safe="/") if pairs else ""


def parse_retry_after(value: str | None) -> float | None:
    """``Retry-After`` as seconds: delta seconds or an HTTP date."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


class Response:
    """A fully read response: ``status``, ``headers`` (lower-case names), ``body`` (bytes,
    already decompressed)."""

    __slots__ = ("status", "headers", "body")

    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body

    def json(self) -> Any:
        return json.loads(self.body) if self.body else None


class Stream:
    """An open streaming response (the event stream, a download). ``read(timeout)`` returns
    the next decoded bytes (``b""`` at the end). ``finish()`` reads the rest and returns the
    connection to the pool; ``close()`` drops the connection."""

    def __init__(self, transport: Transport, conn: http.client.HTTPConnection,
                 resp: http.client.HTTPResponse) -> None:
        self._transport = transport
        self._conn: http.client.HTTPConnection | None = conn
        self._resp = resp
        self.status = resp.status
        self.headers = {k.lower(): v for k, v in resp.getheaders()}
        self._decoder = (zlib.decompressobj(wbits=31)
                         if self.headers.get("content-encoding") == "gzip" else None)

    def read(self, timeout: float | None = None, size: int = 65536) -> bytes:
        """The next bytes of the body (waits at most ``timeout`` seconds for them)."""
        while True:
            conn = self._conn
            if conn is None:
                return b""
            if timeout is not None and conn.sock is not None:
                conn.sock.settimeout(max(timeout, 0.001))
            data = self._resp.read1(size)
            if not data:
                if self._decoder is not None:
                    return self._decoder.flush()
                return b""
            if self._decoder is None:
                return data
            out = self._decoder.decompress(data)
            if out:
                return out

    def finish(self, timeout: float = 5.0) -> None:
        """Reads to the end of the body, then returns the connection for reuse."""
        conn, self._conn = self._conn, None
        if conn is None:
            return
        try:
            if conn.sock is not None:
                conn.sock.settimeout(timeout)
            self._resp.read()
        except _NETWORK_ERRORS:
            conn.close()
            return
        self._transport._release(conn, self._resp)

    def close(self) -> None:
        """Drops the connection (use when the body will not be read to its end)."""
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    def __enter__(self) -> Stream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _ConnectFailed(Exception):
    def __init__(self, err: BaseException) -> None:
        super().__init__(str(err))
        self.err = err


class Transport:
    """Sends requests to one server. Thread-safe: each request borrows a connection from an
    idle pool (LIFO, so a sequential caller keeps reusing one warm connection)."""

    def __init__(self, rc: ResolvedConfig) -> None:
        self.rc = rc
        self.settings = rc.settings
        u = urllib.parse.urlsplit(rc.base_url)
        self.scheme = u.scheme
        self.host = u.hostname or "localhost"
        self.port = u.port
        self.prefix = u.path.rstrip("/")
        self._ssl = ssl.create_default_context() if self.scheme == "https" else None
        self._idle: list[http.client.HTTPConnection] = []
        self._lock = threading.Lock()
        self._closed = False
        ua = self.settings.user_agent or (f"coppice-sdk/{__version__} python/"
                                          f"{platform.python_version()} {platform.system()}")
        self.base_headers: dict[str, str] = {
            "User-Agent": ua,
            "Accept-Encoding": "gzip" if self.settings.gzip else "identity",
        }
        if rc.token:
            self.base_headers["Authorization"] = f"Bearer {rc.token}"
        if rc.project:
            self.base_headers["Project"] = rc.project

    # ---- connections ---------------------------------------------------------------------

    def _new_conn(self) -> http.client.HTTPConnection:
        if self._ssl is not None:
            return http.client.HTTPSConnection(self.host, self.port, timeout=self.settings.timeout,
                                               context=self._ssl)
        return http.client.HTTPConnection(self.host, self.port, timeout=self.settings.timeout)

    @staticmethod
    def _stale(conn: http.client.HTTPConnection) -> bool:
        """True when an idle connection's socket is readable: the server closed it (EOF) or
        sent something unasked; either way it cannot carry a new request."""
        sock = conn.sock
        if sock is None:
            return False
        try:
            p = select.poll()
            p.register(sock, select.POLLIN | select.POLLERR | select.POLLHUP)
            return bool(p.poll(0))
        except (OSError, ValueError):
            return True

    def _acquire(self) -> http.client.HTTPConnection:
        while True:
            with self._lock:
                conn = self._idle.pop() if self._idle else None
            if conn is None:
                return self._new_conn()
            if self._stale(conn):
                conn.close()
                continue
            return conn

    def _release(self, conn: http.client.HTTPConnection,
                 resp: http.client.HTTPResponse | None = None) -> None:
        if resp is not None and (resp.will_close or not resp.isclosed()):
            conn.close()
        if conn.sock is None:
            return
        with self._lock:
            if not self._closed and len(self._idle) < _MAX_IDLE:
                self._idle.append(conn)
                return
        conn.close()

    def close(self) -> None:
        """Closes every idle connection (streams in progress keep theirs until they end)."""
        with self._lock:
            idle, self._idle = self._idle, []
            self._closed = True
        for c in idle:
            c.close()

    # ---- requests ------------------------------------------------------------------------

    def url(self, path: str, query: Mapping[str, QueryValue] | None = None) -> str:
        return self.prefix + path + encode_query(query)

    def _send(self, method: str, target: str, body: Body, headers: dict[str, str],
              timeout: float) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
        """One attempt. Raises _ConnectFailed when nothing was sent."""
        conn = self._acquire()
        try:
            if conn.sock is None:
                try:
                    conn.timeout = timeout
                    conn.connect()
                except OSError as e:
                    raise _ConnectFailed(e) from e
            assert conn.sock is not None
            conn.sock.settimeout(timeout)
            if isinstance(body, pathlib.Path):
                with open(body, "rb") as f:
                    headers = dict(headers, **{"Content-Length": str(body.stat().st_size)})
                    conn.request(method, target, body=f, headers=headers)
            else:
                conn.request(method, target, body=body, headers=headers)
            return conn, conn.getresponse()
        except BaseException:
            conn.close()
            raise

    def _delay(self, attempt: int, retry_after: float | None) -> float:
        cap = float(self.settings.max_retry_delay)
        if retry_after is not None:
            return min(retry_after, cap)
        return min(0.05 * (2.0 ** attempt), 2.0, cap)

    def _open(self, method: str, path: str, *, query: Mapping[str, QueryValue] | None,
              body: Body, headers: Mapping[str, str] | None, idempotent: bool | None,
              timeout: float | None
              ) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
        """Sends with retries; returns the open connection and a response with status < 400
        (or raises the ApiError)."""
        target = self.url(path, query)
        h = dict(self.base_headers)
        if headers:
            h.update(headers)
        safe = method in _IDEMPOTENT if idempotent is None else idempotent
        t = self.settings.timeout if timeout is None else timeout
        attempt = 0
        while True:
            if self._closed:
                raise TransportError("the client is closed", method=method, path=path)
            try:
                conn, resp = self._send(method, target, body, h, t)
            except _ConnectFailed as e:
                if attempt >= self.settings.max_retries:
                    raise TransportError(f"cannot connect to {self.rc.base_url}: {e.err}",
                                         method=method, path=path) from e.err
                time.sleep(self._delay(attempt, None))
                attempt += 1
                continue
            except _NETWORK_ERRORS as e:
                if not safe:
                    raise TransportError(
                        f"connection lost during {method} {path} ({e!r}); the server may have "
                        "accepted the request, so it was not sent again", method=method,
                        path=path, maybe_accepted=True) from e
                if attempt >= self.settings.max_retries:
                    raise TransportError(f"{method} {path} failed: {e!r}", method=method,
                                         path=path) from e
                time.sleep(self._delay(attempt, None))
                attempt += 1
                continue
            if resp.status < 400:
                return conn, resp
            # An error: read it (the connection stays usable), maybe retry.
            try:
                data = resp.read()
            except _NETWORK_ERRORS:
                conn.close()
                data = b""
            else:
                self._release(conn, resp)
            retry_after = parse_retry_after(resp.getheader("Retry-After"))
            retryable = resp.status in _RETRY_ANY or (safe and resp.status in _RETRY_IDEMPOTENT)
            if retryable and attempt < self.settings.max_retries:
                time.sleep(self._delay(attempt, retry_after))
                attempt += 1
                continue
            raise self._error(method, path, resp, data, retry_after)

    def _error(self, method: str, path: str, resp: http.client.HTTPResponse, data: bytes,
               retry_after: float | None) -> ApiError:
        if resp.getheader("Content-Encoding") == "gzip" and data:
            try:
                data = gzip.decompress(data)
            except (OSError, EOFError):
                pass
        body: Any = None
        message = data.decode("utf-8", "replace").strip() or resp.reason
        try:
            body = json.loads(data) if data else None
        except ValueError:
            pass
        if isinstance(body, dict) and "error" in body:
            err = body["error"]
            message = err if isinstance(err, str) else json.dumps(err)
        rid = (resp.getheader("X-Request-ID") or resp.getheader("Request-ID")
               or resp.getheader("Traceparent"))
        return error_for_status(resp.status, message, method=method, path=path, body=body,
                                retry_after=retry_after, request_id=rid)

    def request(self, method: str, path: str, *,
                query: Mapping[str, QueryValue] | None = None, json_body: Any = None,
                body: Body = None, headers: Mapping[str, str] | None = None,
                idempotent: bool | None = None, timeout: float | None = None) -> Response:
        """Sends a request and reads the whole answer. Raises ApiError for status >= 400."""
        h: dict[str, str] = dict(headers or {})
        if json_body is not None:
            body = json.dumps(json_body, separators=(",", ":")).encode()
            h["Content-Type"] = "application/json"
        conn, resp = self._open(method, path, query=query, body=body, headers=h,
                                idempotent=idempotent, timeout=timeout)
        try:
            data = resp.read()
        except _NETWORK_ERRORS as e:
            conn.close()
            raise TransportError(f"{method} {path}: reading the response failed: {e!r}",
                                 method=method, path=path) from e
        headers_out = {k.lower(): v for k, v in resp.getheaders()}
        self._release(conn, resp)
        if headers_out.get("content-encoding") == "gzip" and data:
            data = gzip.decompress(data)
        return Response(resp.status, headers_out, data)

    def stream(self, method: str, path: str, *,
               query: Mapping[str, QueryValue] | None = None,
               headers: Mapping[str, str] | None = None, timeout: float | None = None) -> Stream:
        """Sends a GET-like request and returns the body as a :class:`Stream`."""
        conn, resp = self._open(method, path, query=query, body=None, headers=headers,
                                idempotent=True, timeout=timeout)
        return Stream(self, conn, resp)


def is_network_error(e: BaseException) -> bool:
    return isinstance(e, (_NETWORK_ERRORS, socket.timeout, TransportError))
