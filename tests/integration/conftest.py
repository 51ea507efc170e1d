"""Integration fixtures: a real coppiced on loopback with its own data directory."""
import os
import pathlib
import shutil
import subprocess
import tempfile

import pytest

from coppice_client import Client, Server

ROOT = pathlib.Path(__file__).resolve().parents[2]
COPPICED = os.environ.get("COPPICED", str(ROOT / "build" / "coppiced"))
# A static helper for what a shell in a sandbox cannot do (tests/helpers/probe.cc).
PROBE = os.path.join(os.path.dirname(COPPICED), "coppice-test-probe")


def admin(data_dir, *args):
    out = subprocess.run([COPPICED, *args, "--data-dir", str(data_dir)], check=True,
                         capture_output=True, text=True)
    return out.stdout.strip()


def uid_base(data_dir):
    """The host uid of sandbox root in this data directory (its recorded range)."""
    import sqlite3
    db = sqlite3.connect(f"file:{data_dir}/coppice.db?mode=ro", uri=True)
    try:
        (v,), = db.execute("SELECT value FROM settings WHERE key='sandbox_ids'").fetchall()
    finally:
        db.close()
    return int(v.split(":")[0])


@pytest.fixture(scope="session")
def coppiced_bin():
    assert os.path.exists(COPPICED), f"build coppiced first ({COPPICED})"
    return COPPICED


@pytest.fixture(scope="session")
def server(coppiced_bin):
    data = pathlib.Path(tempfile.mkdtemp(prefix="coppice-it-", dir="/var/tmp"))
    admin(data, "image", "bootstrap", "busybox")
    # The test registries listen on 127.0.0.1 (any port): coppiced refuses loopback registries
    # (and plain http) unless the operator names them (test_oci.py tests the refusals).
    srv = Server(coppiced_bin, data, ["--insecure-registry", "127.0.0.1"])
    srv.token = admin(data, "token", "create", "--project", "alpha")
    srv.other_token = admin(data, "token", "create", "--project", "beta")
    srv.start()
    yield srv
    srv.stop()
    shutil.rmtree(data, ignore_errors=True)


@pytest.fixture()
def client(server):
    return Client(server.url, server.token)


@pytest.fixture()
def other(server):
    return Client(server.url, server.other_token)


@pytest.fixture()
def busybox(client):
    imgs = client.get("/v1/images", params={"tag": "busybox:latest"}).json()["images"]
    assert imgs and imgs[0]["tag"] == "busybox:latest"
    return imgs[0]["uuid"]


@pytest.fixture()
def probe_files(server):
    """`files` of a spawn that puts the probe at /probe (executable)."""
    assert os.path.exists(PROBE), f"build coppice-test-probe first ({PROBE})"
    with open(PROBE, "rb") as f:
        uuid = Client(server.url, server.token).upload(f.read())["uuid"]
    return {"/probe": {"uuid": uuid, "mode": "0755"}}


# The runtimes the behaviour suites run against (issue #7): every one must give the same
# semantics. A runtime the server does not offer fails the test: `make test` installs runsc.
RUNTIMES = ["namespace", "gvisor"]


@pytest.fixture(params=RUNTIMES)
def runtime_client(request, server):
    c = Client(server.url, server.token, runtime=request.param)
    offered = c.get("/v1/whoami").json()["runtimes"]
    assert request.param in offered, f"the server offers {offered}, not {request.param}"
    return c
