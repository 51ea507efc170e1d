#!/usr/bin/env python3
"""The measuring half of bench/oci_import.sh (standard library only).

  oci_import.py layout-info LAYOUT TAG
      prints `digest compressed_bytes uncompressed_bytes` of the image's only layer.
  oci_import.py bench --coppiced BIN --registry HOST:PORT --repo R --tag T
                      --variant-prefix P --n N --work DIR --layer-size BYTES
                      [--uncompressed BYTES] [--rootfs-tar TAR]
      times, N times each and interleaved (the order of ours/peer flips every iteration):
        cold   coppiced import of docker://HOST/R:T into a fresh data dir (a fresh server per
               iteration, started and stopped outside the timed part), POST → SUCCESS seen by
               the client (completion on the operation's event stream, then a GET that shows
               SUCCESS);
        peer   skopeo copy docker://HOST/R:T oci:DIR:latest + umoci unpack (fresh DIR, BUNDLE);
        floor  (reference only) tar -x of the uncompressed rootfs tar into a fresh directory;
        warm   re-import of R:T on one long-lived server that already has it, and an import of
               R:P<i> (a new manifest and config over the same layer) on that server.
      Each timed run starts after a `sync` (untimed), so that no run pays for the dirty pages
      of the one before it. Prints p50 / min / max, the ratios and `RESULT key value` lines.

Every coppiced it starts runs in its own session (a terminal's Ctrl-C reaches the script, not
the servers); their pids are appended to DIR/pids so the shell script can end them if this
process is killed. SIGTERM (what the shell script sends on Ctrl-C) stops everything cleanly.
"""
import http.client
import json
import os
import re
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import time

IMPORT_TIMEOUT_S = 600


# ------------------------------------------------------------------------------------------
# layout-info

def layout_info(layout, tag):
    idx = json.load(open(os.path.join(layout, "index.json")))
    ms = [m for m in idx["manifests"]
          if m.get("annotations", {}).get("org.opencontainers.image.ref.name") == tag]
    if len(ms) != 1:
        sys.exit(f"layout {layout}: tag {tag} not found once in index.json")

    def blob(d):
        return os.path.join(layout, "blobs", *d.split(":", 1))

    m = json.load(open(blob(ms[0]["digest"])))
    if len(m["layers"]) != 1:
        sys.exit(f"layout {layout}: {len(m['layers'])} layers, expected 1")
    layer = m["layers"][0]
    import gzip
    n = 0
    with gzip.open(blob(layer["digest"])) as f:
        while True:
            b = f.read(1 << 20)
            if not b:
                break
            n += len(b)
    print(layer["digest"], layer["size"], n)


# ------------------------------------------------------------------------------------------
# servers

