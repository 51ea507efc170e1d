"""`coppice mcp` driven by a client no one here wrote: the official MCP TypeScript SDK
(@modelcontextprotocol/sdk, installed by `make test` into tests/mcp/node_modules), over stdio
and over streamable HTTP, through tests/mcp/scenario.mjs (an agent's scenario plus schema,
resource, prompt, progress, cancellation and bad-input checks). The transport rules of the
HTTP endpoint and JSON-RPC framing errors are checked here directly."""
import hashlib
import json
import os
import pathlib
import shutil
import stat
import subprocess
import threading
import time
import urllib.error
import urllib.request

import pytest

from oci_fixtures import free_port, push_layout
from oci_fixtures import auth_registry, oci_images, oci_workdir, registry  # noqa: F401

ROOT = pathlib.Path(__file__).resolve().parents[2]
MCP_DIR = ROOT / "tests" / "mcp"
COPPICE = os.environ.get("COPPICE", str(pathlib.Path(os.environ.get(
    "COPPICED", ROOT / "build" / "coppiced")).with_name("coppice")))


@pytest.fixture(scope="module")
def node_sdk():
    node = shutil.which("node")
    assert node, "node is missing: `make test` installs nodejs"
    if not (MCP_DIR / "node_modules" / "@modelcontextprotocol" / "sdk").is_dir():
        subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=MCP_DIR, check=True,
                       timeout=600)
    return node


@pytest.fixture()
def mcp_env(server, tmp_path):
    env = dict(os.environ)
    env.update(COPPICE_URL=server.url, COPPICE_TOKEN=server.token,
               COPPICE_HOME=str(tmp_path / "home"))
    env.pop("COPPICE_PROFILE", None)
    return env


@pytest.fixture(scope="module")
def private_image(auth_registry, oci_images):
    push_layout(auth_registry, oci_images.app_layout, "1", "mcp/app", "1")
    return auth_registry


