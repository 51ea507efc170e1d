"""Tenants' shares (issue #12 item 7): fair scheduling between projects, per-project queue and
running caps (429 with Retry-After), per-run resource caps, bounded grep answers and listings,
exports bounded by apparent size and cancellable."""
import io
import json
import os
import pathlib
import shutil
import tarfile
import tempfile
import time

import pytest

from conftest import admin
from coppice_client import Client, Server, stdout_of


def own_server(coppiced_bin, *args):
    """A server of its own with two projects: (server, alpha client, beta client)."""
    data = pathlib.Path(tempfile.mkdtemp(prefix="coppice-limits-", dir="/var/tmp"))
    admin(data, "image", "bootstrap", "busybox")
    alpha = admin(data, "token", "create", "--project", "alpha")
    beta = admin(data, "token", "create", "--project", "beta")
    srv = Server(coppiced_bin, data, extra_args=["--shutdown-grace", "1", *args])
    srv.start()
    return srv, Client(srv.url, alpha), Client(srv.url, beta)


def busybox_of(c):
    return c.get("/v1/images", params={"tag": "busybox:latest"}).json()["images"][0]["uuid"]


def wait_status(c, op, statuses, timeout=30):
    deadline = time.time() + timeout
    while time.time() < deadline:
        st = c.get(f"/v1/operations/{op}").json()["status"]
        if st in statuses:
            return st
        time.sleep(0.02)
    raise TimeoutError(f"{op} never reached {statuses}")


def cancel_all(c, ops):
    for op in ops:
        c.request("DELETE", f"/v1/operations/{op}")  # 409 once finished: fine


@pytest.fixture(scope="module")
def fair():
    """Two workers, and a project may use both (no running cap in the way): what is tested is
    the order in which a free worker picks the next operation."""
    from conftest import COPPICED
    srv, a, b = own_server(COPPICED, "--workers", "2", "--project-max-running", "2")
    yield srv, a, b
    srv.stop()
    shutil.rmtree(srv.data_dir, ignore_errors=True)


@pytest.fixture(scope="module")
def capped():
    from conftest import COPPICED
    srv, a, b = own_server(COPPICED, "--workers", "2", "--project-max-queued", "5",
                           "--memory-mb", "256", "--max-memory-mb", "512", "--pids", "64",
                           "--max-pids", "128", "--max-cpus", "1",
                           "--max-timeout", "120", "--max-export-mb", "256",
                           "--max-response-mb", "1")
    yield srv, a, b
    srv.stop()
    shutil.rmtree(srv.data_dir, ignore_errors=True)


# --- fair scheduling -------------------------------------------------------------------------

def test_a_single_run_is_not_stuck_behind_another_projects_queue(fair):
    srv, alpha, beta = fair
    img = busybox_of(alpha)
    queued = [alpha.spawn(img, "sleep 1", disposable=True) for _ in range(200)]
    try:
        t0 = time.time()
        op = beta.spawn(img, "echo beta", disposable=True)
        done = beta.wait(op, timeout=30)
        took = time.time() - t0
        assert done["status"] == "SUCCESS" and stdout_of(done) == "beta\n"
        # both workers were busy with alpha's `sleep 1`: beta waits for one of them at most
        assert done["metadata"]["timings_ms"]["queued"] < 5000, done["metadata"]["timings_ms"]
        assert took < 10, took
        left = [o for o in queued
                if alpha.get(f"/v1/operations/{o}").json()["status"] == "PENDING"]
        assert len(left) > 150, "alpha's queue was not long while beta ran"
    finally:
        cancel_all(alpha, queued)
    for o in queued[-5:]:
        assert alpha.wait(o)["status"] in ("SUCCESS", "CANCELLED")


def test_a_project_runs_at_most_half_the_workers_by_default(capped):
    srv, alpha, beta = capped
    assert alpha.get("/v1/whoami").json()["limits"]["project_max_running"] == 1
    img = busybox_of(alpha)
    ops = [alpha.spawn(img, "sleep 2", disposable=True) for _ in range(3)]
    try:
        wait_status(alpha, ops[0], ("EXECUTING",))
        # beta gets the other worker at once although alpha queued first
        t0 = time.time()
        b = beta.wait(beta.spawn(img, "echo b", disposable=True), timeout=30)
        assert b["status"] == "SUCCESS" and time.time() - t0 < 2.5
        active = [alpha.get(f"/v1/operations/{o}").json()["status"] for o in ops]
        assert active.count("PENDING") >= 1, active
        assert sum(s in ("ASSIGNED", "EXECUTING") for s in active) <= 1, active
    finally:
        cancel_all(alpha, ops)
    for o in ops:
        alpha.wait(o)


