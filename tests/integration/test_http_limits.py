"""The HTTP layer against hostile clients (issue #12 item 6): nothing is read from an
unauthenticated client beyond its header, and every phase of a connection has a deadline."""
import json
import pathlib
import shutil
import socket
import tempfile
import time

import pytest

from conftest import admin
from coppice_client import Server


def read_reply(s, timeout):
    """Reads one HTTP response head (and a Content-Length body) from socket s:
    (status line, headers, body); b"" status when the peer closed first."""
    s.settimeout(timeout)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(65536)
        if not chunk:
            return "", {}, b""
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = {}
    for line in lines[1:]:
        k, _, v = line.partition(":")
        headers[k.strip().lower()] = v.strip()
    want = int(headers.get("content-length", "0"))
    while len(body) < want:
        chunk = s.recv(65536)
        if not chunk:
            break
        body += chunk
    return lines[0], headers, body


def closed_within(s, seconds):
    """True when the peer closes s (EOF or reset) within `seconds`, reading what it sends."""
    s.settimeout(seconds)
    deadline = time.time() + seconds
    try:
        while time.time() < deadline:
            if not s.recv(65536):
                return True
    except (ConnectionResetError, BrokenPipeError):
        return True
    except socket.timeout:
        return False
    return False


@pytest.mark.parametrize("path", ["/", "/nope", "/v2/images", "/health", "/v1/instances"])
def test_unauthenticated_body_is_refused_before_it_is_read(server, path):
    """A client without a token gets 401 from its header alone, on every non-public path, and
    no 100 Continue (the old server read up to 16 MiB of body on paths without /v1)."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        t0 = time.time()
        s.sendall(f"POST {path} HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
                  f"Content-Type: application/json\r\nContent-Length: {10_000_000}\r\n\r\n"
                  .encode())
        status, headers, body = read_reply(s, 5)
        assert status.startswith("HTTP/1.1 401"), (status, body)
        assert time.time() - t0 < 3
        assert json.loads(body)["status"] == 401
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        s.sendall(f"PUT {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {100 << 20}\r\n\r\n"
                  .encode())
        status, _, _ = read_reply(s, 5)
        assert status.startswith("HTTP/1.1 401"), status


def test_health_is_public_with_a_tiny_body_limit(server):
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        status, headers, body = read_reply(s, 5)
        assert status.startswith("HTTP/1.1 200") and json.loads(body) == {"status": "ok"}
        s.sendall(b"HEAD /health HTTP/1.1\r\nHost: x\r\n\r\n")
        s.settimeout(5)
        assert s.recv(4096).startswith(b"HTTP/1.1 200")
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nContent-Length: 100000000\r\n\r\n")
        status, _, _ = read_reply(s, 5)
        assert status.startswith("HTTP/1.1 413"), status



def test_uploads_in_progress_are_capped_with_503(server):
    """Each upload being received holds a buffer: past 256 at once, 503 + Retry-After."""
    held = []
    try:
        for _ in range(256):
            s = socket.create_connection(("127.0.0.1", server.port), timeout=10)
            s.sendall(b"POST /v1/files HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " +
                      server.token.encode() + b"\r\nContent-Length: 1000000\r\n\r\nxx")
            held.append(s)
        time.sleep(1)
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
            s.sendall(b"POST /v1/files HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " +
                      server.token.encode() + b"\r\nContent-Length: 10\r\n\r\n0123456789")
            status, headers, body = read_reply(s, 5)
            assert status.startswith("HTTP/1.1 503"), (status, body)
            assert headers["retry-after"] == "1"
    finally:
        for s in held:
            s.close()
    # the slots come back with the connections
    from coppice_client import Client
    c = Client(server.url, server.token)
    deadline, status = time.time() + 10, None
    while status != 201 and time.time() < deadline:
        status = c.post("/v1/files", b"after",
                        headers={"Content-Type": "application/octet-stream"}).status
        time.sleep(0.1)
    assert status == 201


# A server with short deadlines and few workers: every phase of a connection is timed.
DEADLINE = 1.5


@pytest.fixture(scope="module")
def strict(coppiced_bin):
    data = pathlib.Path(tempfile.mkdtemp(prefix="coppice-http-", dir="/var/tmp"))
    admin(data, "image", "bootstrap", "busybox")
    token = admin(data, "token", "create", "--project", "p")
    srv = Server(coppiced_bin, data, extra_args=[
        "--header-timeout", str(DEADLINE), "--idle-timeout", str(DEADLINE),
        "--body-timeout", str(DEADLINE), "--body-min-kib", "16", "--write-timeout", str(DEADLINE),
        "--http-workers", "2", "--http-bulk-workers", "1"])
    srv.start()
    srv.token = token
    yield srv
    srv.stop()
    shutil.rmtree(data, ignore_errors=True)


def whoami_bytes(token, keep_alive=True):
    return (b"GET /v1/whoami HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + token.encode() +
            b"\r\nConnection: " + (b"keep-alive" if keep_alive else b"close") + b"\r\n\r\n")


def uploads_in_flight(srv):
    return [f for f in (pathlib.Path(srv.data_dir) / "tmp").iterdir()
            if f.name.startswith("upload-")]


def test_slow_header_is_cut_at_the_header_deadline(strict):
    """Slowloris: a header dribbled a byte at a time never completes; the old server's only
    deadline was 60 s per read, so each byte kept it open."""
    with socket.create_connection(("127.0.0.1", strict.port), timeout=10) as s:
        t0 = time.time()
        s.sendall(b"GET /v1/whoami HTTP/1.1\r\nHost: x\r\n")
        reply = b""
        try:
            while time.time() - t0 < 4 * DEADLINE:
                s.sendall(b"X")
                s.settimeout(0.2)
                try:
                    got = s.recv(4096)
                except socket.timeout:
                    continue
                if not got:
                    break
                reply += got
        except (BrokenPipeError, ConnectionResetError):
            pass
        took = time.time() - t0
        assert reply.startswith(b"HTTP/1.1 408"), reply
        assert DEADLINE * 0.8 < took < DEADLINE + 2, took
    # a connection that sends nothing at all is closed at the same deadline
    with socket.create_connection(("127.0.0.1", strict.port), timeout=10) as s:
        t0 = time.time()
        assert closed_within(s, DEADLINE + 2)
        assert time.time() - t0 > DEADLINE * 0.8


def test_idle_keep_alive_connection_is_closed_after_the_idle_timeout(strict):
    with socket.create_connection(("127.0.0.1", strict.port), timeout=10) as s:
        s.sendall(whoami_bytes(strict.token))
        status, _, _ = read_reply(s, 5)
        assert status.startswith("HTTP/1.1 200")
        # used again before the timeout: still served
        time.sleep(DEADLINE / 3)
        s.sendall(whoami_bytes(strict.token))
        status, _, _ = read_reply(s, 5)
        assert status.startswith("HTTP/1.1 200")
        t0 = time.time()
        assert closed_within(s, DEADLINE + 2)
        assert time.time() - t0 > DEADLINE * 0.8


def test_stalled_json_body_is_cut(strict):
    with socket.create_connection(("127.0.0.1", strict.port), timeout=10) as s:
        s.sendall(b"POST /v1/instances HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " +
                  strict.token.encode() + b"\r\nContent-Type: application/json\r\n"
                  b"Content-Length: 1000\r\n\r\n{\"image\":")
        t0 = time.time()
        status, _, body = read_reply(s, 2 * DEADLINE + 3)
        assert status.startswith("HTTP/1.1 408"), (status, body)
        assert json.loads(body)["status"] == 408
        assert time.time() - t0 < 2 * DEADLINE + 2


def test_stalled_upload_is_cut_and_leaves_nothing(strict):
    with socket.create_connection(("127.0.0.1", strict.port), timeout=10) as s:
        s.sendall(b"POST /v1/files HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " +
                  strict.token.encode() + b"\r\nContent-Type: application/octet-stream\r\n"
                  b"Content-Length: 10000000\r\n\r\n")
        s.sendall(b"x" * (300 << 10))  # more than one disk chunk, then nothing
        t0 = time.time()
        status, _, body = read_reply(s, 3 * DEADLINE + 3)
        assert status.startswith("HTTP/1.1 408"), (status, body)
        assert time.time() - t0 < 3 * DEADLINE + 2
    deadline = time.time() + 5
    while uploads_in_flight(strict) and time.time() < deadline:
        time.sleep(0.1)
    assert not uploads_in_flight(strict)


def test_slow_but_steady_upload_is_served(strict):
    """The body rule cuts stalls, not slow clients: 16 KiB per window is enough."""
    total = 0
    with socket.create_connection(("127.0.0.1", strict.port), timeout=10) as s:
        n = 12 * 8192
        s.sendall(b"POST /v1/files HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " +
                  strict.token.encode() + b"\r\nContent-Type: application/octet-stream\r\n" +
                  f"Content-Length: {n}\r\n\r\n".encode())
        t0 = time.time()
        while total < n:
            s.sendall(b"y" * 8192)  # 8 KiB every DEADLINE/4: 32 KiB per window
            total += 8192
            time.sleep(DEADLINE / 4)
        assert time.time() - t0 > 2 * DEADLINE  # several windows
        status, _, body = read_reply(s, 10)
        assert status.startswith("HTTP/1.1 201"), (status, body)
        assert json.loads(body)["size"] == n



def test_a_client_that_stops_reading_is_cut_but_a_slow_one_is_not(strict):
    from coppice_client import Client
    c = Client(strict.url, strict.token)
    size = 64 << 20
    op = c.run("tag:busybox:latest", f"head -c {size} /dev/zero > /big", timeout=60)
    img = op["result_image_uuid"]
    req = (f"GET /v1/inspect/{img}/download?path=/big HTTP/1.1\r\nHost: x\r\n"
           f"Authorization: Bearer {strict.token}\r\n\r\n").encode()

    def drain(s, limit):
        got = 0
        s.settimeout(5)
        try:
            while got < limit:
                chunk = s.recv(1 << 20)
                if not chunk:
                    break
                got += len(chunk)
        except (ConnectionResetError, socket.timeout):
            pass
        return got

    def connect():
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        # a small receive buffer: what is not read stays in the server's send buffer (4 MiB
        # at most), whose writer wakes when half of it drained
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 128 << 10)
        s.connect(("127.0.0.1", strict.port))
        return s

    # reads slowly (1 MiB every DEADLINE/4) for 3 deadlines, then quickly: gets it all
    with connect() as s:
        s.sendall(req)
        got, t0 = 0, time.time()
        while time.time() - t0 < 3 * DEADLINE:
            got += drain(s, 1 << 20)
            time.sleep(DEADLINE / 4)
        assert got < size // 2, got  # it was slow
        got += drain(s, size + (1 << 20) - got)
        assert got > size, got  # the whole file and the chunk framing
    # reads nothing: closed once the socket buffers are full and DEADLINE passed
    with connect() as s:
        s.sendall(req)
        time.sleep(3 * DEADLINE + 2)
        got = drain(s, size + (1 << 20))
        assert 0 < got < size, got


def test_event_followers_hold_no_worker(strict):
    """100 followers of a running operation on a server with 2 request threads and 1 bulk
    thread: every follower's stream begins at once (a follower that held a thread would keep
    the next one waiting until the run ends), a fresh request is answered meanwhile, and every
    follower gets the completion."""
    from coppice_client import Client
    c = Client(strict.url, strict.token)
    busybox = c.get("/v1/images", params={"tag": "busybox:latest"}).json()["images"][0]["uuid"]
    op = c.spawn(busybox, "sleep 8", disposable=True)
    followers, got = [], []
    try:
        t0 = time.time()
        for _ in range(100):
            s = socket.create_connection(("127.0.0.1", strict.port), timeout=20)
            s.sendall(f"GET /v1/operations/{op}/events?follow=1 HTTP/1.1\r\nHost: x\r\n"
                      f"Authorization: Bearer {strict.token}\r\n\r\n".encode())
            followers.append(s)
        for s in followers:
            head = b""
            while b"\r\n\r\n" not in head:
                chunk = s.recv(4096)
                assert chunk, "follower closed"
                head += chunk
            assert head.startswith(b"HTTP/1.1 200"), head
            got.append(head)
        assert time.time() - t0 < 4, time.time() - t0  # long before the run ends
        t1 = time.time()
        assert c.get("/v1/whoami").status == 200 and time.time() - t1 < 1
        assert c.get(f"/v1/operations/{op}").json()["status"] in ("ASSIGNED", "EXECUTING")
        for i, s in enumerate(followers):
            while not got[i].endswith(b"\r\n0\r\n\r\n"):  # the last chunk ends the stream
                chunk = s.recv(65536)
                assert chunk, "follower closed before the completion"
                got[i] += chunk
            assert b"event: completion" in got[i]
    finally:
        for s in followers:
            s.close()
