"""The microvm runtime (one QEMU VM per run, software emulation here): the behaviours of
test_runs.py, in few runs because each boot costs seconds under TCG. Skipped only when the
server reports that QEMU or a cloud kernel is missing (`make test` installs both)."""
import os
import time

import pytest

from conftest import uid_base
from coppice_client import Client, stdout_of


@pytest.fixture(scope="module")
def vm(server):
    c = Client(server.url, server.token, runtime="microvm")
    who = c.get("/v1/whoami").json()
    assert "microvm" in who["runtimes"], who
    return c


def listing(client, image, path):
    r = client.get(f"/v1/inspect/{image}/list", params={"path": path})
    assert r.status == 200, r.body
    return {f["path"]: f for f in r.json()["files"]}


def test_snapshot_deletions_opaque_symlinks_owners(server, vm, client, busybox):
    f = vm.upload(b"#!/bin/sh\necho injected\n")
    op = vm.run(busybox, "/bin/sh", shell=False, args=["-c", (
        "rm /etc/hostname; mkdir -p /w/sub; echo 1 > /w/sub/old; echo 2 > /w/keep; "
        "ln -s /w/keep /w/link; chown 5:6 /w/keep; chmod 640 /w/keep; /opt/run.sh; "
        "echo \"$FOO $(pwd) $(hostname)\"; cat; echo to-stderr >&2; exit 3")],
        env={"FOO": "bar"}, cwd="/tmp", hostname="vm1",
        stdin={"value": "aW5wdXQ=", "encoding": "base64"},
        files={"/opt/run.sh": {"uuid": f["uuid"], "mode": "0750", "uid": 7, "gid": 8}})
    assert op["status"] == "SUCCESS", op
    res = op["metadata"]["result"]
    assert res["state"]["exit_code"] == 3
    assert stdout_of(op) == "injected\nbar /tmp vm1\ninput"
    assert res["stderr"]["value"] == "to-stderr\n"
    assert res["resources"]["elapsed_time"] > 0
    a = op["result_image_uuid"]
    assert a and a != busybox
    w = listing(client, a, "/w")
    assert w["keep"]["uid"] == 5 and w["keep"]["gid"] == 6 and w["keep"]["mode"] & 0o777 == 0o640
    assert w["link"]["is_symlink"] and w["link"]["symlink_to"] == "/w/keep"
    opt = listing(client, a, "/opt")["run.sh"]
    assert (opt["uid"], opt["gid"], opt["mode"] & 0o7777) == (7, 8, 0o750)
    assert "hostname" not in listing(client, a, "/etc")
    assert client.get(f"/v1/inspect/{a}/download", params={"path": "/w/keep"}).body == b"2\n"
    # on the host, the guest's files belong to the unprivileged range, never to host root
    # (the image's own layer is DATA/layers/<its uuid>; other tests' layers may hold a "keep")
    layer = os.path.join(str(server.data_dir), "layers", a)
    base = uid_base(server.data_dir)
    assert os.stat(os.path.join(layer, "w", "keep")).st_uid == base + 5
    assert os.stat(os.path.join(layer, "opt", "run.sh")).st_uid == base + 7
    assert os.stat(os.path.join(layer, "w")).st_uid == base
    # an opaque directory from a second VM run, read back by the namespace runtime
    b = vm.run(a, "rm -rf /w/sub && mkdir /w/sub && echo new > /w/sub/h")["result_image_uuid"]
    out = stdout_of(client.run(b, "ls /w/sub; cat /w/keep; test -e /etc/hostname || echo gone"))
    assert out == "h\n2\ngone\n"
    # the parent is untouched (branching)
    assert stdout_of(client.run(a, "ls /w/sub")) == "old\n"


def test_nothing_changed_disposable_and_output_cap(vm, busybox):
    same = vm.run(busybox, "cat /etc/passwd > /dev/null")
    assert same["status"] == "SUCCESS" and same["result_image_uuid"] == busybox
    op = vm.run(busybox, "yes | head -c 100000; echo x > /y", disposable=True, truncate_output_at=1000)
    assert op["status"] == "SUCCESS" and op["result_image_uuid"] is None
    out = op["metadata"]["result"]["stdout"]
    assert out["truncated"] is True and len(out["value"]) == 1000


def test_timeout_uid_and_missing_command(vm, busybox):
    t0 = time.time()
    op = vm.run(busybox, "id -u; id -g; sleep 100", uid=1000, gid=1001, timeout=2, disposable=True)
    st = op["metadata"]["result"]["state"]
    assert st["timed_out"] is True and st["signal"] == 9
    assert stdout_of(op) == "1000\n1001\n"
    assert time.time() - t0 < 60
    missing = vm.run(busybox, "/no/such/binary", shell=False, disposable=True)
    assert missing["metadata"]["result"]["state"]["exit_code"] == 127


def test_pids_limit_binds_the_guests_processes(vm, busybox):
    # the limit used to bound only QEMU's threads on the host: a fork bomb in the guest ran
    # until the guest's RAM ran out. Now the command's tree sits in a guest cgroup.
    op = vm.run(busybox, "cat /proc/self/cgroup; bomb() { bomb | bomb & }; bomb; sleep 1; echo ok",
                disposable=True, timeout=60, resources_limits={"pids": 24})
    assert op["status"] == "SUCCESS", op
    out = stdout_of(op)
    assert out.splitlines()[0] == "0::/run" and out.endswith("ok\n"), out
    assert "can't fork" in op["metadata"]["result"]["stderr"]["value"]


