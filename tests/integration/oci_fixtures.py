"""OCI helpers and fixtures for the image import/export/push tests (standard library + pytest).

What is here:
* `Registry`: Debian's `docker-registry` (CNCF distribution 2.8) on loopback, plain http,
  filesystem storage under /var/tmp; optional htpasswd auth. Fixtures `registry`, `auth_registry`.
* `TokenProxy`: a Docker bearer-token front (ThreadingHTTPServer) before a `Registry`, with a
  token endpoint, request log, blob redirects to a `/storage/...` URL and a delay knob.
  Fixture `token_registry`.
* Builders with real tools: `build_rootfs_busybox`, `build_layout` / `push_layers` (umoci +
  skopeo), and raw Registry HTTP API helpers (`push_blob`, `push_manifest`, `push_image`,
  `push_index`) for what the tools will not make: opaque whiteouts, hostile tars, indexes.
* Archives: `make_oci_archive`, `make_docker_save_tar`; readers `unpack_image`,
  `unpack_oci_archive`, `dir_tree`, `image_tree` (a Coppice image over the inspect API).
* `build_catalog` + session fixture `oci_images`: every shared test image, built once.
* `FakeHttp`: a scripted HTTP server on any 127.0.0.x address that counts the connections it
  accepts (to prove a refused connection never happened).

`/usr/bin/python3 tests/integration/oci_fixtures.py` runs a standalone self-check (no coppiced).
"""
import base64
import gzip
import hashlib
import http.client
import http.server
import io
import json
import os
import re
import secrets
import shutil
import socket
import stat
import subprocess
import tarfile
import tempfile
import threading
import time
import types
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field

import pytest

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
OCI_LAYER_GZIP = OCI_LAYER + "+gzip"
OCI_LAYER_ZSTD = OCI_LAYER + "+zstd"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
MANIFEST_ACCEPT = ", ".join([OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_LIST])

FIXED_MTIME = 1700000000  # hand-made tar entries are reproducible
TMP_BASE = "/var/tmp"

BUSYBOX_APPLETS = ["sh", "ls", "cat", "echo", "true", "false", "pwd", "env", "id", "mkdir", "rm",
                   "stat", "sleep", "test", "[", "wc", "head", "sha256sum", "readlink", "printf",
                   "touch", "ln", "chmod", "chown", "uname", "grep", "find", "cp", "mv", "sort",
                   "tr", "cut", "od", "tail", "find", "xargs", "basename", "dirname", "date"]


# ------------------------------------------------------------------------------------------
# small utilities

def which(name):
    return shutil.which(name) or (f"/usr/bin/{name}" if os.path.exists(f"/usr/bin/{name}")
                                  else None)


def need_tools(*names):
    """pytest.skip unless every tool binary exists."""
    missing = [n for n in names if not which(n)]
    if missing:
        pytest.skip("missing tool(s): " + ", ".join(missing))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def digest_of(data):
    return "sha256:" + hashlib.sha256(data).hexdigest()


def sh(*cmd, **kw):
    """Runs a command, raising with its stderr on failure; returns stdout (text)."""
    r = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, **kw)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, cmd))} exited {r.returncode}:\n{r.stdout}"
                           f"{r.stderr}")
    return r.stdout


def tempdir(prefix):
    return tempfile.mkdtemp(prefix=prefix, dir=TMP_BASE)


def compress(data, compression):
    """(blob, media type) of an uncompressed tar for 'gzip', 'zstd' or 'none'."""
    if compression == "gzip":
        return gzip.compress(data, mtime=0), OCI_LAYER_GZIP
    if compression == "zstd":
        r = subprocess.run([which("zstd") or "zstd", "-q", "-c", "-3"], input=data,
                           capture_output=True, check=True)
        return r.stdout, OCI_LAYER_ZSTD
    if compression == "none":
        return data, OCI_LAYER
    raise ValueError(compression)


def decompress(blob, media_type=""):
    if blob[:2] == b"\x1f\x8b":
        return gzip.decompress(blob)
    if blob[:4] == b"\x28\xb5\x2f\xfd":
        r = subprocess.run([which("zstd") or "zstd", "-q", "-d", "-c"], input=blob,
                           capture_output=True, check=True)
        return r.stdout
    return blob


def tar_names(blob):
    """Member names of a (possibly compressed) layer blob."""
    with tarfile.open(fileobj=io.BytesIO(decompress(blob))) as t:
        return t.getnames()


# ------------------------------------------------------------------------------------------
# the registry

class Registry:
    """CNCF distribution 2.8 (`docker-registry serve`) on 127.0.0.1, plain http."""

    def __init__(self, auth=False, username="user", password="secret"):
        self.dir = tempdir("coppice-oci-registry-")
        self.root = os.path.join(self.dir, "storage")
        self.username = username if auth else None
        self.password = password if auth else None
        self.port = None
        self.proc = None

    @property
    def host(self):
        return f"127.0.0.1:{self.port}"

    @property
    def url(self):
        return f"http://{self.host}"

    def ref(self, repo, tag_or_digest, scheme="docker://"):
        sep = "@" if tag_or_digest.startswith("sha256:") else ":"
        return f"{scheme}{self.host}/{repo}{sep}{tag_or_digest}"

    def auth_header(self):
        if not self.username:
            return {}
        tok = base64.b64encode(f"{self.username}:{self.password}".encode()).decode()
        return {"Authorization": "Basic " + tok}

    def _config(self):
        lines = ["version: 0.1",
                 "log:", "  level: error", "  accesslog:", "    disabled: true",
                 "storage:", "  filesystem:", f"    rootdirectory: {self.root}",
                 "  delete:", "    enabled: true",
                 "  maintenance:", "    uploadpurging:", "      enabled: false",
                 "http:", f"  addr: {self.host}", f"  secret: {secrets.token_hex(16)}"]
        if self.username:
            htpasswd = os.path.join(self.dir, "htpasswd")
            with open(htpasswd, "w") as f:
                f.write(sh(which("htpasswd") or "htpasswd", "-Bbn", self.username,
                           self.password))
            lines += ["auth:", "  htpasswd:", "    realm: coppice-test",
                      f"    path: {htpasswd}"]
        return "\n".join(lines) + "\n"

    def start(self):
        for _ in range(5):  # the port is picked before the registry binds it: retry on a race
            self.port = free_port()
            cfg = os.path.join(self.dir, "config.yml")
            with open(cfg, "w") as f:
                f.write(self._config())
            log = open(os.path.join(self.dir, "registry.log"), "ab")
            self.proc = subprocess.Popen([which("docker-registry"), "serve", cfg],
                                         stdout=log, stderr=subprocess.STDOUT)
            log.close()
            deadline = time.time() + 15
            while time.time() < deadline and self.proc.poll() is None:
                try:
                    st, _, _ = request(self, "GET", "/v2/", timeout=2)
                    if st == 200:
                        return self
                except OSError:
                    pass
                time.sleep(0.05)
            self._kill()
        raise RuntimeError("docker-registry did not start; see " + self.dir + "/registry.log")

    def _kill(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def stop(self, keep=False):
        self._kill()
        if not keep:
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    def blob_path(self, digest):
        algo, hexd = digest.split(":", 1)
        return os.path.join(self.root, "docker/registry/v2/blobs", algo, hexd[:2], hexd, "data")

    def corrupt_blob(self, digest, offset=None):
        """Flips one byte of a stored blob (same size, so Content-Length still matches)."""
        p = self.blob_path(digest)
        size = os.path.getsize(p)
        off = size // 2 if offset is None else offset
        with open(p, "r+b") as f:
            f.seek(off)
            b = f.read(1)
            f.seek(off)
            f.write(bytes([b[0] ^ 0xFF]))
        return p


# ------------------------------------------------------------------------------------------
# raw Registry HTTP API (urllib)

class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *a, **kw):
        return None


_opener = urllib.request.build_opener(_NoRedirect)


def request(reg, method, path_or_url, body=None, headers=None, timeout=30):
    """(status, headers (lower-case keys), body) of one request to a Registry or TokenProxy."""
    url = path_or_url if "://" in path_or_url else reg.url + path_or_url
    h = dict(reg.auth_header()) if hasattr(reg, "auth_header") else {}
    h.update(headers or {})
    req = urllib.request.Request(url, data=body, headers=h, method=method)
    try:
        with _opener.open(req, timeout=timeout) as r:
            return r.status, {k.lower(): v for k, v in r.headers.items()}, r.read()
    except urllib.error.HTTPError as e:
        return e.code, {k.lower(): v for k, v in e.headers.items()}, e.read()


def blob_exists(reg, repo, digest):
    return request(reg, "HEAD", f"/v2/{repo}/blobs/{digest}")[0] == 200


