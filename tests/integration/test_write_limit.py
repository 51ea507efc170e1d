"""The per-run write limit (issue 12 item 11): a run cannot fill the data filesystem.

Two servers with a 64 MiB limit (--max-run-write-mb 64):
* one on the usual data directory (ext4 here, whose kernel has no quota formats): the write
  watchdog stops a run past its limit;
* one whose data directory is a loop-mounted XFS image with prjquota: the project quota makes
  the writes fail (EDQUOT) inside the sandbox. Skipped when the kernel cannot mount XFS with
  project quotas (the dev machines' kernel lacks CONFIG_XFS_QUOTA: see docs/ARCHITECTURE.md).
Either way the run gets a size_cap event, other runs go on and the limit is gone afterwards.
"""
import os
import pathlib
import shutil
import subprocess
import tempfile
import threading

import pytest

from conftest import COPPICED, admin
from coppice_client import Client, Server, stdout_of

LIMIT = 64 << 20
HOG = "dd if=/dev/zero of=/tmp/big bs=1M count=2000 2>&1; echo rc=$?"
QUIET = ("i=0; while [ $i -lt 15 ]; do echo $i >> /log; i=$((i+1)); sleep 0.1; done; "
         "head -c 1000000 /dev/zero > /ok; echo done")


def start_server(data):
    admin(data, "image", "bootstrap", "busybox")
    srv = Server(COPPICED, data, ["--max-run-write-mb", str(LIMIT >> 20)])
    srv.token = admin(data, "token", "create", "--project", "alpha")
    srv.start()
    return srv


@pytest.fixture(scope="module")
def plain():
    data = pathlib.Path(tempfile.mkdtemp(prefix="coppice-wl-", dir="/var/tmp"))
    srv = start_server(data)
    yield srv
    srv.stop()
    shutil.rmtree(data, ignore_errors=True)


@pytest.fixture(scope="module")
def xfs():
    """A coppiced whose data directory is an XFS image mounted with prjquota."""
    if os.geteuid() != 0 or not shutil.which("mkfs.xfs"):
        pytest.skip("needs root and mkfs.xfs (apt-get install xfsprogs)")
    base = pathlib.Path(tempfile.mkdtemp(prefix="coppice-xfs-", dir="/var/tmp"))
    img, mnt = base / "data.img", base / "mnt"
    mnt.mkdir()
    subprocess.run(["truncate", "-s", "2G", str(img)], check=True)
    subprocess.run(["mkfs.xfs", "-q", str(img)], check=True)
    m = subprocess.run(["mount", "-o", "loop,prjquota", str(img), str(mnt)],
                       capture_output=True, text=True)
    if m.returncode != 0:
        shutil.rmtree(base, ignore_errors=True)
        kmsg = subprocess.run(["dmesg"], capture_output=True, text=True).stdout.splitlines()
        pytest.skip("this kernel cannot mount XFS with project quotas: "
                    + (kmsg[-1] if kmsg else m.stderr.strip()))
    srv = None
    try:
        os.chmod(mnt, 0o711)
        srv = start_server(mnt / "data")
        yield srv
    finally:
        if srv:
            srv.stop()
        subprocess.run(["umount", "-l", str(mnt)])
        shutil.rmtree(base, ignore_errors=True)


def client_of(srv, runtime=None):
    c = Client(srv.url, srv.token, runtime=runtime)
    if runtime:
        assert runtime in c.get("/v1/whoami").json()["runtimes"]
    return c


def busybox_of(c):
    return c.get("/v1/images", params={"tag": "busybox:latest"}).json()["images"][0]["uuid"]


def size_caps(c, op):
    return [e["data"] for e in c.events(op["uuid"]) if e["type"] == "size_cap"]


def hog_while_another_runs(c, img):
    """Runs HOG while a quiet run writes a little; returns (hog, quiet) operations."""
    quiet = {}
    t = threading.Thread(target=lambda: quiet.setdefault("op", c.run(img, QUIET, timeout=60)))
    t.start()
    hog = c.run(img, HOG, timeout=120)
    t.join(90)
    return hog, quiet["op"]