def test_no_network_no_host_view_and_cancel(vm, busybox, tmp_path):
    canary = tmp_path / "host-canary"
    canary.write_text("secret")
    # the VM has no network device (only lo), its own kernel's processes, no host files
    out = stdout_of(vm.run(busybox, (
        "sed -n 's/^ *\\([a-z0-9]*\\):.*/\\1/p' /proc/net/dev; ls /proc | grep -c '^[0-9]'; "
        f"cat {canary} 2>/dev/null || echo no-canary; "
        "grep -l 'coppice[d]' /proc/[0-9]*/cmdline 2>/dev/null || echo no-server"), disposable=True))
    lines = out.splitlines()
    assert lines[0] == "lo" and int(lines[1]) < 100, out  # the guest's own, mostly kernel threads
    assert lines[2:] == ["no-canary", "no-server"], out
    op = vm.spawn(busybox, "sleep 60")
    for _ in range(600):
        if vm.get(f"/v1/operations/{op}").json()["status"] == "EXECUTING":
            break
        time.sleep(0.05)
    assert vm.request("DELETE", f"/v1/operations/{op}").status == 202
    final = vm.wait(op, timeout=60)
    assert final["status"] == "CANCELLED" and final["result_image_uuid"] is None


def test_whoami_reports_the_accelerator(vm):
    d = vm.get("/v1/whoami").json()["runtime_details"]["microvm"]
    assert d["accel"] in ("kvm", "tcg") and d["kvm_probe"]
    assert d["last_boot_ms"] > 0


def qemu_of(server):
    """The pid of the server's QEMU (a child of coppiced)."""
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        comm = stat[stat.index("(") + 1:stat.rindex(")")]
        ppid = int(stat[stat.rindex(")") + 2:].split()[1])
        if ppid == server.proc.pid and comm.startswith("qemu-system"):
            return int(d)
    return None


def test_qemu_runs_jailed(server, vm, busybox):
    # QEMU used to run as uid 100000 (the owner of every tenant's layers) in the host's
    # network and mount namespaces, without its seccomp sandbox
    op = vm.spawn(busybox, "sleep 60", disposable=True)
    pid = None
    for _ in range(600):
        pid = qemu_of(server)
        if pid and vm.get(f"/v1/operations/{op}").json()["status"] == "EXECUTING":
            break
        time.sleep(0.05)
    assert pid, "no QEMU found"
    try:
        with open(f"/proc/{pid}/status") as f:
            status = dict(line.split(":", 1) for line in f.read().splitlines())
        assert status["Uid"].split() == ["99999"] * 4, status["Uid"]
        assert status["Gid"].split() == ["99999"] * 4, status["Gid"]
        assert status["Seccomp"].strip() == "2" and status["NoNewPrivs"].strip() == "1"
        for ns in ("net", "mnt", "pid", "ipc"):
            assert os.readlink(f"/proc/{pid}/ns/{ns}") != os.readlink(f"/proc/self/ns/{ns}"), ns
        with open(f"/proc/{pid}/net/dev") as f:
            devices = [line.split(":")[0].strip() for line in f.read().splitlines()[2:]]
        assert devices == ["lo"], devices
        # its root shows /usr, the merged-/usr links, a few devices and the kernel: no store
        root = f"/proc/{pid}/root"
        assert set(os.listdir(root)) <= {"usr", "bin", "sbin", "lib", "lib32", "lib64", "libx32",
                                         "dev", "vm"}, os.listdir(root)
        assert sorted(os.listdir(root + "/vm")) == ["initrd", "kernel"]
        assert not os.path.exists(root + str(server.data_dir))
        # the run's files are descriptors it was given, owned by root and private to it
        disks = [os.readlink(f"/proc/{pid}/fd/{n}") for n in os.listdir(f"/proc/{pid}/fd")]
        disks = [d for d in disks if d.endswith(".ext4")]
        assert len(disks) >= 2, disks
        for d in disks:
            st = os.stat(d)
            assert (st.st_uid, st.st_mode & 0o077) == (0, 0), (d, st)
    finally:
        vm.request("DELETE", f"/v1/operations/{op}")
        vm.wait(op, timeout=60)


def test_a_hostile_guest_cannot_extend_the_hosts_deadline(vm, busybox, probe_files):
    # Guest root stops the agent (so that nothing in the guest enforces the timeout) and
    # writes frames to the agent's port itself. kStarted used to restart the host's clock
    # (timeout + 30 s from each one): the run never ended. Now a repeated kStarted breaks the
    # protocol and ends the run at once.
    t0 = time.time()
    op = vm.run(busybox, "/probe hijack-port restart", disposable=True, timeout=4,
                files=probe_files)
    assert op["status"] == "FAILED", op
    assert "broke the protocol: a started frame" in op["error"], op["error"]
    assert time.time() - t0 < 60
    # Frames the protocol allows (output) keep coming: the host's own deadline (timeout + 10 s
    # from the command's start) ends the run, which reads as a timeout.
    op = vm.run(busybox, "/probe hijack-port quiet", disposable=True, timeout=4,
                files=probe_files)
    assert op["status"] == "SUCCESS", op.get("error")
    res = op["metadata"]["result"]
    assert res["state"]["timed_out"] is True and res["state"]["signal"] == 9, res["state"]
    assert "tick\n" in stdout_of(op)
    assert 4 <= res["resources"]["elapsed_time"] < 4 + 10 + 6, res["resources"]
