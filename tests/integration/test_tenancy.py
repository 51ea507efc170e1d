"""The store towards local host users: modes of the data directory, the sandbox id range
(configurable, recorded, checked against subuid/subgid), secrets redacted in echoes, and
--durable uploads."""
import hashlib
import os
import pathlib
import re
import shutil
import signal
import stat
import subprocess
import tempfile
import time

import pytest

from conftest import RUNTIMES, admin, uid_base
from coppice_client import Client, Server, stdout_of

NOBODY = 65534


def as_nobody(*argv):
    """Runs argv as an unprivileged local user (uid/gid nobody, no groups)."""
    return subprocess.run(["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}",
                           "--clear-groups", *argv], capture_output=True, text=True)


@pytest.fixture()
def scratch():
    d = pathlib.Path(tempfile.mkdtemp(prefix="coppice-tenancy-", dir="/var/tmp"))
    os.chmod(d, 0o755)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def start(binary, data, *args):
    os.makedirs(data, exist_ok=True)
    srv = Server(binary, data, extra_args=list(args))
    srv.start()
    srv.token = admin(data, "token", "create", "--project", "t")
    return srv


def serve_fails(binary, data, *args):
    r = subprocess.run([binary, "serve", "--listen", "127.0.0.1:0", "--data-dir", str(data),
                        *args], capture_output=True, text=True, timeout=60)
    assert r.returncode != 0, r.stdout
    return r.stderr


def test_data_dir_is_closed_to_local_users(server, client, busybox):
    data = str(server.data_dir)
    f = client.upload(b"uploaded secret\n")
    op = client.run(busybox, "echo run-output-secret; echo x > /made", env={"K": "v"})
    layer = os.path.join(data, "layers", op["result_image_uuid"])
    st = os.stat(data)
    assert stat.S_IMODE(st.st_mode) == 0o710 and st.st_gid == uid_base(data)
    for d in ("layers", "runs"):
        assert stat.S_IMODE(os.stat(f"{data}/{d}").st_mode) == 0o710, d
    for d in ("files", "tmp"):
        assert stat.S_IMODE(os.stat(f"{data}/{d}").st_mode) == 0o700, d
    for suffix in ("", "-wal", "-shm"):
        p = f"{data}/coppice.db{suffix}"
        if os.path.exists(p):
            assert stat.S_IMODE(os.stat(p).st_mode) == 0o600, p
    blob = f"{data}/files/{f['sha256']}"
    assert stat.S_IMODE(os.stat(blob).st_mode) == 0o600
    # an ordinary local user reaches none of it, even knowing the paths
    for p in (f"{data}/coppice.db", f"{data}/coppice.db-wal", blob, f"{layer}/made",
              f"{data}/layers/{op['result_image_uuid']}", f"{data}/server.log"):
        r = as_nobody("cat", p)
        assert r.returncode != 0 and "Permission denied" in r.stderr, (p, r)
    assert as_nobody("ls", f"{data}/layers").returncode != 0
    # and the layer's owner is the store's sandbox root, a uid no user has
    assert os.stat(f"{layer}/made").st_uid == uid_base(data)


@pytest.mark.parametrize("runtime", RUNTIMES + ["microvm"])
def test_runs_work_with_the_data_dir_closed(server, busybox, runtime):
    c = Client(server.url, server.token, runtime=runtime)
    if runtime not in c.get("/v1/whoami").json()["runtimes"]:
        pytest.skip(f"{runtime} not offered here")
    f = c.upload(b"injected\n")
    op = c.run(busybox, "cat /opt/f; id -u; echo new > /etc/new; cat /etc/passwd | head -1",
               files={"/opt/f": {"uuid": f["uuid"], "mode": "0600", "uid": 1, "gid": 1}})
    assert op["status"] == "SUCCESS", op
    out = stdout_of(op)
    assert out.startswith("injected\n0\n"), out
    layer = f"{server.data_dir}/layers/{op['result_image_uuid']}"
    assert os.stat(f"{layer}/etc/new").st_uid == uid_base(server.data_dir)


