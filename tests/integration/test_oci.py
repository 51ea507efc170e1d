"""OCI images: import from registries (plain, htpasswd, bearer token, redirects) and archives,
export as an OCI archive, push to a registry. Registries and images are real (docker-registry,
umoci, skopeo); see oci_fixtures.py."""
import base64
import hashlib
import json
import os
import secrets
import shutil
import stat
import subprocess
import tarfile
import time
import uuid

import pytest

from conftest import COPPICED
from coppice_client import Client, Server, stdout_of
from oci_fixtures import (
    APP_EXPECT, HOSTILE_KINDS, OPAQUE_EXPECT, FakeHttp, TokenProxy, base_layer, dir_tree, free_port,
    hostile_layer, image_tree, layers_of, need_tools, push_blob, push_image, push_layout,
    push_unique, skopeo_inspect, tempdir, unique_layer, unpack_image, unpack_oci_archive, which)
from oci_fixtures import (  # noqa: F401 (pytest fixtures, used by name)
    auth_registry, oci_images, oci_workdir, registry, token_registry)

PROGRESS_KEYS = {"layers_done", "layers_total", "bytes_done", "bytes_total"}


# ------------------------------------------------------------------------------------------
# helpers

def start_import(client, body):
    r = client.post("/v1/images/import", body)
    assert r.status in (201, 202), (r.status, r.body)
    op = r.json()["uuid"]
    assert r.headers["location"] == f"/v1/operations/{op}"
    return op


def import_body(url, tag=None, creds=None, **extra):
    body = {"registry": {"url": url}, "timeout": 300}
    if creds is not None:
        body["registry"]["credentials"] = {"username": creds[0], "password": creds[1]}
    if tag is not None:
        body["tag"] = tag
    body.update(extra)
    return body


def do_import(client, url, tag=None, creds=None, timeout=120, **extra):
    """Runs an import to its end; returns the operation."""
    return client.wait(start_import(client, import_body(url, tag, creds, **extra)), timeout)


def imported(client, url, tag=None, **kw):
    """Imports and asserts success; returns the image uuid."""
    op = do_import(client, url, tag, **kw)
    assert op["status"] == "SUCCESS", op
    return op["result_image_uuid"]


def entries(client, img, path):
    """{name: FileItem} of a directory, or None when it does not exist."""
    r = client.get(f"/v1/inspect/{img}/list", params={"path": path})
    if r.status == 404:
        return None
    assert r.status == 200, (path, r.status, r.body)
    return {f["path"].rsplit("/", 1)[-1]: f for f in r.json()["files"]}


def entry(client, img, path):
    parent, _, name = path.rstrip("/").rpartition("/")
    return (entries(client, img, parent or "/") or {}).get(name)


def download(client, img, path):
    r = client.get(f"/v1/inspect/{img}/download", params={"path": path})
    return r.body if r.status == 200 else None


def tagged(client, tag):
    """The uuid of the image holding exactly `tag`, or None."""
    imgs = client.get("/v1/images", params={"tag": tag}).json()["images"]
    exact = [i["uuid"] for i in imgs if i["tag"] == tag]
    return exact[0] if exact else None


def kind_of(f):
    if f["is_dir"]:
        return "dir"
    if f["is_symlink"]:
        return "symlink"
    if f["is_regular"]:
        return "file"
    if f["is_fifo"]:
        return "fifo"
    return "other"


def progress_events(client, op):
    return [e for e in client.events(op) if e["type"] == "progress"]


def check_app_image(client, img, busybox_sha256):
    """The app image's filesystem: whiteouts applied, modes, owners, links kept."""
    for path, want in APP_EXPECT.items():
        f = entry(client, img, path)
        if want is None:
            assert f is None, f"{path} should have been deleted by a whiteout"
            continue
        assert f is not None, f"{path} is missing"
        kind, mode, uid, gid, extra = want
        assert (kind_of(f), stat.S_IMODE(f["mode"]), f["uid"], f["gid"]) == (
            kind, mode, uid, gid), (path, f)
        if kind == "symlink":
            assert f["symlink_to"] == extra, (path, f)
        elif kind == "file":
            body = download(client, img, path)
            want_sha = busybox_sha256 if path == "/bin/busybox" else extra
            assert hashlib.sha256(body).hexdigest() == want_sha, path
    assert sorted(entries(client, img, "/rep")) == ["new"]
    assert sorted(entries(client, img, "/data")) == ["keep", "secret", "tool"]
    assert entries(client, img, "/olddir") is None
    # the hard link is a hard link, not a copy
    assert entry(client, img, "/links/hard")["nlink"] == 2
    assert entry(client, img, "/data/keep")["nlink"] == 2


def admin(data_dir, *args):
    """conftest.admin, but a failure shows the command's stderr."""
    r = subprocess.run([COPPICED, *args, "--data-dir", str(data_dir)], capture_output=True,
                       text=True)
    assert r.returncode == 0, (args, r.returncode, r.stderr)
    return r.stdout.strip()


def no_image_with_tag(client, tag):
    return tagged(client, tag) is None


# ------------------------------------------------------------------------------------------
# import from a plain registry

