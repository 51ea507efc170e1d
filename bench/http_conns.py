#!/usr/bin/python3
"""Many open connections (issue #12 item 6): does the server keep serving a fresh client while
10,000 slow or idle connections and 1,000 event-stream followers are open, and what do they cost?

usage: bench/http_conns.py [BUILD_DIR] [--idle N] [--followers N] [--probes N] [--gzip]
       (make bench-http)

Starts its own coppiced on a fresh data dir under /var/tmp (needs root), loopback only. Opens, in
this order: N/3 keep-alive connections that made one request and sit idle, N/3 slowloris
connections that dribble a request header, N/3 connections stalled in an authenticated body,
and F followers of `GET /v1/operations/{op}/events?follow=1` on one long `sleep` run. Then a
fresh client (a new connection each time) calls `GET /v1/whoami` P times: p50/p99 latency, and
the server's RSS (VmRSS) and thread count before, with everything open, and after closing it.
With --gzip the followers ask for gzip (each then holds a zlib stream). The server runs with
header/body deadlines longer than the bench so the slow connections stay
open while it measures (the deadlines themselves are tested in tests/integration)."""
import http.client
import json
import os
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

args = sys.argv[1:]


def opt(name, default):
    if name in args:
        i = args.index(name)
        v = int(args[i + 1])
        del args[i:i + 2]
        return v
    return default


GZIP = "--gzip" in args
if GZIP:
    args.remove("--gzip")
IDLE = opt("--idle", 10_000)
FOLLOWERS = opt("--followers", 1_000)
PROBES = opt("--probes", 300)
build = os.path.abspath(args[0] if args else "build")
coppiced = os.path.join(build, "coppiced")
TIME_LIMIT = 600  # the whole bench stops after this many seconds

# The client holds every connection too: raise its own descriptor limit (root may raise the
# hard one).
need = IDLE + FOLLOWERS + 1000
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
if soft < need:
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(need, hard), max(need, hard)))
    except (ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
if soft < need:
    sys.exit(f"the client's descriptor limit {soft} is below {need}: run as root or lower --idle")


def proc_status(pid):
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            out[k] = v.strip()
    return int(out["VmRSS"].split()[0]) / 1024, int(out["Threads"])


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(p * (len(xs) - 1) + 0.5))]