def test_past_the_project_queue_cap_spawns_get_429_with_retry_after(capped):
    srv, alpha, beta = capped
    img = busybox_of(alpha)
    first = alpha.spawn(img, "sleep 60", disposable=True)
    ops = [first]
    try:
        wait_status(alpha, first, ("EXECUTING",))
        ops += [alpha.spawn(img, "sleep 60", disposable=True) for _ in range(5)]  # queued
        r = alpha.post("/v1/instances", {"image": img, "command": "true", "shell": True})
        assert r.status == 429, r.body
        assert int(r.headers["retry-after"]) >= 1
        err = r.json()
        assert err["status"] == 429 and err["limit"] == "project_max_queued"
        assert err["limit_value"] == 5 and "project_max_queued = 5" in err["error"]
        # imports count against the same queue
        r = alpha.post("/v1/images/import", {"registry": {"url": "docker://127.0.0.1:1/x:1"}})
        assert r.status == 429 and r.json()["limit"] == "project_max_queued"
        stat = alpha.get("/v1/whoami").json()["operations_stat"]
        assert stat == {"queued": 5, "running": 1}, stat
        # another project has a queue of its own
        b = beta.wait(beta.spawn(img, "echo ok", disposable=True), timeout=30)
        assert b["status"] == "SUCCESS"
        # a cancelled queued operation frees its place
        assert alpha.request("DELETE", f"/v1/operations/{ops[-1]}").status == 202
        assert alpha.wait(ops[-1])["status"] == "CANCELLED"
        ops.append(alpha.spawn(img, "true", disposable=True))
    finally:
        cancel_all(alpha, ops)
    for o in ops:
        alpha.wait(o)


# --- per-run resource caps -------------------------------------------------------------------

def test_resource_asks_over_the_caps_are_refused_and_shown_in_whoami(capped):
    srv, alpha, _ = capped
    limits = alpha.get("/v1/whoami").json()["limits"]
    want = {"instance_max_timeout": 120, "instance_max_concurrency": 1,
            "instance_max_memory_bytes": 512 << 20, "instance_max_pids": 128,
            "instance_max_cpus": 1, "project_max_running": 1, "project_max_queued": 5,
            "server_max_queued": 10000, "server_workers": 2, "export_max_bytes": 256 << 20,
            "response_max_bytes": 1 << 20, "list_max_limit": 1000}
    for k, v in want.items():
        assert limits[k] == v, (k, limits)
    assert all(isinstance(v, int) for v in limits.values()), limits  # the contract: ints
    img = busybox_of(alpha)
    for rl, key in [({"memory_bytes": 1 << 30}, "instance_max_memory_bytes"),
                    ({"pids": 129}, "instance_max_pids"),
                    ({"cpus": 1.5}, "instance_max_cpus")]:
        r = alpha.post("/v1/instances", {"image": img, "command": "true", "resources_limits": rl})
        assert r.status == 400 and key in r.json()["error"], (rl, r.body)
    r = alpha.post("/v1/instances", {"image": img, "command": "true", "timeout": 121})
    assert r.status == 400 and "instance_max_timeout" in r.json()["error"]
    op = alpha.run(img, "echo fits", disposable=True, timeout=120,
                   resources_limits={"memory_bytes": 512 << 20, "pids": 128, "cpus": 1})
    assert op["status"] == "SUCCESS" and stdout_of(op) == "fits\n"


def test_default_caps_refuse_64_gib_and_65536_pids(client, busybox):
    limits = client.get("/v1/whoami").json()["limits"]
    assert limits["instance_max_memory_bytes"] == 8 << 30
    assert limits["instance_max_pids"] == 4096
    for rl in ({"memory_bytes": 64 << 30}, {"pids": 65536}):
        r = client.post("/v1/instances", {"image": busybox, "command": "true",
                                          "resources_limits": rl})
        assert r.status == 400, (rl, r.body)