def test_import_from_registry(client, oci_images):
    c = oci_images
    url = c.registry.ref(c.app_repo, "1")
    op_id = start_import(client, import_body(url, "oci/app:1", creds=("", "")))
    op = client.wait(op_id, 120)
    assert op["status"] == "SUCCESS", op
    assert op["kind"] == "image_import" and op["error"] is None
    img = op["result_image_uuid"]
    assert img
    assert op["result"] == {"image": img, "tag": "oci/app:1"}
    md = op["metadata"]
    assert md["result"] == {"image": img, "tag": "oci/app:1"}
    assert md["registry"]["url"] == url and md["tag"] == "oci/app:1" and md["timeout"] == 300
    assert isinstance(md["layers_reused"], int)
    assert tagged(client, "oci/app:1") == img
    rec = client.get(f"/v1/inspect/{img}/").json()
    assert rec["uuid"] == img and rec["tag"] == "oci/app:1"
    listed = client.get("/v1/images", params={"tag": "oci/app:1"}).json()["images"][0]
    assert listed["uuid"] == img and listed["operation_uuid"] == op_id  # the import made it
    assert op_id in [o["uuid"] for o in client.get("/v1/operations",
                                                   params={"kind": "image_import"}).json()]
    run = client.run(img, "cat /etc/app.conf; ls /rep; /data/tool; "
                          "stat -c '%u:%g %a' /home/u/owned; cat /links/rel")
    assert run["status"] == "SUCCESS" and run["metadata"]["result"]["state"]["exit_code"] == 0
    assert stdout_of(run) == ("name=app\nversion=2\nnew\ntool-ran\n1000:1000 640\n"
                              "name=app\nversion=2\n")


def test_imported_filesystem(client, oci_images):
    img = imported(client, oci_images.registry.ref(oci_images.app_repo, "1"))
    check_app_image(client, img, oci_images.busybox_sha256)
    out = stdout_of(client.run(img, "cat /data/gone 2>/dev/null; echo rc=$?; ls /olddir >/dev/null "
                                    "2>&1; echo rc=$?; ls -ln /links/hard"))
    assert out.startswith("rc=1\nrc=1\n")
    assert " 2 " in out  # link count seen inside the sandbox too


def test_opaque_whiteouts(client, oci_images):
    img = imported(client, oci_images.registry.ref(oci_images.opaque_repo, "1"))
    for d, names in OPAQUE_EXPECT.items():
        assert sorted(entries(client, img, d)) == names, d
    assert entries(client, img, "/opq/sub") is None
    assert download(client, img, "/opq/new") == b"new\n"
    assert download(client, img, "/opq2/new2") == b"new2\n"  # the marker came after it


def test_progress_events(client, registry, oci_images):
    _, top = push_unique(registry, oci_images, "oci/progress", size=200_000)
    op = do_import(client, registry.ref("oci/progress", "1"), "oci/progress:1")
    assert op["status"] == "SUCCESS", op
    ev = client.events(op["uuid"])
    assert ev[-1]["type"] == "completion" and ev[-1]["data"]["status"] == "SUCCESS"
    prog = [e for e in ev if e["type"] == "progress"]
    assert prog, [e["type"] for e in ev]
    assert all(e["spid"] == 0 and PROGRESS_KEYS <= set(e["data"]) for e in prog)
    assert [e["id"] for e in ev] == list(range(len(ev)))
    done = [e["data"]["layers_done"] for e in prog]
    assert done == sorted(done)
    last = prog[-1]["data"]
    assert last["layers_total"] == 2 and last["layers_done"] == 2
    assert 0 <= last["bytes_done"] <= last["bytes_total"]
    assert last["bytes_total"] > 0


@pytest.mark.parametrize("name", ["app", "opaque", "zstd", "plain", "index-arm64",
                                  "list-amd64"])
def test_import_matches_umoci_unpack(client, oci_images, name):
    """Whatever the image, the imported tree is exactly what umoci unpacks (modes, owners,
    contents, link targets)."""
    need_tools("skopeo", "umoci")
    c = oci_images
    repo, arch = {"app": (c.app_repo, None), "opaque": (c.opaque_repo, None),
                  "zstd": (c.zstd_repo, None), "plain": (c.plain_repo, None),
                  "index-arm64": (c.multi_repo, "arm64"),
                  "list-amd64": (c.list_repo, "amd64")}[name]
    extra = {"platform": f"linux/{arch}"} if arch else {}
    img = imported(client, c.registry.ref(repo, "1"), **extra)
    work = tempdir("coppice-oci-umoci-")
    try:
        want = dir_tree(unpack_image(c.registry.ref(repo, "1"), work, arch=arch))
        got = image_tree(client, img)
        diff = {p: (got.get(p), want.get(p)) for p in set(got) | set(want)
                if got.get(p) != want.get(p)}
        assert not diff, diff
    finally:
        shutil.rmtree(work, ignore_errors=True)


# ------------------------------------------------------------------------------------------
# references, platforms, compression

@pytest.mark.parametrize("form", ["docker", "oci", "bare", "bare-digest", "docker-digest",
                                  "no-tag", "one-segment"])
def test_reference_forms(client, oci_images, form):
    c, h = oci_images, oci_images.registry.host
    url = {"docker": f"docker://{h}/{c.app_repo}:1",
           "oci": f"oci://{h}/{c.app_repo}:1",
           "bare": f"{h}/{c.app_repo}:1",
           "bare-digest": f"{h}/{c.app_repo}@{c.app_digest}",
           "docker-digest": f"docker://{h}/{c.app_repo}@{c.app_digest}",
           "no-tag": f"docker://{h}/{c.app_repo}",  # :latest
           "one-segment": f"docker://{h}/{c.single_repo}:1"}[form]
    op = do_import(client, url)  # no tag asked (the result may be an image imported before)
    assert op["status"] == "SUCCESS", (url, op)
    img = op["result_image_uuid"]
    assert img and op["result"]["image"] == img
    if form == "one-segment":
        assert download(client, img, "/comp") == b"compressed\n"
    else:
        assert download(client, img, "/etc/app.conf") == b"name=app\nversion=2\n"