def push_blob(reg, repo, data, mount_from=None):
    """Monolithic upload (POST /blobs/uploads/ then PUT ?digest=); returns the digest."""
    d = digest_of(data)
    if blob_exists(reg, repo, d):
        return d
    q = f"?mount={d}&from={mount_from}" if mount_from else ""
    st, h, body = request(reg, "POST", f"/v2/{repo}/blobs/uploads/{q}",
                          headers={"Content-Length": "0"})
    if st == 201:  # mounted from another repository
        return d
    assert st == 202, (st, body)
    loc = urllib.parse.urljoin(reg.url + "/", h["location"])
    loc += ("&" if "?" in loc else "?") + "digest=" + urllib.parse.quote(d)
    st, h, body = request(reg, "PUT", loc, body=data,
                          headers={"Content-Type": "application/octet-stream"})
    assert st == 201, (st, body)
    return d


def push_manifest(reg, repo, ref, manifest, media_type=OCI_MANIFEST):
    """PUT /v2/<repo>/manifests/<ref>; `manifest` is a dict or the exact bytes; returns digest."""
    body = manifest if isinstance(manifest, bytes) else json.dumps(manifest, indent=2).encode()
    st, h, resp = request(reg, "PUT", f"/v2/{repo}/manifests/{ref}", body=body,
                          headers={"Content-Type": media_type})
    assert st == 201, (st, resp)
    d = digest_of(body)
    assert h.get("docker-content-digest", d) == d
    return d


def get_manifest(reg, repo, ref):
    """(bytes, media type, digest) of a manifest or index."""
    st, h, body = request(reg, "GET", f"/v2/{repo}/manifests/{ref}",
                          headers={"Accept": MANIFEST_ACCEPT})
    assert st == 200, (st, body)
    return body, h["content-type"], digest_of(body)


def get_blob(reg, repo, digest):
    st, _, body = request(reg, "GET", f"/v2/{repo}/blobs/{digest}")
    assert st == 200, (st, digest)
    return body


def image_config(diff_ids, arch="amd64", os_name="linux", config=None, variant=None):
    c = {"created": "2024-01-01T00:00:00Z", "architecture": arch, "os": os_name,
         "config": dict(config or {}),
         "rootfs": {"type": "layers", "diff_ids": list(diff_ids)},
         "history": [{"created": "2024-01-01T00:00:00Z", "created_by": "coppice test"}
                     for _ in diff_ids]}
    if variant:
        c["variant"] = variant
    return c


@dataclass
class Layer:
    """A layer ready to push: the blob as stored, its media type and its diff id."""
    blob: bytes
    media_type: str
    diff_id: str

    @classmethod
    def from_tar(cls, tar_bytes, compression="gzip"):
        blob, mt = compress(tar_bytes, compression)
        return cls(blob, mt, digest_of(tar_bytes))


def push_image(reg, repo, tag, layers, config=None, compression="gzip", arch="amd64",
               os_name="linux", docker=False, variant=None):
    """Pushes an image by hand. `layers`: uncompressed tar bytes or `Layer`s. `config`: the
    `config` part of the image config (Env, WorkingDir, ...). Returns the manifest digest."""
    ls = [l if isinstance(l, Layer) else Layer.from_tar(l, compression) for l in layers]
    for l in ls:
        push_blob(reg, repo, l.blob)
    cfg = json.dumps(image_config([l.diff_id for l in ls], arch, os_name, config, variant),
                     indent=2).encode()
    push_blob(reg, repo, cfg)
    if docker:
        mt = {OCI_LAYER_GZIP: DOCKER_LAYER_GZIP,
              OCI_LAYER: "application/vnd.docker.image.rootfs.diff.tar"}
        manifest = {"schemaVersion": 2, "mediaType": DOCKER_MANIFEST,
                    "config": {"mediaType": DOCKER_CONFIG, "digest": digest_of(cfg),
                               "size": len(cfg)},
                    "layers": [{"mediaType": mt[l.media_type], "digest": digest_of(l.blob),
                                "size": len(l.blob)} for l in ls]}
        return push_manifest(reg, repo, tag, manifest, DOCKER_MANIFEST)
    manifest = {"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                "config": {"mediaType": OCI_CONFIG, "digest": digest_of(cfg), "size": len(cfg)},
                "layers": [{"mediaType": l.media_type, "digest": digest_of(l.blob),
                            "size": len(l.blob)} for l in ls]}
    return push_manifest(reg, repo, tag, manifest, OCI_MANIFEST)


def push_index(reg, repo, tag, children, docker=False):
    """Pushes an OCI index (or a Docker manifest list with docker=True) over manifests already
    in `repo`. `children`: [(manifest digest, {"architecture":..., "os":..., "variant"?:...})]."""
    entries = []
    for d, platform in children:
        body, mt, _ = get_manifest(reg, repo, d)
        entries.append({"mediaType": mt.split(";")[0].strip(), "digest": d, "size": len(body),
                        "platform": dict(platform)})
    mt = DOCKER_LIST if docker else OCI_INDEX
    return push_manifest(reg, repo, tag, {"schemaVersion": 2, "mediaType": mt,
                                          "manifests": entries}, mt)


def layers_of(reg, repo, ref):
    """The layer descriptors of a (single-platform) manifest."""
    body, _, _ = get_manifest(reg, repo, ref)
    return json.loads(body)["layers"]


# ------------------------------------------------------------------------------------------
# filesystem specs, used both for umoci steps (applied to a rootfs) and hand-made layer tars

@dataclass
class File:
    data: object = b""
    mode: int = 0o644
    uid: int = 0
    gid: int = 0

    @property
    def bytes(self):
        return self.data.encode() if isinstance(self.data, str) else bytes(self.data)


@dataclass
class Dir:
    mode: int = 0o755
    uid: int = 0
    gid: int = 0


@dataclass
class Symlink:
    target: str
    uid: int = 0
    gid: int = 0


@dataclass
class Hardlink:
    target: str  # a path in the image, e.g. "/data/keep"


@dataclass
class Fifo:
    mode: int = 0o644


@dataclass
class ReplaceDir:
    """In an umoci step: delete the directory and recreate it with `children` ({name: spec})."""
    children: dict = field(default_factory=dict)
    mode: int = 0o755


class Whiteout:
    """In a hand-made layer: `dir/.wh.name` for the key `/dir/name`."""


class Opaque:
    """In a hand-made layer: `dir/.wh..wh..opq` for the key `/dir`."""


@dataclass
class Raw:
    """A verbatim tar header (hostile layers): the key is used as the member name untouched."""
    type: bytes = tarfile.REGTYPE
    data: bytes = b""
    linkname: str = ""
    mode: int = 0o644


def _as_spec(v):
    return File(v) if isinstance(v, (bytes, str)) else v


def apply_step(rootfs, step):
    """Applies one umoci step to an unpacked rootfs: a callable(rootfs) or {path: spec}.
    spec: bytes/str/File → regular file; None → delete (rm -rf); Dir; Symlink; Hardlink;
    Fifo; ReplaceDir({name: spec})."""
    if callable(step):
        step(rootfs)
        return
    for path, spec in step.items():
        p = os.path.join(rootfs, path.lstrip("/"))
        spec = _as_spec(spec)
        if spec is None or isinstance(spec, ReplaceDir):
            if os.path.isdir(p) and not os.path.islink(p):
                shutil.rmtree(p)
            elif os.path.lexists(p):
                os.unlink(p)
            if spec is None:
                continue
            os.makedirs(p)
            os.chmod(p, spec.mode)
            apply_step(rootfs, {path.rstrip("/") + "/" + k: v for k, v in spec.children.items()})
            continue
        os.makedirs(os.path.dirname(p), exist_ok=True)
        if isinstance(spec, Dir):
            os.makedirs(p, exist_ok=True)
            os.chown(p, spec.uid, spec.gid)
            os.chmod(p, spec.mode)
            continue
        if os.path.lexists(p) and not os.path.isdir(p):
            os.unlink(p)
        if isinstance(spec, File):
            with open(p, "wb") as f:
                f.write(spec.bytes)
            os.chown(p, spec.uid, spec.gid)
            os.chmod(p, spec.mode)  # after chown, which clears set-id bits
        elif isinstance(spec, Symlink):
            os.symlink(spec.target, p)
            os.lchown(p, spec.uid, spec.gid)
        elif isinstance(spec, Hardlink):
            os.link(os.path.join(rootfs, spec.target.lstrip("/")), p)
        elif isinstance(spec, Fifo):
            os.mkfifo(p)
            os.chmod(p, spec.mode)
        else:
            raise TypeError(spec)


