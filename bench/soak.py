#!/usr/bin/env python3
"""A bounded soak of the server (issue #12, "Done when"): N runs at concurrency C through the
HTTP API, a `kill -9` of the server after K of them were accepted, a restart, then proof that
no run was lost and nothing was left behind.

    bench/soak.py [BUILD_DIR] [--runs 10000] [--concurrency 64] [--kill-at 5000]

Every run writes its own index into its image (`/soak`); half are non-disposable. Afterwards:
- every accepted run (201) has a terminal status; those that were in flight at the kill are
  FAILED with "server stopped", every other one SUCCESS;
- every SUCCESS non-disposable run's image holds its index (all of them are read back);
- after a final restart: runs/ and tmp/ are empty, no sandbox process or run cgroup of this
  server is left, and every layer directory belongs to an image.
Loopback only; bounded in count and time (--deadline seconds, default 900). Exit status 0 only
when every check holds. Prints throughput and p50/p99 of the time from spawn to completion."""
import argparse
import hashlib
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


def percentile(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(len(xs) * p))] if xs else float("nan")


class Soak:
    def __init__(self, args, binary):
        self.args = args
        self.binary = binary
        self.data = pathlib.Path(tempfile.mkdtemp(prefix="coppice-soak-", dir="/var/tmp"))
        admin(binary, self.data, "image", "bootstrap", "busybox")
        self.token = admin(binary, self.data, "token", "create", "--project", "soak")
        self.server = Server(binary, self.data, extra_args=["--workers", str(args.workers)])
        self.lock = threading.Lock()
        self.next_index = 0
        self.accepted = {}  # uuid -> (index, disposable, spawn time)
        self.latency = []
        self.errors = []
        self.up = threading.Event()
        self.killed_at = None
        self.deadline = time.time() + args.deadline

    def client(self):
        return Client(self.server.url, self.token)

    def take_index(self):
        with self.lock:
            if self.next_index >= self.args.runs:
                return None
            i = self.next_index
            self.next_index += 1
            return i

    def worker(self, base):
        i = None
        while time.time() < self.deadline:
            if i is None:
                i = self.take_index()
                if i is None:
                    return
            self.up.wait()
            disposable = i % 2 == 1
            try:
                c = self.client()
                t0 = time.time()
                r = c.post("/v1/instances", {"image": base, "shell": True, "disposable": disposable,
                                             "command": f"echo {i} > /soak"})
            except (OSError, http.client.HTTPException):
                time.sleep(0.05)
                continue  # the server is down: the same index is tried again
            if r.status != 201:
                if r.status in (429, 503):
                    time.sleep(0.05)
                    continue
                self.errors.append(f"spawn {i}: {r.status} {r.body[:200]!r}")
                i = None
                continue
            op = r.json()["uuid"]
            with self.lock:
                self.accepted[op] = (i, disposable, t0)
                if self.killed_at is None and len(self.accepted) >= self.args.kill_at:
                    self.killed_at = len(self.accepted)
                    threading.Thread(target=self.kill_and_restart).start()
            i = None
            self.wait_done(op, t0)

    def wait_done(self, op, t0):
        while time.time() < self.deadline:
            self.up.wait()
            try:
                r = self.client().get(f"/v1/operations/{op}")
            except (OSError, http.client.HTTPException):
                time.sleep(0.05)
                continue
            if r.status == 200 and r.json()["status"] in ("SUCCESS", "FAILED", "CANCELLED"):
                with self.lock:
                    self.latency.append(time.time() - t0)
                return
            time.sleep(0.01)

    def kill_and_restart(self):
        self.up.clear()
        self.server.kill9()
        print(f"killed the server (kill -9) after {self.killed_at} accepted runs", flush=True)
        self.server.start()
        self.up.set()

    def run(self):
        self.server.start()
        c = self.client()
        base = c.get("/v1/images", params={"tag": "busybox:latest"}).json()["images"][0]["uuid"]
        self.up.set()
        t0 = time.time()
        threads = [threading.Thread(target=self.worker, args=(base,))
                   for _ in range(self.args.concurrency)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.time() - t0
        return self.check(elapsed)

    def check(self, elapsed):
        problems = list(self.errors)
        c = self.client()
        counts = {}
        read_back = failed_by_kill = 0
        for op, (i, disposable, _) in self.accepted.items():
            o = c.get(f"/v1/operations/{op}").json()
            counts[o["status"]] = counts.get(o["status"], 0) + 1
            if o["status"] == "FAILED" and "server stopped" in (o["error"] or ""):
                failed_by_kill += 1
                continue
            if o["status"] != "SUCCESS":
                problems.append(f"run {i} ({op}) ended {o['status']}: {o.get('error')}")
                continue
            if not disposable:
                img = o["result_image_uuid"]
                body = c.get(f"/v1/inspect/{img}/download", params={"path": "/soak"}).body
                if body != f"{i}\n".encode():
                    problems.append(f"run {i}: its image holds {body[:40]!r}")
                read_back += 1
        lost = self.args.runs - len(self.accepted)
        if lost:
            problems.append(f"{lost} runs were never accepted")
        # A last restart, then nothing of the runs may be left.
        self.server.stop()
        self.server.start()
        c = self.client()  # a new port
        runs = os.listdir(self.data / "runs")
        tmp = os.listdir(self.data / "tmp")
        if runs:
            problems.append(f"runs/ holds {runs[:5]}")
        if tmp:
            problems.append(f"tmp/ holds {tmp[:5]}")
        imgs = set()
        offset = 0
        while True:
            page = c.get("/v1/images", params={"limit": 1000, "offset": offset}).json()["images"]
            imgs |= {im["uuid"] for im in page}
            if len(page) < 1000:
                break
            offset += 1000
        layers = set(os.listdir(self.data / "layers"))
        orphans = {l for l in layers if l not in imgs}
        if orphans:
            problems.append(f"{len(orphans)} layers belong to no image, e.g. {sorted(orphans)[:3]}")
        self.server.stop()
        # A sandbox's processes have their root (or cwd) inside this data dir.
        left = []
        for pid in filter(str.isdigit, os.listdir("/proc")):
            for link in ("root", "cwd"):
                try:
                    if os.readlink(f"/proc/{pid}/{link}").startswith(str(self.data)):
                        left.append(pid)
                except OSError:
                    pass
        if left:
            problems.append(f"processes inside this data dir are still running: {left[:5]}")
        tag = "coppice-" + hashlib.sha256(str(self.data).encode()).hexdigest()[:12]
        for root, dirs, _ in os.walk("/sys/fs/cgroup"):
            if os.path.basename(root).startswith(tag) and dirs:
                problems.append(f"run cgroups left under {root}: {dirs[:3]}")
                break
        lat = self.latency
        report = {
            "runs": self.args.runs, "concurrency": self.args.concurrency,
            "accepted": len(self.accepted), "killed_after": self.killed_at,
            "statuses": counts, "failed_by_the_kill": failed_by_kill,
            "images_read_back": read_back, "seconds": round(elapsed, 1),
            "runs_per_s": round(len(self.accepted) / elapsed, 1),
            "latency_ms_p50": round(percentile(lat, 0.5) * 1e3, 1),
            "latency_ms_p99": round(percentile(lat, 0.99) * 1e3, 1),
            "problems": problems[:20],
        }
        print(json.dumps(report, indent=1))
        return not problems

    def cleanup(self):
        self.server.stop()
        shutil.rmtree(self.data, ignore_errors=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("build", nargs="?", default="build")
    ap.add_argument("--runs", type=int, default=10000)
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--kill-at", type=int, default=5000)
    ap.add_argument("--workers", type=int, default=16)
    ap.add_argument("--deadline", type=int, default=900)
    args = ap.parse_args()
    binary = str(pathlib.Path(args.build).resolve() / "coppiced")
    soak = Soak(args, binary)
    try:
        ok = soak.run()
    finally:
        soak.cleanup()
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