@pytest.mark.parametrize("kind", ["oci-index", "docker-list"])
@pytest.mark.parametrize("platform", [None, "linux/amd64", "linux/arm64"])
def test_multi_platform(client, oci_images, kind, platform):
    repo = oci_images.multi_repo if kind == "oci-index" else oci_images.list_repo
    extra = {"platform": platform} if platform else {}
    img = imported(client, oci_images.registry.ref(repo, "1"), **extra)
    want = (platform or "linux/amd64").split("/")[1]
    assert download(client, img, "/arch") == f"{want}\n".encode()


def test_platform_not_in_index_fails(client, oci_images):
    op = do_import(client, oci_images.registry.ref(oci_images.multi_repo, "1"),
                   "oci/s390x:1", platform="linux/s390x")
    assert op["status"] == "FAILED" and op["error"] and op["result_image_uuid"] is None
    assert no_image_with_tag(client, "oci/s390x:1")


@pytest.mark.parametrize("repo", ["zstd", "plain"])
def test_zstd_and_uncompressed_layers(client, oci_images, repo):
    r = {"zstd": oci_images.zstd_repo, "plain": oci_images.plain_repo}[repo]
    img = imported(client, oci_images.registry.ref(r, "1"))
    assert stdout_of(client.run(img, "cat /comp; ls /bin/busybox")) == \
        "compressed\n/bin/busybox\n"


def test_image_config_workdir_and_env(client, oci_images):
    img = imported(client, oci_images.registry.ref(oci_images.app_repo, "1"))
    probe = 'pwd; echo "${A-unset}|$B|$GREETING|$BASE"'
    assert stdout_of(client.run(img, probe)) == "/w\n1|two|hello world|1\n"
    assert stdout_of(client.run(img, probe, cwd="")) == "/w\n1|two|hello world|1\n"
    out = stdout_of(client.run(img, probe, cwd="/", env={"B": "override", "A": None}))
    assert out == "/\nunset|override|hello world|1\n"
    assert "PATH=" in stdout_of(client.run(img, "env"))


# ------------------------------------------------------------------------------------------
# failures

@pytest.mark.parametrize("compression", ["none", "gzip"])
def test_corrupted_blob_fails(client, registry, oci_images, compression):
    repo = f"oci/corrupt-{compression}"
    _, top = push_unique(registry, oci_images, repo, size=65536, compression=compression)
    registry.corrupt_blob(top)
    op = do_import(client, registry.ref(repo, "1"), f"{repo}:1")
    assert op["status"] == "FAILED", op
    assert op["result_image_uuid"] is None and op["error"]
    if compression == "none":  # a valid tar: only the digest check can notice
        err = op["error"].lower()
        assert "digest" in err or "mismatch" in err or "sha256" in err, op["error"]
    assert no_image_with_tag(client, f"{repo}:1")


@pytest.mark.parametrize("kind", HOSTILE_KINDS)
def test_hostile_layer_fails(server, client, registry, oci_images, kind):
    marker = f"coppice-evil-{secrets.token_hex(6)}"
    repo = f"oci/hostile-{kind}"
    push_blob(registry, repo, base_layer(oci_images).blob, mount_from=oci_images.base_repo)
    push_image(registry, repo, "1", [base_layer(oci_images), hostile_layer(kind, marker)])
    op = do_import(client, registry.ref(repo, "1"), f"{repo}:1")
    assert op["status"] == "FAILED", op
    assert op["result_image_uuid"] is None and op["error"]
    assert no_image_with_tag(client, f"{repo}:1")
    # nothing landed on the host
    data = str(server.data_dir)
    for d in ("/", "/tmp", "/var/tmp", "/etc", os.path.dirname(data), data):
        assert not os.path.lexists(os.path.join(d, marker)), d
    for dirpath, _, files in os.walk(data):
        assert marker not in files, dirpath


def test_unknown_tag_and_repo_fail(client, oci_images):
    for url in (oci_images.registry.ref(oci_images.app_repo, "nope"),
                oci_images.registry.ref("no/such/repo", "1")):
        op = do_import(client, url, "oci/unknown:1")
        assert op["status"] == "FAILED", op
        assert "not found" in op["error"].lower(), op["error"]
        assert op["result_image_uuid"] is None
    assert no_image_with_tag(client, "oci/unknown:1")


def test_unreachable_registry_fails(client):
    op = do_import(client, f"docker://127.0.0.1:{free_port()}/x/y:1", timeout=120)
    assert op["status"] == "FAILED" and op["error"], op


def test_bad_import_requests(client, server):
    assert client.post("/v1/images/import", {}).status == 400
    assert client.post("/v1/images/import", {"registry": {}}).status == 400
    r = Client(server.url, None).post("/v1/images/import",
                                      import_body("docker://127.0.0.1:1/x:1"))
    assert r.status == 401


# ------------------------------------------------------------------------------------------
# authentication: htpasswd (basic) and bearer tokens; redirects