def layer_tar(entries, parents=True):
    """An uncompressed layer tar from {path: spec} (or a list of pairs), in that order.
    Missing parent directories are added (0755 root) unless parents=False."""
    items = list(entries.items()) if isinstance(entries, dict) else list(entries)
    buf = io.BytesIO()
    seen = set()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as t:
        def add(ti, data=None):
            ti.mtime = FIXED_MTIME
            t.addfile(ti, io.BytesIO(data) if data is not None else None)

        def ensure_parents(name):
            parts = name.split("/")[:-1]
            for i in range(1, len(parts) + 1):
                d = "/".join(parts[:i])
                if d and d not in seen:
                    seen.add(d)
                    ti = tarfile.TarInfo(d)
                    ti.type, ti.mode = tarfile.DIRTYPE, 0o755
                    add(ti)

        for path, spec in items:
            spec = _as_spec(spec)
            if isinstance(spec, Raw):
                ti = tarfile.TarInfo(path)
                ti.type, ti.mode, ti.linkname = spec.type, spec.mode, spec.linkname
                ti.size = len(spec.data) if spec.type == tarfile.REGTYPE else 0
                add(ti, spec.data if spec.type == tarfile.REGTYPE else None)
                continue
            name = path.strip("/")
            if spec is Whiteout or isinstance(spec, Whiteout):
                d, _, base = name.rpartition("/")
                name = (d + "/" if d else "") + ".wh." + base
                spec = File(b"", 0o644)
            elif spec is Opaque or isinstance(spec, Opaque):
                if parents:
                    ensure_parents(name + "/x")
                name = name + "/.wh..wh..opq"
                spec = File(b"", 0o644)
            if parents:
                ensure_parents(name)
            ti = tarfile.TarInfo(name)
            if isinstance(spec, File):
                data = spec.bytes
                ti.type, ti.mode, ti.uid, ti.gid, ti.size = (tarfile.REGTYPE, spec.mode,
                                                             spec.uid, spec.gid, len(data))
                add(ti, data)
                continue
            if isinstance(spec, Dir):
                seen.add(name)
                ti.type, ti.mode, ti.uid, ti.gid = tarfile.DIRTYPE, spec.mode, spec.uid, spec.gid
            elif isinstance(spec, Symlink):
                ti.type, ti.mode, ti.linkname = tarfile.SYMTYPE, 0o777, spec.target
                ti.uid, ti.gid = spec.uid, spec.gid
            elif isinstance(spec, Hardlink):
                ti.type, ti.linkname = tarfile.LNKTYPE, spec.target.strip("/")
            elif isinstance(spec, Fifo):
                ti.type, ti.mode = tarfile.FIFOTYPE, spec.mode
            else:
                raise TypeError(spec)
            add(ti)
    return buf.getvalue()


def hostile_layer(kind, marker):
    """An uncompressed layer tar that tries to write outside the rootfs. `marker` is a unique
    file name the test can look for on the host afterwards."""
    if kind == "dotdot":
        return layer_tar([(f"../../../../../../../tmp/{marker}", Raw(data=b"evil\n")),
                          (f"../{marker}", Raw(data=b"evil\n"))], parents=False)
    if kind == "absolute":
        return layer_tar([(f"/tmp/{marker}", Raw(data=b"evil\n"))], parents=False)
    if kind == "symlink":
        return layer_tar([("link", Raw(type=tarfile.SYMTYPE, linkname="/", mode=0o777)),
                          (f"link/tmp/{marker}", Raw(data=b"evil\n"))], parents=False)
    if kind == "symlink-dotdot":
        return layer_tar([("up", Raw(type=tarfile.SYMTYPE, linkname="../../../../../../..",
                                     mode=0o777)),
                          (f"up/tmp/{marker}", Raw(data=b"evil\n"))], parents=False)
    if kind == "hardlink":
        return layer_tar([(marker, Raw(type=tarfile.LNKTYPE,
                                       linkname="../../../../../../../etc/passwd"))],
                         parents=False)
    raise ValueError(kind)


HOSTILE_KINDS = ["dotdot", "absolute", "symlink", "symlink-dotdot", "hardlink"]


# ------------------------------------------------------------------------------------------
# images with real tools: busybox rootfs, umoci layouts, skopeo pushes

def build_rootfs_busybox(d):
    """A tiny runnable rootfs: Debian's static /bin/busybox plus applet symlinks."""
    for sub in ("bin", "etc", "proc", "dev", "sys", "tmp", "root", "var/tmp"):
        os.makedirs(os.path.join(d, sub), exist_ok=True)
    os.chmod(os.path.join(d, "tmp"), 0o1777)
    os.chmod(os.path.join(d, "var/tmp"), 0o1777)
    os.chmod(os.path.join(d, "root"), 0o700)
    shutil.copy("/bin/busybox", os.path.join(d, "bin/busybox"))
    os.chmod(os.path.join(d, "bin/busybox"), 0o755)
    for a in BUSYBOX_APPLETS:
        p = os.path.join(d, "bin", a)
        if not os.path.lexists(p):
            os.symlink("busybox", p)
    with open(os.path.join(d, "etc/passwd"), "w") as f:
        f.write("root:x:0:0:root:/root:/bin/sh\nuser:x:1000:1000::/home/u:/bin/sh\n")
    with open(os.path.join(d, "etc/group"), "w") as f:
        f.write("root:x:0:\nuser:x:1000:\n")
    return d


def umoci_config_args(config):
    """umoci config flags from {"env": {K: V} | ["K=V"], "workingdir", "entrypoint": [...],
    "cmd": [...], "user", "labels": {}, "architecture", "os"}."""
    args = []
    env = config.get("env") or {}
    for kv in (env if isinstance(env, list) else [f"{k}={v}" for k, v in env.items()]):
        args += ["--config.env", kv]
    if "workingdir" in config:
        args += ["--config.workingdir", config["workingdir"]]
    for e in config.get("entrypoint") or []:
        args += ["--config.entrypoint", e]
    for c in config.get("cmd") or []:
        args += ["--config.cmd", c]
    if "user" in config:
        args += ["--config.user", config["user"]]
    for k, v in (config.get("labels") or {}).items():
        args += ["--config.label", f"{k}={v}"]
    if "architecture" in config:
        args += ["--architecture", config["architecture"]]
    if "os" in config:
        args += ["--os", config["os"]]
    return args


def build_layout(layout, tag, steps, config=None, base=None):
    """An OCI layout at `layout` holding exactly one tag, built with umoci: one layer per step
    (see apply_step) on top of `base` = (layout dir, tag) if given, then `config`."""
    umoci = which("umoci")
    if base:
        shutil.copytree(base[0], layout)
        src = base[1]
    else:
        sh(umoci, "init", "--layout", layout)
        sh(umoci, "new", "--image", f"{layout}:{tag}")
        src = tag
    work = tempdir("coppice-oci-bundle-")
    try:
        if steps:
            bundle = os.path.join(work, "bundle")
            sh(umoci, "unpack", "--image", f"{layout}:{src}", bundle)
            for step in steps:
                apply_step(os.path.join(bundle, "rootfs"), step)
                sh(umoci, "repack", "--refresh-bundle", "--image", f"{layout}:{tag}", bundle)
        elif src != tag:
            sh(umoci, "tag", "--image", f"{layout}:{src}", tag)
        if config:
            sh(umoci, "config", "--image", f"{layout}:{tag}", *umoci_config_args(config))
        for t in sh(umoci, "ls", "--layout", layout).split():
            if t != tag:
                sh(umoci, "rm", "--image", f"{layout}:{t}")
        sh(umoci, "gc", "--layout", layout)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return layout


def layout_manifest(layout, tag=None):
    """(manifest dict, config dict, manifest digest) of a layout's tag (or its only image)."""
    idx = json.load(open(os.path.join(layout, "index.json")))
    ms = [m for m in idx["manifests"]
          if tag is None or m.get("annotations", {}).get("org.opencontainers.image.ref.name")
          == tag]
    assert len(ms) == 1, idx
    m = json.loads(layout_blob(layout, ms[0]["digest"]))
    return m, json.loads(layout_blob(layout, m["config"]["digest"])), ms[0]["digest"]


def layout_blob(layout, digest):
    algo, hexd = digest.split(":", 1)
    with open(os.path.join(layout, "blobs", algo, hexd), "rb") as f:
        return f.read()


def layout_layer_tars(layout, tag=None):
    """The uncompressed tar bytes of each layer of a layout's image, bottom first."""
    m, _, _ = layout_manifest(layout, tag)
    return [decompress(layout_blob(layout, l["digest"])) for l in m["layers"]]


