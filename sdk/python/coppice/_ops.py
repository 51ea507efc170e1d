"""Following an operation: the SSE event stream with resume, and the polling fallback.

:func:`event_stream` yields each event of an operation exactly once, in order. It reads
``GET /v1/operations/{id}/events?follow=1``; when the connection drops (or the server sends an
in-band ``sse_error``, or goes silent past ``stream_timeout``) it reconnects with
``Last-Event-Id: <last id seen>``, so nothing is lost or repeated. When the events route is
unavailable (400/403/404/405/406/501), or reconnecting keeps failing, it falls back to polling
``GET /v1/operations/{id}`` and yields a single :class:`Polled` record at the end.

:class:`OperationState` accumulates what a run needs (output chunks, the ``exit`` and
``completion`` events) and lets several consumers share one stream: whoever needs the next
event "drives" the stream while the others wait on a condition variable.
"""
from __future__ import annotations

import http.client
import json
import socket
import threading
import time
from typing import Any, Iterator, Union

from ._errors import (ApiError, EventStreamInterruptedError, MalformedEventError,
                      TransportError, WaitTimeoutError)
from ._models import OutputChunk, decode_stream
from ._transport import Stream, Transport, quote

TERMINAL = frozenset({"SUCCESS", "FAILED", "CANCELLED"})
FALLBACK_STATUSES = frozenset({400, 403, 404, 405, 406, 501})


class Event:
    """One ``OperationEvent``: ``id``, ``type``, ``spid``, ``ts``, ``data``."""

    __slots__ = ("id", "type", "spid", "ts", "data")

    def __init__(self, j: dict[str, Any]) -> None:
        try:
            self.id = int(j["id"])
            self.type = str(j["type"])
        except (KeyError, TypeError, ValueError):
            raise MalformedEventError(f"event without id/type: {j!r}") from None
        self.spid = int(j.get("spid") or 0)
        self.ts = str(j.get("ts", ""))
        data = j.get("data")
        self.data: dict[str, Any] = data if isinstance(data, dict) else {}

    def __repr__(self) -> str:
        return f"Event(id={self.id}, type={self.type!r}, spid={self.spid})"


class Polled:
    """The final operation record, when the events could not be streamed."""

    __slots__ = ("op",)

    def __init__(self, op: dict[str, Any]) -> None:
        self.op = op


class _Dropped(Exception):
    """The stream ended or broke before ``completion``."""


Item = Union[Event, Polled]


def _frames(stream: Stream, state: OperationState) -> Iterator[Event]:
    """Parses SSE frames from a stream into events. Raises _Dropped when the stream breaks."""
    buf = b""
    while True:
        timeout = state.read_timeout()
        try:
            data = stream.read(timeout)
        except (socket.timeout, TimeoutError) as e:
            if state.deadline is not None and time.monotonic() >= state.deadline - 0.001:
                raise WaitTimeoutError(f"operation {state.op_uuid} still running") from e
            raise _Dropped("no data within stream_timeout") from e
        except (OSError, http.client.HTTPException) as e:
            raise _Dropped(repr(e)) from e
        if not data:
            raise _Dropped("end of stream before completion")
        buf += data
        while True:
            end = buf.find(b"\n\n")
            if end < 0:
                break
            frame, buf = buf[:end], buf[end + 2:]
            kind, payload = "", []
            for line in frame.split(b"\n"):
                line = line.rstrip(b"\r")
                if not line or line.startswith(b":"):
                    continue
                key, _, value = line.partition(b":")
                if value.startswith(b" "):
                    value = value[1:]
                if key == b"event":
                    kind = value.decode()
                elif key == b"data":
                    payload.append(value)
            if not payload:
                continue
            if kind == "sse_error":
                raise _Dropped("server error on the stream: " + b"\n".join(payload).decode())
            try:
                yield Event(json.loads(b"\n".join(payload)))
            except ValueError as e:
                raise MalformedEventError(f"bad event data: {payload!r}") from e


def poll_operation(transport: Transport, state: OperationState) -> dict[str, Any]:
    """Polls ``GET /v1/operations/{id}`` until the operation is terminal."""
    delay = 0.01
    while True:
        op = transport.request("GET", f"/v1/operations/{quote(state.op_uuid)}").json()
        if op.get("status") in TERMINAL:
            return dict(op)
        if state.deadline is not None:
            left = state.deadline - time.monotonic()
            if left <= 0:
                raise WaitTimeoutError(f"operation {state.op_uuid} still running")
            delay = min(delay, left)
        time.sleep(delay)
        delay = min(delay * 1.5, 0.5)


def event_stream(transport: Transport, state: OperationState) -> Iterator[Item]:
    """Yields the events of ``state.op_uuid`` after ``state.last_id``, each once, ending with
    ``completion``; or a single :class:`Polled` when it had to poll."""
    settings = transport.settings
    failures = 0
    path = f"/v1/operations/{quote(state.op_uuid)}/events"
    while True:
        headers = {"Accept": "text/event-stream"}
        if state.last_id >= 0:
            headers["Last-Event-Id"] = str(state.last_id)
        try:
            stream = transport.stream("GET", path, query={"follow": "1"}, headers=headers,
                                      timeout=state.read_timeout())
        except ApiError as e:
            if e.status in FALLBACK_STATUSES:
                yield Polled(poll_operation(transport, state))  # 404 here: no such operation
                return
            if e.status in (410, 425) and failures < settings.max_stream_reconnects:
                failures += 1
                state.sleep(min(e.retry_after or 1.0, settings.max_retry_delay))
                continue
            raise
        except TransportError:
            failures += 1
            if failures > settings.max_stream_reconnects:
                yield Polled(poll_operation(transport, state))
                return
            state.sleep(min(0.05 * 2 ** failures, 2.0))
            continue
        progressed = False
        try:
            for ev in _frames(stream, state):
                if ev.id <= state.last_id:
                    continue
                state.last_id = ev.id
                progressed = True
                if ev.type == "completion":
                    stream.finish()
                    yield ev
                    return
                yield ev
        except _Dropped:
            pass
        finally:
            stream.close()
        failures = 0 if progressed else failures + 1
        state.reconnects += 1
        if failures > settings.max_stream_reconnects:
            yield Polled(poll_operation(transport, state))
            return
        if not progressed:
            state.sleep(min(0.05 * 2 ** failures, 2.0))