@pytest.fixture(scope="module")
def private_app(auth_registry, oci_images):
    push_layout(auth_registry, oci_images.app_layout, "1", "private/app", "1")
    return auth_registry.ref("private/app", "1")


def test_basic_auth_registry(client, auth_registry, private_app, oci_images):
    op = do_import(client, private_app, "oci/private:1", creds=("user", "wrong"))
    assert op["status"] == "FAILED" and op["result_image_uuid"] is None, op
    err = op["error"].lower()
    assert any(w in err for w in ("unauthorized", "401", "auth", "denied", "credential")), err
    op = do_import(client, private_app, "oci/private:1")
    assert op["status"] == "FAILED", op
    assert no_image_with_tag(client, "oci/private:1")

    op = do_import(client, private_app, "oci/private:1", creds=("user", "secret"))
    assert op["status"] == "SUCCESS", op
    assert op["metadata"]["registry"]["credentials"] == {"username": "user",
                                                         "password": "<MASKED>"}
    raw = client.get(f"/v1/operations/{op['uuid']}").text
    assert "secret" not in raw  # the password is masked everywhere
    assert download(client, op["result_image_uuid"], "/etc/app.conf") == \
        b"name=app\nversion=2\n"


def test_bearer_token_flow(client, registry, token_registry, oci_images):
    p = token_registry
    _, top = push_unique(registry, oci_images, "tok/app")
    op = do_import(client, p.ref("tok/app", "1"), "oci/tok:1", creds=("user", "secret"))
    assert op["status"] == "SUCCESS", (op, p.requests)
    assert op["metadata"]["registry"]["credentials"]["password"] == "<MASKED>"
    assert p.seen("v2", authorized=False), "no unauthenticated probe answered 401"
    first = p.seen("v2")[0]  # the /v2/ ping comes first and meets the challenge
    assert (first["method"], first["path"], first["status"]) == ("GET", "/v2/", 401), first
    toks = p.seen("token", authorized=True)
    assert toks and all(t["service"] == "test-registry" and t["user"] == "user" for t in toks)
    assert any("repository:tok/app:pull" in s for t in toks for s in t["scopes"]), toks
    assert p.seen("v2", "GET", True, r"/v2/tok/app/manifests/1$") or \
        p.seen("v2", "HEAD", True, r"/v2/tok/app/manifests/1$")
    assert p.seen("v2", "GET", True, f"/blobs/{top}$")
    img = op["result_image_uuid"]
    assert [n for n in entries(client, img, "/unique")] == ["tok_app-1"]

    p.clear()
    op = do_import(client, p.ref("tok/app", "1"), "oci/tok-bad:1", creds=("user", "nope"))
    assert op["status"] == "FAILED" and op["error"], op
    assert p.seen("token", authorized=False)
    assert no_image_with_tag(client, "oci/tok-bad:1")


def test_anonymous_token(client, registry, oci_images):
    _, top = push_unique(registry, oci_images, "tok/anon")
    with TokenProxy(registry, anonymous=True) as p:
        op = do_import(client, p.ref("tok/anon", "1"), creds=("", ""))
        assert op["status"] == "SUCCESS", (op, p.requests)
        assert p.seen("token", authorized=True)
        assert all(t["user"] is None for t in p.seen("token"))
        assert p.seen("v2", "GET", True, f"/blobs/{top}$")


def test_blob_redirects_are_followed(client, registry, oci_images):
    _, top = push_unique(registry, oci_images, "tok/redirect", size=100_000)
    with TokenProxy(registry, anonymous=True, redirect_blobs=True) as p:
        op = do_import(client, p.ref("tok/redirect", "1"))
        assert op["status"] == "SUCCESS", (op, p.requests)
        assert [r["status"] for r in p.seen("v2", "GET", True, f"/blobs/{top}$")] == [307]
        st = p.seen("storage", "GET", path_re=f"/{top}$")
        assert st and st[-1]["status"] == 200, p.requests
    img = op["result_image_uuid"]
    assert list(entries(client, img, "/unique")) == ["tok_redirect-1"]


def test_cancel_slow_import(client, registry, oci_images):
    push_unique(registry, oci_images, "tok/slow", size=100_000)
    with TokenProxy(registry, anonymous=True, delay=120) as p:
        op = start_import(client, import_body(p.ref("tok/slow", "1"), "oci/slow:1"))
        deadline = time.time() + 30
        while not p.seen("v2", "GET", True, r"/blobs/sha256:") and time.time() < deadline:
            time.sleep(0.05)
        assert p.seen("v2", "GET", True, r"/blobs/sha256:"), p.requests
        cur = client.get(f"/v1/operations/{op}").json()
        assert cur["status"] in ("PENDING", "ASSIGNED", "EXECUTING"), cur
        t0 = time.time()
        r = client.request("DELETE", f"/v1/operations/{op}")
        assert r.status == 202, r.body
        done = client.wait(op, timeout=30)
        assert done["status"] == "CANCELLED", done
        assert time.time() - t0 < 20
    assert done["result_image_uuid"] is None
    assert no_image_with_tag(client, "oci/slow:1")
    assert client.request("DELETE", f"/v1/operations/{op}").status == 409


def test_import_timeout(client, registry, oci_images):
    push_unique(registry, oci_images, "tok/timeout", size=100_000)
    with TokenProxy(registry, anonymous=True, delay=60) as p:
        body = import_body(p.ref("tok/timeout", "1"), "oci/timeout:1")
        body["timeout"] = 2
        t0 = time.time()
        done = client.wait(start_import(client, body), timeout=30)
        assert done["status"] == "FAILED", done
        assert "timed out" in done["error"], done
        assert time.time() - t0 < 15
    assert no_image_with_tag(client, "oci/timeout:1")


