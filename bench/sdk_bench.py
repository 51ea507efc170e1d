#!/usr/bin/python3
"""Python SDK latency and overhead (issue #5 target: the SDK adds under 1 ms per call over raw
HTTP).

usage: bench/sdk_bench.py [BUILD_DIR] [-n 200] [-p 64]   (make bench-sdk)

Starts its own coppiced on loopback with a fresh data dir under /var/tmp (needs root, like the
server), then times `true` runs (disposable, busybox) two ways in the same process:

* raw HTTP: http.client on a keep-alive connection, `POST /v1/instances` then
  `GET /v1/operations/{id}/events?follow=1` read to its end (the least a client must do to get
  the exit code and output of a run);
* the SDK: `image.run(["true"]).wait()`.

Sequentially (N runs each, interleaved so both see the same server state) and in parallel
(P at once from P threads, each with its own connection). Prints p50/p99, the difference of the
medians, and the client CPU time per call (SDK minus raw), which is the SDK's own cost without
the sandbox's noise. Also times `GET /v1/whoami` both ways (no sandbox at all).
"""
import http.client
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "sdk", "python"))
from coppice import CoppiceSync  # noqa: E402

args = sys.argv[1:]


def opt(name, default):
    if name in args:
        i = args.index(name)
        v = int(args[i + 1])
        del args[i:i + 2]
        return v
    return default


N = opt("-n", 200)
P = opt("-p", 64)
build = os.path.abspath(args[0] if args else "build")
coppiced = os.path.join(build, "coppiced")


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


class Raw:
    """The baseline client: one keep-alive connection per thread, nothing else."""

    def __init__(self, port, token, image):
        self.port, self.image = port, image
        self.headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        self.local = threading.local()
        self.body = json.dumps({"image": image, "command": "true", "disposable": True}).encode()

    def conn(self):
        c = getattr(self.local, "c", None)
        if c is None:
            c = self.local.c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        return c

    def run_true(self):
        c = self.conn()
        c.request("POST", "/v1/instances", body=self.body, headers=self.headers)
        r = c.getresponse()
        op = json.loads(r.read())["uuid"]
        assert r.status == 201
        c.request("GET", f"/v1/operations/{op}/events?follow=1", headers=self.headers)
        r = c.getresponse()
        data = r.read()  # the server ends the stream after `completion`
        assert b"event: completion" in data and b'"code":0' in data, data[-300:]

    def whoami(self):
        c = self.conn()
        c.request("GET", "/v1/whoami", headers=self.headers)
        r = c.getresponse()
        json.loads(r.read())


def sequential(fns, n):
    """Runs each fn n times, interleaved; returns per-fn latencies (ms) and CPU s per call."""
    lat = {k: [] for k in fns}
    cpu = {k: 0.0 for k in fns}
    for _ in range(n):
        for k, fn in fns.items():
            c0, t0 = time.thread_time(), time.perf_counter()
            fn()
            lat[k].append((time.perf_counter() - t0) * 1000)
            cpu[k] += time.thread_time() - c0
    return lat, {k: v / n for k, v in cpu.items()}


def parallel(fn, p):
    lat = []
    lock = threading.Lock()
    barrier = threading.Barrier(p)

    def one(_):
        barrier.wait()
        t0 = time.perf_counter()
        fn()
        with lock:
            lat.append((time.perf_counter() - t0) * 1000)

    t0 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=p) as pool:
        list(pool.map(one, range(p)))
    return lat, (time.perf_counter() - t0) * 1000


def line(label, xs):
    return (f"  {label:28s} p50 {statistics.median(xs):7.2f} ms  p99 {pct(xs, 99):7.2f} ms  "
            f"mean {statistics.fmean(xs):7.2f} ms")


data = tempfile.mkdtemp(prefix="coppice-sdk-bench-", dir="/var/tmp")
os.chmod(data, 0o755)
srv = None
try:
    subprocess.run([coppiced, "image", "bootstrap", "busybox", "--data-dir", data], check=True,
                   capture_output=True)
    token = subprocess.run([coppiced, "token", "create", "--project", "bench", "--data-dir",
                            data], check=True, capture_output=True, text=True).stdout.strip()
    srv = subprocess.Popen([coppiced, "serve", "--listen", "127.0.0.1:0", "--data-dir", data,
                            "--log-level", "warn"],
                           stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    port = int(srv.stdout.readline().split()[-1])
    client = CoppiceSync(base_url=f"http://127.0.0.1:{port}", token=token)
    image = client.images.use("busybox:latest", strict=True)
    raw = Raw(port, token, image.uuid)

    def sdk_true():
        r = image.run(["true"]).wait()
        assert r.exit_code == 0

    fns = {"raw": raw.run_true, "sdk": sdk_true}
    sequential(fns, 10)  # warm-up: connections, page cache, first snapshots
    print(f"coppice Python SDK vs raw HTTP ({os.cpu_count()} CPUs), `true` runs, busybox")
    lat, cpu = sequential(fns, N)
    print(f"sequential, {N} runs each (interleaved):")
    print(line("raw HTTP (POST + SSE)", lat["raw"]))
    print(line("SDK run().wait()", lat["sdk"]))
    seq_over = statistics.median(lat["sdk"]) - statistics.median(lat["raw"])
    cpu_over = (cpu["sdk"] - cpu["raw"]) * 1000
    print(f"  SDK overhead: p50 {seq_over:+.2f} ms; client CPU per call {cpu['raw'] * 1000:.3f} "
          f"ms raw, {cpu['sdk'] * 1000:.3f} ms SDK, {cpu_over:+.3f} ms")

    print(f"parallel, {P} at once from {P} threads (2 rounds each):")
    plat = {"raw": [], "sdk": []}
    wall = {"raw": [], "sdk": []}
    for _ in range(2):
        for k, fn in fns.items():
            xs, w = parallel(fn, P)
            plat[k] += xs
            wall[k].append(w)
    print(line("raw HTTP (POST + SSE)", plat["raw"]) + f"  batch {min(wall['raw']):.0f} ms")
    print(line("SDK run().wait()", plat["sdk"]) + f"  batch {min(wall['sdk']):.0f} ms")
    par_over = statistics.median(plat["sdk"]) - statistics.median(plat["raw"])
    print(f"  SDK overhead: p50 {par_over:+.2f} ms")

    wl, wcpu = sequential({"raw": raw.whoami, "sdk": client.whoami}, 500)
    print("GET /v1/whoami, 500 each (no sandbox):")
    print(line("raw HTTP", wl["raw"]))
    print(line("SDK whoami()", wl["sdk"]))
    w_over = statistics.median(wl["sdk"]) - statistics.median(wl["raw"])
    print(f"  SDK overhead: p50 {w_over * 1000:+.0f} us; client CPU per call "
          f"{(wcpu['sdk'] - wcpu['raw']) * 1e6:+.0f} us")

    worst = max(cpu_over, seq_over, w_over)
    verdict = "PASS" if worst < 1.0 else "MISS"
    print(f"SDK overhead per call (worst of the above): {worst:.3f} ms, target < 1 ms: "
          f"{verdict}")
    client.close()
finally:
    if srv:
        srv.terminate()
        srv.wait(timeout=30)
    shutil.rmtree(data, ignore_errors=True)