def push_layout(reg, layout, tag, repo, dest_tag, compression="gzip", docker_format=False):
    """Pushes a layout's image. gzip: `skopeo copy oci:… docker://…` (v2s2 with
    docker_format); zstd/none: layers re-encoded and pushed by hand. Returns the digest."""
    if compression == "gzip":
        work = tempdir("coppice-oci-push-")
        try:
            df = os.path.join(work, "digest")
            cmd = [which("skopeo"), "--insecure-policy", "copy", "--quiet",
                   "--dest-tls-verify=false", "--digestfile", df]
            if reg.username:
                cmd += ["--dest-creds", f"{reg.username}:{reg.password}"]
            if docker_format:
                cmd += ["--format", "v2s2"]
            sh(*cmd, f"oci:{layout}:{tag}", f"docker://{reg.host}/{repo}:{dest_tag}")
            return open(df).read().strip()
        finally:
            shutil.rmtree(work, ignore_errors=True)
    m, cfg, _ = layout_manifest(layout, tag)
    layers = [Layer.from_tar(t, compression) for t in layout_layer_tars(layout, tag)]
    assert [l.diff_id for l in layers] == cfg["rootfs"]["diff_ids"]
    for l in layers:
        push_blob(reg, repo, l.blob)
    cfg_bytes = layout_blob(layout, m["config"]["digest"])
    push_blob(reg, repo, cfg_bytes)
    manifest = {"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": m["config"],
                "layers": [{"mediaType": l.media_type, "digest": digest_of(l.blob),
                            "size": len(l.blob)} for l in layers]}
    return push_manifest(reg, repo, dest_tag, manifest, OCI_MANIFEST)


def push_layers(reg, repo, tag, layers, config=None, compression="gzip", base=None,
                layout=None):
    """Builds an image with umoci (one layer per step in `layers`, see apply_step; on top of
    `base` = (layout, tag) if given) and pushes it as repo:tag. Returns the manifest digest.
    The layout is kept at `layout` if given (else built in a temporary directory)."""
    keep = layout is not None
    work = None if keep else tempdir("coppice-oci-layout-")
    layout = layout or os.path.join(work, "layout")
    try:
        build_layout(layout, tag, layers, config, base)
        return push_layout(reg, layout, tag, repo, tag, compression)
    finally:
        if work:
            shutil.rmtree(work, ignore_errors=True)


# ------------------------------------------------------------------------------------------
# archives

def make_oci_archive(layout, out):
    """The layout tarred (the `oci-archive:` format): oci-layout, index.json, blobs/…"""
    with tarfile.open(out, "w") as t:
        for name in ("oci-layout", "index.json"):
            t.add(os.path.join(layout, name), arcname=name)
        t.add(os.path.join(layout, "blobs"), arcname="blobs")
    return out


def make_docker_save_tar(layout, out, repo_tag="coppice/app:1", tag=None):
    """A `docker save` tar built by hand from a layout's image: manifest.json,
    <config hex>.json, <layer id>/layer.tar (+ VERSION, json), repositories."""
    m, cfg, _ = layout_manifest(layout, tag)
    cfg_bytes = layout_blob(layout, m["config"]["digest"])
    cfg_name = m["config"]["digest"].split(":", 1)[1] + ".json"
    ids, parent = [], None
    members = []
    for diff_id, tar_bytes in zip(cfg["rootfs"]["diff_ids"], layout_layer_tars(layout, tag)):
        lid = hashlib.sha256(f"{parent}:{diff_id}".encode()).hexdigest()
        legacy = {"id": lid, "created": "2024-01-01T00:00:00Z"}
        if parent:
            legacy["parent"] = parent
        members += [(f"{lid}/", None), (f"{lid}/VERSION", b"1.0"),
                    (f"{lid}/json", json.dumps(legacy).encode()),
                    (f"{lid}/layer.tar", tar_bytes)]
        ids.append(lid)
        parent = lid
    name, _, tg = repo_tag.rpartition(":")
    manifest = [{"Config": cfg_name, "RepoTags": [repo_tag],
                 "Layers": [f"{i}/layer.tar" for i in ids]}]
    members += [(cfg_name, cfg_bytes), ("manifest.json", json.dumps(manifest).encode()),
                ("repositories", json.dumps({name: {tg: ids[-1]}}).encode())]
    with tarfile.open(out, "w") as t:
        for name_, data in members:
            ti = tarfile.TarInfo(name_.rstrip("/"))
            ti.mtime = FIXED_MTIME
            if data is None:
                ti.type, ti.mode = tarfile.DIRTYPE, 0o755
                t.addfile(ti)
            else:
                ti.size, ti.mode = len(data), 0o644
                t.addfile(ti, io.BytesIO(data))
    return out


# ------------------------------------------------------------------------------------------
# reading images back: skopeo + umoci unpack, and normalised trees

def unpack_image(src, dest, tls_verify=False, creds=None, arch=None):
    """Copies `src` (a skopeo reference: docker://…, oci-archive:…, oci:DIR:tag) into an OCI
    layout and unpacks it with umoci. Returns the rootfs path."""
    layout, bundle = os.path.join(dest, "layout"), os.path.join(dest, "bundle")
    os.makedirs(dest, exist_ok=True)
    cmd = [which("skopeo"), "--insecure-policy"]
    if arch:
        cmd += ["--override-arch", arch]
    cmd += ["copy", "--quiet", "--dest-compress-format", "gzip"]  # umoci 0.4 cannot read zstd
    if src.startswith("docker://"):
        cmd += [f"--src-tls-verify={'true' if tls_verify else 'false'}"]
        if creds:
            cmd += ["--src-creds", creds]
    sh(*cmd, src, f"oci:{layout}:x")
    sh(which("umoci"), "unpack", "--image", f"{layout}:x", bundle)
    return os.path.join(bundle, "rootfs")


def unpack_oci_archive(archive, dest):
    return unpack_image(f"oci-archive:{archive}", dest)


def skopeo_inspect(ref, tls_verify=False, creds=None, raw=False):
    cmd = [which("skopeo"), "--insecure-policy", "inspect"]
    if raw:
        cmd.append("--raw")
    if ref.startswith("docker://"):
        cmd.append(f"--tls-verify={'true' if tls_verify else 'false'}")
        if creds:
            cmd += ["--creds", creds]
    return json.loads(sh(*cmd, ref))


def _kind(mode):
    if stat.S_ISDIR(mode):
        return "dir"
    if stat.S_ISREG(mode):
        return "file"
    if stat.S_ISLNK(mode):
        return "symlink"
    if stat.S_ISFIFO(mode):
        return "fifo"
    return "other"


def dir_tree(root):
    """{"/path": (kind, permission bits, uid, gid, sha256 | link target | None)} of a
    directory on this machine (the root itself excluded)."""
    out = {}
    for dirpath, dirs, files in os.walk(root):
        for n in dirs + files:
            p = os.path.join(dirpath, n)
            st = os.lstat(p)
            k = _kind(st.st_mode)
            extra = None
            if k == "file":
                with open(p, "rb") as f:
                    extra = hashlib.sha256(f.read()).hexdigest()
            elif k == "symlink":
                extra = os.readlink(p)
            out["/" + os.path.relpath(p, root)] = (k, stat.S_IMODE(st.st_mode), st.st_uid,
                                                   st.st_gid, extra)
    return out


def image_tree(client, uuid, path="/"):
    """The same map for a Coppice image, read through /v1/inspect/{uuid}/list and download."""
    out = {}
    r = client.get(f"/v1/inspect/{uuid}/list", params={"path": path})
    assert r.status == 200, (path, r.status, r.body[:200])
    for f in r.json()["files"]:
        p = path.rstrip("/") + "/" + f["path"].rsplit("/", 1)[-1]
        if f["is_dir"]:
            k = "dir"
        elif f["is_symlink"]:
            k = "symlink"
        elif f["is_regular"]:
            k = "file"
        elif f["is_fifo"]:
            k = "fifo"
        else:
            k = "other"
        extra = None
        if k == "file":
            d = client.get(f"/v1/inspect/{uuid}/download", params={"path": p})
            assert d.status == 200, (p, d.status)
            extra = hashlib.sha256(d.body).hexdigest()
        elif k == "symlink":
            extra = f["symlink_to"]
        out[p] = (k, stat.S_IMODE(f["mode"]), f["uid"], f["gid"], extra)
        if k == "dir":
            out.update(image_tree(client, uuid, p))
    return out


# ------------------------------------------------------------------------------------------
# the bearer-token front