def test_retries_on_429_and_5xx(client, registry, oci_images):
    """Transient registry errors are retried with backoff; the import still succeeds."""
    push_unique(registry, oci_images, "tok/flaky", size=10_000)
    with TokenProxy(registry, anonymous=True) as p:
        p.failures = [503, 429, 502]
        done = client.wait(start_import(client, import_body(p.ref("tok/flaky", "1"), "oci/flaky:1")),
                           timeout=60)
        assert done["status"] == "SUCCESS", (done, p.requests)
        assert [r["status"] for r in p.seen("v2") if r["status"] >= 429] == [503, 429, 502]


def test_registry_mirror(coppiced_bin, registry, oci_images):
    """--registry-mirror docker.io=URL: docker.io references are pulled from the mirror."""
    push_unique(registry, oci_images, "library/mirrored", size=10_000)
    data = tempdir("coppice-it-mirror-")
    os.chmod(data, 0o755)
    srv = Server(coppiced_bin, data, ["--registry-mirror", f"docker.io={registry.url}"])
    token = subprocess.run([coppiced_bin, "token", "create", "--project", "m", "--data-dir", data],
                           check=True, capture_output=True, text=True).stdout.strip()
    srv.start()
    try:
        c = Client(srv.url, token)
        done = c.wait(start_import(c, {"registry": {"url": "mirrored:1"}, "tag": "m:1"}), 60)
        assert done["status"] == "SUCCESS", done
        assert done["metadata"]["registry"]["url"] == "mirrored:1"
    finally:
        srv.stop()
        shutil.rmtree(data, ignore_errors=True)


# ------------------------------------------------------------------------------------------
# reuse and re-import

def test_reimport_is_fast_and_moves_the_tag(client, oci_images):
    url = oci_images.registry.ref(oci_images.app_repo, "1")
    first = do_import(client, url, "oci/re:1")
    assert first["status"] == "SUCCESS", first
    t0 = time.time()
    again = do_import(client, url, "oci/re:2")
    assert again["status"] == "SUCCESS", again
    assert time.time() - t0 < 10 and again["duration"] < 10
    img = again["result_image_uuid"]
    assert img and again["result"]["tag"] == "oci/re:2" and tagged(client, "oci/re:2") == img
    assert isinstance(again["metadata"]["layers_reused"], int)
    assert download(client, img, "/etc/app.conf") == b"name=app\nversion=2\n"
    # the tag moves to whatever is imported under it next
    other = imported(client, oci_images.registry.ref(oci_images.opaque_repo, "1"), "oci/re:2")
    assert other != img and tagged(client, "oci/re:2") == other
    assert client.get(f"/v1/inspect/{img}/").json()["tag"] != "oci/re:2"


def test_shared_base_layer_is_reused(client, registry, oci_images):
    # a single fresh layer: nothing to reuse
    push_image(registry, "share/solo", "1", [unique_layer("solo")])
    solo = do_import(client, registry.ref("share/solo", "1"))
    assert solo["status"] == "SUCCESS", solo
    assert solo["metadata"]["layers_reused"] == 0
    # two images over the same busybox base layer: the second reuses it
    push_unique(registry, oci_images, "share/a")
    push_unique(registry, oci_images, "share/b")
    a = do_import(client, registry.ref("share/a", "1"))
    b = do_import(client, registry.ref("share/b", "1"))
    assert a["status"] == b["status"] == "SUCCESS", (a, b)
    assert b["metadata"]["layers_reused"] >= 1
    last_a = progress_events(client, a["uuid"])[-1]["data"]
    last_b = progress_events(client, b["uuid"])[-1]["data"]
    assert last_b["layers_total"] == 2 and last_a["layers_total"] == 2
    assert stdout_of(client.run(b["result_image_uuid"], "ls /unique")) == "share_b-1\n"


def test_layer_of_another_project_needs_proof_of_possession(client, other, registry, oci_images):
    """A manifest naming a stored layer's digest is not enough to get that layer's content
    into another project: the source must serve the bytes (the digest is then verified)."""
    _, layer = push_unique(registry, oci_images, "xproj/app", size=4096)
    done = do_import(client, registry.ref("xproj/app", "1"), "oci/xproj:1")
    assert done["status"] == "SUCCESS", done
    with TokenProxy(registry, anonymous=True) as p:
        p.deny_blobs = {layer}
        # beta never had the layer: the stored copy is not handed out.
        op = other.wait(start_import(other, import_body(p.ref("xproj/app", "1"), "oci/stolen:1")),
                        timeout=60)
        assert op["status"] == "FAILED", op
        assert no_image_with_tag(other, "oci/stolen:1")
        # alpha already holds it: reused without fetching.
        op = client.wait(start_import(client, import_body(p.ref("xproj/app", "1"), "oci/xproj:2")),
                         timeout=60)
        assert op["status"] == "SUCCESS", op
    # With a source that has the bytes, beta imports fine and shares the stored layer.
    op = other.wait(start_import(other, import_body(registry.ref("xproj/app", "1"), "oci/beta-own:1")),
                    timeout=60)
    assert op["status"] == "SUCCESS", op
    assert op["metadata"]["layers_reused"] >= 1


