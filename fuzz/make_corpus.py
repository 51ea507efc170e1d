#!/usr/bin/env python3
"""Writes the fuzz targets' seed corpora (fuzz/corpus/<target>/) and the regression inputs
that are built rather than found (fuzz/regressions/<target>/). Deterministic: running it again
gives the same bytes, so the committed files are its output. Needs python3 and zstd(1).

Tars are trimmed to their end-of-archive marker (no 10 KiB record padding) to stay small.
"""
import gzip
import io
import json
import os
import random
import subprocess
import sys
import tarfile

ROOT = os.path.dirname(os.path.abspath(__file__))
SEPARATOR = b"\n--coppice-fuzz-next-layer--\n"  # layer_unpack_fuzz.cc kSeparator


def write(kind, target, name, data):
    d = os.path.join(ROOT, kind, target)
    os.makedirs(d, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def tar(entries, fmt=tarfile.PAX_FORMAT):
    """entries: (name, kind, extra) with kind in file/dir/sym/hard/chr/blk/fifo."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as t:
        for name, kind, extra in entries:
            ti = tarfile.TarInfo(name)
            ti.mtime = 1700000000
            ti.uid = ti.gid = extra.get("uid", 0)
            ti.mode = extra.get("mode", 0o755 if kind == "dir" else 0o644)
            data = None
            if kind == "file":
                data = extra.get("data", b"")
                ti.size = extra.get("size", len(data))
            elif kind == "dir":
                ti.type = tarfile.DIRTYPE
            elif kind == "sym":
                ti.type, ti.linkname = tarfile.SYMTYPE, extra["to"]
            elif kind == "hard":
                ti.type, ti.linkname = tarfile.LNKTYPE, extra["to"]
                if "size" in extra:  # a hard link that carries data (pax allows it; libarchive
                    data = extra["data"]  # honours it only in a pax archive)
                    ti.size = len(data)
                    ti.pax_headers = {"comment": "hard link with data"}
            elif kind in ("chr", "blk"):
                ti.type = tarfile.CHRTYPE if kind == "chr" else tarfile.BLKTYPE
                ti.devmajor, ti.devminor = extra["dev"]
            elif kind == "fifo":
                ti.type = tarfile.FIFOTYPE
            if "xattrs" in extra:
                ti.pax_headers = {"SCHILY.xattr." + k: v for k, v in extra["xattrs"].items()}
            t.addfile(ti, io.BytesIO(data) if data is not None else None)
    raw = buf.getvalue()
    # Keep everything up to and including the two zero blocks that end the archive.
    end = len(raw)
    while end >= 512 and raw[end - 512:end] == b"\0" * 512:
        end -= 512
    return raw[:end] + b"\0" * 1024


def gz(data):
    return gzip.compress(data, compresslevel=9, mtime=0)


def zst(data):
    return subprocess.run(["zstd", "-q", "-19", "-c", "--no-check"], input=data,
                          stdout=subprocess.PIPE, check=True).stdout


def layer_unpack():
    t = "layer_unpack"
    base = tar([
        ("etc", "dir", {}),
        ("etc/passwd", "file", {"data": b"root:x:0:0::/root:/bin/sh\n"}),
        ("etc/shadow", "hard", {"to": "etc/passwd"}),
        ("bin", "sym", {"to": "usr/bin"}),
        ("usr/bin/tool", "file", {"data": b"#!/bin/sh\n", "mode": 0o4755, "uid": 1000}),
        ("run/fifo", "fifo", {}),
    ])
    write("corpus", t, "basic.tar", base)
    write("corpus", t, "basic.tar.gz", gz(base))
    wh = tar([
        ("./", "dir", {}),
        ("./.wh.gone", "file", {}),
        ("./etc/.wh..wh..opq", "file", {}),
        ("./etc/hostname", "file", {"data": b"coppice\n"}),
        ("./.wh..wh.plnk/", "dir", {}),
        ("./var/.wh.cache", "file", {}),
        ("./var/cache", "dir", {"mode": 0o700}),
    ])
    write("corpus", t, "whiteouts.tar", wh)
    write("corpus", t, "whiteouts.tar.zst", zst(wh))
    cap_v2 = (0x02000001).to_bytes(4, "little") + (1 << 10).to_bytes(4, "little") + bytes(12)
    xa = tar([
        ("bin", "dir", {}),
        ("bin/ping", "file", {"data": b"\x7fELF", "xattrs": {
            "security.capability": cap_v2.decode("latin-1"),
            "user.mime": "application/x-elf",
            "user.overlay.opaque": "y",
            "trusted.evil": "1"}}),
    ])
    write("corpus", t, "xattrs.tar", xa)
    write("corpus", t, "gnu_longname.tar", tar([
        ("d/" + "n" * 120 + "/" + "m" * 40, "file", {"data": b"x"}),
        ("l", "sym", {"to": "d/" + "n" * 120}),
    ], fmt=tarfile.GNU_FORMAT))
    # Two layers: the upper goes through a symlink the lower planted (refused).
    lower = tar([("a", "sym", {"to": "/target"}), ("d", "dir", {"mode": 0o1777})])
    upper = tar([("a/x", "file", {"data": b"x"}), ("d/.wh.y", "file", {}), ("d/z", "dir", {})])
    write("corpus", t, "two_layers.tar", lower + SEPARATOR + upper)
    # A hard link that carries data, to a fifo: libarchive would open the fifo to write it.
    write("corpus", t, "hardlink_data_to_fifo.tar", tar([
        ("f", "fifo", {}),
        ("g", "hard", {"to": "f", "size": 1, "data": b"x"}),
    ]))

    # Regressions (issue 12 items 1 and 2): these fail on 96d00f0.
    write("regressions", t, "item1_char_device.tar", tar([
        ("etc", "dir", {}), ("etc/app.conf", "chr", {"dev": (1, 7)})]))
    write("regressions", t, "item1_block_device.tar", tar([("disk", "blk", {"dev": (8, 0)})]))
    # The issue's sequence: the skipped .wh..wh.plnk fills the prefix cache for "a", so "a/x"
    # goes through the symlink unchecked. In the jail "/" is the jail's root, and ".." the
    # directory that holds the layer.
    for name, to in (("item2_plnk_escape_absolute.tar", "/"), ("item2_plnk_escape_relative.tar", "..")):
        write("regressions", t, name, tar([
            ("a/.wh..wh.plnk", "file", {}),
            ("a", "sym", {"to": to}),
            ("a/x/.wh.y", "file", {}),
        ]))



    # Accepted, but reading it back failed with a 500 (the host path exceeds PATH_MAX): fixed
    # in store/layer_view.cc (a 400).
    deep = "/".join(["d" * 200] * 20) + "/" + "e" * 60
    write("regressions", t, "deep_path_beyond_path_max.tar", tar([(deep + "/f", "file", {"data": b"x"})]))


def layer_view():
    # The target decodes bytes into layers and queries; random bytes are as good a seed as any,
    # a few sizes make the decoder start with 1, 2 or 3 layers.
    rng = random.Random(12)
    for i, n in enumerate((48, 96, 160, 256, 400)):
        write("corpus", "layer_view", f"random{i}", bytes(rng.randrange(256) for _ in range(n)))


def spawn_request():
    t = "spawn_request"
    bodies = {
        "minimal.json": {"command": "echo hi", "image": "tag:busybox", "shell": True},
        "full.json": {
            "command": "/bin/env", "image": "0b4e3f0a-2a4b-4a5e-9d6c-0123456789ab",
            "args": ["-i", "A=1"], "shell": False, "env": {"A": "1", "B": None},
            "preserve_env": False, "cwd": "/tmp//x/", "uid": 1000, "gid": 1000,
            "hostname": "box", "disposable": True, "timeout": 60, "truncate_output_at": 1024,
            "stdin": {"value": "aGVsbG8=", "encoding": "base64", "close": True},
            "files": {"/etc/app.conf": {"uuid": "6f1c1f8e-0c1e-4c43-8a2e-0123456789ab",
                                        "mode": "0o640", "uid": 1, "gid": 2}},
            "resources_limits": {"max_layer_bytes": 1048576, "memory_bytes": 67108864,
                                 "pids": 64, "cpus": 0.5},
            "networking": {"enabled": False}, "runtime": "gvisor"},
        "stdin_string.json": {"command": "cat", "image": "tag:x", "stdin": "abc",
                              "files": {"/a": {"uuid": "u", "mode": 420}}},
        "floats.json": {"command": "x", "image": "y", "timeout": 30.0, "uid": 0.0,
                        "resources_limits": {"cpus": 2}},
    }
    for name, body in bodies.items():
        write("corpus", t, name, json.dumps(body))


def import_request():
    t = "import_request"
    bodies = {
        "registry.json": {"registry": {"url": "docker.io/library/busybox:latest"},
                          "tag": "busybox:latest", "timeout": 120},
        "credentials.json": {"registry": {"url": "oci://127.0.0.1:5000/team/app@sha256:" + "ab" * 32,
                                          "credentials": {"username": "u", "password": "secret"}},
                             "platform": "linux/arm64/v8", "timeout": 0.6},
        "archive.json": {"archive": {"file": "6f1c1f8e-0c1e-4c43-8a2e-0123456789ab"},
                         "tag": "mine/app:1"},
    }
    for name, body in bodies.items():
        write("corpus", t, name, json.dumps(body))
    write("corpus", t, "ref_port_tag", "localhost:5000/a__b/c-d.e:v1.2")
    write("corpus", t, "ref_ipv6", "docker://[::1]:5000/x/y:latest")


def manifest():
    t = "manifest"
    d1, d2 = "sha256:" + "1" * 64, "sha256:" + "2" * 64
    docs = {
        "oci_manifest.json": {"schemaVersion": 2,
                              "mediaType": "application/vnd.oci.image.manifest.v1+json",
                              "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                                         "digest": d1, "size": 100},
                              "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+zstd",
                                          "digest": d2, "size": 7}]},
        "docker_manifest.json": {"schemaVersion": 2,
                                 "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
                                 "config": {"digest": d1, "size": 1},
                                 "layers": [{"mediaType":
                                             "application/vnd.docker.image.rootfs.diff.tar.gzip",
                                             "digest": d2, "size": 0}]},
        "index.json": {"schemaVersion": 2, "manifests": [
            {"digest": d1, "size": 10, "platform": {"os": "linux", "architecture": "amd64"}},
            {"digest": d2, "size": 10, "platform": {"os": "linux", "architecture": "arm64",
                                                    "variant": "v8"}},
            {"digest": d2, "size": 10, "platform": {"os": "linux", "architecture": "arm",
                                                    "variant": "v7"}}]},
        "config.json": {"architecture": "amd64", "os": "linux",
                        "config": {"Env": ["PATH=/bin", "=x", "NOEQ"], "WorkingDir": "/app",
                                   "User": "1000:1000", "Entrypoint": ["/init"], "Cmd": None},
                        "rootfs": {"type": "layers", "diff_ids": [d2]}},
    }
    for name, body in docs.items():
        write("corpus", t, name, json.dumps(body))
    write("corpus", t, "platform", "#linux/arm64/v8\n{}")


def sse_parser():
    t = "sse_parser"
    write("corpus", t, "events", "event: progress\ndata: {\"a\":1}\nid: 7\n\n: keepalive\n\n"
          "data: one\ndata: two\n\n")
    write("corpus", t, "crlf_chunks", b"\x03\x01\x05\x00" + b"event: x\r\ndata:y\r\n\r\nid\r\n"
          b"data\r\n\r\n")
    write("corpus", t, "partial", b"\x01\x00data: no end")


def main():
    for f in (layer_unpack, layer_view, spawn_request, import_request, manifest, sse_parser):
        f()
    return 0


if __name__ == "__main__":
    sys.exit(main())
