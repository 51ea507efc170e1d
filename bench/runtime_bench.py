#!/usr/bin/python3
"""Per-runtime cost (issue #7): `true` run + snapshot p50/p99, and the snapshot cost of a
31 MB "package install" (1,000 files written by the run), for every runtime the server offers.

usage: bench/runtime_bench.py [BUILD_DIR] [-n N]   (make bench-runtimes)
Starts its own coppiced on a fresh data dir under /var/tmp (needs root) and drives it over HTTP,
one run at a time. The snapshot cost is the paired median of (non-disposable - disposable) for
the same write workload, so the workload's own time cancels out."""
import http.client
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

args = sys.argv[1:]
n = 30
if "-n" in args:
    i = args.index("-n")
    n = int(args[i + 1])
    del args[i:i + 2]
build = os.path.abspath(args[0] if args else "build")
coppiced = os.path.join(build, "coppiced")
data = tempfile.mkdtemp(prefix="coppice-rt-bench-", dir="/var/tmp")
os.chmod(data, 0o755)
# 31 MB in 1,000 files of 31 KB, in 10 directories: the shape of a small package install.
INSTALL = ("mkdir -p /opt/pkg && cd /opt/pkg && for d in 0 1 2 3 4 5 6 7 8 9; do mkdir $d; "
           "i=0; while [ $i -lt 100 ]; do head -c 31744 /dev/urandom > $d/f$i; i=$((i+1)); done; "
           "done")


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(p * (len(xs) - 1) + 0.5))]


srv = None
try:
    subprocess.run([coppiced, "image", "bootstrap", "busybox", "--data-dir", data], check=True,
                   capture_output=True)
    token = subprocess.run([coppiced, "token", "create", "--project", "bench", "--data-dir", data],
                           check=True, capture_output=True, text=True).stdout.strip()
    srv = subprocess.Popen([coppiced, "serve", "--listen", "127.0.0.1:0", "--data-dir", data,
                            "--log-level", "warn"], stdout=subprocess.PIPE,
                           stderr=subprocess.DEVNULL, text=True)
    port = int(srv.stdout.readline().split()[-1])
    conn = http.client.HTTPConnection("127.0.0.1", port)
    hdr = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}

    def call(method, path, body=None):
        conn.request(method, path, body=json.dumps(body) if body is not None else None,
                     headers=hdr)
        r = conn.getresponse()
        return r.status, json.loads(r.read() or b"null")

    def run(runtime, command, disposable):
        t0 = time.perf_counter()
        st, j = call("POST", "/v1/instances", {"image": "tag:busybox:latest", "command": command,
                                              "shell": True, "disposable": disposable,
                                              "runtime": runtime, "timeout": 300})
        assert st == 201, j
        while True:
            st, op = call("GET", f"/v1/operations/{j['uuid']}")
            if op["status"] in ("SUCCESS", "FAILED", "CANCELLED"):
                break
            time.sleep(0.002)
        ms = (time.perf_counter() - t0) * 1000
        assert op["status"] == "SUCCESS" and op["metadata"]["result"]["state"]["exit_code"] == 0, op
        return ms

    runtimes = call("GET", "/v1/whoami")[1]["runtimes"]
    who = call("GET", "/v1/whoami")[1]
    print(f"runtimes offered: {', '.join(runtimes)}; {n} runs each (microvm: 8), one at a time")
    if "microvm" in who.get("runtime_details", {}):
        print(f"microvm: {json.dumps(who['runtime_details']['microvm'])}")
    results = {}
    for rt in runtimes:
        k = n if rt != "microvm" else min(n, 8)  # a VM boot costs seconds under TCG
        for _ in range(1 if rt == "microvm" else 3):
            run(rt, "true", False)  # warm up
        true_ms = [run(rt, "true", False) for _ in range(k)]
        m = max(5, k // 3) if rt != "microvm" else 3
        pairs = [(run(rt, INSTALL, False), run(rt, INSTALL, True)) for _ in range(m)]
        snap = [a - b for a, b in pairs]
        results[rt] = (statistics.median(true_ms), pct(true_ms, 0.99))
        print(f"{rt:>10}: true + snapshot p50 {statistics.median(true_ms):8.1f} ms  "
              f"p99 {pct(true_ms, 0.99):8.1f} ms")
        print(f"{'':>10}  31 MB install: kept p50 {statistics.median(a for a, _ in pairs):8.1f} ms, "
              f"disposable p50 {statistics.median(b for _, b in pairs):8.1f} ms, "
              f"snapshot cost (paired median) {statistics.median(snap):6.1f} ms")
    if "namespace" in results:
        base = results["namespace"][0]
        for rt, (p50, _) in results.items():
            if rt != "namespace":
                print(f"{rt} / namespace (true p50): {p50 / base:.1f}x")
finally:
    if srv:
        srv.terminate()
        srv.wait()
    shutil.rmtree(data, ignore_errors=True)