def test_imports_are_per_project(client, other, oci_images):
    op = do_import(client, oci_images.registry.ref(oci_images.zstd_repo, "1"), "oci/mine:1")
    assert op["status"] == "SUCCESS", op
    assert other.get(f"/v1/operations/{op['uuid']}").status == 404
    assert other.get(f"/v1/inspect/{op['result_image_uuid']}/").status == 404
    assert other.get("/v1/images", params={"tag": "oci/mine:1"}).json()["images"] == []


# ------------------------------------------------------------------------------------------
# archives: through the API (uploaded file) and the admin command

@pytest.mark.parametrize("fmt", ["oci-archive", "docker-save"])
def test_archive_import_via_files(client, oci_images, fmt):
    path = oci_images.oci_archive if fmt == "oci-archive" else oci_images.docker_archive
    f = client.upload(open(path, "rb").read())
    tag = f"oci/archive-{fmt}:1"
    op = client.wait(start_import(client, {"archive": {"file": f["uuid"]}, "tag": tag}), 120)
    assert op["status"] == "SUCCESS", op
    assert op["kind"] == "image_import"
    img = op["result_image_uuid"]
    assert op["result"] == {"image": img, "tag": tag} and tagged(client, tag) == img
    check_app_image(client, img, oci_images.busybox_sha256)
    assert stdout_of(client.run(img, "pwd; echo $B")) == "/w\ntwo\n"


def test_archive_import_cancel_is_kept(client, oci_images):
    # Regression: a cancel of an archive import answered 202, and the import still ended
    # SUCCESS with the tag moved. An accepted cancel must end CANCELLED with nothing recorded;
    # once the image is being recorded the cancel is refused (409) and the import stands.
    f = client.upload(open(oci_images.oci_archive, "rb").read())
    outcomes = []
    for i, delay in enumerate((0, 0.005, 0.01, 0.02, 0.04, 0.08, 0.15, 0.3)):
        tag = f"oci/cancel-race-{i}:1"
        op = start_import(client, {"archive": {"file": f["uuid"]}, "tag": tag})
        time.sleep(delay)
        code = client.request("DELETE", f"/v1/operations/{op}").status
        done = client.wait(op, 120)
        outcomes.append((code, done["status"]))
        if code == 202:
            assert done["status"] == "CANCELLED", done
            assert done["result_image_uuid"] is None and no_image_with_tag(client, tag)
        else:
            assert code == 409 and done["status"] == "SUCCESS", (code, done)
            assert tagged(client, tag) == done["result_image_uuid"]
    print("archive import cancel outcomes", outcomes)


def test_archive_import_garbage_fails(client):
    f = client.upload(b"this is not a tar archive\n" * 100)
    op = client.wait(start_import(client, {"archive": {"file": f["uuid"]}, "tag": "oci/junk:1"}),
                     60)
    assert op["status"] == "FAILED" and op["error"], op
    assert no_image_with_tag(client, "oci/junk:1")


def test_archive_import_unknown_file(client):
    r = client.post("/v1/images/import",
                    {"archive": {"file": "00000000-0000-4000-8000-000000000000"}})
    assert r.status in (400, 404), r.body


@pytest.mark.parametrize("fmt", ["layout", "oci-archive", "docker-save"])
def test_admin_import_archive(server, client, oci_images, fmt):
    path = {"layout": oci_images.app_layout, "oci-archive": oci_images.oci_archive,
            "docker-save": oci_images.docker_archive}[fmt]
    tag = f"oci/admin-{fmt}:1"
    admin(server.data_dir, "image", "import-archive", path, "--tag", tag)
    img = tagged(client, tag)
    assert img, f"no image tagged {tag}"
    check_app_image(client, img, oci_images.busybox_sha256)
    assert stdout_of(client.run(img, "pwd; cat /etc/app.conf")) == \
        "/w\nname=app\nversion=2\n"


# ------------------------------------------------------------------------------------------
# export and push

@pytest.fixture(scope="module")
def changed_app(oci_images, server):
    """The app image imported, then changed by a run (a child image with its own layer)."""
    client = Client(server.url, server.token)
    img = imported(client, oci_images.registry.ref(oci_images.app_repo, "1"), "oci/base-rt:1")
    op = client.run(img, "echo changed > /etc/app.conf; rm /data/keep; mkdir -p /newdir; "
                         "echo n > /newdir/f; chmod 0700 /newdir; rm -r /rep; "
                         "ln -s /newdir/f /newlink")
    assert op["status"] == "SUCCESS", op
    return op["result_image_uuid"]


def check_changed(client, img):
    assert download(client, img, "/etc/app.conf") == b"changed\n"
    assert download(client, img, "/data/keep") is None
    assert entries(client, img, "/rep") is None
    assert download(client, img, "/newdir/f") == b"n\n"
    assert stat.S_IMODE(entry(client, img, "/newdir")["mode"]) == 0o700
    assert entry(client, img, "/newlink")["symlink_to"] == "/newdir/f"
    assert entry(client, img, "/home/u/owned")["uid"] == 1000