class Server:
    def __init__(self, coppiced, data, pids_file, name, registry):
        self.coppiced, self.data, self.pids_file, self.name = coppiced, data, pids_file, name
        self.registry = registry  # HOST:PORT of the local registry: allowed, over plain http
        self.proc = None
        self.port = None
        self.token = None
        self.log = os.path.join(data, "server.log")

    def start(self):
        os.makedirs(self.data)
        os.chmod(self.data, 0o755)
        r = subprocess.run([self.coppiced, "token", "create", "--project", "bench",
                            "--data-dir", self.data], capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError(f"token create failed: {r.stderr.strip()}")
        self.token = r.stdout.strip().split()[-1]
        out = os.path.join(self.data, "serve.out")
        with open(out, "wb") as o, open(self.log, "wb") as e:
            self.proc = subprocess.Popen(
                [self.coppiced, "serve", "--listen", "127.0.0.1:0", "--data-dir", self.data,
                 "--log-level", "info", "--shutdown-grace", "2",
                 "--insecure-registry", self.registry],
                stdout=o, stderr=e, stdin=subprocess.DEVNULL, start_new_session=True)
        with open(self.pids_file, "a") as f:
            f.write(f"{self.proc.pid}\n")
        deadline = time.time() + 30
        while time.time() < deadline:
            m = re.search(r"^listening on port (\d+)$", open(out).read(), re.M)
            if m:
                self.port = int(m.group(1))
                return self
            if self.proc.poll() is not None:
                break
            time.sleep(0.01)
        raise RuntimeError(f"coppiced ({self.name}) did not start:\n" + self.tail())

    def tail(self, n=20):
        try:
            return "".join(open(self.log, errors="replace").readlines()[-n:])
        except OSError:
            return ""

    def import_lines(self):
        """Server-side durations of `imported ... in X ms` log lines, in order."""
        try:
            text = open(self.log, errors="replace").read()
        except OSError:
            return []
        return [float(x) for x in re.findall(r"imported .* in ([0-9.]+) ms", text)]

    def stop(self, remove=True):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
        if remove:
            unmount_under(self.data)
            shutil.rmtree(self.data, ignore_errors=True)

    # -- HTTP ------------------------------------------------------------------------------
    def conn(self):
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=IMPORT_TIMEOUT_S)

    def headers(self, extra=None):
        h = {"Authorization": "Bearer " + self.token}
        h.update(extra or {})
        return h

    def get_json(self, c, path):
        c.request("GET", path, headers=self.headers())
        r = c.getresponse()
        body = r.read()
        if r.status != 200:
            raise RuntimeError(f"GET {path}: {r.status} {body[:300]!r}")
        return json.loads(body)

    def import_image(self, url, tag):
        """(client ms, operation record) of one import: POST → SUCCESS seen by the client."""
        body = json.dumps({"registry": {"url": url}, "tag": tag}).encode()
        c = self.conn()
        try:
            t0 = time.perf_counter()
            c.request("POST", "/v1/images/import", body=body,
                      headers=self.headers({"Content-Type": "application/json"}))
            r = c.getresponse()
            rb = r.read()
            if r.status not in (200, 201, 202):
                raise RuntimeError(f"POST /v1/images/import: {r.status} {rb[:300]!r}")
            op = json.loads(rb)["uuid"]
            # Wait on the event stream (no polling interval to quantise the result) ...
            c.request("GET", f"/v1/operations/{op}/events?follow=1", headers=self.headers())
            r = c.getresponse()
            if r.status == 200:
                while True:
                    line = r.fp.readline()
                    if not line or line.startswith(b"event: completion"):
                        break
                # the rest of the stream is short; a fresh connection is simpler than draining
                c.close()
                c = self.conn()
            else:
                r.read()
            # ... then the operation record must say SUCCESS (poll briefly if not yet).
            deadline = time.time() + IMPORT_TIMEOUT_S
            while True:
                rec = self.get_json(c, f"/v1/operations/{op}")
                if rec.get("status") in ("SUCCESS", "FAILED", "CANCELLED"):
                    break
                if time.time() > deadline:
                    raise RuntimeError(f"import {op} did not finish: {rec}")
                time.sleep(0.002)
            ms = (time.perf_counter() - t0) * 1000
        finally:
            c.close()
        if rec.get("status") != "SUCCESS":
            raise RuntimeError(f"import of {url} {rec.get('status')}: {rec.get('error')}\n"
                               + self.tail())
        return ms, rec


def unmount_under(path):
    try:
        mounts = [l.split()[1] for l in open("/proc/mounts")]
    except OSError:
        return
    for m in sorted((m for m in mounts if m == path or m.startswith(path + "/")), reverse=True):
        subprocess.run(["umount", "-l", m], capture_output=True)


def proc_cpu(pid):
    """(user s, system s) used so far by process `pid` (all its threads)."""
    f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    tck = os.sysconf("SC_CLK_TCK")
    return int(f[11]) / tck, int(f[12]) / tck


def children_cpu():
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime, r.ru_stime


# ------------------------------------------------------------------------------------------
# stats

def stats(v):
    return statistics.median(v), min(v), max(v)


