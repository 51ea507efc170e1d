"""Crash safety: kill -9 mid-run and mid-snapshot, restart, the store is consistent."""
import os
import pathlib
import shutil
import subprocess
import tempfile
import time

import pytest

from conftest import admin
from coppice_client import Client, Server, stdout_of


@pytest.fixture()
def own_server(coppiced_bin):
    data = pathlib.Path(tempfile.mkdtemp(prefix="coppice-crash-", dir="/var/tmp"))
    admin(data, "image", "bootstrap", "busybox")
    srv = Server(coppiced_bin, data)
    srv.token = admin(data, "token", "create", "--project", "p")
    srv.start()
    yield srv
    srv.stop()
    shutil.rmtree(data, ignore_errors=True)


def sandbox_pids():
    out = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True).stdout
    return [l for l in out.splitlines() if "crash-marker" in l and "ps -eo" not in l]


def check_consistent(srv, c):
    layers = set(os.listdir(srv.data_dir / "layers"))
    imgs = c.get("/v1/images", params={"limit": 1000}).json()["images"]
    for img in imgs:
        # every image's files are readable
        assert c.get(f"/v1/inspect/{img['uuid']}/list", params={"path": "/"}).status == 200
    assert os.listdir(srv.data_dir / "runs") == []
    return layers, imgs


def test_kill9_mid_run_then_restart(own_server):
    srv = own_server
    c = Client(srv.url, srv.token)
    base = c.get("/v1/images").json()["images"][0]["uuid"]
    ops = [c.spawn(base, "echo crash-marker > /m; sleep 60; echo crash-marker") for _ in range(3)]
    for _ in range(300):
        if all(c.get(f"/v1/operations/{o}").json()["status"] == "EXECUTING" for o in ops):
            break
        time.sleep(0.02)
    srv.kill9()
    time.sleep(0.5)
    assert sandbox_pids() == [], "sandboxes must die with the server"
    srv.start()
    c = Client(srv.url, srv.token)
    for o in ops:
        op = c.get(f"/v1/operations/{o}").json()
        assert op["status"] == "FAILED" and "server stopped" in op["error"]
        ev = c.events(o)
        assert [e["type"] for e in ev][-2:] == ["exit", "completion"]
        assert [e["id"] for e in ev] == list(range(len(ev)))
    check_consistent(srv, c)
    assert stdout_of(c.run(base, "echo alive")) == "alive\n"


def test_kill9_during_snapshots_leaves_no_dangling_image(own_server):
    srv = own_server
    c = Client(srv.url, srv.token)
    base = c.get("/v1/images").json()["images"][0]["uuid"]
    # many quick runs that each write 1,000 files; kill while snapshots are being taken
    ops = [c.spawn(base, "mkdir /d; i=0; while [ $i -lt 300 ]; do echo $i > /d/$i; "
                         "i=$((i+1)); done") for _ in range(12)]
    time.sleep(0.4)
    srv.kill9()
    srv.start()
    c = Client(srv.url, srv.token)
    layers, imgs = check_consistent(srv, c)
    for o in ops:
        op = c.get(f"/v1/operations/{o}").json()
        assert op["status"] in ("SUCCESS", "FAILED")
        if op["status"] == "SUCCESS":
            img = op["result_image_uuid"]
            assert c.get(f"/v1/inspect/{img}/download", params={"path": "/d/299"}).body == b"299\n"
    # every layer on disk belongs to an image (orphans were removed at startup)
    referenced = {i["uuid"] for i in imgs}  # an image's own layer is named after it
    assert layers <= referenced


def test_sigterm_is_graceful(own_server):
    srv = own_server
    c = Client(srv.url, srv.token)
    base = c.get("/v1/images").json()["images"][0]["uuid"]
    op = c.spawn(base, "sleep 1; echo done > /g")
    time.sleep(0.3)
    srv.stop()
    srv.start()
    c = Client(srv.url, srv.token)
    final = c.get(f"/v1/operations/{op}").json()
    assert final["status"] == "SUCCESS" and final["result_image_uuid"]


def test_runs_refused_when_the_data_disk_is_nearly_full(coppiced_bin):
    data = pathlib.Path(tempfile.mkdtemp(prefix="coppice-full-", dir="/var/tmp"))
    admin(data, "image", "bootstrap", "busybox")
    # ask for more free space than any test machine has
    srv = Server(coppiced_bin, data, extra_args=["--min-free-mb", str(1 << 40)])
    token = admin(data, "token", "create", "--project", "p")
    srv.start()
    try:
        c = Client(srv.url, token)
        base = c.get("/v1/images").json()["images"][0]["uuid"]
        op = c.run(base, "echo hi > /x")
        assert op["status"] == "FAILED" and "free space" in op["error"]
    finally:
        srv.stop()
        shutil.rmtree(data, ignore_errors=True)