class TokenProxy:
    """A Docker-token-auth registry front before `upstream` (a Registry without auth).

    * /v2/... without a valid `Authorization: Bearer` → 401 + WWW-Authenticate challenge
      (realm http://HOST/token, service, scope repository:NAME:pull[,push]; no scope on /v2/).
    * GET (or OAuth2 POST) /token?service=&scope= with Basic user:secret (or anonymously when
      `anonymous`) → {"token","access_token","expires_in"}; tokens carry their scopes.
    * Authorised requests are proxied (any method, streamed bodies, Location rewritten).
    * `redirect_blobs`: GET of a blob answers 307 to /storage/<repo>/<digest> (no auth there,
      like a pre-signed URL) which streams the blob from upstream.
    * `delay`: seconds each blob GET (or storage GET) waits before answering; `rate`: bytes/s.
    * `failures`: HTTP statuses (e.g. [503, 429]) answered, one each, to the next requests
      under /v2/<repo>/ before anything else happens (to test retries).
    * `deny_blobs`: digests whose blob GETs answer 404 (a registry naming blobs it cannot serve).
    * `requests`: every request as a dict (kind, method, path, auth, authorized, status).
    """

    def __init__(self, upstream, users=None, anonymous=False, service="test-registry",
                 redirect_blobs=False, delay=0.0, rate=None, expires_in=300):
        self.upstream = upstream
        self.users = {"user": "secret"} if users is None else dict(users)
        self.anonymous = anonymous
        self.service = service
        self.redirect_blobs = redirect_blobs
        self.delay = delay
        self.rate = rate
        self.expires_in = expires_in
        self.failures = []
        self.deny_blobs = set()
        self.requests = []
        self.tokens = {}  # token -> (expiry, set of (repo, action))
        self.lock = threading.Lock()
        self.release = threading.Event()
        self.httpd = None
        self.thread = None

    username, password = "user", "secret"

    @property
    def port(self):
        return self.httpd.server_address[1]

    @property
    def host(self):
        return f"127.0.0.1:{self.port}"

    @property
    def url(self):
        return f"http://{self.host}"

    def ref(self, repo, tag_or_digest, scheme="docker://"):
        sep = "@" if tag_or_digest.startswith("sha256:") else ":"
        return f"{scheme}{self.host}/{repo}{sep}{tag_or_digest}"

    def start(self):
        proxy = self

        class Handler(_ProxyHandler):
            pass

        Handler.proxy = proxy
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()
        return self

    def stop(self):
        self.release.set()
        if self.httpd:
            self.httpd.shutdown()
            self.httpd.server_close()
            self.httpd = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    def clear(self):
        with self.lock:
            self.requests.clear()

    def log(self, **kw):
        with self.lock:
            self.requests.append(kw)
        return kw

    def seen(self, kind=None, method=None, authorized=None, path_re=None):
        with self.lock:
            reqs = list(self.requests)
        return [r for r in reqs
                if (kind is None or r["kind"] == kind)
                and (method is None or r["method"] == method)
                and (authorized is None or r["authorized"] == authorized)
                and (path_re is None or re.search(path_re, r["path"]))]

    def issue(self, scopes):
        tok = secrets.token_urlsafe(24)
        granted = set()
        for s in scopes:
            parts = s.split(":")
            if len(parts) >= 3 and parts[0] == "repository":
                repo = ":".join(parts[1:-1])
                for a in parts[-1].split(","):
                    granted.add((repo, a))
        with self.lock:
            self.tokens[tok] = (time.time() + self.expires_in, granted)
        return tok

    def check(self, token, repo, action):
        with self.lock:
            t = self.tokens.get(token)
        if not t or t[0] < time.time():
            return False
        return repo is None or (repo, action) in t[1] or (repo, "*") in t[1]


_V2_RE = re.compile(r"^/v2/(.+)/(manifests|blobs|tags)/")
_BLOB_GET_RE = re.compile(r"^/v2/(.+)/blobs/(sha256:[0-9a-f]{64})$")
_HOP = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te",
        "trailers", "transfer-encoding", "upgrade", "host", "authorization", "content-length"}