def fmt(v):
    if not v:
        return "n/a"
    p50, lo, hi = stats(v)
    return f"p50 {p50:8.1f} ms  (min {lo:7.1f}, max {hi:7.1f}, n={len(v)})"


def bench(a):
    work = a.work
    pids = os.path.join(work, "pids")
    src = f"docker://{a.registry}/{a.repo}:{a.tag}"
    servers = []
    res = {k: [] for k in ("cold", "cold_server", "cold_cpu_user", "cold_cpu_sys", "peer",
                           "peer_copy", "peer_unpack", "peer_cpu_user", "peer_cpu_sys", "warm",
                           "warm_server", "shared", "shared_server", "floor")}
    serial = iter(range(1_000_000))

    def new_server(name):
        s = Server(a.coppiced, os.path.join(work, f"data-{name}-{next(serial)}"), pids, name,
                   a.registry)
        servers.append(s)
        return s.start()

    def drop(s):
        s.stop()
        servers.remove(s)

    def check(rec, what, layers=None, reused=None, existing=None, min_fetched=None,
              max_fetched=None):
        md = rec.get("metadata") or {}
        bad = []
        if layers is not None and md.get("layers") != layers:
            bad.append(f"layers {md.get('layers')} != {layers}")
        if reused is not None and md.get("layers_reused") != reused:
            bad.append(f"layers_reused {md.get('layers_reused')} != {reused}")
        if existing is not None and md.get("existing_image") != existing:
            bad.append(f"existing_image {md.get('existing_image')} != {existing}")
        f = md.get("bytes_fetched", 0)
        if min_fetched is not None and f < min_fetched:
            bad.append(f"bytes_fetched {f} < {min_fetched}")
        if max_fetched is not None and f > max_fetched:
            bad.append(f"bytes_fetched {f} > {max_fetched}")
        if bad:
            raise RuntimeError(f"{what}: unexpected operation metadata ({'; '.join(bad)}): {md}")
        return md

    def ours_cold(timed=True):
        s = new_server("cold")
        try:
            subprocess.run(["sync"])  # earlier runs' dirty pages are not this run's to write
            c0 = proc_cpu(s.proc.pid)
            ms, rec = s.import_image(src, "debian:bookworm")
            c1 = proc_cpu(s.proc.pid)
            check(rec, "cold import", layers=1, reused=0, existing=False,
                  min_fetched=a.layer_size)
            srv = s.import_lines()
        finally:
            drop(s)
        usr, syst = c1[0] - c0[0], c1[1] - c0[1]
        if timed:
            res["cold"].append(ms)
            res["cold_cpu_user"].append(usr * 1000)
            res["cold_cpu_sys"].append(syst * 1000)
            if srv:
                res["cold_server"].append(srv[-1])
        print(f"  ours cold{'' if timed else ' (warm-up, untimed)'}     {ms:8.1f} ms   "
              f"(server log: imported in {srv[-1] if srv else float('nan'):.1f} ms; "
              f"coppiced cpu user {usr:.2f} s, sys {syst:.2f} s)", flush=True)
        return ms

    def floor(i):
        """Reference, not a contender: `tar -x` of the uncompressed rootfs tar (no network, no
        gzip, no digest) into a fresh directory: what creating these files costs right now."""
        d = os.path.join(work, f"floor-{i}")
        os.makedirs(d)
        try:
            subprocess.run(["sync"])
            c0 = children_cpu()
            t0 = time.perf_counter()
            r = subprocess.run(["tar", "--numeric-owner", "-xpf", a.rootfs_tar, "-C", d],
                               capture_output=True, text=True)
            ms = (time.perf_counter() - t0) * 1000
            c1 = children_cpu()
            if r.returncode != 0:
                raise RuntimeError(f"tar -x failed: {r.stderr.strip()}")
        finally:
            shutil.rmtree(d, ignore_errors=True)
        res["floor"].append(ms)
        print(f"  floor tar -x  {ms:8.1f} ms   (reference; cpu user {c1[0] - c0[0]:.2f} s, "
              f"sys {c1[1] - c0[1]:.2f} s)", flush=True)

    def peer(i, timed=True):
        d = os.path.join(work, f"peer-{i}")
        os.makedirs(d)
        try:
            subprocess.run(["sync"])
            c0 = children_cpu()
            t0 = time.perf_counter()
            r = subprocess.run(["skopeo", "copy", "--quiet", "--src-tls-verify=false", src,
                                f"oci:{d}/layout:latest"], capture_output=True, text=True)
            t1 = time.perf_counter()
            if r.returncode != 0:
                raise RuntimeError(f"skopeo copy failed: {r.stderr.strip()}")
            r = subprocess.run(["umoci", "unpack", "--image", f"{d}/layout:latest",
                                f"{d}/bundle"], capture_output=True, text=True)
            t2 = time.perf_counter()
            if r.returncode != 0:
                raise RuntimeError(f"umoci unpack failed: {r.stderr.strip()}")
            c1 = children_cpu()
            if not os.path.lexists(f"{d}/bundle/rootfs/etc/os-release"):
                raise RuntimeError("peer: the unpacked rootfs has no /etc/os-release")
        finally:
            shutil.rmtree(d, ignore_errors=True)
        copy_ms, unpack_ms = (t1 - t0) * 1000, (t2 - t1) * 1000
        usr, syst = c1[0] - c0[0], c1[1] - c0[1]
        if timed:
            res["peer"].append(copy_ms + unpack_ms)
            res["peer_copy"].append(copy_ms)
            res["peer_unpack"].append(unpack_ms)
            res["peer_cpu_user"].append(usr * 1000)
            res["peer_cpu_sys"].append(syst * 1000)
        print(f"  peer{'' if timed else ' (warm-up, untimed)'}          {copy_ms + unpack_ms:8.1f} ms"
              f"   (skopeo copy {copy_ms:.1f} + umoci unpack {unpack_ms:.1f}; "
              f"cpu user {usr:.2f} s, sys {syst:.2f} s)", flush=True)

    try:
        # The long-lived server for the warm imports; its first import is untimed.
        print(f"warm server: seeding with {src}", flush=True)
        warm = new_server("warm")
        ms, rec = warm.import_image(src, "debian:bookworm")
        check(rec, "seed import", layers=1, reused=0, existing=False)
        img = rec.get("result_image_uuid") or rec["metadata"]["result"]["image"]
        c = warm.conn()
        lst = warm.get_json(c, f"/v1/inspect/{img}/list?path=/etc")
        c.close()
        if "os-release" not in json.dumps(lst):
            raise RuntimeError(f"imported image {img}: /etc has no os-release: {lst}")
        print(f"  seed import {ms:.1f} ms (untimed); /etc/os-release present in image {img}")

        print("warm-up (untimed): one cold import, one peer run", flush=True)
        ours_cold(timed=False)
        peer("warmup", timed=False)

        for i in range(a.n):
            print(f"iteration {i + 1}/{a.n}", flush=True)
            if i % 2 == 0:
                ours_cold()
                peer(i)
            else:
                peer(i)
                ours_cold()
            if a.rootfs_tar:
                floor(i)
            n0 = len(warm.import_lines())
            ms, rec = warm.import_image(src, "debian:bookworm")
            check(rec, "warm re-import", layers=1, reused=1, existing=True, max_fetched=0)
            res["warm"].append(ms)
            srv = warm.import_lines()[n0:]
            if srv:
                res["warm_server"].append(srv[-1])
            print(f"  ours warm re-import      {ms:7.1f} ms", flush=True)
            n0 = len(warm.import_lines())
            ref = f"docker://{a.registry}/{a.repo}:{a.variant_prefix}{i + 1}"
            ms, rec = warm.import_image(ref, f"debian:{a.variant_prefix}{i + 1}")
            check(rec, "shared-layer import", layers=1, reused=1, existing=False, max_fetched=0)
            res["shared"].append(ms)
            srv = warm.import_lines()[n0:]
            if srv:
                res["shared_server"].append(srv[-1])
            print(f"  ours new tag, same layer {ms:7.1f} ms   (server log: imported in "
                  f"{srv[-1] if srv else float('nan'):.1f} ms)", flush=True)
    finally:
        for s in list(servers):
            s.stop()

    # ------------------------------------------------------------------------------------
    mb = a.layer_size / 1e6
    print()
    print(f"=== OCI import summary: {src}, 1 gzip layer of {mb:.1f} MB "
          f"({a.uncompressed / 1e6:.1f} MB uncompressed), n={a.n} each, interleaved")
    print(f"ours cold (POST → SUCCESS)         {fmt(res['cold'])}")
    print(f"  server-side (log 'imported in')  {fmt(res['cold_server'])}")
    print(f"  coppiced cpu user                {fmt(res['cold_cpu_user'])}")
    print(f"  coppiced cpu sys                 {fmt(res['cold_cpu_sys'])}")
    print(f"peer skopeo copy + umoci unpack    {fmt(res['peer'])}")
    print(f"  skopeo copy                      {fmt(res['peer_copy'])}")
    print(f"  umoci unpack                     {fmt(res['peer_unpack'])}")
    print(f"  skopeo+umoci cpu user            {fmt(res['peer_cpu_user'])}")
    print(f"  skopeo+umoci cpu sys             {fmt(res['peer_cpu_sys'])}")
    if res["floor"]:
        print(f"reference: tar -x of the plain tar {fmt(res['floor'])}")
    print(f"ours warm re-import (same ref)     {fmt(res['warm'])}")
    print(f"ours warm, new tag sharing layer   {fmt(res['shared'])}")
    print(f"  server-side (log 'imported in')  {fmt(res['shared_server'])}")
    cold50, peer50 = statistics.median(res["cold"]), statistics.median(res["peer"])
    ratio = cold50 / peer50
    speed = f"{1 / ratio:.2f}x faster" if ratio <= 1 else f"{ratio:.2f}x slower"
    verdict = "PASS" if ratio <= 1.0 else "MISS"
    print(f"cold ratio ours/peer (p50)         {ratio:.3f} ({speed})  target <= 1.0: {verdict}")
    print(f"  throughput ours {mb / (cold50 / 1000):.1f} MB/s compressed, "
          f"peer {mb / (peer50 / 1000):.1f} MB/s")
    warm50 = statistics.median(res["warm"])
    wv = "PASS" if warm50 < 100 else "MISS"
    print(f"warm re-import p50                 {warm50:.1f} ms  target < 100 ms: {wv}")
    for k, v in res.items():
        if v:
            p50, lo, hi = stats(v)
            print(f"RESULT oci_{k}_p50 {p50:.3f}")
            print(f"RESULT oci_{k}_min {lo:.3f}")
            print(f"RESULT oci_{k}_max {hi:.3f}")
    print(f"RESULT oci_cold_ratio {ratio:.4f}")
    print(f"RESULT oci_cold_verdict {verdict}")
    print(f"RESULT oci_warm_verdict {wv}")
    return 0


def main():
    if len(sys.argv) >= 2 and sys.argv[1] == "layout-info":
        layout_info(sys.argv[2], sys.argv[3])
        return 0
    import argparse
    p = argparse.ArgumentParser()
    p.add_argument("cmd", choices=["bench"])
    p.add_argument("--coppiced", required=True)
    p.add_argument("--registry", required=True)
    p.add_argument("--repo", required=True)
    p.add_argument("--tag", required=True)
    p.add_argument("--variant-prefix", required=True)
    p.add_argument("--n", type=int, default=5)
    p.add_argument("--work", required=True)
    p.add_argument("--layer-size", type=int, required=True)
    p.add_argument("--uncompressed", type=int, default=0)
    p.add_argument("--rootfs-tar", default="")
    a = p.parse_args()

    def on_term(signum, _frame):
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGHUP, on_term)
    try:
        return bench(a)
    except RuntimeError as e:
        print(f"oci_import.py: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
