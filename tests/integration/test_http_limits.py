"""The HTTP layer against hostile clients (issue #12 item 6): nothing is read from an
unauthenticated client beyond its header, and every phase of a connection has a deadline."""
import json
import socket
import time

import pytest



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