def check_limit_held(c, img, hog, quiet, mode):
    assert hog["status"] == "FAILED", hog
    assert "per-run write limit" in hog["error"] and hog["result_image_uuid"] is None
    caps = size_caps(c, hog)
    assert len(caps) == 1 and caps[0]["limit_bytes"] == LIMIT
    # stopped well before the 2,000 MiB it asked for
    assert LIMIT < caps[0]["file_size"] < 1000 << 20, caps
    state = hog["metadata"]["result"]["state"]
    if mode == "project_quota":  # the write failed inside; dd reported it and the shell went on
        out = stdout_of(hog)
        assert "Disk quota exceeded" in out or "No space left" in out, out
        assert "rc=1" in out and state["exit_code"] == 0
        assert caps[0]["file_size"] <= LIMIT + (16 << 20) + (1 << 20)
    else:  # the watchdog killed the run
        assert state["exit_code"] == 137 and state["signal"] == 9
    # the run next to it was not disturbed, and its snapshot is whole
    assert quiet["status"] == "SUCCESS" and stdout_of(quiet) == "done\n", quiet
    ok = c.get(f"/v1/inspect/{quiet['result_image_uuid']}/download", params={"path": "/ok"})
    assert ok.status == 200 and len(ok.body) == 1000000
    # the database takes writes and answers; a later run can write again (the limit is gone)
    assert c.get("/v1/operations", params={"limit": 5}).status == 200
    later = c.run(img, "head -c 30000000 /dev/zero > /tmp/f && ls -l /tmp/f | wc -l")
    assert later["status"] == "SUCCESS" and stdout_of(later) == "1\n", later
    assert not size_caps(c, later)


def test_whoami_reports_the_write_limit(plain):
    w = client_of(plain).get("/v1/whoami").json()["write_limit"]
    assert w["default"] == LIMIT and w["enforced"] is True
    assert w["mode"] in ("project_quota", "watchdog") and w["detail"]


@pytest.mark.parametrize("runtime", ["namespace", "gvisor"])
def test_a_run_past_its_limit_is_stopped(plain, runtime):
    c = client_of(plain, runtime)
    img = busybox_of(c)
    mode = c.get("/v1/whoami").json()["write_limit"]["mode"]
    hog, quiet = hog_while_another_runs(c, img)
    check_limit_held(c, img, hog, quiet, mode)
    # nothing of the run is left behind
    runs = [p for p in os.listdir(plain.data_dir / "runs") if not p.startswith("spare-")]
    assert runs == []


def test_max_layer_bytes_lowers_the_limit(plain):
    c = client_of(plain)
    img = busybox_of(c)
    op = c.run(img, HOG, resources_limits={"max_layer_bytes": 2 << 20}, timeout=120)
    assert op["status"] == "FAILED" and "max_layer_bytes (2097152)" in op["error"], op
    caps = size_caps(c, op)
    assert caps and caps[0]["limit_bytes"] == 2 << 20 and caps[0]["file_size"] < 1000 << 20


def test_a_disposable_run_past_its_limit_keeps_its_result(plain):
    c = client_of(plain)
    op = c.run(busybox_of(c), HOG, disposable=True, timeout=120)
    assert op["status"] == "SUCCESS" and op["result_image_uuid"] is None, op
    assert size_caps(c, op)[0]["limit_bytes"] == LIMIT


def test_microvm_guest_gets_enospc(plain):
    c = client_of(plain, "microvm")
    op = c.run(busybox_of(c), "dd if=/dev/zero of=/tmp/big bs=1M count=300 2>&1; echo rc=$?",
               timeout=120)
    out = stdout_of(op)
    log = (plain.data_dir / "server.log").read_text()[-1500:]
    assert "No space left on device" in out and "rc=1" in out, (op.get("error"), log)
    assert op["status"] == "FAILED" and op["result_image_uuid"] is None
    caps = size_caps(c, op)
    assert caps and caps[0]["limit_bytes"] == LIMIT and LIMIT < caps[0]["file_size"] < 300 << 20


def test_xfs_project_quota_reports_itself(xfs):
    w = client_of(xfs).get("/v1/whoami").json()["write_limit"]
    assert w["mode"] == "project_quota" and w["enforced"] is True, w
    assert w["max_inodes"] == 1000000


@pytest.mark.parametrize("runtime", ["namespace", "gvisor"])
def test_xfs_writes_past_the_limit_fail_inside(xfs, runtime):
    c = client_of(xfs, runtime)
    img = busybox_of(c)
    hog, quiet = hog_while_another_runs(c, img)
    check_limit_held(c, img, hog, quiet, "project_quota")
    # the data filesystem kept its room: the 2 GiB image never filled up
    st = os.statvfs(xfs.data_dir)
    assert st.f_bavail * st.f_frsize > 1 << 30


def test_project_quota_facility_on_a_kernel_with_xfs_quotas():
    """ProjectQuota.* (unit tests) in a QEMU guest whose kernel has CONFIG_XFS_QUOTA: the
    facility itself on a real XFS prjquota mount, whatever the host kernel lacks."""
    build = pathlib.Path(COPPICED).resolve().parent
    if not (build / "coppice_unit_tests").exists():
        pytest.skip(f"no coppice_unit_tests in {build}")
    script = pathlib.Path(__file__).resolve().parents[1] / "vm" / "quota_in_vm.sh"
    r = subprocess.run([str(script), str(build)], capture_output=True, text=True, timeout=420)
    if r.returncode == 77:
        pytest.skip(r.stdout.strip())
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    assert "[       OK ] ProjectQuota.CapsWritesBelowATaggedDirectoryOnXfs" in r.stdout
