"""The Python SDK (sdk/python, import name `coppice`) against a real coppiced.

Covers every public method: configuration, images (use/oci/import/list/tags), runs (arguments,
results, branching, streaming, errors), sessions, files, inspect, the asyncio client, fan_out,
the ConTree compat names, the examples, the README's snippets and an offline `pip install`.
Network trouble (a dropped SSE stream, 425/429, lost connections, stale keep-alive sockets) is
made by `ChaosProxy`, an HTTP-aware TCP proxy between the SDK and the server.
"""
import asyncio
import datetime as dt
import importlib.util
import os
import pathlib
import re
import socket
import subprocess
import sys
import tarfile
import threading
import time

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
SDK = ROOT / "sdk" / "python"
sys.path.insert(0, str(SDK))

import coppice  # noqa: E402
from coppice import (Coppice, CoppiceConfig, CoppiceSync, UploadedFile,  # noqa: E402
                     UploadFileSpec, fan_out)

from oci_fixtures import File, layer_tar, push_image, registry  # noqa: E402,F401


# ------------------------------------------------------------------------------------------
# fixtures and helpers

@pytest.fixture(scope="module")
def sdk(server):
    with CoppiceSync(base_url=server.url, token=server.token) as c:
        yield c


@pytest.fixture(scope="module")
def bb(sdk):
    """busybox:latest, pinned to its uuid."""
    return sdk.images.use("busybox:latest", strict=True)


def sh(image, script, **kw):
    return image.run(shell=script, **kw).wait()


class ChaosProxy:
    """A TCP proxy in front of the server that knows where HTTP/1.1 requests start and end
    (requests are read one at a time, as an unpipelined client sends them) and can misbehave
    on chosen requests:

    * ("cut", n): forward the request, relay only n bytes of the response, close both sides;
    * ("status", code, headers): answer with that status itself (the server sees nothing);
    * ("drop_after_send",): forward the request, then close without relaying the answer;
    * ("drop_before_send",): close the client's connection without forwarding;
    * ("close_later",): forward and relay, then close the idle client connection 0.2 s later.
    """

    def __init__(self, upstream_port):
        self.upstream = ("127.0.0.1", upstream_port)
        self.rules = []
        self.log = []
        self.lock = threading.Lock()
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.conns = []
        self.closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self):
        return f"http://127.0.0.1:{self.port}"

    def add(self, method, path_re, action, times=1):
        self.rules.append([method, re.compile(path_re), action, times])

    def requests(self, method=None, path_re=""):
        with self.lock:
            return [r for r in self.log
                    if (method is None or r[0] == method) and re.search(path_re, r[1])]

    def close(self):
        self.closed = True
        self.sock.close()
        for s in list(self.conns):
            try:
                s.close()
            except OSError:
                pass

    def _accept(self):
        while not self.closed:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(c,), daemon=True).start()

    def _match(self, method, target):
        with self.lock:
            for r in self.rules:
                if r[3] > 0 and r[0] == method and r[1].search(target):
                    r[3] -= 1
                    return r[2]
        return None

    def _serve(self, c):
        u = socket.create_connection(self.upstream)
        self.conns += [c, u]
        state = {"cut": None, "mute": False}

        def shut():
            for s in (c, u):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()

        def down():  # server -> client
            while True:
                try:
                    data = u.recv(65536)
                except OSError:
                    return
                if not data:
                    shut()
                    return
                if state["mute"]:
                    continue
                if state["cut"] is not None:
                    left = state["cut"]
                    if len(data) >= left:
                        try:
                            c.sendall(data[:left])
                        except OSError:
                            pass
                        shut()
                        return
                    state["cut"] = left - len(data)
                try:
                    c.sendall(data)
                except OSError:
                    shut()
                    return

        threading.Thread(target=down, daemon=True).start()
        buf = b""
        while True:
            while b"\r\n\r\n" not in buf:
                try:
                    data = c.recv(65536)
                except OSError:
                    data = b""
                if not data:
                    shut()
                    return
                buf += data
            head, buf = buf.split(b"\r\n\r\n", 1)
            lines = head.decode("latin-1").split("\r\n")
            method, target, _ = lines[0].split(" ", 2)
            headers = {k.strip().lower(): v.strip()
                       for k, _, v in (ln.partition(":") for ln in lines[1:])}
            n = int(headers.get("content-length", "0"))
            while len(buf) < n:
                data = c.recv(65536)
                if not data:
                    shut()
                    return
                buf += data
            body, buf = buf[:n], buf[n:]
            with self.lock:
                self.log.append((method, target, headers))
            action = self._match(method, target)
            if action and action[0] == "status":
                code, extra = action[1], action[2] if len(action) > 2 else {}
                payload = b'{"error":"chaos","status":%d}' % code
                resp = f"HTTP/1.1 {code} Chaos\r\nContent-Type: application/json\r\n"
                resp += "".join(f"{k}: {v}\r\n" for k, v in extra.items())
                resp += f"Content-Length: {len(payload)}\r\n\r\n"
                c.sendall(resp.encode() + payload)
                continue
            if action and action[0] == "drop_before_send":
                shut()
                return
            state["cut"] = action[1] if action and action[0] == "cut" else None
            if action and action[0] == "drop_after_send":
                state["mute"] = True
            u.sendall(head + b"\r\n\r\n" + body)
            if action and action[0] == "drop_after_send":
                time.sleep(0.3)
                shut()
                return
            if action and action[0] == "close_later":
                threading.Timer(0.2, shut).start()


@pytest.fixture()
def chaos(server):
    p = ChaosProxy(server.port)
    yield p
    p.close()


# ------------------------------------------------------------------------------------------
# configuration