# --- grep and listings -----------------------------------------------------------------------

@pytest.fixture(scope="module")
def text_image(capped):
    srv, alpha, _ = capped
    op = alpha.run(busybox_of(alpha),
                   "mkdir /g /d; i=0; while [ $i -lt 30000 ]; do echo match line $i; "
                   "i=$((i+1)); done > /g/many; (printf needle; head -c 100000 /dev/zero | "
                   "tr '\\0' y; echo) > /g/long; cd /d && seq -w 1 12000 | xargs touch",
                   timeout=120)
    assert op["status"] == "SUCCESS", op
    return op["result_image_uuid"]


def test_grep_answers_are_capped_and_say_so(capped, text_image):
    srv, alpha, _ = capped
    r = alpha.get(f"/v1/inspect/{text_image}/grep",
                  params={"pattern": "needle", "path": "/g/long"})
    assert r.status == 200, r.body
    m = r.json()["matches"]
    assert len(m) == 1 and m[0]["line_truncated"] is True
    assert len(m[0]["line_text"]) == 4096 and m[0]["line_bytes"] == 100006
    assert m[0]["submatches"] == [{"text": "needle", "start": 0, "end": 6}]
    r = alpha.get(f"/v1/inspect/{text_image}/grep",
                  params={"pattern": "needle", "path": "/g/long", "max_line_bytes": 10})
    assert r.json()["matches"][0]["line_text"] == "needleyyyy"
    # 30,000 matches do not fit in the server's 1 MiB: cut, marked, and under the cap
    r = alpha.get(f"/v1/inspect/{text_image}/grep",
                  params={"pattern": "match", "path": "/g", "max_total": 100000})
    assert r.status == 200
    assert len(r.body) <= 1 << 20
    g = r.json()
    assert g["truncated"] is True and g["truncated_reason"] == "max_bytes"
    assert 1000 < len(g["matches"]) < 30000
    r = alpha.get(f"/v1/inspect/{text_image}/grep", params={"pattern": "match", "path": "/g"})
    assert r.json()["truncated_reason"] == "max_total" and len(r.json()["matches"]) == 1000
    # a client may ask for less, never for more
    r = alpha.get(f"/v1/inspect/{text_image}/grep",
                  params={"pattern": "match", "path": "/g", "max_bytes": 2 << 20})
    assert r.status == 400


def test_directory_listings_are_paged_and_capped(capped, text_image):
    srv, alpha, _ = capped
    url = f"/v1/inspect/{text_image}/list"
    names, offset, pages = [], 0, 0
    while offset is not None:
        r = alpha.get(url, params={"path": "/d", "offset": offset})
        assert r.status == 200 and len(r.body) <= 1 << 20
        page = r.json()
        names += [f["path"] for f in page["files"]]
        assert page["truncated"] == (page["next_offset"] is not None)
        if page["truncated"]:
            assert page["truncated_reason"] == "max_bytes"
        offset = page["next_offset"]
        pages += 1
        assert pages < 20
    assert pages > 1
    assert len(names) == 12000 and len(set(names)) == 12000 and names == sorted(names)
    page = alpha.get(url, params={"path": "/d", "limit": 10, "offset": 5}).json()
    assert [f["path"] for f in page["files"]] == names[5:15]
    assert page["truncated_reason"] == "limit" and page["next_offset"] == 15
    text = alpha.get(url, params={"path": "/d", "text": ""}).text
    assert len(text.splitlines()) == 12001 and "# truncated" not in text  # fits in 1 MiB
    text = alpha.get(url, params={"path": "/d", "text": "", "max_bytes": 65536}).text
    assert len(text.encode()) <= 65536
    assert text.splitlines()[-1].startswith("# truncated (max_bytes): more entries from offset=")
    # the paged listings keep their bounded limit
    assert alpha.get("/v1/images", params={"limit": 1001}).status == 400
    assert alpha.get("/v1/operations", params={"limit": 0}).status == 400
    assert alpha.get("/v1/files", params={"limit": 5000}).status == 400


# --- export ----------------------------------------------------------------------------------

