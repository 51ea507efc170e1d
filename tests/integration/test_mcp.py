"""`coppice mcp` driven by a client no one here wrote: the official MCP TypeScript SDK
(@modelcontextprotocol/sdk, installed by `make test` into tests/mcp/node_modules), over stdio
and over streamable HTTP, through tests/mcp/scenario.mjs (an agent's scenario plus schema,
resource, prompt, progress, cancellation and bad-input checks). The transport rules of the
HTTP endpoint and JSON-RPC framing errors are checked here directly."""
import json
import os
import pathlib
import shutil
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


def scenario(node, env, *args, registry=None):
    if registry is not None:
        env = dict(env, REGISTRY_REF=registry.ref("mcp/app", "1"),
                   REGISTRY_USER=registry.username, REGISTRY_PASSWORD=registry.password)
    p = subprocess.run([node, str(MCP_DIR / "scenario.mjs"), *args], env=env,
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, f"scenario failed:\n{p.stdout}\n{p.stderr}"
    assert "ok registry_auth" in p.stdout and p.stdout.rstrip().endswith("ok closed"), p.stdout
    return p.stdout


def test_scenario_over_stdio(node_sdk, mcp_env, private_image):
    scenario(node_sdk, mcp_env, "stdio", COPPICE, registry=private_image)


class HttpMcp:
    def __init__(self, env, extra_args=()):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen([COPPICE, "mcp", "--http", "--listen",
                                      f"127.0.0.1:{self.port}", *extra_args], env=env,
                                     stderr=subprocess.PIPE, text=True)
        line = self.proc.stderr.readline()
        assert "serving MCP" in line, line

    def stop(self):
        self.proc.terminate()
        self.proc.wait(timeout=10)

    def post(self, body, headers=None, raw=None):
        h = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream"}
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
def http_mcp(mcp_env):
    m = HttpMcp(mcp_env)
    yield m
    m.stop()


def test_scenario_over_streamable_http(node_sdk, http_mcp, private_image):
    scenario(node_sdk, dict(os.environ), "http", http_mcp.url + "/mcp", registry=private_image)


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
    assert http_mcp.post(ping, {"Mcp-Session-Id": sid, "Origin": "http://localhost:3000"})[0] == 200
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
    req = urllib.request.Request(http_mcp.url + "/mcp", headers={"Mcp-Session-Id": sid})
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(req, timeout=10)
    assert e.value.code == 405
    with urllib.request.urlopen(http_mcp.url + "/", timeout=10) as r:
        page = r.read().decode()
    assert "wait_operations" in page and "<table" in page
    # DELETE ends the session.
    req = urllib.request.Request(http_mcp.url + "/mcp", method="DELETE",
                                 headers={"Mcp-Session-Id": sid})
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