def test_config_from_arguments_environment_and_profile(server, tmp_path, monkeypatch):
    for k in ("COPPICE_URL", "COPPICE_TOKEN", "COPPICE_PROJECT", "COPPICE_PROFILE"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("COPPICE_HOME", str(tmp_path))
    with pytest.raises(coppice.ConfigError, match="no server URL"):
        CoppiceSync()
    with pytest.raises(coppice.ConfigError):
        CoppiceSync(base_url="ftp://x", token="t")
    # arguments
    assert CoppiceSync(base_url=server.url, token=server.token).whoami().project == "alpha"
    # environment
    monkeypatch.setenv("COPPICE_URL", server.url)
    monkeypatch.setenv("COPPICE_TOKEN", server.other_token)
    monkeypatch.setenv("COPPICE_PROJECT", "beta")
    c = CoppiceSync()
    assert c.whoami().project == "beta" and c.project == "beta"
    assert c.transport.base_headers["Project"] == "beta"
    # arguments win over the environment
    assert CoppiceSync(token=server.token).whoami().project == "alpha"
    # the CLI's profile file ($COPPICE_HOME/auth.ini), current profile and COPPICE_PROFILE
    for k in ("COPPICE_URL", "COPPICE_TOKEN", "COPPICE_PROJECT"):
        monkeypatch.delenv(k)
    (tmp_path / "auth.ini").write_text(
        f"[DEFAULT]\nprofile = a\n\n[profile:a]\nurl = {server.url}\ntoken = {server.token}\n\n"
        f"[profile:b]\nurl = {server.url}/sandboxes\ntoken = {server.other_token}\n")
    assert CoppiceSync().whoami().project == "alpha"
    monkeypatch.setenv("COPPICE_PROFILE", "b")
    c = CoppiceSync()
    assert c.base_url.endswith("/sandboxes") and c.whoami().project == "beta"  # path prefix
    assert CoppiceSync(profile="a").whoami().project == "alpha"
    # a CoppiceConfig, and settings as keywords
    cfg = CoppiceConfig(base_url=server.url, token=server.token, timeout=5.0)
    assert CoppiceSync(cfg).settings.timeout == 5.0
    assert CoppiceSync(cfg, gzip=True).settings.gzip
    assert coppice.read_profile(tmp_path / "auth.ini", "a")["token"] == server.token


# ------------------------------------------------------------------------------------------
# runs

def test_issue_example_three_parallel_branches(sdk):
    base = sdk.images.use("busybox:latest")
    env = base.run(shell="echo setup > /state", disposable=False).wait()
    t0 = time.monotonic()
    ops = {name: env.run(shell=f"sleep 0.5; echo {name} >> /state && cat /state")
           for name in ("a", "b", "c")}
    out = {name: op.wait() for name, op in ops.items()}
    elapsed = time.monotonic() - t0
    assert {n: (r.exit_code, r.stdout) for n, r in out.items()} == {
        n: (0, f"setup\n{n}\n") for n in "abc"}
    assert elapsed < 1.3, f"the three branches did not run in parallel ({elapsed:.2f} s)"
    assert len({op.operation_uuid for op in ops.values()}) == 3
    # the parent is untouched, the branches were disposable
    assert env.read_text("/state") == "setup\n"
    assert all(r.uuid is None for r in out.values())


def test_run_arguments(sdk, bb):
    # a command string is split like a shell would (no shell runs); an argv list; args
    assert bb.run("echo 'a  b' c").wait().stdout == "a  b c\n"
    assert bb.run(["echo", "x y"]).wait().stdout == "x y\n"
    assert bb.run("/bin/echo", args=["-n", "z"]).wait().stdout == "z"
    assert bb.run(shell="echo $0 | wc -c").wait().stdout.strip() == "8"  # /bin/sh
    assert bb.run(["sh", "-c", "exit 3"]).wait().exit_code == 3
    r = bb.run(shell='echo "$FOO:$BAR:$(pwd):$(hostname):$(id -u):$(id -g)"; cat',
               env={"FOO": "1", "BAR": "two"}, cwd="/tmp", hostname="box", uid=1000, gid=1001,
               stdin="from stdin").wait()
    assert r.stdout == "1:two:/tmp:box:1000:1001\nfrom stdin"
    assert bb.run("od -An -tx1", stdin=b"\x00\xff").wait().stdout.split() == ["00", "ff"]
    # binary output keeps its bytes
    r = bb.run(shell="printf '\\001\\377'").wait()
    assert r.result.stdout_bytes == b"\x01\xff"
    # truncate_output_at caps each stream and flags it
    r = bb.run(shell="head -c 5000 /dev/zero | tr '\\0' x; echo e >&2",
               truncate_output_at=100).wait()
    assert len(r.result.stdout_bytes) == 100 and r.result.stdout_truncated
    assert r.result.truncated and not r.result.stderr_truncated and r.stderr == "e\n"
    # preserve_env keeps env in the new image; tag= names the result
    kept = bb.run("touch /kept", env={"KEEP": "yes"}, preserve_env=True, disposable=False,
                  tag="sdk-test/kept:1").wait()
    assert kept.tag == "sdk-test/kept:1"
    assert kept.run(shell="echo $KEEP").wait().stdout == "yes\n"
    assert sdk.images.use("sdk-test/kept:1", strict=True).uuid == kept.uuid
    # resources_limits (extension)
    r = bb.run(shell="cat /sys/fs/cgroup/pids.max 2>/dev/null || echo none",
               resources_limits={"pids": 64}).wait()
    assert r.exit_code == 0
    # argument checks happen before anything is sent
    with pytest.raises(ValueError):
        bb.run()
    with pytest.raises(ValueError):
        bb.run("ls", shell="ls")
    with pytest.raises(ValueError):
        bb.run("true", tag="x:1")  # disposable runs keep no image to tag


def test_results_are_immutable_images_and_branch(sdk, bb):
    a = sh(bb, "echo base > /f", disposable=False)
    assert a.uuid and a.uuid != bb.uuid and a.parent is bb and a.parent_uuid == bb.uuid
    assert a.operation_uuid == a.result.operation_uuid
    b1 = sh(a, "echo one >> /f", disposable=False)
    b2 = sh(a, "echo two >> /f", disposable=False)
    assert len({a.uuid, b1.uuid, b2.uuid}) == 3
    assert (a.read_text("/f"), b1.read_text("/f"), b2.read_text("/f")) == (
        "base\n", "base\none\n", "base\ntwo\n")
    # nothing changed: the same image comes back; a result chains with .run on the run
    assert sh(a, "cat /f > /dev/null", disposable=False).uuid == a.uuid
    assert a.run(shell="echo x > /g", disposable=False).run("cat /g").wait().stdout == "x\n"
    # a non-zero exit is a result, not an error; metrics are included
    r = sh(bb, "echo out; echo err >&2; exit 7")
    res = r.result
    assert (r.exit_code, r.stdout, r.stderr, res.status, res.signal, res.timed_out) == (
        7, "out\n", "err\n", "SUCCESS", -1, False)
    assert not res.ok and res.duration >= res.elapsed_time >= 0
    assert set(res.resources) >= {"user_time_us", "sys_time_us", "max_rss_kb", "minor_faults"}
    assert res.max_rss_kb > 0 and res.cost == 0.0
    # a disposable result has no image to run from
    with pytest.raises(coppice.DisposableImageRunError):
        r.run("true")
    with pytest.raises(coppice.ImageStateError):
        bb.stdout  # noqa: B018 (not a run result)
    # the prepared run's shortcuts wait for the result
    p = bb.run(shell="echo hi")
    assert p.stdout == "hi\n" and p.exit_code == 0 and p.uuid is None and p.done
    assert p.result.operation_uuid == p.operation_uuid and p.status().status == "SUCCESS"


def test_lazy_start_and_tag_reference(sdk, bb):
    p = bb.run("echo lazy", start=False)
    assert not p.started and p.operation_uuid is None
    assert p.start() is p and p.started
    assert p.wait().stdout == "lazy\n" and p.wait() is p.wait()  # the result is kept
    # an image made from a tag runs as `tag:NAME` and inspects by resolving the tag
    t = sdk.images.use("busybox:latest")
    assert t.uuid is None and t.ref == "tag:busybox:latest"
    assert t.run("true").wait().result.status == "SUCCESS"
    assert t.exists("/bin/sh") and t.resolve().uuid == bb.uuid
    assert sdk.images.use(f"tag:{bb.tag}").ref == "tag:busybox:latest"
    assert sdk.images.use(bb.uuid).uuid == bb.uuid


def test_streaming_output_arrives_live(sdk, bb):
    run = bb.run(shell="echo first; sleep 0.6; echo second >&2; sleep 0.1; echo third")
    got, times = [], []
    for chunk in run:
        got.append((chunk.stream_name, chunk.text))
        times.append(time.monotonic())
    assert got == [("stdout", "first\n"), ("stderr", "second\n"), ("stdout", "third\n")]
    assert times[1] - times[0] > 0.4  # the first chunk came before the process went on
    assert run.done and run.wait().stdout == "first\nthird\n"
    # iterating again replays the stored chunks; a finished run iterates at once
    assert [c.text for c in run] == ["first\n", "second\n", "third\n"]
    # one thread iterates while another waits: both see the whole run
    run = bb.run(shell="for i in 1 2 3; do echo $i; sleep 0.1; done")
    waited = []
    t = threading.Thread(target=lambda: waited.append(run.wait().stdout))
    t.start()
    assert "".join(c.text for c in run.iter_output()) == "1\n2\n3\n"
    t.join()
    assert waited == ["1\n2\n3\n"]


def test_errors_are_typed(server, sdk, bb):
    with pytest.raises(coppice.NotFoundError) as e:
        sdk.images.get("00000000-0000-4000-8000-000000000000")
    assert e.value.status == 404 and e.value.message
    with pytest.raises(coppice.NotFoundError):
        sdk.images.use("no-such-tag:1", strict=True)
    with pytest.raises(coppice.ForbiddenError):
        bb.tag_as("mine")  # public base images cannot be re-tagged
    with pytest.raises(coppice.UnauthorizedError):
        CoppiceSync(base_url=server.url, token="wrong").whoami()
    with pytest.raises(coppice.BadRequestError, match="limit"):
        sdk.images.list(limit=0)
    with pytest.raises(coppice.BadRequestError):
        bb.run("true", cwd="/a/../b").wait()
    # FAILED (platform error) vs a timeout vs a cancel
    with pytest.raises(coppice.FailedOperationError) as e:
        bb.run(shell="head -c 2000000 /dev/zero > /big", disposable=False,
               resources_limits={"max_layer_bytes": 100000}).wait()
    assert "max_layer_bytes" in e.value.error and e.value.operation_uuid
    with pytest.raises(coppice.OperationTimedOutError) as e:
        bb.run(shell="echo before; sleep 10", timeout=1).wait()
    assert e.value.result.timed_out and e.value.result.stdout == "before\n"
    run = bb.run("sleep 10")
    with pytest.raises(coppice.WaitTimeoutError):
        run.wait(timeout=0.3)
    assert run.cancel() is True
    with pytest.raises(coppice.CancelledOperationError):
        run.wait()
    assert run.cancel() is False  # already finished: 409 -> False
    with pytest.raises(coppice.CancelledOperationError):
        run.wait()  # the same error again
    # a wait that times out can be resumed
    run = bb.run(shell="sleep 0.5; echo late")
    with pytest.raises(TimeoutError):
        run.wait(timeout=0.1)
    assert run.wait(timeout=10).stdout == "late\n"
    # every SDK error derives from CoppiceError
    assert issubclass(coppice.TooManyRequestsError, coppice.ApiError)
    assert coppice.RateLimitError is coppice.TooManyRequestsError
    assert issubclass(coppice.OperationTimedOutError, coppice.CoppiceError)


# ------------------------------------------------------------------------------------------
# sessions

def test_session_history_and_rollback(sdk, bb):
    s = bb.session()
    assert s.image is bb and s.history == (bb,)
    one = s.run(shell="echo 1 > /n").wait()
    s.run(shell="echo 2 > /n")  # not waited: the next run waits for it (linear history)
    three = s.run(shell="echo $(( $(cat /n) + 1 )) > /n; cat /n").wait()
    assert three.stdout == "3\n" and s.read_text("/n") == "3\n" and len(s.history) == 4
    assert s.uuid == three.uuid and s.image == three
    # a disposable run does not move the session
    assert s.run(shell="echo 9 > /n", disposable=True).wait().uuid is None
    assert s.read_text("/n") == "3\n"
    assert s.rollback().uuid == s.history[-1].uuid and s.read_text("/n") == "2\n"
    assert s.rollback(to=one).uuid == one.uuid and s.read_text("/n") == "1\n"
    assert [e.name for e in s.ls("/") if e.name == "n"] == ["n"]
    with pytest.raises(ValueError):
        s.rollback(5)
    with pytest.raises(ValueError):
        s.rollback(to="00000000-0000-4000-8000-000000000000")
    f = s.fork()
    f.run(shell="echo fork > /n").wait()
    assert f.read_text("/n") == "fork\n" and s.read_text("/n") == "1\n"
    assert s.tag_as("sdk-test/session:1").uuid == one.uuid
    s.checkout(bb)
    assert not s.exists("/n") and len(s.history) == 3
    with pytest.raises(AttributeError):
        one.tag = "x"  # images are immutable
    # the parent image never changed
    assert one.read_text("/n") == "1\n"
    # a failed run that nobody waited for is raised by the next run
    s2 = bb.session()
    s2.run("true", cwd="/does/not/exist")
    with pytest.raises(coppice.FailedOperationError):
        s2.run("true")
    assert s2.run(shell="echo ok").wait().stdout == "ok\n" and len(s2.history) == 2


# ------------------------------------------------------------------------------------------
# files

def test_files_upload_once_and_inject(sdk, bb, tmp_path, server):
    posts = []
    orig = sdk.transport.request

    def spy(method, path, **kw):
        if method == "POST" and path == "/v1/files":
            posts.append(path)
        return orig(method, path, **kw)

    sdk.transport.request = spy
    try:
        data = os.urandom(64)
        f = sdk.files.upload(data)
        assert isinstance(f, UploadedFile) and f.size == 64 and len(posts) == 1
        assert sdk.files.upload(data) == f and len(posts) == 1  # remembered
        assert sdk.files.get(f.sha256).uuid == f.uuid and sdk.files.exists(f.sha256)
        assert not sdk.files.exists("0" * 64)
        with pytest.raises(coppice.NotFoundError):
            sdk.files.get("0" * 64)
        # a fresh client asks the server first (GET /v1/files/{sha}) and does not re-upload
        with CoppiceSync(base_url=server.url, token=server.token) as fresh:
            assert fresh.files.upload(data).uuid == f.uuid
        assert len(posts) == 1
        assert any(x.uuid == f.uuid for x in sdk.files.list(limit=1000))
        assert any(x.uuid == f.uuid for x in sdk.files.iter(page_size=1))
        assert sdk.files.list(since=dt.timedelta(hours=1))
        # injection: local paths (mode from the executable bit), bytes, specs, uploaded files
        script = tmp_path / "tool.sh"
        script.write_text("#!/bin/sh\necho tool $1\n")
        script.chmod(0o755)
        conf = tmp_path / "app.conf"
        conf.write_text("k=v\n")
        r = bb.run(shell="stat -c '%n %a %u %g' /tool.sh /app.conf /opt/data /etc/x /y; "
                         "/tool.sh ok; cat /app.conf",
                   files=[script, str(conf)]).wait()
        assert r.stdout.startswith("/tool.sh 755 0 0\n/app.conf 644 0 0\n")
        r = bb.run(shell="stat -c '%n %a %u %g' /opt/data /etc/x /y; cat /opt/data /y",
                   files={"/opt/data": UploadFileSpec(b"bytes!", mode=0o600, uid=5, gid=6),
                          "/etc/x": f, "/y": str(conf)}).wait()
        assert r.stdout == "/opt/data 600 5 6\n/etc/x 644 0 0\n/y 644 0 0\nbytes!k=v\n"
        assert len(posts) == 4  # data, tool.sh, app.conf, b"bytes!": each once
        img = bb.apply_files(UploadFileSpec(b"applied", path="/srv/a.txt"))
        assert img.read(path="/srv/a.txt") == b"applied"
        with pytest.raises(ValueError):
            bb.run("true", files={"relative/path": b"x"})
        with pytest.raises(ValueError):
            bb.run("true", files=[UploadFileSpec(b"no destination")])
    finally:
        sdk.transport.request = orig


# ------------------------------------------------------------------------------------------
# inspect

def test_inspect_without_running(sdk, bb, tmp_path):
    img = sh(bb, "mkdir -p /d/sub && printf 'alpha\\nBeta\\n' > /d/a.txt && "
                 "echo x > /d/sub/b.py && ln -s a.txt /d/link", disposable=False)
    entries = {e.name: e for e in img.ls("/d")}
    assert set(entries) == {"a.txt", "sub", "link"}
    a = entries["a.txt"]
    assert (a.path, a.size, a.is_file, a.is_dir, a.permissions, a.owner) == (
        "/d/a.txt", 11, True, False, 0o644, "root")
    assert entries["sub"].is_dir and entries["link"].is_symlink
    assert entries["link"].symlink_to == "a.txt"
    assert "a.txt" in img.ls_text("/d")
    assert img.read("/d/a.txt") == b"alpha\nBeta\n" and img.read_text("/d/sub/b.py") == "x\n"
    assert img.exists("/d/a.txt") and img.exists("/d") and not img.exists("/d/none")
    with pytest.raises(coppice.NotFoundError):
        img.read("/d/none")
    with pytest.raises(coppice.UnprocessableEntityError):
        img.read("/d")
    p = img.download("/d/a.txt", tmp_path / "copy.txt")
    assert p.read_bytes() == b"alpha\nBeta\n"
    (tmp_path / "dir").mkdir()
    assert img.download("/d/a.txt", tmp_path / "dir").name == "a.txt"
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        assert img.download("/d/sub/b.py") == pathlib.Path("b.py") and pathlib.Path(
            "b.py").read_text() == "x\n"
    finally:
        os.chdir(cwd)
    g = img.grep("beta", path="/d", case="insensitive")
    assert [(m.path, m.line_number, m.line_text) for m in g] == [("/d/a.txt", 2, "Beta\n")]
    assert g.matches[0].submatches == ((0, 4, "Beta"),) and not g.truncated
    assert len(img.grep(["alpha", "x"], path="/d", glob="*.py")) == 1
    assert len(img.grep("nothing-here", path="/d")) == 0
    assert len(img.grep("a", path="/d", max_total=1)) == 1


def test_export_and_import_archive(sdk, bb, tmp_path):
    img = sh(bb, "echo exported > /marker", disposable=False)
    archive = img.export(tmp_path / "img.tar")
    with tarfile.open(archive) as t:
        assert "index.json" in t.getnames()
    imported = sdk.images.import_from(archive=archive, tag="sdk-test/imported:1")
    assert imported.tag == "sdk-test/imported:1" and imported.uuid != img.uuid
    assert imported.read_text("/marker") == "exported\n"
    assert sh(imported, "cat /marker").stdout == "exported\n"
    op = sdk.images.start_import(archive=archive.read_bytes(), tag="sdk-test/imported:2")
    assert op.wait().tag == "sdk-test/imported:2"
    op = sdk.images.start_import(archive=archive, tag="sdk-test/imported:3")
    assert op.cancel() in (True, False)  # an archive import is quick: it may be done already
    try:  # (the server accepts a cancel of an archive import but lets it finish)
        assert op.wait().tag == "sdk-test/imported:3"
    except coppice.CancelledOperationError:
        pass
    with pytest.raises(ValueError):
        sdk.images.import_from()


# ------------------------------------------------------------------------------------------
# images: listing and tags

def test_images_listing_paging_and_time_filters(sdk, bb):
    made = [sh(bb, f"echo {i} > /i", disposable=False) for i in range(3)]
    page = sdk.images.list(limit=2)
    assert len(page) == 2 and page[0].uuid == made[-1].uuid  # newest first
    assert sdk.images.list(limit=2, offset=1)[0].uuid == made[-2].uuid
    everything = list(sdk.images.iter(page_size=2))
    assert len({i.uuid for i in everything}) == len(everything) >= 4
    assert [i.uuid for i in sdk.images] == [i.uuid for i in everything]
    assert [i.uuid for i in sdk.images(number=3)] == [m.uuid for m in reversed(made)]
    recent = sdk.images.list(limit=1000, since=dt.timedelta(minutes=10))
    assert {m.uuid for m in made} <= {i.uuid for i in recent}
    assert not sdk.images.list(until=dt.datetime(2000, 1, 1))
    assert sdk.images.list(since="15m", until=dt.datetime.now(dt.timezone.utc))
    tagged = sdk.images(number=1000, tagged=True)
    assert tagged and all(i.tag for i in tagged)
    assert [i.tag for i in sdk.images.list(prefix="busybox")][0] == "busybox:latest"
    assert sdk.images.list(uuid=made[0].uuid)[0].uuid == made[0].uuid
    got = sdk.images.get(made[0].uuid)
    assert got.parent_uuid == bb.uuid and got.depth == 1 and got.created_at.tzinfo


def test_tags(sdk, bb):
    a = sh(bb, "echo a > /t", disposable=False)
    b = sh(bb, "echo b > /t", disposable=False)
    ta = a.tag_as("sdk-test/moving:1")
    assert ta.tag == "sdk-test/moving:1" and a.tag is None  # a new object; `a` unchanged
    assert sdk.images.use("sdk-test/moving:1", strict=True).uuid == a.uuid
    b.tag_as("sdk-test/moving:1")  # moves the tag
    assert sdk.images.use("sdk-test/moving:1", strict=True).uuid == b.uuid
    assert a.refresh().tag is None
    assert sdk.images.use("sdk-test/moving:1").read_text("/t") == "b\n"
    assert b.untag().tag is None
    with pytest.raises(coppice.NotFoundError):
        sdk.images.use("sdk-test/moving:1", strict=True)
    assert b.tag_as("sdk-test/x:1").tag_as(None).tag is None


def test_oci_uses_the_tag_or_imports(sdk, registry):  # noqa: F811 (fixture)
    push_image(registry, "sdk/hello", "1", [layer_tar({"hello.txt": File(b"hello oci\n")})])
    ref = registry.ref("sdk/hello", "1")
    before = len(sdk.operations.list(kind="image_import", limit=1000))
    img = sdk.images.oci(ref)
    assert img.tag == f"{registry.host}/sdk/hello:1"  # the reference's own name
    assert img.read_text("/hello.txt") == "hello oci\n"
    for alias in (sdk.images.docker, sdk.images.podman, sdk.images.pull_by_oci,
                  sdk.images.pull):
        assert alias(ref).uuid == img.uuid  # tagged already: no second import
    assert sdk.images.use(ref).tag == img.tag  # a reference means the tag an import gives
    assert len(sdk.operations.list(kind="image_import", limit=1000)) == before + 1
    again = sdk.images.import_from(ref, tag="sdk-test/hello:again")  # always imports
    assert again.uuid == img.uuid and again.tag == "sdk-test/hello:again"  # same digest
    with pytest.raises(coppice.FailedOperationError):
        sdk.images.import_from(registry.ref("sdk/hello", "missing"))
    assert coppice._sync.default_tag("docker://docker.io/library/busybox") == "busybox:latest"
    assert coppice._sync.default_tag("ghcr.io/o/i:2") == "ghcr.io/o/i:2"


# ------------------------------------------------------------------------------------------
# operations

def test_operations_list_get_cancel_attach(sdk, bb, client):
    run = bb.run("sleep 5")
    info = sdk.operations.get(run.operation_uuid)
    assert info.kind == "instance" and info.status in ("PENDING", "ASSIGNED", "EXECUTING")
    assert not info.done and info.image_uuid == bb.uuid
    assert run.operation_uuid in [o.uuid for o in sdk.operations.list(limit=50)]
    assert sdk.operations.cancel(run.operation_uuid)
    with pytest.raises(coppice.CancelledOperationError):
        run.wait()
    assert sdk.operations.get(run.operation_uuid).status == "CANCELLED"
    assert sdk.operations.list(status="CANCELLED", limit=5)
    # follow a run started by someone else
    op = client.spawn(bb.uuid, "echo attached; sleep 0.2; echo done")
    attached = sdk.operations.attach(op)
    assert [c.text for c in attached] == ["attached\n", "done\n"]
    assert attached.wait().stdout == "attached\ndone\n"
    assert sdk.whoami().permissions["spawn"] is True


# ------------------------------------------------------------------------------------------
# transport: streams, retries, dropped connections

def test_event_stream_resumes_after_a_dropped_connection(server, bb, chaos):
    c = CoppiceSync(base_url=chaos.url, token=server.token)
    chaos.add("GET", r"/events\?follow=1", ("cut", 1400))  # mid-stream, once
    run = c.images.use(bb.uuid).run(shell='i=0; while [ $i -lt 30 ]; do echo "line $i"; '
                                          'i=$((i+1)); sleep 0.02; done')
    text = "".join(chunk.text for chunk in run)
    assert text == "".join(f"line {i}\n" for i in range(30))  # complete, each line once
    assert run.wait().stdout == text
    reqs = chaos.requests("GET", "/events")
    assert len(reqs) == 2 and "last-event-id" not in reqs[0][2]
    assert int(reqs[1][2]["last-event-id"]) > 0
    c.close()


def test_event_stream_falls_back_to_polling(server, bb, chaos):
    c = CoppiceSync(base_url=chaos.url, token=server.token, max_stream_reconnects=2)
    chaos.add("GET", r"/events", ("cut", 250), times=100)  # every stream breaks at once
    run = c.images.use(bb.uuid).run(shell="echo a; sleep 0.2; echo b >&2; echo c")
    # polled: the whole output at the end, one chunk per stream
    assert [(ch.stream_name, ch.text) for ch in run] == [("stdout", "a\nc\n"),
                                                         ("stderr", "b\n")]
    assert run.wait().stdout == "a\nc\n" and run.wait().stderr == "b\n"
    assert len(chaos.requests("GET", "/events")) == 3
    assert chaos.requests("GET", r"/v1/operations/[0-9a-f-]+$")
    # a server without the events route (404): polling from the start
    chaos.rules.clear()
    n = len(chaos.requests("GET", "/events"))
    chaos.add("GET", r"/events", ("status", 404), times=100)
    r = c.images.use(bb.uuid).run(shell="echo polled; exit 4").wait()
    assert (r.stdout, r.exit_code, r.result.status) == ("polled\n", 4, "SUCCESS")
    assert r.result.resources["max_rss_kb"] > 0
    assert len(chaos.requests("GET", "/events")) == n + 1  # asked once, then polled
    c.close()


def test_retries_on_425_and_429_with_retry_after(server, bb, chaos):
    c = CoppiceSync(base_url=chaos.url, token=server.token)
    chaos.add("POST", r"^/v1/instances$", ("status", 429, {"Retry-After": "0"}), times=2)
    chaos.add("GET", r"/events", ("status", 425, {"Retry-After": "0"}), times=1)
    r = c.images.use(bb.uuid).run("echo retried").wait()
    assert r.stdout == "retried\n"
    assert len(chaos.requests("POST", "/v1/instances")) == 3
    assert len(chaos.requests("GET", "/events")) == 2
    # out of retries: the typed error, with Retry-After read
    c2 = CoppiceSync(base_url=chaos.url, token=server.token, max_retries=1)
    chaos.add("GET", r"/v1/whoami", ("status", 429, {"Retry-After": "0"}), times=2)
    with pytest.raises(coppice.TooManyRequestsError) as e:
        c2.whoami()
    assert e.value.retry_after == 0
    chaos.add("GET", r"/v1/whoami", ("status", 425), times=2)
    with pytest.raises(coppice.TooEarlyError):
        c2.whoami()
    # an HTTP-date Retry-After works too
    chaos.add("GET", r"/v1/whoami", ("status", 429, {
        "Retry-After": "Thu, 01 Jan 1970 00:00:00 GMT"}), times=1)
    assert c2.whoami().project == "alpha"
    c.close()
    c2.close()


def test_a_post_that_may_have_been_accepted_is_not_replayed(server, bb, chaos, client):
    c = CoppiceSync(base_url=chaos.url, token=server.token)
    marker = f"echo maybe-{time.time()}"
    chaos.add("POST", r"^/v1/instances$", ("drop_after_send",))
    with pytest.raises(coppice.TransportError) as e:
        c.images.use(bb.uuid).run(shell=marker)
    assert e.value.maybe_accepted
    assert len(chaos.requests("POST", "/v1/instances")) == 1  # not sent twice
    ops = client.get("/v1/operations", params={"limit": 20}).json()
    assert sum(1 for o in ops if client.get(f"/v1/operations/{o['uuid']}").json()[
        "metadata"].get("command") == marker) == 1  # the server did run it, once
    # a 503 on a POST is not replayed either; on a GET it is
    chaos.add("POST", r"^/v1/instances$", ("status", 503, {"Retry-After": "0"}))
    with pytest.raises(coppice.ServerError):
        c.images.use(bb.uuid).run("true")
    chaos.add("GET", r"/v1/whoami", ("status", 503, {"Retry-After": "0"}))
    assert c.whoami().project == "alpha"
    # an idempotent request whose connection drops is replayed
    chaos.add("GET", r"/v1/whoami", ("drop_before_send",))
    n = len(chaos.requests("GET", "/v1/whoami"))
    assert c.whoami().project == "alpha"
    assert len(chaos.requests("GET", "/v1/whoami")) == n + 2
    c.close()


def test_stale_keepalive_connection_is_not_used_for_a_post(server, bb, chaos):
    c = CoppiceSync(base_url=chaos.url, token=server.token)
    chaos.add("GET", r"/v1/whoami", ("close_later",))
    c.whoami()
    time.sleep(0.4)  # the proxy closed the idle pooled connection meanwhile
    assert c.images.use(bb.uuid).run("echo fresh").wait().stdout == "fresh\n"
    assert len(chaos.requests("POST", "/v1/instances")) == 1
    # the server is unreachable: connection errors, retried then raised
    dead = CoppiceSync(base_url="http://127.0.0.1:9", token="t", max_retries=1)
    with pytest.raises(coppice.TransportError):
        dead.whoami()
    c.close()


def test_gzip_responses_and_streams(server, bb):
    with CoppiceSync(base_url=server.url, token=server.token, gzip=True) as c:
        img = c.images.use(bb.uuid)
        run = img.run(shell="for i in 1 2 3; do echo $i; sleep 0.05; done")
        assert [ch.text for ch in run] == ["1\n", "2\n", "3\n"]
        assert img.read_text("/etc/passwd").startswith("root:")
        assert [e.name for e in img.ls("/bin")][:1]
        with pytest.raises(coppice.NotFoundError, match="no such file"):
            img.read("/nope")


# ------------------------------------------------------------------------------------------
# asyncio client

def test_async_client(server, bb, tmp_path):
    async def main():
        async with Coppice(base_url=server.url, token=server.token) as client:
            assert (await client.whoami()).project == "alpha"
            base = await client.images.use("busybox:latest", strict=True)
            assert base.uuid == bb.uuid and base.tag == "busybox:latest"
            assert (await client.images.use(bb.uuid)).uuid == bb.uuid
            env = await base.run(shell="echo setup > /state", disposable=False)
            assert env.uuid and env.exit_code == 0 and env.parent.uuid == bb.uuid
            outs = await asyncio.gather(*(env.run(shell=f"echo {n} >> /state; cat /state")
                                          for n in "abc"))
            assert [o.stdout for o in outs] == [f"setup\n{n}\n" for n in "abc"]
            run = env.run(shell="echo live; sleep 0.1; echo more >&2")
            assert [(c.stream_name, c.text) async for c in run] == [
                ("stdout", "live\n"), ("stderr", "more\n")]
            assert run.done and run.stdout == "live\n" and run.exit_code == 0
            chained = await env.run(shell="echo c > /c", disposable=False).run("cat /c")
            assert chained.stdout == "c\n"
            started = await env.run("sleep 0.1").start()
            assert started.operation_uuid and (await started.wait()).exit_code == 0
            # inspect and files
            assert (await env.read_text("/state")) == "setup\n"
            assert [e.name for e in await env.ls("/") if e.name == "state"] == ["state"]
            assert await env.exists("/state") and (await env.grep("setup", path="/state"))
            f = await client.files.upload(b"async file")
            assert (await client.files.get(f.sha256)).uuid == f.uuid
            assert await client.files.exists(f.sha256) and await client.files.list()
            assert f.uuid in [x.uuid async for x in client.files.iter(page_size=1000)]
            r = await env.run(shell="cat /f", files={"/f": f})
            assert r.stdout == "async file"
            # sessions
            s = env.session()
            await s.run(shell="echo 1 > /n")
            await s.run(shell="echo 2 > /n")
            assert await s.read_text("/n") == "2\n" and len(s.history) == 3
            assert (await s.rollback()).uuid == s.uuid and await s.read_text("/n") == "1\n"
            # images and tags
            tagged = await env.tag_as("sdk-test/async:1")
            assert tagged.tag == "sdk-test/async:1"
            assert (await tagged.untag()).tag is None
            assert len(await client.images(number=2)) == 2
            assert [i async for i in client.images.iter(page_size=50)]
            # errors and cancellation: a task that stops waiting cancels the run
            with pytest.raises(coppice.FailedOperationError):
                await env.run("true", cwd="/missing/dir")
            slow = env.run("sleep 10")
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(slow, 0.5)
            for _ in range(100):
                if (await client.operations.get(slow.operation_uuid)).status == "CANCELLED":
                    break
                await asyncio.sleep(0.05)
            assert (await slow.status()).status == "CANCELLED"
            # the rest of the surface, briefly
            assert (await env.refresh()).uuid == env.uuid
            assert (await client.images.use("busybox:latest")).uuid is None
            assert (await (await client.images.use("busybox:latest")).resolve()).uuid == bb.uuid
            assert (await client.images.get(env.uuid)).parent_uuid == bb.uuid
            assert (await client.images.list(limit=1))[0].uuid
            with_file = await env.apply_files(UploadFileSpec(b"z", path="/z"))
            assert await with_file.read("/z") == b"z" and "z" in await with_file.ls_text("/")
            p = await with_file.download("/z", tmp_path / "z")
            assert p.read_bytes() == b"z"
            archive = await with_file.export(tmp_path / "a.tar")
            op = await client.images.start_import(archive=archive, tag="sdk-test/async-imp:1")
            assert (await op).read and (await op.wait()).tag == "sdk-test/async-imp:1"
            assert (await client.images.import_from(archive=archive)).uuid
            fork = await s.fork()
            await fork.run(shell="echo f > /n")
            assert await fork.read_text("/n") == "f\n" and await s.read_text("/n") == "1\n"
            await s.checkout(env)
            assert not await s.exists("/n")
            assert (await s.tag_as("sdk-test/async-s:1")).tag == "sdk-test/async-s:1"
            ops = await client.operations.list(limit=5)
            assert ops and (await client.operations.get(ops[0].uuid)).uuid == ops[0].uuid
            att = client.operations.attach(outs[0].operation_uuid)
            assert (await att).stdout == "setup\na\n"
            long = await env.run("sleep 10").start()
            assert await long.cancel() and not await client.operations.cancel(
                outs[0].operation_uuid)
            with pytest.raises(coppice.CancelledOperationError):
                await long
            # fan_out returns a coroutine for an async image
            res = await fan_out(env, ["echo 1", "exit 2", ["echo", "x"]], max_parallel=2)
            assert [(r.exit_code, r.stdout) for r in res] == [(0, "1\n"), (2, ""), (0, "x\n")]
            return True

    assert asyncio.run(main())


def test_async_client_has_the_same_methods():
    pairs = [(coppice.CoppiceSync, coppice.Coppice), (coppice.Image, coppice.AsyncImage),
             (coppice.PreparedRun, coppice.AsyncPreparedRun),
             (coppice.Session, coppice.AsyncSession),
             (coppice.ImportOperation, coppice.AsyncImportOperation),
             (coppice.ImagesManager, coppice.AsyncImagesManager),
             (coppice.FilesManager, coppice.AsyncFilesManager),
             (coppice.OperationsManager, coppice.AsyncOperationsManager)]
    for sync_cls, async_cls in pairs:
        missing = [n for n in dir(sync_cls) if not n.startswith("_") and not hasattr(async_cls, n)
                   and n not in ("iter_output",)]  # async: `async for chunk in run`
        assert not missing, f"{async_cls.__name__} lacks {missing}"


# ------------------------------------------------------------------------------------------
# tree search helpers and examples

def test_fan_out(sdk, bb):
    env = sh(bb, "echo 0 > /v", disposable=False)
    cmds = [f"echo {i} > /v; cat /v; exit {i % 3}" for i in range(6)]
    res = fan_out(env, cmds, max_parallel=3, disposable=False)
    assert [(r.exit_code, r.stdout) for r in res] == [(i % 3, f"{i}\n") for i in range(6)]
    assert len({r.uuid for r in res}) == 6 and env.read_text("/v") == "0\n"
    best = min(res, key=lambda r: (r.exit_code, r.result.elapsed_time))
    assert best.exit_code == 0 and best.read_text("/v") in ("0\n", "3\n")
    # dicts of run() arguments; errors raised, or returned with return_exceptions
    mixed = [{"shell": "echo $X", "env": {"X": "dict"}},
             {"command": "true", "cwd": "/not/there"}]
    with pytest.raises(coppice.FailedOperationError):
        fan_out(env, mixed)
    out = fan_out(env, mixed, return_exceptions=True)
    assert out[0].stdout == "dict\n" and isinstance(out[1], coppice.FailedOperationError)
    assert fan_out(env, []) == []
    with pytest.raises(ValueError):
        fan_out(env, ["true"], max_parallel=0)


def run_example(server, name, *args):
    env = dict(os.environ, COPPICE_URL=server.url, COPPICE_TOKEN=server.token,
               PYTHONPATH=str(SDK))
    return subprocess.run([sys.executable, str(SDK / "examples" / name), *args], env=env,
                          capture_output=True, text=True, timeout=120)


def test_example_best_of_n(server, sdk):
    r = run_example(server, "best_of_n.py", "-n", "8", "--parallel", "4", "--tag",
                    "sdk-test/winner:1")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "best: #" in r.stdout and "tagged sdk-test/winner:1" in r.stdout
    winner = sdk.images.use("sdk-test/winner:1", strict=True)
    assert winner.run("/repo/test.sh").wait().exit_code == 0


def test_example_beam_search(server):
    r = run_example(server, "beam_search.py", "--secret", "cab", "--alphabet", "abc")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "solved: 'cab'" in r.stdout and "('cab' in /guess)" in r.stdout


# ------------------------------------------------------------------------------------------
# ConTree compat

def test_compat_contree_names(server, bb, monkeypatch):
    from coppice import compat
    for k in ("COPPICE_URL", "COPPICE_TOKEN", "COPPICE_HOME"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("HOME", "/nonexistent")
    monkeypatch.setenv("CONTREE_BASE_URL", server.url)
    monkeypatch.setenv("CONTREE_TOKEN", server.token)
    # a ConTree SDK script, with only the import changed
    client = compat.ContreeSync()
    image = client.images.use("busybox:latest")
    result = image.run(shell="echo hello from contree").wait()
    assert result.stdout == "hello from contree\n" and result.exit_code == 0
    assert isinstance(result.result, compat.ContreeResult)
    assert client.settings.default_truncate_output_at == 65535
    try:
        client.images.use("not-there:1", strict=True)
    except compat.NotFoundError:
        pass
    else:
        raise AssertionError("NotFoundError expected")
    assert issubclass(compat.ContreeImageStateError, compat.ContreeError)
    # ConTree's config objects: values naming an environment variable stand for it
    monkeypatch.setenv("MY_TOKEN_VAR", server.token)
    cfg = compat.ContreeConfig(auth=compat.JWTAuth(token="MY_TOKEN_VAR", base_url=server.url),
                               transport="auto")
    assert compat.ContreeSync(cfg).whoami().project == "alpha"

    async def main():
        async with compat.Contree(base_url=server.url, token=server.token) as c:
            img = await c.images.use("busybox:latest")
            return (await img.run(shell="echo async contree")).stdout

    assert asyncio.run(main()) == "async contree\n"


# ------------------------------------------------------------------------------------------
# documentation and packaging

def test_readme_snippets_run(server, monkeypatch, tmp_path):
    """Every ```python block of sdk/python/README.md runs, in order, in one namespace."""
    monkeypatch.setenv("COPPICE_URL", server.url)
    monkeypatch.setenv("COPPICE_TOKEN", server.token)
    monkeypatch.chdir(tmp_path)
    text = (SDK / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    assert len(blocks) >= 10
    ns = {"__name__": "readme"}
    for i, block in enumerate(blocks):
        try:
            exec(compile(block, f"README.md block {i + 1}", "exec"), ns)
        except Exception as e:
            raise AssertionError(f"README block {i + 1} failed: {e!r}\n{block}") from e


def test_public_api_is_typed_and_documented():
    assert (SDK / "coppice" / "py.typed").exists()
    version = re.search(r'^version = "(.+)"', (SDK / "pyproject.toml").read_text(), re.M)
    assert version and version.group(1) == coppice.__version__
    for name in coppice.__all__:
        obj = getattr(coppice, name)
        if callable(obj) and not name.startswith("__"):
            assert obj.__doc__, f"{name} has no docstring"
    for cls in (coppice.Image, coppice.PreparedRun, coppice.Session, coppice.ImagesManager,
                coppice.FilesManager, coppice.OperationsManager):
        for attr, fn in vars(cls).items():
            if callable(fn) and not attr.startswith("_"):
                assert fn.__doc__ or attr in ("docker", "podman", "pull_by_oci"), \
                    f"{cls.__name__}.{attr} has no docstring"
                ann = getattr(fn, "__annotations__", {})
                assert "return" in ann, f"{cls.__name__}.{attr} has no return annotation"


def test_pip_install_offline(tmp_path):
    if importlib.util.find_spec("pip") is None:
        pytest.skip("pip is not installed for this Python (Debian package: python3-pip)")
    env = dict(os.environ, PIP_NO_INDEX="1", PIP_DISABLE_PIP_VERSION_CHECK="1",
               PIP_NO_CACHE_DIR="1")
    env.pop("PYTHONPATH", None)
    for mode, extra in (("isolated", []), ("no-isolation", ["--no-build-isolation"])):
        target = tmp_path / mode
        r = subprocess.run([sys.executable, "-m", "pip", "install", "--no-index", "--no-deps",
                            "--quiet", "--target", str(target), *extra, str(SDK)],
                           env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stdout + r.stderr
        assert (target / "coppice" / "py.typed").exists()
        assert list(target.glob("coppice-*.dist-info/RECORD"))
        r = subprocess.run([sys.executable, "-I", "-c",
                            "import sys; sys.path.insert(0, sys.argv[1]); import coppice, "
                            "coppice.compat; print(coppice.__file__, coppice.__version__)",
                            str(target)], capture_output=True, text=True, env=env)
        assert r.returncode == 0 and r.stdout.startswith(str(target)), r.stdout + r.stderr
    assert not (SDK / "build").exists() and not list(SDK.glob("*.egg-info"))