def test_export_of_a_sparse_terabyte_is_refused_at_once(client, busybox):
    op = client.run(busybox, "truncate -s 1099511627776 /big && ls -l /big", timeout=60)  # 1 TiB
    assert op["status"] == "SUCCESS", op
    img = op["result_image_uuid"]
    # the run and its layer are fine: a sparse file costs no blocks
    files = client.get(f"/v1/inspect/{img}/list", params={"path": "/"}).json()["files"]
    assert [f["size"] for f in files if f["path"] == "big"] == [1 << 40]
    t0 = time.time()
    r = client.get(f"/v1/images/{img}/export", timeout=30)
    assert r.status == 413, r.body[:300]
    assert "apparent size" in r.json()["error"] and "export_max_bytes" in r.json()["error"]
    r = client.post(f"/v1/images/{img}/export", {})
    assert r.status == 413
    assert time.time() - t0 < 10
    assert not [o for o in client.get("/v1/operations", params={"kind": "image_export"}).json()
                if o["image_uuid"] == img]


def test_export_operation_then_download(capped):
    srv, alpha, beta = capped
    img = busybox_of(alpha)
    r = alpha.post(f"/v1/images/{img}/export", {"timeout": 60})
    assert r.status == 201, r.body
    op = r.json()["uuid"]
    assert r.headers["location"] == f"/v1/operations/{op}"
    done = alpha.wait(op, timeout=120)
    assert done["status"] == "SUCCESS" and done["kind"] == "image_export", done
    assert done["metadata"]["result"]["archive"] == f"/v1/operations/{op}/archive"
    listed = alpha.get("/v1/operations", params={"kind": "image_export"}).json()
    assert op in [o["uuid"] for o in listed]
    assert beta.get(f"/v1/operations/{op}/archive").status == 404  # another project's
    r = alpha.get(f"/v1/operations/{op}/archive", timeout=120)
    assert r.status == 200 and r.headers["content-type"] == "application/x-tar"
    assert r.headers["docker-content-digest"] == done["metadata"]["manifest_digest"]
    with tarfile.open(fileobj=io.BytesIO(r.body)) as t:
        names = set(t.getnames())
        assert {"oci-layout", "index.json"} <= names
        index = json.load(t.extractfile("index.json"))
        assert index["manifests"][0]["digest"] == done["metadata"]["manifest_digest"]
    # the first form of export still answers with the archive itself
    r = alpha.get(f"/v1/images/{img}/export", timeout=120)
    assert r.status == 200 and r.headers["docker-content-digest"] == \
        done["metadata"]["manifest_digest"]
    # a run's archive is not an export
    run = alpha.run(img, "true", disposable=True)
    assert alpha.get(f"/v1/operations/{run['uuid']}/archive").status == 404


def test_export_can_be_cancelled_queued_and_while_packing(capped):
    srv, alpha, _ = capped
    img = busybox_of(alpha)
    big = alpha.run(img, "head -c 200000000 /dev/urandom > /rand", timeout=120)
    assert big["status"] == "SUCCESS", big
    big = big["result_image_uuid"]
    # queued behind alpha's own run (one running operation per project here)
    blocker = alpha.spawn(img, "sleep 60", disposable=True)
    try:
        wait_status(alpha, blocker, ("EXECUTING",))
        op = alpha.post(f"/v1/images/{big}/export", {}).json()["uuid"]
        assert alpha.get(f"/v1/operations/{op}").json()["status"] == "PENDING"
        assert alpha.get(f"/v1/operations/{op}/archive").status == 425
        assert alpha.request("DELETE", f"/v1/operations/{op}").status == 202
        assert alpha.wait(op)["status"] == "CANCELLED"
        assert alpha.get(f"/v1/operations/{op}/archive").status == 409
    finally:
        cancel_all(alpha, [blocker])
    alpha.wait(blocker)
    # while packing 200 MB of incompressible data
    op = alpha.post(f"/v1/images/{big}/export", {}).json()["uuid"]
    wait_status(alpha, op, ("EXECUTING",))
    t0 = time.time()
    assert alpha.request("DELETE", f"/v1/operations/{op}").status == 202
    done = alpha.wait(op, timeout=30)
    assert done["status"] == "CANCELLED", done
    assert time.time() - t0 < 5
    assert not os.path.exists(os.path.join(srv.data_dir, "tmp", f"export-{op}"))