def scenario(node, env, *args, registry=None, file_root=None, token=None):
    env = dict(env, MCP_FILE_ROOT=str(file_root))
    if token:
        env["MCP_TOKEN"] = token
    if registry is not None:
        env = dict(env, REGISTRY_REF=registry.ref("mcp/app", "1"),
                   REGISTRY_USER=registry.username, REGISTRY_PASSWORD=registry.password)
    p = subprocess.run([node, str(MCP_DIR / "scenario.mjs"), *args], env=env,
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, f"scenario failed:\n{p.stdout}\n{p.stderr}"
    assert "ok registry_auth" in p.stdout and p.stdout.rstrip().endswith("ok closed"), p.stdout
    return p.stdout


@pytest.fixture()
def file_root(tmp_path):
    d = tmp_path / "files"
    d.mkdir()
    return d


def test_scenario_over_stdio(node_sdk, mcp_env, private_image, file_root):
    scenario(node_sdk, mcp_env, "stdio", COPPICE, registry=private_image, file_root=file_root)


class HttpMcp:
    """`coppice mcp --http` on a free loopback port. With `token` None the server makes up its
    bearer secret and prints it (read here from its stderr); else it gets COPPICE_MCP_TOKEN."""

    def __init__(self, env, extra_args=(), token=None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = dict(env)
        env.pop("COPPICE_MCP_TOKEN", None)
        if token:
            env["COPPICE_MCP_TOKEN"] = token
        self.proc = subprocess.Popen([COPPICE, "mcp", "--http", "--listen",
                                      f"127.0.0.1:{self.port}", *extra_args], env=env,
                                     stderr=subprocess.PIPE, text=True)
        line = self.proc.stderr.readline()
        assert "serving MCP" in line, line
        if token:
            self.token = token
        else:
            line = self.proc.stderr.readline()
            assert "bearer token" in line, line
            self.token = line.split()[-1]
        self.auth = {"Authorization": f"Bearer {self.token}"}

    def stop(self):
        self.proc.terminate()
        self.proc.wait(timeout=10)

    def post(self, body, headers=None, raw=None, auth=True):
        h = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream"}
        if auth:
            h.update(self.auth)
        h.update(headers or {})
        data = raw if raw is not None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + "/mcp", data=data, headers=h, method="POST")
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                return r.status, dict(r.headers), r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, dict(e.headers), e.read().decode()

    def initialize(self):
        status, headers, body = self.post(INIT)
        assert status == 200, body
        return headers["Mcp-Session-Id"], json.loads(body)


INIT = {"jsonrpc": "2.0", "id": 1, "method": "initialize",
        "params": {"protocolVersion": "2025-06-18", "capabilities": {},
                   "clientInfo": {"name": "pytest", "version": "1"}}}


@pytest.fixture()
def http_mcp(mcp_env, file_root):
    m = HttpMcp(mcp_env, ["--file-root", str(file_root)])
    yield m
    m.stop()


def test_scenario_over_streamable_http(node_sdk, http_mcp, private_image, file_root):
    scenario(node_sdk, dict(os.environ), "http", http_mcp.url + "/mcp", registry=private_image,
             file_root=file_root, token=http_mcp.token)


def test_http_sessions_end_when_idle_or_crowded_out(mcp_env):
    """Sessions used to live forever (a client initializing in a loop grew the server without
    bound). An idle one ends after --session-idle; past --max-sessions the least recently used
    ends. Either way the client gets 404 and initializes again."""
    ping = {"jsonrpc": "2.0", "id": 2, "method": "ping"}
    m = HttpMcp(mcp_env, ["--session-idle", "1"])
    try:
        sid, _ = m.initialize()
        assert m.post(ping, {"Mcp-Session-Id": sid})[0] == 200
        time.sleep(1.6)
        status, _, body = m.post(ping, {"Mcp-Session-Id": sid})
        assert status == 404 and "initialize again" in body
        assert m.post(ping, {"Mcp-Session-Id": m.initialize()[0]})[0] == 200
        # a session with a request in flight does not expire, however long the request takes
        busy, _ = m.initialize()
        call = {"jsonrpc": "2.0", "id": 3, "method": "tools/call",
                "params": {"name": "run", "arguments": {"image": "busybox:latest",
                                                        "command": "sleep 3; echo slept"}}}
        out = {}
        t = threading.Thread(target=lambda: out.update(r=m.post(call, {"Mcp-Session-Id": busy})))
        t.start()
        time.sleep(2)
        m.initialize()  # prunes idle sessions
        t.join(60)
        status, _, body = out["r"]
        assert status == 200 and "slept" in body, body
        assert m.post(ping, {"Mcp-Session-Id": busy})[0] == 200  # its clock restarted at the end
    finally:
        m.stop()
    m = HttpMcp(mcp_env, ["--max-sessions", "3"])
    try:
        a, b, c = (m.initialize()[0] for _ in range(3))
        time.sleep(0.01)
        assert m.post(ping, {"Mcp-Session-Id": a})[0] == 200  # b is now the least recently used
        d = m.initialize()[0]
        assert m.post(ping, {"Mcp-Session-Id": b})[0] == 404
        for sid in (a, c, d):
            assert m.post(ping, {"Mcp-Session-Id": sid})[0] == 200
    finally:
        m.stop()


def test_http_transport_rules(http_mcp):
    sid, init = http_mcp.initialize()
    assert init["result"]["protocolVersion"] == "2025-06-18"  # the client's version is kept
    assert len(sid) >= 16
    ping = {"jsonrpc": "2.0", "id": 2, "method": "ping"}
    status, _, body = http_mcp.post(ping, {"Mcp-Session-Id": sid})
    assert status == 200 and json.loads(body)["result"] == {}
    # No session, an unknown one, a foreign Origin, a wrong media type, a bad version.
    assert http_mcp.post(ping)[0] == 400
    assert http_mcp.post(ping, {"Mcp-Session-Id": "f" * 32})[0] == 404
    assert http_mcp.post(ping, {"Mcp-Session-Id": sid, "Origin": "http://evil.example"})[0] == 403
    assert http_mcp.post(ping, {"Mcp-Session-Id": sid,
                                "Origin": f"http://localhost:{http_mcp.port}"})[0] == 200
    assert http_mcp.post(ping, {"Mcp-Session-Id": sid, "Content-Type": "text/plain"})[0] == 415
    assert http_mcp.post(ping, {"Mcp-Session-Id": sid, "MCP-Protocol-Version": "1999-01-01"})[0] == 400
    status, _, body = http_mcp.post(None, {"Mcp-Session-Id": sid}, raw=b"{not json")
    assert status == 400 and json.loads(body)["error"]["code"] == -32700
    # Notifications are accepted without a body.
    note = {"jsonrpc": "2.0", "method": "notifications/initialized"}
    assert http_mcp.post(note, {"Mcp-Session-Id": sid})[0] == 202
    # A progress-asking call over SSE: notifications then the result, as `message` events.
    call = {"jsonrpc": "2.0", "id": 3, "method": "tools/call",
            "params": {"name": "run", "_meta": {"progressToken": "p1"},
                       "arguments": {"image": "busybox:latest", "command": "sleep 1.5; echo done"}}}
    status, headers, body = http_mcp.post(call, {"Mcp-Session-Id": sid})
    assert status == 200 and headers["Content-Type"].startswith("text/event-stream")
    events = [json.loads(l[6:]) for l in body.splitlines() if l.startswith("data: ")]
    assert events[-1]["id"] == 3 and events[-1]["result"]["structuredContent"]["stdout"] == "done\n"
    assert any(e.get("method") == "notifications/progress" for e in events[:-1])
    # GET /mcp offers no stream; GET / documents the tools.
    req = urllib.request.Request(http_mcp.url + "/mcp",
                                 headers={"Mcp-Session-Id": sid, **http_mcp.auth})
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(req, timeout=10)
    assert e.value.code == 405
    req = urllib.request.Request(http_mcp.url + "/", headers=http_mcp.auth)
    with urllib.request.urlopen(req, timeout=10) as r:
        page = r.read().decode()
    assert "wait_operations" in page and "<table" in page
    # DELETE ends the session.
    req = urllib.request.Request(http_mcp.url + "/mcp", method="DELETE",
                                 headers={"Mcp-Session-Id": sid, **http_mcp.auth})
    with urllib.request.urlopen(req, timeout=10) as r:
        assert r.status == 200
    assert http_mcp.post(ping, {"Mcp-Session-Id": sid})[0] == 404


def test_stdio_framing_errors(mcp_env):
    lines = [
        "{broken",
        json.dumps({"jsonrpc": "2.0", "id": 1, "method": "no/such/method"}),
        json.dumps({"jsonrpc": "1.0", "id": 2, "method": "ping"}),
        json.dumps({"jsonrpc": "2.0", "method": "notifications/initialized"}),
        json.dumps([{"jsonrpc": "2.0", "id": 3, "method": "ping"},
                    {"jsonrpc": "2.0", "id": 4, "method": "tools/list"}]),
        json.dumps({"jsonrpc": "2.0", "id": 5, "method": "tools/call",
                    "params": {"name": "list_files", "arguments": {"image": "busybox:latest",
                                                                   "path": "/../../etc"}}}),
        json.dumps({"jsonrpc": "2.0", "id": 6, "method": "resources/read",
                    "params": {"uri": "file:///etc/passwd"}}),
    ]
    p = subprocess.run([COPPICE, "mcp"], input="\n".join(lines) + "\n", env=mcp_env,
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    out = [json.loads(l) for l in p.stdout.splitlines()]
    by_id = {}
    for m in out:
        if isinstance(m, list):
            for x in m:
                by_id[x["id"]] = x
        else:
            by_id[m.get("id")] = m
    assert by_id[None]["error"]["code"] in (-32700, -32600)
    assert by_id[1]["error"]["code"] == -32601
    assert by_id[3]["result"] == {}
    assert len(by_id[4]["result"]["tools"]) >= 18
    # `..` cannot leave the image: /../../etc is /etc of the image, never the host's.
    res5 = by_id[5]["result"]
    assert res5["isError"] is False
    assert {f["name"] for f in res5["structuredContent"]["files"]} >= {"passwd", "group"}
    assert by_id[6]["error"]["code"] == -32002
    assert len(out) == 6  # the notification got no answer; id 2 (jsonrpc 1.0) got an error


def stdio_calls(env, messages, args=(), cwd=None):
    """Sends JSON-RPC messages to `coppice mcp` over stdio; returns the responses by id."""
    lines = [json.dumps(m) for m in messages]
    p = subprocess.run([COPPICE, "mcp", *args], input="\n".join(lines) + "\n", env=env,
                       capture_output=True, text=True, timeout=120, cwd=cwd)
    assert p.returncode == 0, p.stderr
    return {m.get("id"): m for m in map(json.loads, p.stdout.splitlines())}


def tool_call(i, name, arguments):
    return {"jsonrpc": "2.0", "id": i, "method": "tools/call",
            "params": {"name": name, "arguments": arguments}}


def test_http_needs_the_bearer_secret(mcp_env, tmp_path):
    """Anyone on the machine could drive every tool: there was no authentication at all."""
    m = HttpMcp(mcp_env)  # a generated secret, printed at start
    try:
        assert len(m.token) >= 32
        for auth in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {m.token}"},
                     {"Authorization": m.token}, {"Authorization": f"Bearer {m.token}x"}):
            status, headers, body = m.post(INIT, auth, auth=False)
            assert status == 401, (auth, status, body)
            assert headers["WWW-Authenticate"].startswith("Bearer") and m.token not in body
        for method, path in (("GET", "/"), ("GET", "/mcp"), ("DELETE", "/mcp")):
            req = urllib.request.Request(m.url + path, method=method,
                                         headers={"Mcp-Session-Id": "f" * 32})
            with pytest.raises(urllib.error.HTTPError) as e:
                urllib.request.urlopen(req, timeout=10)
            assert e.value.code == 401, (method, path)
        sid, _ = m.initialize()
        ping = {"jsonrpc": "2.0", "id": 2, "method": "ping"}
        assert m.post(ping, {"Mcp-Session-Id": sid}, auth=False)[0] == 401  # a session is no pass
        assert m.post(ping, {"Mcp-Session-Id": sid})[0] == 200
    finally:
        m.stop()
    # A configured secret: from COPPICE_MCP_TOKEN (not printed), or a file; too short refused.
    m = HttpMcp(mcp_env, token="configured-secret-0123456789")
    try:
        assert m.post(INIT, {"Authorization": "Bearer configured-secret-0123456789"},
                      auth=False)[0] == 200
    finally:
        m.stop()
    f = tmp_path / "secret"
    f.write_text("from-a-file-0123456789abcdef\n")
    m = HttpMcp(dict(mcp_env, COPPICE_MCP_TOKEN="ignored-env-secret-0123456789"),
                ["--auth-token-file", str(f)], token="from-a-file-0123456789abcdef")
    try:
        assert m.post(INIT)[0] == 200
        assert m.post(INIT, {"Authorization": "Bearer ignored-env-secret-0123456789"})[0] == 401
    finally:
        m.stop()
    p = subprocess.run([COPPICE, "mcp", "--http", "--listen", f"127.0.0.1:{free_port()}"],
                       env=dict(mcp_env, COPPICE_MCP_TOKEN="short"), capture_output=True,
                       text=True, timeout=30)
    assert p.returncode != 0 and "at least 16" in p.stderr


def test_http_refuses_dns_rebinding(mcp_env):
    """The Origin check was a prefix match (http://127.0.0.1.rebind.example passed) and Host was
    never checked: a page that rebinds its name to 127.0.0.1 could drive the tools."""
    m = HttpMcp(mcp_env, ["--allow-origin", "http://localhost:3000"])
    try:
        port = m.port
        for host in (f"127.0.0.1.rebind.example:{port}", "rebind.example", f"evil.example:{port}",
                     f"127.0.0.1:{port + 1}", f"localhost.evil.example:{port}"):
            for auth in (True, False):  # refused for its name, token or not
                status, _, body = m.post(INIT, {"Host": host}, auth=auth)
                assert status == 403 and "Host" in body, (host, auth, status, body)
        for origin in ("http://127.0.0.1.rebind.example", f"http://127.0.0.1.rebind.example:{port}",
                       f"http://localhost.evil.example:{port}", "null", "http://localhost:3001",
                       f"https://127.0.0.1:{port}", "http://evil.example"):
            status, _, body = m.post(INIT, {"Origin": origin})
            assert status == 403 and "Origin" in body, (origin, status, body)
        assert m.post(INIT, {"Host": f"LOCALHOST:{port}"})[0] == 200
        assert m.post(INIT, {"Origin": f"http://127.0.0.1:{port}"})[0] == 200
        assert m.post(INIT, {"Origin": "http://localhost:3000"})[0] == 200  # --allow-origin
        assert m.post(INIT)[0] == 200  # no Origin (not a browser): the bearer is enough
    finally:
        m.stop()


def test_local_files_stay_under_the_file_root(client, mcp_env, tmp_path):
    """upload read any local file and download wrote any local path (mode 0755). Now both, and
    rsync, are confined to --file-root (default: the working directory) with no symlink
    escape: outside paths and symlinks are tool errors, and nothing is read or written."""
    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "work").mkdir(parents=True)
    outside.mkdir()
    secret = f"secret {os.urandom(8).hex()}\n"
    (outside / "secret").write_text(secret)
    (outside / "victim").write_text("untouched\n")
    (root / "to-secret").symlink_to(outside / "secret")
    (root / "victim-link").symlink_to(outside / "victim")
    (root / "to-outside").symlink_to(outside)
    (root / "work" / "mine.txt").write_text("mine\n")
    (root / "work" / "leak").symlink_to(outside / "secret")
    img = {"image": "busybox:latest", "path": "/etc/group"}
    calls = [
        tool_call(1, "upload", {"path": str(outside / "secret")}),
        tool_call(2, "upload", {"path": str(root / "to-secret")}),
        tool_call(3, "upload", {"path": "to-outside/secret"}),
        tool_call(4, "upload", {"path": "../outside/secret"}),
        tool_call(5, "download", {**img, "destination": str(outside / "new")}),
        tool_call(6, "download", {**img, "destination": str(root / "victim-link")}),
        tool_call(7, "download", {**img, "destination": "to-outside/new"}),
        tool_call(8, "download", {**img, "destination": "to-outside"}),
        tool_call(9, "download", {**img, "destination": "../outside/new"}),
        tool_call(10, "rsync", {"source": "to-outside", "destination": "/src"}),
        tool_call(11, "rsync", {"source": "work", "destination": "/src"}),
        tool_call(12, "download", {**img, "destination": "work/"}),
        tool_call(13, "upload", {"path": "work/mine.txt"}),
        tool_call(14, "whoami", {}),
    ]
    # No --file-root: the working directory is the root.
    by_id = stdio_calls(mcp_env, calls, cwd=root)
    for i in range(1, 11):
        res = by_id[i]["result"]
        assert res["isError"] is True, (i, res)
        text = res["content"][0]["text"]
        assert "Not allowed" in text and ("outside the file root" in text or "symlink" in text), \
            (i, text)
    assert sorted(p.name for p in outside.iterdir()) == ["secret", "victim"]
    assert (outside / "victim").read_text() == "untouched\n"
    assert (root / "victim-link").is_symlink()
    sha = hashlib.sha256(secret.encode()).hexdigest()
    assert client.get(f"/v1/files/{sha}").status == 404  # the secret never reached the server
    synced = by_id[11]["result"]["structuredContent"]
    assert synced["files"] == 1 and synced["skipped_non_regular"] == 1  # the symlink is not sent
    dl = by_id[12]["result"]["structuredContent"]
    assert dl["destination"] == str((root / "work" / "group").resolve())
    assert stat.S_IMODE(os.stat(dl["destination"]).st_mode) == 0o644 & ~current_umask()
    assert by_id[13]["result"]["isError"] is False
    assert by_id[14]["result"]["structuredContent"]["file_root"] == str(root.resolve())


def current_umask():
    old = os.umask(0)
    os.umask(old)
    return old