def test_export_is_an_oci_archive(client, changed_app):
    need_tools("skopeo", "umoci")
    r = client.get(f"/v1/images/{changed_app}/export", timeout=120)
    assert r.status == 200, r.body[:300]
    work = tempdir("coppice-oci-export-")
    try:
        path = os.path.join(work, "export.tar")
        with open(path, "wb") as f:
            f.write(r.body)
        with tarfile.open(path) as t:
            names = set(t.getnames())
            assert {"oci-layout", "index.json"} <= names, names
            assert json.load(t.extractfile("oci-layout"))["imageLayoutVersion"] == "1.0.0"
            index = json.load(t.extractfile("index.json"))
            assert index["schemaVersion"] == 2 and len(index["manifests"]) == 1
            blobs = [n for n in names if n.startswith("blobs/sha256/") and t.getmember(n).isfile()]
            assert blobs
            for n in blobs:  # content-addressed for real
                assert hashlib.sha256(t.extractfile(n).read()).hexdigest() == n.rsplit("/", 1)[1]
            assert "blobs/sha256/" + index["manifests"][0]["digest"].split(":")[1] in names
        info = skopeo_inspect(f"oci-archive:{path}")
        assert info["Os"] == "linux" and info["Layers"]
        rootfs = unpack_oci_archive(path, os.path.join(work, "u"))
        assert dir_tree(rootfs) == image_tree(client, changed_app)
        assert not os.path.lexists(os.path.join(rootfs, "data/keep"))
    finally:
        shutil.rmtree(work, ignore_errors=True)


def test_export_base_image(client, busybox):
    need_tools("skopeo", "umoci")
    r = client.get(f"/v1/images/{busybox}/export", timeout=120)
    assert r.status == 200, r.body[:300]
    work = tempdir("coppice-oci-export-")
    try:
        path = os.path.join(work, "busybox.tar")
        with open(path, "wb") as f:
            f.write(r.body)
        rootfs = unpack_oci_archive(path, os.path.join(work, "u"))
        assert dir_tree(rootfs) == image_tree(client, busybox)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def test_export_unknown_image(client, other, changed_app):
    assert client.get("/v1/images/00000000-0000-4000-8000-000000000000/export").status == 404
    assert other.get(f"/v1/images/{changed_app}/export").status == 404


def start_push(client, img, url, creds=None):
    body = {"registry": {"url": url}}
    if creds:
        body["registry"]["credentials"] = {"username": creds[0], "password": creds[1]}
    r = client.post(f"/v1/images/{img}/push", body)
    assert r.status in (201, 202), (r.status, r.body)
    op = r.json()["uuid"]
    assert r.headers["location"] == f"/v1/operations/{op}"
    return op


def test_push_round_trip(client, registry, changed_app):
    url = registry.ref("pushed/rt", "1")
    op = client.wait(start_push(client, changed_app, url), 120)
    assert op["status"] == "SUCCESS", op
    assert op["kind"] == "image_push" and op["error"] is None
    assert op["metadata"]["registry"]["url"] == url
    if which("skopeo"):
        info = skopeo_inspect(url)
        assert info["Os"] == "linux" and info["Layers"]
    back = imported(client, url, "oci/rt:1")
    assert back != changed_app
    check_changed(client, back)
    assert image_tree(client, back) == image_tree(client, changed_app)


