#!/usr/bin/env python3
"""How many concurrent sleeping sandboxes this machine holds (issue #12 item 13).

    bench/capacity.py [BUILD_DIR] [--sandboxes 5000] [--sleep 60] [--runtime namespace]

Starts coppiced with --workers N on a fresh data dir, spawns N disposable `sleep S` runs as fast
as it can, and reports: how long until all are EXECUTING, the server's RSS and descriptor count
at that point, host memory used per sandbox (MemAvailable before and during), and whether every
run ended SUCCESS. Any 5xx answer or FAILED run is a failure (exit status 1). Loopback only,
bounded by --deadline seconds."""
import argparse
import http.client
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import threading
import time

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests" / "integration"))
from coppice_client import Client, Server  # noqa: E402


def admin(binary, data, *args):
    return subprocess.run([binary, *args, "--data-dir", str(data)], check=True,
                          capture_output=True, text=True).stdout.strip()


def mem_available_kb():
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1])
    return 0


def rss_kb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def count_status(c, status, problems):
    """Operations in `status`, counted page by page (listings are bounded)."""
    total, offset = 0, 0
    while True:
        r = c.get("/v1/operations", params={"status": status, "limit": 1000, "offset": offset})
        if r.status >= 500:
            problems.append(f"listing: {r.status} {r.body[:200]!r}")
            return None
        j = r.json()
        page = j["operations"] if isinstance(j, dict) else j
        total += len(page)
        if len(page) < 1000:
            return total
        offset += 1000


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("build", nargs="?", default="build")
    ap.add_argument("--sandboxes", type=int, default=5000)
    ap.add_argument("--sleep", type=int, default=60)
    ap.add_argument("--runtime", default="namespace")
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--deadline", type=int, default=900)
    args = ap.parse_args()
    binary = str(pathlib.Path(args.build).resolve() / "coppiced")
    n = args.sandboxes
    data = pathlib.Path(tempfile.mkdtemp(prefix="coppice-capacity-", dir="/var/tmp"))
    admin(binary, data, "image", "bootstrap", "busybox")
    token = admin(binary, data, "token", "create", "--project", "cap")
    srv = Server(binary, data, extra_args=["--workers", str(n), "--project-max-running", str(n),
                                           "--project-max-queued", str(n), "--max-timeout", "3600",
                                           "--pids", "64"])
    deadline = time.time() + args.deadline
    problems = []
    try:
        srv.start()
        c = Client(srv.url, token, runtime=args.runtime)
        base = c.get("/v1/images", params={"tag": "busybox:latest"}).json()["images"][0]["uuid"]
        mem0 = mem_available_kb()
        ops, lock = [], threading.Lock()
        retries = [0]

        def spawner(k):
            cl = Client(srv.url, token, runtime=args.runtime)
            for i in range(k, n, args.clients):
                while time.time() < deadline:
                    try:
                        r = cl.post("/v1/instances", {"image": base, "command": f"sleep {args.sleep}",
                                                      "shell": True, "disposable": True,
                                                      "timeout": args.sleep + 600})
                    except (OSError, http.client.HTTPException) as e:
                        problems.append(f"spawn {i}: {e}")
                        return
                    if r.status == 201:
                        with lock:
                            ops.append(r.json()["uuid"])
                        break
                    if r.status in (429, 503) and "retry-after" in r.headers:
                        retries[0] += 1
                        time.sleep(float(r.headers["retry-after"]))
                        continue
                    problems.append(f"spawn {i}: {r.status} {r.body[:200]!r}")
                    return

        t0 = time.time()
        threads = [threading.Thread(target=spawner, args=(k,)) for k in range(args.clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        t_spawned = time.time() - t0
        # Until every run is EXECUTING (or finished): the listing counts them.
        # Until every run is EXECUTING at once. A run that already ended means --sleep was too
        # short for this many starts: reported, and the peak is what counts.
        executing = peak = 0
        while time.time() < deadline:
            executing = count_status(c, "EXECUTING", problems)
            if executing is None:
                break
            peak = max(peak, executing)
            if executing >= len(ops):
                break
            if count_status(c, "SUCCESS", problems):
                problems.append(f"runs ended before all {len(ops)} were executing (peak {peak}): "
                                "use a longer --sleep")
                break
            time.sleep(0.5)
        t_all = time.time() - t0
        rss = rss_kb(srv.proc.pid)
        fds = len(os.listdir(f"/proc/{srv.proc.pid}/fd"))
        mem1 = mem_available_kb()
        # Every run must end SUCCESS.
        statuses = {}
        for op in ops:
            while time.time() < deadline:
                o = c.get(f"/v1/operations/{op}").json()
                if o["status"] in ("SUCCESS", "FAILED", "CANCELLED"):
                    statuses[o["status"]] = statuses.get(o["status"], 0) + 1
                    if o["status"] != "SUCCESS":
                        problems.append(f"{op}: {o['status']} {o.get('error')}")
                    break
                time.sleep(0.5)
        report = {
            "sandboxes": n, "runtime": args.runtime, "accepted": len(ops),
            "spawn_requests_s": round(t_spawned, 1), "all_executing_s": round(t_all, 1),
            "executing_peak": peak, "retries_429_503": retries[0],
            "server_rss_mib": round(rss / 1024, 1), "server_fds": fds,
            "host_mem_per_sandbox_kib": round((mem0 - mem1) / max(1, len(ops)), 1),
            "statuses": statuses, "problems": problems[:10],
        }
        print(json.dumps(report, indent=1))
    finally:
        srv.stop(timeout=120)
        shutil.rmtree(data, ignore_errors=True)
    sys.exit(0 if not problems and statuses.get("SUCCESS") == n else 1)


if __name__ == "__main__":
    main()