class _ProxyHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    proxy = None  # set on the subclass

    def log_message(self, *a):
        pass

    def do_GET(self):
        self.handle_any()

    do_HEAD = do_PUT = do_POST = do_PATCH = do_DELETE = do_GET

    # --- helpers
    def body_chunks(self):
        """The request body as an iterator of chunks (Content-Length or chunked)."""
        te = self.headers.get("Transfer-Encoding", "").lower()
        if "chunked" in te:
            while True:
                line = self.rfile.readline().strip()
                n = int(line.split(b";")[0], 16)
                if n == 0:
                    while self.rfile.readline().strip():
                        pass
                    return
                left = n
                while left:
                    c = self.rfile.read(min(left, 65536))
                    if not c:
                        return
                    left -= len(c)
                    yield c
                self.rfile.readline()
        n = int(self.headers.get("Content-Length") or 0)
        while n > 0:
            c = self.rfile.read(min(n, 65536))
            if not c:
                return
            n -= len(c)
            yield c

    def drain(self):
        for _ in self.body_chunks():
            pass

    def reply(self, status, body=b"", headers=None, ctype="application/json"):
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        if body or status not in (204, 304):
            self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD" and body:
            self.wfile.write(body)

    def wait(self):
        if self.proxy.delay:
            self.proxy.release.wait(self.proxy.delay)

    def send_stream(self, resp):
        rate = self.proxy.rate
        while True:
            c = resp.read(16384 if rate else 65536)
            if not c:
                break
            self.wfile.write(c)
            if rate:
                self.proxy.release.wait(len(c) / rate)

    # --- dispatch
    def handle_any(self):
        p = self.proxy
        url = urllib.parse.urlsplit(self.path)
        path = url.path
        auth = self.headers.get("Authorization", "")
        auth_kind = auth.split(" ", 1)[0].lower() if auth else None
        if path == "/token":
            return self.token(url, auth)
        if path.startswith("/storage/"):
            return self.storage(path, auth_kind)
        if not path.startswith("/v2"):
            self.drain()
            self._entry = p.log(kind="other", method=self.command, path=self.path, auth=auth_kind,
                                authorized=False, status=404)
            return self.reply(404, b'{"errors":[{"code":"NOT_FOUND"}]}')
        m = _V2_RE.match(path)
        repo = m.group(1) if m else None
        if repo and p.failures:
            with p.lock:
                status = p.failures.pop(0) if p.failures else None
            if status:
                self.drain()
                self._entry = p.log(kind="v2", method=self.command, path=self.path,
                                    auth=auth_kind, authorized=False, status=status)
                return self.reply(status, b'{"errors":[{"code":"UNAVAILABLE"}]}',
                                  {"Retry-After": "0"})
        bm = _BLOB_GET_RE.match(path) if self.command == "GET" else None
        if repo and bm and bm.group(2) in p.deny_blobs:
            self.drain()
            self._entry = p.log(kind="v2", method=self.command, path=self.path,
                                auth=auth_kind, authorized=False, status=404)
            return self.reply(404, b'{"errors":[{"code":"BLOB_UNKNOWN"}]}')
        action = "pull" if self.command in ("GET", "HEAD") else "push"
        token = auth[7:].strip() if auth_kind == "bearer" else None
        ok = token is not None and p.check(token, repo, action)
        if not ok:
            self.drain()
            self._entry = p.log(kind="v2", method=self.command, path=self.path, auth=auth_kind,
                                authorized=False, status=401)
            chal = f'Bearer realm="{p.url}/token",service="{p.service}"'
            if repo:
                scope = f"repository:{repo}:pull" + (",push" if action == "push" else "")
                chal += f',scope="{scope}"'
            body = json.dumps({"errors": [{"code": "UNAUTHORIZED",
                                           "message": "authentication required",
                                           "detail": None}]}).encode()
            return self.reply(401, body, {"WWW-Authenticate": chal,
                                          "Docker-Distribution-Api-Version": "registry/2.0"})
        bm = _BLOB_GET_RE.match(path)
        if bm and self.command == "GET" and p.redirect_blobs:
            self.drain()
            self._entry = p.log(kind="v2", method=self.command, path=self.path, auth=auth_kind,
                                authorized=True, status=307)
            loc = f"{p.url}/storage/{bm.group(1)}/{bm.group(2)}"
            return self.reply(307, b"", {"Location": loc})
        self._entry = p.log(kind="v2", method=self.command, path=self.path, auth=auth_kind,
                            authorized=True, status=None)
        if bm and self.command == "GET":
            self.wait()
        self.forward(self.command, self.path, stream_body=True)

    def token(self, url, auth):
        p = self.proxy
        q = urllib.parse.parse_qs(url.query)
        user = pw = None
        if self.command == "POST":  # OAuth2 password grant (containerd style)
            form = urllib.parse.parse_qs(b"".join(self.body_chunks()).decode())
            q.update(form)
            user, pw = (form.get("username") or [None])[0], (form.get("password") or [None])[0]
        else:
            self.drain()
        if auth.lower().startswith("basic "):
            try:
                user, _, pw = base64.b64decode(auth[6:].strip()).decode().partition(":")
            except ValueError:
                user = pw = None
        service = (q.get("service") or [None])[0]
        scopes = [s for v in q.get("scope", []) for s in v.split(" ") if s]
        if user is not None:
            ok = p.users.get(user) == pw
        else:
            ok = p.anonymous
        status = 200 if ok and service == p.service else (400 if ok else 401)
        self._entry = p.log(kind="token", method=self.command, path=self.path,
                            auth="basic" if user else None, authorized=ok, status=status,
                            service=service, scopes=scopes, user=user)
        if status == 400:
            return self.reply(400, json.dumps({"details": "unknown service"}).encode())
        if status == 401:
            return self.reply(401, json.dumps({"details": "invalid credentials"}).encode(),
                              {"WWW-Authenticate": 'Basic realm="token"'})
        tok = p.issue(scopes)
        body = {"token": tok, "access_token": tok, "expires_in": p.expires_in,
                "issued_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        return self.reply(200, json.dumps(body).encode())

    def storage(self, path, auth_kind):
        p = self.proxy
        self.drain()
        repo, _, digest = path[len("/storage/"):].rpartition("/")
        self._entry = p.log(kind="storage", method=self.command, path=path, auth=auth_kind,
                            authorized=True, status=None)
        if self.command not in ("GET", "HEAD"):
            return self.reply(405, b"{}")
        if self.command == "GET":
            self.wait()
        self.forward(self.command, f"/v2/{repo}/blobs/{digest}", stream_body=False,
                     ctype="application/octet-stream")

    def forward(self, method, target, stream_body, ctype=None):
        p, up = self.proxy, self.proxy.upstream
        conn = http.client.HTTPConnection("127.0.0.1", up.port, timeout=120)
        try:
            conn.putrequest(method, target, skip_host=True, skip_accept_encoding=True)
            conn.putheader("Host", up.host)
            for k, v in up.auth_header().items():
                conn.putheader(k, v)
            for k, v in self.headers.items():
                if k.lower() not in _HOP:
                    conn.putheader(k, v)
            chunked = "chunked" in self.headers.get("Transfer-Encoding", "").lower()
            length = self.headers.get("Content-Length")
            if stream_body and chunked:
                conn.putheader("Transfer-Encoding", "chunked")
            elif stream_body and length is not None:
                conn.putheader("Content-Length", length)
            conn.endheaders()
            if stream_body:
                for c in self.body_chunks():
                    conn.send(b"%x\r\n%b\r\n" % (len(c), c) if chunked else c)
                if chunked:
                    conn.send(b"0\r\n\r\n")
            resp = conn.getresponse()
            self.send_response(resp.status)
            clen = resp.getheader("Content-Length")
            for k, v in resp.getheaders():
                kl = k.lower()
                if kl in _HOP or kl in ("date", "server"):  # send_response added its own
                    continue
                if kl == "location":
                    v = v.replace(up.host, p.host)
                if kl == "content-type" and ctype:
                    v = ctype
                self.send_header(k, v)
            if method == "HEAD" or resp.status in (204, 304):
                self.send_header("Content-Length", clen or "0")
                self.end_headers()
                return
            if clen is None:
                data = resp.read()
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
                return
            self.send_header("Content-Length", clen)
            self.end_headers()
            self.send_stream(resp)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        finally:
            conn.close()

    def send_response(self, code, message=None):
        if getattr(self, "_entry", None) is not None and self._entry.get("status") is None:
            self._entry["status"] = code
        super().send_response(code, message)


# ------------------------------------------------------------------------------------------
# the shared test images

APP_STEP1 = {
    "/etc/app.conf": "name=app\n",
    "/w": Dir(0o755),
    "/w/readme": "work\n",
    "/data": Dir(0o750),
    "/data/keep": "keep\n",
    "/data/gone": "gone\n",
    "/data/secret": File("s3cret\n", mode=0o600),
    "/data/tool": File("#!/bin/sh\necho tool-ran\n", mode=0o755),
    "/home/u": Dir(0o750, uid=1000, gid=1000),
    "/home/u/owned": File("mine\n", mode=0o640, uid=1000, gid=1000),
    "/olddir/a": "a\n",
    "/olddir/sub/b": "b\n",
    "/rep/old1": "1\n",
    "/rep/old2": "2\n",
    "/links/rel": Symlink("../etc/app.conf"),
    "/links/abs": Symlink("/etc/app.conf"),
    "/links/dangling": Symlink("/nowhere"),
    "/links/hard": Hardlink("/data/keep"),
    "/sticky": Dir(0o1777),
    "/fifo": Fifo(0o600),
}
APP_STEP2 = {
    "/data/gone": None,
    "/olddir": None,
    "/rep": ReplaceDir({"new": "new\n"}),
    "/etc/app.conf": "name=app\nversion=2\n",
}
APP_CONFIG = {"env": {"A": "1", "B": "two", "GREETING": "hello world"}, "workingdir": "/w",
              "entrypoint": ["/bin/sh", "-c"], "cmd": ["echo default"]}

# What an importer must produce for the app image (path → expected (kind, mode, uid, gid,
# sha256|target) or None for "absent"); the self-check verifies it against umoci unpack.
APP_EXPECT = {
    "/etc/app.conf": ("file", 0o644, 0, 0, hashlib.sha256(b"name=app\nversion=2\n").hexdigest()),
    "/w": ("dir", 0o755, 0, 0, None),
    "/data": ("dir", 0o750, 0, 0, None),
    "/data/keep": ("file", 0o644, 0, 0, hashlib.sha256(b"keep\n").hexdigest()),
    "/data/gone": None,
    "/data/secret": ("file", 0o600, 0, 0, hashlib.sha256(b"s3cret\n").hexdigest()),
    "/data/tool": ("file", 0o755, 0, 0, hashlib.sha256(b"#!/bin/sh\necho tool-ran\n").hexdigest()),
    "/home/u": ("dir", 0o750, 1000, 1000, None),
    "/home/u/owned": ("file", 0o640, 1000, 1000, hashlib.sha256(b"mine\n").hexdigest()),
    "/olddir": None,
    "/olddir/a": None,
    "/rep": ("dir", 0o755, 0, 0, None),
    "/rep/new": ("file", 0o644, 0, 0, hashlib.sha256(b"new\n").hexdigest()),
    "/rep/old1": None,
    "/rep/old2": None,
    "/links/rel": ("symlink", 0o777, 0, 0, "../etc/app.conf"),
    "/links/abs": ("symlink", 0o777, 0, 0, "/etc/app.conf"),
    "/links/dangling": ("symlink", 0o777, 0, 0, "/nowhere"),
    "/links/hard": ("file", 0o644, 0, 0, hashlib.sha256(b"keep\n").hexdigest()),
    "/sticky": ("dir", 0o1777, 0, 0, None),
    "/fifo": ("fifo", 0o600, 0, 0, None),
    "/bin/busybox": ("file", 0o755, 0, 0, None),  # hash checked separately
    "/bin/sh": ("symlink", 0o777, 0, 0, "busybox"),
}

# the opaque-whiteout image (hand-made layers): what each directory must list
OPAQUE_EXPECT = {"/opq": ["new"], "/opq2": ["new2"], "/keepdir": ["y"], "/plain": ["p1", "p2"]}


def opaque_layers():
    """Two hand-made layers over the busybox base: the second replaces /opq and /opq2 with an
    opaque whiteout (marker before resp. after the new content) and deletes /keepdir/x."""
    l2 = layer_tar({"/opq/a": "a\n", "/opq/b": "b\n", "/opq/sub/c": "c\n", "/opq2/a": "a\n",
                    "/opq2/sub/c": "c\n", "/keepdir/x": "x\n", "/plain/p1": "1\n"})
    l3 = layer_tar([("/opq", Dir()), ("/opq", Opaque), ("/opq/new", "new\n"),
                    ("/opq2", Dir()), ("/opq2/new2", "new2\n"), ("/opq2", Opaque),
                    ("/keepdir/x", Whiteout), ("/keepdir/y", "y\n"), ("/plain/p2", "2\n")])
    return l2, l3


def unique_layer(label, size=256):
    """A layer no other image has (random content), so an importer must download it."""
    return layer_tar({f"/unique/{label}": secrets.token_hex(size // 2) + "\n"})


def base_layer(cat):
    """The busybox base layer as pushed by skopeo (same blob, so importers can reuse it)."""
    m, cfg, _ = layout_manifest(cat.base_layout)
    d = m["layers"][0]["digest"]
    return Layer(layout_blob(cat.base_layout, d), m["layers"][0]["mediaType"],
                 cfg["rootfs"]["diff_ids"][0])


def push_unique(reg, cat, repo, tag="1", size=256, compression="gzip", config=None):
    """busybox base + one fresh random layer; returns (manifest digest, unique layer digest)."""
    top = Layer.from_tar(unique_layer(f"{repo.replace('/', '_')}-{tag}", size), compression)
    push_blob(reg, repo, base_layer(cat).blob, mount_from=cat.base_repo)
    d = push_image(reg, repo, tag, [base_layer(cat), top], config=config)
    return d, digest_of(top.blob)


def build_catalog(reg, workdir):
    """Builds and pushes every shared test image into `reg`; returns a namespace of refs."""
    need_tools("umoci", "skopeo")
    c = types.SimpleNamespace(registry=reg, workdir=workdir)
    L = lambda n: os.path.join(workdir, "layouts", n)  # noqa: E731
    os.makedirs(os.path.join(workdir, "layouts"))

    # busybox base: one layer
    c.base_layout = build_layout(L("base"), "1", [build_rootfs_busybox],
                                 {"env": {"BASE": "1"}})
    c.base_repo = "coppice/base"
    c.base_digest = push_layout(reg, c.base_layout, "1", c.base_repo, "1")
    c.busybox_sha256 = hashlib.sha256(open("/bin/busybox", "rb").read()).hexdigest()

    # app: base + files/modes/owners/links + deletions and a replaced dir; config
    c.app_layout = build_layout(L("app"), "1", [APP_STEP1, APP_STEP2], APP_CONFIG,
                                base=(c.base_layout, "1"))
    c.app_repo = "coppice/app"
    c.app_digest = push_layout(reg, c.app_layout, "1", c.app_repo, "1")
    c.app_layer_count = len(layout_manifest(c.app_layout)[0]["layers"])
    body, mt, _ = get_manifest(reg, c.app_repo, "1")
    push_manifest(reg, c.app_repo, "latest", body, mt)  # for references without a tag

    # opaque whiteouts, by hand
    c.opaque_repo = "coppice/opaque"
    push_blob(reg, c.opaque_repo, base_layer(c).blob, mount_from=c.base_repo)
    c.opaque_digest = push_image(reg, c.opaque_repo, "1", [base_layer(c), *opaque_layers()])

    # multi-platform: an OCI index and a Docker manifest list (v2s2 children) over
    # amd64/arm64 images that differ in /arch
    for arch in ("amd64", "arm64"):
        setattr(c, f"{arch}_layout", build_layout(
            L(arch), "1", [{"/arch": f"{arch}\n"}],
            {"architecture": arch, "env": {"ARCH": arch}}, base=(c.base_layout, "1")))
    c.multi_repo, c.list_repo = "coppice/multi", "coppice/multilist"
    c.multi_children = {a: push_layout(reg, getattr(c, f"{a}_layout"), "1", c.multi_repo,
                                       f"1-{a}") for a in ("amd64", "arm64")}
    c.multi_digest = push_index(reg, c.multi_repo, "1", [
        (c.multi_children["arm64"], {"architecture": "arm64", "os": "linux"}),  # not first
        (c.multi_children["amd64"], {"architecture": "amd64", "os": "linux"})])
    c.list_children = {a: push_layout(reg, getattr(c, f"{a}_layout"), "1", c.list_repo,
                                      f"1-{a}", docker_format=True) for a in ("amd64", "arm64")}
    c.list_digest = push_index(reg, c.list_repo, "1", [
        (c.list_children["arm64"], {"architecture": "arm64", "os": "linux", "variant": "v8"}),
        (c.list_children["amd64"], {"architecture": "amd64", "os": "linux"})], docker=True)

    # compression variants of one image: zstd and uncompressed layers (all of them)
    c.comp_layout = build_layout(L("comp"), "1", [{"/comp": "compressed\n"}],
                                 base=(c.base_layout, "1"))
    c.zstd_repo, c.plain_repo = "coppice/zstd", "coppice/plain"
    c.zstd_digest = push_layout(reg, c.comp_layout, "1", c.zstd_repo, "1", "zstd")
    c.plain_digest = push_layout(reg, c.comp_layout, "1", c.plain_repo, "1", "none")
    c.single_repo = "single"  # a one-segment name on a non-docker.io registry: no library/
    push_layout(reg, c.comp_layout, "1", c.single_repo, "1")

    # archives of the app image
    c.oci_archive = make_oci_archive(c.app_layout, os.path.join(workdir, "app-oci.tar"))
    c.docker_archive = make_docker_save_tar(c.app_layout, os.path.join(workdir, "app-docker.tar"))
    return c


# ------------------------------------------------------------------------------------------
# pytest fixtures

@pytest.fixture(scope="session")
def registry():
    need_tools("docker-registry")
    r = Registry().start()
    yield r
    r.stop()


@pytest.fixture(scope="session")
def auth_registry():
    need_tools("docker-registry", "htpasswd")
    r = Registry(auth=True).start()
    yield r
    r.stop()


@pytest.fixture()
def token_registry(registry):
    """A fresh TokenProxy (user/secret, no anonymous access) before the session registry."""
    p = TokenProxy(registry).start()
    yield p
    p.stop()


@pytest.fixture(scope="session")
def oci_workdir():
    d = tempdir("coppice-oci-it-")
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="session")
def oci_images(registry, oci_workdir):
    return build_catalog(registry, oci_workdir)


# ------------------------------------------------------------------------------------------
# standalone self-check: `/usr/bin/python3 tests/integration/oci_fixtures.py`

def _selfcheck():  # noqa: C901 (a linear script)
    t0 = time.time()
    work = tempdir("coppice-oci-selfcheck-")
    reg = Registry().start()
    areg = Registry(auth=True).start()
    try:
        c = build_catalog(reg, work)
        print(f"catalog built in {time.time() - t0:.1f}s on {reg.host}")

        # umoci's layers: whiteouts for deletions; what does a replaced directory give?
        tars = layout_layer_tars(c.app_layout)
        names = [tarfile.open(fileobj=io.BytesIO(t)).getnames() for t in tars]
        top = names[-1]
        print("umoci top layer:", top)
        assert "data/.wh.gone" in top and ".wh.olddir" in top
        assert "rep/new" in top
        opq = [n for n in top if n.endswith(".wh..wh..opq")]
        per_file = [n for n in top if n.startswith("rep/.wh.")]
        print("umoci replaced dir →", "opaque" if opq else f"per-file whiteouts {per_file}")
        mid = {m.name: m for m in tarfile.open(fileobj=io.BytesIO(tars[1])).getmembers()}
        assert mid["links/hard"].type == tarfile.LNKTYPE and mid["links/hard"].linkname == \
            "data/keep"
        assert mid["home/u/owned"].uid == 1000 and mid["home/u/owned"].mode == 0o640
        assert mid["fifo"].type == tarfile.FIFOTYPE

        # every image reads back with skopeo + umoci as expected
        def check_app(rootfs):
            t = dir_tree(rootfs)
            for p, want in APP_EXPECT.items():
                if want is None:
                    assert p not in t, p
                elif p == "/bin/busybox":
                    assert t[p][:4] == want[:4] and t[p][4] == c.busybox_sha256
                else:
                    assert t.get(p) == want, (p, t.get(p), want)
            assert os.stat(f"{rootfs}/links/hard").st_ino == os.stat(f"{rootfs}/data/keep").st_ino
            assert sorted(os.listdir(f"{rootfs}/rep")) == ["new"]
            return t

        n = iter(range(1000))
        app_tree = check_app(unpack_image(reg.ref(c.app_repo, "1"), f"{work}/u{next(n)}"))
        check_app(unpack_image(reg.ref(c.app_repo, c.app_digest), f"{work}/u{next(n)}"))
        cfg = skopeo_inspect(f"docker://{reg.host}/{c.app_repo}:1")
        assert cfg["Env"] == ["BASE=1", "A=1", "B=two", "GREETING=hello world"], cfg["Env"]
        raw_cfg = layout_manifest(c.app_layout)[1]["config"]
        assert raw_cfg["WorkingDir"] == "/w" and raw_cfg["Entrypoint"] == ["/bin/sh", "-c"]
        check_app(unpack_oci_archive(c.oci_archive, f"{work}/u{next(n)}"))
        r = unpack_image(f"docker-archive:{c.docker_archive}", f"{work}/u{next(n)}")
        assert dir_tree(r) == app_tree
        r = unpack_image(f"oci:{c.app_layout}:1", f"{work}/u{next(n)}")
        assert dir_tree(r) == app_tree
        print("app image: registry (tag, digest), oci-archive, docker-save, layout all agree")

        r = unpack_image(reg.ref(c.opaque_repo, "1"), f"{work}/u{next(n)}")
        for d, want in OPAQUE_EXPECT.items():
            assert sorted(os.listdir(r + d)) == want, (d, os.listdir(r + d))
        print("opaque image: umoci applies both opaque markers as expected")

        for arch in ("amd64", "arm64"):
            for repo in (c.multi_repo, c.list_repo):
                r = unpack_image(reg.ref(repo, "1"), f"{work}/u{next(n)}", arch=arch)
                assert open(f"{r}/arch").read() == f"{arch}\n"
        idx = skopeo_inspect(reg.ref(c.multi_repo, "1"), raw=True)
        assert idx["mediaType"] == OCI_INDEX and len(idx["manifests"]) == 2
        lst = skopeo_inspect(reg.ref(c.list_repo, "1"), raw=True)
        assert lst["mediaType"] == DOCKER_LIST
        child = skopeo_inspect(reg.ref(c.list_repo, c.list_children["amd64"]), raw=True)
        assert child["mediaType"] == DOCKER_MANIFEST
        assert child["layers"][0]["mediaType"] == DOCKER_LAYER_GZIP
        print("multi-platform: OCI index + Docker list select amd64/arm64")

        for repo, mt in ((c.zstd_repo, OCI_LAYER_ZSTD), (c.plain_repo, OCI_LAYER)):
            assert {l["mediaType"] for l in layers_of(reg, repo, "1")} == {mt}
            r = unpack_image(reg.ref(repo, "1"), f"{work}/u{next(n)}")
            assert open(f"{r}/comp").read() == "compressed\n"
        print("zstd + uncompressed layers read back")

        # skopeo's own zstd: works, but only for blobs it has not seen before
        l2 = build_layout(f"{work}/zl", "1", [{"/z": secrets.token_hex(8)}])
        sh(which("skopeo"), "--insecure-policy", "copy", "--quiet", "--dest-tls-verify=false",
           "--dest-compress-format", "zstd", f"oci:{l2}:1", reg.ref("coppice/skopeo-zstd", "1"))
        got = {l["mediaType"] for l in layers_of(reg, "coppice/skopeo-zstd", "1")}
        print("skopeo 1.9 --dest-compress-format zstd (fresh blobs) →", got)
        sh(which("skopeo"), "--insecure-policy", "copy", "--quiet", "--dest-tls-verify=false",
           "--dest-compress-format", "zstd", f"oci:{c.comp_layout}:1",
           reg.ref("coppice/skopeo-zstd2", "1"))
        got = {l["mediaType"] for l in layers_of(reg, "coppice/skopeo-zstd2", "1")}
        print("skopeo 1.9 --dest-compress-format zstd (blobs already in the registry) →", got)

        # corrupting a blob on disk: the registry serves the flipped byte
        d, top_digest = push_unique(reg, c, "coppice/corrupt", compression="none")
        good = get_blob(reg, "coppice/corrupt", top_digest)
        reg.corrupt_blob(top_digest)
        bad = get_blob(reg, "coppice/corrupt", top_digest)
        assert len(bad) == len(good) and bad != good and digest_of(bad) != top_digest
        print("corrupt_blob: same size, digest mismatch served")

        # hostile layers push fine and contain what they say
        for k in HOSTILE_KINDS:
            push_blob(reg, f"coppice/hostile-{k}", base_layer(c).blob, mount_from=c.base_repo)
            push_image(reg, f"coppice/hostile-{k}", "1",
                       [base_layer(c), hostile_layer(k, "coppice-evil-x")])
            print(f"hostile {k}:", tar_names(get_blob(reg, f"coppice/hostile-{k}",
                                                      layers_of(reg, f"coppice/hostile-{k}",
                                                                "1")[1]["digest"])))

        # the auth registry
        assert request(types.SimpleNamespace(url=areg.url), "GET", "/v2/")[0] == 401
        assert request(areg, "GET", "/v2/")[0] == 200
        push_layout(areg, c.app_layout, "1", "private/app", "1")
        check_app(unpack_image(areg.ref("private/app", "1"), f"{work}/u{next(n)}",
                               creds="user:secret"))
        try:
            unpack_image(areg.ref("private/app", "1"), f"{work}/u{next(n)}",
                         creds="user:wrong")
            raise AssertionError("wrong password accepted")
        except RuntimeError as e:
            assert "unauthorized" in str(e).lower() or "401" in str(e), e
        print("auth registry: htpasswd works, wrong password refused")

        # the token proxy: skopeo pulls and pushes through it; the flow is recorded
        with TokenProxy(reg) as p:
            r = unpack_image(p.ref(c.app_repo, "1"), f"{work}/u{next(n)}", creds="user:secret")
            assert dir_tree(r) == app_tree
            assert p.seen("v2", authorized=False), p.requests
            toks = p.seen("token", authorized=True)
            assert toks and toks[0]["scopes"] == [f"repository:{c.app_repo}:pull"], toks
            assert p.seen("v2", "GET", True, r"/blobs/sha256:")
            p.clear()
            push_layout(types.SimpleNamespace(host=p.host, username="user", password="secret"),
                        c.comp_layout, "1", "via/proxy", "1")
            assert p.seen("v2", "PUT", True, r"/manifests/1$")
            assert any("push" in s for t in p.seen("token") for s in t["scopes"])
            assert {l["mediaType"] for l in layers_of(reg, "via/proxy", "1")}
            p.clear()
            try:
                unpack_image(p.ref(c.app_repo, "1"), f"{work}/u{next(n)}", creds="user:bad")
                raise AssertionError("bad token credentials accepted")
            except RuntimeError:
                pass
            assert p.seen("token", authorized=False)
            # raw: challenge, token, authorised GET
            st, h, _ = request(p, "GET", f"/v2/{c.app_repo}/manifests/1")
            assert st == 401 and f'scope="repository:{c.app_repo}:pull"' in h["www-authenticate"]
            st, h, _ = request(p, "GET", "/v2/")
            assert st == 401 and "scope" not in h["www-authenticate"]
            st, _, _ = request(p, "GET", "/token?service=test-registry")
            assert st == 401  # not anonymous
        print("token proxy: pull + push via skopeo, challenge/token/authorised flow recorded")

        with TokenProxy(reg, anonymous=True, redirect_blobs=True) as p:
            r = unpack_image(p.ref(c.app_repo, "1"), f"{work}/u{next(n)}")
            assert dir_tree(r) == app_tree
            st = p.seen("storage", "GET")
            assert st and all(s["status"] == 200 for s in st), st
            assert all(s["status"] == 307 for s in p.seen("v2", "GET", True, r"/blobs/"))
            print("redirects: skopeo followed 307 → /storage; Authorization sent to storage:",
                  sorted({s["auth"] for s in st}, key=str))
            st, h, body = request(p, "GET", "/token?service=test-registry&scope=repository:"
                                  f"{c.app_repo}:pull")
            tok = json.loads(body)
            assert st == 200 and tok["token"] == tok["access_token"] and tok["expires_in"] == 300
            st, h, _ = request(p, "GET", f"/v2/{c.app_repo}/blobs/{c.app_digest}",
                               headers={"Authorization": "Bearer " + tok["token"]})
            assert st == 307 and h["location"].startswith(p.url + "/storage/")

        with TokenProxy(reg, anonymous=True, delay=1.0) as p:
            t1 = time.time()
            st, _, body = request(p, "GET", "/token?service=test-registry&scope=repository:"
                                  f"{c.app_repo}:pull")
            tok = json.loads(body)["token"]
            layer = layers_of(reg, c.app_repo, "1")[-1]["digest"]
            st, _, _ = request(p, "GET", f"/v2/{c.app_repo}/blobs/{layer}",
                               headers={"Authorization": "Bearer " + tok})
            assert st == 200 and time.time() - t1 >= 1.0
        print("delay knob works")
        print(f"self-check passed in {time.time() - t0:.1f}s")
    finally:
        reg.stop()
        areg.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    _selfcheck()


# ------------------------------------------------------------------------------------------
# a scripted server on any loopback address

class FakeHttp:
    """A ThreadingHTTPServer on `addr` (127.0.0.x) whose `respond(handler)` returns
    (status, {header: value}, body bytes) for each request (default: 200 "{}"). `connections`
    counts accepted TCP connections, `requests` logs (method, path, headers)."""

    def __init__(self, addr="127.0.0.1", respond=None):
        self.addr = addr
        self.respond = respond or (lambda h: (200, {}, b"{}"))
        self.connections = 0
        self.requests = []
        self.lock = threading.Lock()
        self.httpd = None

    @property
    def port(self):
        return self.httpd.server_address[1]

    @property
    def host(self):
        return f"{self.addr}:{self.port}"

    @property
    def url(self):
        return f"http://{self.host}"

    def start(self):
        fake = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def handle_one(self):
                n = int(self.headers.get("Content-Length") or 0)
                if n:
                    self.rfile.read(n)
                with fake.lock:
                    fake.requests.append((self.command, self.path, dict(self.headers)))
                status, headers, body = fake.respond(self)
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = handle_one

        class Server(http.server.ThreadingHTTPServer):
            daemon_threads = True

            def verify_request(self, request, client_address):
                with fake.lock:
                    fake.connections += 1
                return True

        self.httpd = Server((self.addr, 0), Handler)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        return self

    def stop(self):
        if self.httpd:
            self.httpd.shutdown()
            self.httpd.server_close()
            self.httpd = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