data = tempfile.mkdtemp(prefix="coppice-http-bench-", dir="/var/tmp")
os.chmod(data, 0o755)
srv = None
held = []
t_start = time.time()
try:
    subprocess.run([coppiced, "image", "bootstrap", "busybox", "--data-dir", data], check=True,
                   capture_output=True)
    token = subprocess.run([coppiced, "token", "create", "--project", "bench", "--data-dir",
                            data], check=True, capture_output=True, text=True).stdout.strip()
    srv = subprocess.Popen([coppiced, "serve", "--listen", "127.0.0.1:0", "--data-dir", data,
                            "--log-level", "warn", "--max-connections", str(IDLE + FOLLOWERS +
                                                                             2000),
                            "--header-timeout", "600", "--body-timeout", "600",
                            "--idle-timeout", "600"],
                           stdout=subprocess.PIPE, stderr=open(os.path.join(data, "server.log"),
                                                               "w"), text=True)
    port = int(srv.stdout.readline().split()[-1])
    auth = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    WHOAMI = (f"GET /v1/whoami HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\r\n"
              .encode())

    def call(method, path, body=None):
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        c.request(method, path, body=json.dumps(body) if body is not None else None,
                  headers=auth)
        r = c.getresponse()
        out = r.status, json.loads(r.read() or b"null")
        c.close()
        return out

    def probe(n):
        """n fresh clients' whoami: latencies in ms (connect + request + response)."""
        lat = []
        for _ in range(n):
            t0 = time.perf_counter()
            s = socket.create_connection(("127.0.0.1", port), timeout=30)
            s.sendall(WHOAMI)
            buf = b""
            while b"\r\n\r\n" not in buf:
                buf += s.recv(65536)
            head, _, body = buf.partition(b"\r\n\r\n")
            length = int([ln.split(b":")[1] for ln in head.split(b"\r\n")
                          if ln.lower().startswith(b"content-length")][0])
            while len(body) < length:
                body += s.recv(65536)
            lat.append((time.perf_counter() - t0) * 1000)
            assert head.startswith(b"HTTP/1.1 200"), head
            s.close()
        return lat

    probe(20)  # warm up
    rss0, thr0 = proc_status(srv.pid)
    base = probe(PROBES)

    # The long run the followers follow.
    st, op = call("POST", "/v1/instances", {"image": "tag:busybox:latest", "command": "sleep 900",
                                            "shell": True, "disposable": True, "timeout": 900})
    assert st == 201, op
    op = op["uuid"]
    deadline = time.time() + 60
    while call("GET", f"/v1/operations/{op}")[1]["status"] != "EXECUTING":
        assert time.time() < deadline, "the sleep run did not start"
        time.sleep(0.05)

    t0 = time.time()
    third = IDLE // 3
    kinds = {"idle keep-alive": 0, "slow header": 0, "stalled body": 0, "followers": 0}
    for i in range(IDLE):
        s = socket.create_connection(("127.0.0.1", port), timeout=60)
        if i < third:  # one request answered, then idle
            s.sendall(WHOAMI)
            buf = b""
            while b"\r\n\r\n" not in buf:
                buf += s.recv(65536)
            kinds["idle keep-alive"] += 1
        elif i < 2 * third:  # a header that never ends
            s.sendall(b"GET /v1/whoami HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            kinds["slow header"] += 1
        else:  # an authenticated body that stalls
            s.sendall(f"POST /v1/instances HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}"
                      f"\r\nContent-Type: application/json\r\nContent-Length: 4096\r\n\r\n"
                      f'{{"image":'.encode())
            kinds["stalled body"] += 1
        held.append(s)
        assert time.time() - t_start < TIME_LIMIT
    for i in range(FOLLOWERS):
        s = socket.create_connection(("127.0.0.1", port), timeout=60)
        gz = "Accept-Encoding: gzip\r\n" if GZIP else ""
        s.sendall(f"GET /v1/operations/{op}/events?follow=1 HTTP/1.1\r\nHost: x\r\n"
                  f"Authorization: Bearer {token}\r\n{gz}\r\n".encode())
        held.append(s)
    for s in held[IDLE:]:  # every follower's stream has begun
        buf = b""
        while b"\r\n\r\n" not in buf:
            buf += s.recv(65536)
        assert buf.startswith(b"HTTP/1.1 200"), buf[:200]
        kinds["followers"] += 1
    opened_s = time.time() - t0
    # A dribbling client sends one more byte every so often: still within its header.
    for s in held[third:2 * third]:
        s.sendall(b"x")
    time.sleep(1)
    rss1, thr1 = proc_status(srv.pid)
    loaded = probe(PROBES)
    # Nothing held was dropped by the server meanwhile.
    alive = 0
    for s in held:
        s.setblocking(False)
        try:
            alive += s.recv(65536, socket.MSG_PEEK) != b""
        except BlockingIOError:
            alive += 1
        except OSError:
            pass
    for s in held:
        s.close()
    held = []
    call("DELETE", f"/v1/operations/{op}")
    time.sleep(3)
    rss2, thr2 = proc_status(srv.pid)
    after = probe(PROBES)

    print(f"coppiced on 127.0.0.1:{port}, {os.cpu_count()} CPUs; client fd limit {soft}")
    print(f"opened {sum(kinds.values())} connections in {opened_s:.1f} s: " +
          ", ".join(f"{v} {k}" for k, v in kinds.items()) + (" (gzip)" if GZIP else "") +
          f"; {alive} still open at the end")
    for name, lat in (("idle server", base), ("with all open", loaded), ("after closing", after)):
        print(f"fresh-client GET /v1/whoami, {name:14}: p50 {statistics.median(lat):6.2f} ms  "
              f"p99 {pct(lat, 0.99):6.2f} ms  max {max(lat):6.2f} ms  (n={len(lat)})")
    print(f"server RSS: {rss0:.1f} MiB before, {rss1:.1f} MiB with all open "
          f"(+{(rss1 - rss0) * 1024 / max(1, IDLE + FOLLOWERS):.1f} KiB per connection), "
          f"{rss2:.1f} MiB after closing")
    print(f"server threads: {thr0} before, {thr1} with all open, {thr2} after")
finally:
    for s in held:
        s.close()
    if srv:
        srv.terminate()
        try:
            srv.wait(timeout=60)
        except subprocess.TimeoutExpired:
            srv.kill()
    shutil.rmtree(data, ignore_errors=True)