class OperationState:
    """What has been seen of one operation; shared by every waiter and iterator of a run."""

    def __init__(self, transport: Transport, op_uuid: str) -> None:
        self.transport = transport
        self.op_uuid = op_uuid
        self.cond = threading.Condition()
        self.last_id = -1
        self.reconnects = 0
        self.chunks: list[OutputChunk] = []
        self.emitted = {"stdout": 0, "stderr": 0}
        self.truncated: set[str] = set()
        self.exit: dict[str, Any] | None = None
        self.completion: dict[str, Any] | None = None
        self.record: dict[str, Any] | None = None
        self.done = False
        self.driving = False
        self.deadline: float | None = None
        self._events: Iterator[Item] | None = None

    # -- timing helpers used by the stream reader
    def read_timeout(self) -> float:
        t = self.transport.settings.stream_timeout
        if self.deadline is not None:
            t = min(t, max(self.deadline - time.monotonic(), 0.001))
        return t

    def sleep(self, seconds: float) -> None:
        if self.deadline is not None:
            left = self.deadline - time.monotonic()
            if left <= seconds:
                time.sleep(max(left, 0))
                raise WaitTimeoutError(f"operation {self.op_uuid} still running")
        time.sleep(seconds)

    # -- applying events (called by the driver, under the condition's lock)
    def _apply(self, item: Item) -> None:
        if isinstance(item, Polled):
            op = item.op
            self.record = op
            res = (op.get("metadata") or {}).get("result") or {}
            for name in ("stdout", "stderr"):
                data = decode_stream(res.get(name))
                rest = data[self.emitted[name]:]
                if rest:
                    self.chunks.append(OutputChunk(rest, name))
                    self.emitted[name] += len(rest)
                if (res.get(name) or {}).get("truncated"):
                    self.truncated.add(name)
            st = res.get("state")
            if self.exit is None and isinstance(st, dict) and op.get("kind") == "instance":
                self.exit = {"code": st.get("exit_code", -1), "signal": st.get("signal", -1),
                             "timed_out": bool(st.get("timed_out")), "_record": True}
            self.completion = {"status": op.get("status"), "error": op.get("error"),
                               "result_image_uuid": op.get("result_image_uuid"),
                               "duration_ms": int(float(op.get("duration") or 0) * 1000),
                               "image_size_bytes": op.get("image_size")}
            self.done = True
            return
        ev = item
        if ev.type in ("stdout", "stderr") and ev.spid == 1:
            data = decode_stream(ev.data)
            if data:
                self.chunks.append(OutputChunk(data, ev.type))
                self.emitted[ev.type] += len(data)
        elif ev.type == "exit" and ev.spid == 1:
            self.exit = ev.data
        elif ev.type == "truncated":
            self.truncated.add(str(ev.data.get("stream", "")))
        elif ev.type == "completion":
            self.completion = ev.data
            self.done = True

    def _pull(self) -> None:
        """Takes one item from the stream (the caller is the driver, not holding the lock)."""
        if self._events is None:
            self._events = event_stream(self.transport, self)
        try:
            item = next(self._events)
        except StopIteration:
            self._events = None
            raise EventStreamInterruptedError(
                f"the events of {self.op_uuid} ended before completion") from None
        except BaseException:
            events, self._events = self._events, None
            if events is not None:
                getattr(events, "close", lambda: None)()
            raise
        with self.cond:
            self._apply(item)
            self.cond.notify_all()
        if self.done and self._events is not None:
            getattr(self._events, "close", lambda: None)()
            self._events = None

    def _become_driver(self, deadline: float | None) -> bool:
        """Under the lock: waits while someone else drives; returns True when the caller
        should drive, False when the operation is done."""
        while True:
            if self.done:
                return False
            if not self.driving:
                self.driving = True
                return True
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise WaitTimeoutError(f"operation {self.op_uuid} still running")
            self.cond.wait(left)

    def _release_driver(self) -> None:
        with self.cond:
            self.driving = False
            self.cond.notify_all()

    def wait(self, timeout: float | None = None) -> None:
        """Blocks until the operation is terminal (raises WaitTimeoutError after ``timeout``)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self.cond:
            if not self._become_driver(deadline):
                return
        try:
            self.deadline = deadline
            while not self.done:
                self._pull()
        finally:
            self.deadline = None
            self._release_driver()

    def iter_chunks(self) -> Iterator[OutputChunk]:
        """Yields every output chunk (those already seen first), live, until the end."""
        idx = 0
        while True:
            chunk: OutputChunk | None = None
            with self.cond:
                while True:
                    if idx < len(self.chunks):
                        chunk = self.chunks[idx]
                        idx += 1
                        break
                    if self.done:
                        return
                    if not self.driving:
                        self.driving = True
                        break
                    self.cond.wait()
            if chunk is not None:
                yield chunk
                continue
            try:
                self._pull()
            finally:
                self._release_driver()

    def fetch_record(self) -> dict[str, Any]:
        """The operation record (``GET /v1/operations/{id}``), fetched once when needed."""
        if self.record is None:
            self.record = dict(self.transport.request(
                "GET", f"/v1/operations/{quote(self.op_uuid)}").json())
        return self.record
