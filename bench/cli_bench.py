#!/usr/bin/python3
"""CLI latency (issue #4 targets): `coppice --version` < 5 ms, `coppice cat /etc/passwd` p50
< 15 ms and `coppice run -- true` p50 < 20 ms against a local server.

usage: bench/cli_bench.py [BUILD_DIR] [-n N]   (make bench-cli)
Starts its own coppiced on a fresh data dir under /var/tmp (needs root), then times each
command N times (20 by default) after two warm-ups, as a user would run them (a new process
each time; Python's own spawn cost is printed for reference)."""
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

args = sys.argv[1:]
n = 20
if "-n" in args:
    i = args.index("-n")
    n = int(args[i + 1])
    del args[i:i + 2]
build = os.path.abspath(args[0] if args else "build")
coppiced, coppice = os.path.join(build, "coppiced"), os.path.join(build, "coppice")
data = tempfile.mkdtemp(prefix="coppice-cli-bench-", dir="/var/tmp")
os.chmod(data, 0o755)
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
    env = dict(os.environ, COPPICE_HOME=os.path.join(data, "home"),
               COPPICE_URL=f"http://127.0.0.1:{port}", COPPICE_TOKEN=token,
               COPPICE_SESSION="bench")
    subprocess.run([coppice, "use", "busybox:latest"], env=env, check=True, capture_output=True)

    def timed(cmd):
        xs = []
        for i in range(n + 2):
            t0 = time.perf_counter()
            r = subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            xs.append((time.perf_counter() - t0) * 1000)
            if r.returncode != 0:
                sys.exit(f"{cmd} failed: {r.stderr.decode()}")
        xs = sorted(xs[2:])
        return statistics.median(xs), xs[int(0.99 * (len(xs) - 1))]

    print(f"coppice CLI latency, {n} runs each (new process each time)")
    base, _ = timed(["/bin/true"])
    print(f"  (spawning /bin/true from Python: p50 {base:.2f} ms)")
    for label, cmd, target in [("coppice --version", [coppice, "--version"], 5),
                               ("coppice cat /etc/passwd", [coppice, "cat", "/etc/passwd"], 15),
                               ("coppice run -- true", [coppice, "run", "--", "true"], 20)]:
        p50, p99 = timed(cmd)
        verdict = "PASS" if p50 < target else "MISS"
        print(f"  {label:28s} p50 {p50:7.2f} ms  p99 {p99:7.2f} ms  target < {target} ms: {verdict}")
finally:
    if srv:
        srv.terminate()
        srv.wait(timeout=30)
    shutil.rmtree(data, ignore_errors=True)