def test_secret_env_values_are_masked_and_never_stored(server, client, busybox):
    secret = "s3cret-" + os.urandom(6).hex()
    env = {"GITHUB_TOKEN": secret, "Db_Password": secret, "OPENAI_API_KEY": secret,
           "AWS_SECRET": secret, "GOOGLE_APPLICATION_CREDENTIALS": secret,
           "HTTP_AUTHORIZATION": secret, "PLAIN": "visible"}
    names = [k for k in env if k != "PLAIN"]
    script = "; ".join(f'printf %s "${k}" | sha256sum' for k in names) + "; echo $PLAIN"
    op_id = client.spawn(busybox, script, env=env, disposable=False)
    op = client.wait(op_id)
    assert op["status"] == "SUCCESS"
    # the sandbox got the real values
    digest = hashlib.sha256(secret.encode()).hexdigest()
    assert stdout_of(op) == f"{digest}  -\n" * len(names) + "visible\n"
    for k in env:
        want = "visible" if k == "PLAIN" else "<MASKED>"
        assert op["metadata"]["env"][k] == want, k
    spawn = [e for e in client.events(op_id) if e["type"] == "spawn"][0]
    assert spawn["data"]["env"]["GITHUB_TOKEN"] == "<MASKED>"
    assert spawn["data"]["env"]["PLAIN"] == "visible"
    listing = client.get("/v1/operations", params={"limit": 1000}).body
    for body in (client.get(f"/v1/operations/{op_id}").body, listing,
                 client.get(f"/v1/operations/{op_id}/events").body):
        assert secret.encode() not in body
    # nothing at rest holds it either
    for suffix in ("", "-wal"):
        p = f"{server.data_dir}/coppice.db{suffix}"
        if os.path.exists(p):
            with open(p, "rb") as fh:
                assert secret.encode() not in fh.read(), p


def test_uid_base_is_configurable_recorded_and_reaches_every_runtime(coppiced_bin, scratch):
    data = scratch / "data"
    admin(data, "image", "bootstrap", "busybox", "--uid-base", "300000")
    assert uid_base(data) == 300000
    bb = f"{data}/layers"
    assert any(os.stat(os.path.join(bb, d)).st_uid == 300000 for d in os.listdir(bb))
    srv = start(coppiced_bin, data)  # no flag: the recorded base
    try:
        for runtime in RUNTIMES:
            c = Client(srv.url, srv.token, runtime=runtime)
            op = c.run("tag:busybox:latest", "echo x > /w; chown 7:8 /w; id -u")
            assert op["status"] == "SUCCESS" and stdout_of(op) == "0\n", (runtime, op)
            st = os.stat(f"{data}/layers/{op['result_image_uuid']}/w")
            assert (st.st_uid, st.st_gid) == (300007, 300008), runtime
            listed = c.get(f"/v1/inspect/{op['result_image_uuid']}/list",
                           params={"path": "/"}).json()["files"]
            w = [e for e in listed if e["path"] in ("/w", "w")]
            assert w and w[0]["uid"] == 7, listed
        # a root filesystem imported by the admin command is shifted by the recorded base too
        rootfs = scratch / "rootfs"
        (rootfs / "bin").mkdir(parents=True)
        shutil.copy("/bin/busybox", rootfs / "bin" / "busybox")
        os.symlink("busybox", rootfs / "bin" / "sh")
        img = admin(data, "image", "import-rootfs", str(rootfs), "--tag", "re")
        assert os.stat(f"{data}/layers/{img}/bin/busybox").st_uid == 300000
        c = Client(srv.url, srv.token)
        assert stdout_of(c.run("tag:re", "/bin/busybox id -u")) == "0\n"
    finally:
        srv.stop()
    err = serve_fails(coppiced_bin, data, "--uid-base", "400000")
    assert "300000" in err and "--data-dir" in err, err
    err = serve_fails(coppiced_bin, data, "--uid-range", "131072")
    assert "300000" in err, err