def test_push_unpacks_with_umoci(client, registry, changed_app):
    need_tools("skopeo", "umoci")
    url = registry.ref("pushed/umoci", "1")
    assert client.wait(start_push(client, changed_app, url), 120)["status"] == "SUCCESS"
    work = tempdir("coppice-oci-pushed-")
    try:
        rootfs = unpack_image(url, work)
        assert dir_tree(rootfs) == image_tree(client, changed_app)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def test_pushed_image_runs_under_runc(client, registry, changed_app):
    """The pushed image is a real OCI image: umoci makes a runtime bundle, runc runs it."""
    need_tools("skopeo", "umoci", "runc")
    url = registry.ref("pushed/runc", "1")
    assert client.wait(start_push(client, changed_app, url), 120)["status"] == "SUCCESS"
    work = tempdir("coppice-oci-runc-")
    try:
        rootfs = unpack_image(url, work)
        bundle = os.path.dirname(rootfs)
        cfg_path = os.path.join(bundle, "config.json")
        with open(cfg_path) as f:
            cfg = json.load(f)
        cfg["process"]["terminal"] = False
        cfg["process"]["args"] = ["/bin/sh", "-c", "cat /etc/app.conf /newdir/f; id -u"]
        with open(cfg_path, "w") as f:
            json.dump(cfg, f)
        out = subprocess.run(["runc", "run", "--bundle", bundle, "coppice-it-" + uuid.uuid4().hex[:8]],
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        assert out.stdout == "changed\nn\n0\n", out.stdout
    finally:
        shutil.rmtree(work, ignore_errors=True)


def test_push_with_basic_auth(client, auth_registry, changed_app):
    url = auth_registry.ref("pushed/private", "1")
    op = client.wait(start_push(client, changed_app, url), 120)
    assert op["status"] == "FAILED" and op["error"], op
    op = client.wait(start_push(client, changed_app, url, ("user", "secret")), 120)
    assert op["status"] == "SUCCESS", op
    assert op["metadata"]["registry"]["credentials"] == {"username": "user",
                                                         "password": "<MASKED>"}
    back = imported(client, url, creds=("user", "secret"))
    check_changed(client, back)


def test_push_with_bearer_token(client, registry, token_registry, changed_app):
    p = token_registry
    url = p.ref("pushed/token", "1")
    op = client.wait(start_push(client, changed_app, url, ("user", "secret")), 120)
    assert op["status"] == "SUCCESS", (op, p.requests)
    assert any("push" in s for t in p.seen("token", authorized=True) for s in t["scopes"])
    assert p.seen("v2", "PUT", True, r"/v2/pushed/token/manifests/1$")
    assert layers_of(registry, "pushed/token", "1")
    check_changed(client, imported(client, registry.ref("pushed/token", "1")))


def test_push_unknown_image(client, registry):
    r = client.post("/v1/images/00000000-0000-4000-8000-000000000000/push",
                    {"registry": {"url": registry.ref("pushed/none", "1")}})
    assert r.status == 404


# ------------------------------------------------------------------------------------------
# where coppiced may connect (SSRF): every connection, redirect, realm and upload location
# The session server runs with --insecure-registry 127.0.0.1; other loopback addresses and
# names stand for what a tenant must not reach (internal services, metadata). Nothing here
# sends a packet off the machine: every address is 127.0.0.x.

POLICY_WORDS = ("--insecure-registry", "--allow-registry", "loopback")


def assert_refused_by_policy(op):
    assert op["status"] == "FAILED" and op["result_image_uuid"] is None, op
    assert all(w in op["error"] for w in POLICY_WORDS), op["error"]


def test_registry_at_a_non_public_address_needs_the_operators_flag(client):
    """Any host could be named, and loopback hosts got plain http by prefix. Now a registry
    at a loopback (private, link-local, metadata, ...) address is refused unless the operator
    allows exactly that host: another loopback address, or `localhost` (a different name for
    the allowed 127.0.0.1), is refused before any connection is made."""
    with FakeHttp("127.0.0.3") as elsewhere, FakeHttp("127.0.0.1") as by_name:
        for ref in (f"docker://{elsewhere.host}/x/y:1", f"docker://localhost:{by_name.port}/x/y:1"):
            op = do_import(client, ref, timeout=60)
            assert_refused_by_policy(op)
        assert elsewhere.connections == 0 and by_name.connections == 0
        # Allowed by the operator (127.0.0.1): reached, over plain http.
        op = do_import(client, f"docker://{by_name.host}/x/y:1", timeout=60)
        assert op["status"] == "FAILED" and by_name.connections >= 1
        assert by_name.requests[0][:2] == ("GET", "/v2/")


def test_redirect_to_a_non_allowed_address_is_refused(client):
    """Redirects were followed to any address."""
    with FakeHttp("127.0.0.2") as target:
        def respond(h):
            if h.path == "/v2/":
                return 200, {}, b"{}"
            return 307, {"Location": f"{target.url}/internal{h.path}"}, b""

        with FakeHttp("127.0.0.1", respond) as reg:
            op = do_import(client, f"docker://{reg.host}/x/y:1", timeout=60)
            assert_refused_by_policy(op)
            assert "127.0.0.2" in op["error"]
            assert any(p.startswith("/v2/x/y/manifests/") for _, p, _ in reg.requests)
        assert target.connections == 0


def test_bearer_realm_at_a_non_allowed_address_is_refused(client):
    """The bearer realm could be any URL, and the credentials were sent there."""
    with FakeHttp("127.0.0.2") as realm:
        def respond(h):
            return 401, {"WWW-Authenticate":
                         f'Bearer realm="{realm.url}/token",service="svc"'}, b"{}"

        with FakeHttp("127.0.0.1", respond) as reg:
            op = do_import(client, f"docker://{reg.host}/x/y:1", creds=("user", "pw-0123456789"),
                           timeout=60)
            assert_refused_by_policy(op)
            assert "pw-0123456789" not in json.dumps(op)
        assert realm.connections == 0


def test_push_location_at_a_non_allowed_address_is_refused(client, busybox):
    """A push's upload Location could point anywhere."""
    with FakeHttp("127.0.0.2") as target:
        def respond(h):
            if h.command == "HEAD":
                return 404, {}, b""
            if h.command == "POST":
                return 202, {"Location": f"{target.url}/upload/1"}, b""
            return 200, {}, b"{}"

        with FakeHttp("127.0.0.1", respond) as reg:
            op = client.wait(start_push(client, busybox, f"docker://{reg.host}/p/q:1"), 120)
            assert op["status"] == "FAILED", op
            assert all(w in op["error"] for w in POLICY_WORDS), op["error"]
            assert any(m == "POST" for m, _, _ in reg.requests)
        assert target.connections == 0


def test_registry_error_bodies_reach_the_operation_only_as_a_short_excerpt(client):
    """Error bodies were copied into the operation's error (300 bytes, control characters and
    echoed credentials included)."""
    password = "hunter2-0123456789"
    basic = base64.b64encode(f"user:{password}".encode()).decode()

    def respond(h):
        if h.headers.get("Authorization") is None:
            return 401, {"WWW-Authenticate": 'Basic realm="r"'}, b""
        if h.path == "/v2/":
            return 200, {}, b"{}"
        body = ("internal \x1b[31mdebug\x00 dump: auth=" + h.headers["Authorization"] +
                " pw=" + password + " " + "A" * 5000).encode()
        return 404, {"Content-Type": "text/plain"}, body

    with FakeHttp("127.0.0.1", respond) as reg:
        op = do_import(client, f"docker://{reg.host}/x/y:1", creds=("user", password), timeout=60)
    assert op["status"] == "FAILED", op
    err = op["error"]
    assert "404" in err and "internal" in err, err
    assert password not in err and basic not in err and "<MASKED>" in err, err
    assert len(err) < 500 and all(32 <= ord(c) < 127 for c in err), repr(err)