def test_a_base_delegated_in_subuid_or_subgid_refuses_to_start(coppiced_bin, scratch):
    etc = scratch / "etc"
    etc.mkdir()
    (etc / "subuid").write_text("alice:100000:65536\n")
    (etc / "subgid").write_text(f"bob:{0x70000000 + 100}:65536\n")
    # a new data dir takes the default base: bob's subgid range overlaps it
    err = serve_fails(coppiced_bin, scratch / "d1", "--subid-dir", str(etc))
    assert "'bob'" in err and "subgid" in err and "--uid-base" in err, err
    # tokens can still be managed (e.g. revoked) while the server refuses to start
    r = subprocess.run([coppiced_bin, "token", "list", "--data-dir", str(scratch / "d1"),
                        "--subid-dir", str(etc)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    # the old fixed base is alice's
    err = serve_fails(coppiced_bin, scratch / "d2", "--subid-dir", str(etc), "--uid-base",
                      "100000")
    assert "'alice'" in err and "100000-165535" in err, err
    r = subprocess.run([coppiced_bin, "image", "bootstrap", "busybox", "--data-dir",
                        str(scratch / "d3"), "--subid-dir", str(etc)], capture_output=True,
                       text=True)
    assert r.returncode != 0 and "'bob'" in r.stderr
    assert not os.listdir(scratch / "d3" / "layers")  # refused before any layer was made
    # a free base starts
    srv = start(coppiced_bin, scratch / "d4", "--subid-dir", str(etc), "--uid-base", "200000")
    try:
        assert Client(srv.url, srv.token).get("/v1/whoami").status == 200
    finally:
        srv.stop()


def test_an_existing_store_made_world_readable_is_closed_at_start(coppiced_bin, scratch):
    data = scratch / "old"
    admin(data, "image", "bootstrap", "busybox")
    # what older versions left behind
    os.chmod(data, 0o755)
    os.chmod(data / "coppice.db", 0o644)
    os.chmod(data / "files", 0o711)
    srv = start(coppiced_bin, data)
    try:
        assert stat.S_IMODE(os.stat(data).st_mode) == 0o710
        assert stat.S_IMODE(os.stat(data / "coppice.db").st_mode) == 0o600
        assert stat.S_IMODE(os.stat(data / "files").st_mode) == 0o700
        op = Client(srv.url, srv.token).run("tag:busybox:latest", "echo ok")
        assert stdout_of(op) == "ok\n"
    finally:
        srv.stop()


def test_durable_upload_is_fsynced_before_it_is_acknowledged(coppiced_bin, scratch):
    if not shutil.which("strace"):
        pytest.skip("strace is not installed")
    data = scratch / "durable"
    token = admin(data, "token", "create", "--project", "t")
    trace = scratch / "trace"
    proc = subprocess.Popen(
        ["strace", "-f", "-qq", "-y", "-s", "24", "-o", str(trace), "-e",
         "trace=fsync,fdatasync,rename,renameat,renameat2,sendto,sendmsg,write,writev",
         coppiced_bin, "serve", "--durable", "--listen", "127.0.0.1:0", "--data-dir", str(data),
         "--log-level", "warn"], stdout=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert line.startswith("listening on port"), line
        c = Client(f"http://127.0.0.1:{int(line.split()[-1])}", token)
        f = c.upload(b"durable bytes\n" * 1000)
        time.sleep(0.5)
    finally:
        # SIGTERM the server itself (strace's child); strace exits with it
        server_pid = int(open(f"/proc/{proc.pid}/task/{proc.pid}/children").read().split()[0])
        os.kill(server_pid, signal.SIGTERM)
        proc.wait(timeout=60)
    lines = trace.read_text().splitlines()

    def first(pred, what):
        for i, ln in enumerate(lines):
            if pred(ln):
                return i
        raise AssertionError(f"no {what} in the trace:\n" + "\n".join(lines[-60:]))

    sha = f["sha256"]
    moved = first(lambda ln: "rename" in ln and f"files/{sha}" in ln, "rename into files/")
    upload = re.search(r'rename\w*\([^"]*"([^"]+)"', lines[moved]).group(1)
    file_sync = first(lambda ln: re.search(r"f(data)?sync\(\d+<" + re.escape(upload) + ">", ln),
                      "fsync of the upload")
    dir_sync = first(lambda ln: re.search(r"fsync\(\d+<" + re.escape(str(data)) + "/files>", ln),
                     "fsync of files/")
    reply = first(lambda ln: "HTTP/1.1 201" in ln, "the 201 reply")
    assert file_sync < moved < dir_sync < reply, (file_sync, moved, dir_sync, reply)
