"""Run semantics: snapshots, deletions across layers, disposable runs, limits, cancel; every
test runs once per sandbox runtime (namespace, gvisor)."""
import os
import signal
import time

import pytest

from coppice_client import stdout_of


@pytest.fixture()
def client(runtime_client):
    return runtime_client


def test_nothing_changed_gives_same_uuid(client, busybox):
    op = client.run(busybox, "cat /etc/passwd > /dev/null")
    assert op["result_image_uuid"] == busybox
    # where the time went (docs/API.md)
    t = op["metadata"]["timings_ms"]
    assert set(t) == {"queued", "sandbox", "snapshot"} and all(v >= 0 for v in t.values())
    assert t["sandbox"] > 0


def test_disposable_has_null_result(client, busybox):
    op = client.run(busybox, "echo x > /y", disposable=True)
    assert op["status"] == "SUCCESS"
    assert op["result_image_uuid"] is None and op["result"]["image"] is None
    assert client.events(op["uuid"])[-1]["data"]["result_image_uuid"] is None
    # the next run (which may reuse that run's scratch directory) starts from a clean upper
    nxt = client.run(busybox, "test -e /y && echo dirty || echo clean; echo z > /z")
    assert stdout_of(nxt) == "clean\n" and nxt["result_image_uuid"] != busybox


def test_deletions_and_opaque_dirs_across_layers(client, busybox):
    a = client.run(busybox, "mkdir -p /w/sub && echo 1 > /w/sub/f && echo 2 > /w/g")[
        "result_image_uuid"]
    b = client.run(a, "rm /w/g && rm -rf /w/sub && mkdir /w/sub && echo new > /w/sub/h")[
        "result_image_uuid"]
    c = client.run(b, "ls /w /w/sub; rm /bin/vi")["result_image_uuid"]
    out = stdout_of(client.run(c, "ls /w; echo --; ls /w/sub; test -e /bin/vi || echo novi"))
    assert out == "sub\n--\nh\nnovi\n"
    names = [f["path"] for f in client.get(f"/v1/inspect/{c}/list",
                                           params={"path": "/w/sub"}).json()["files"]]
    assert names == ["h"]
    assert client.get(f"/v1/inspect/{c}/download", params={"path": "/bin/vi"}).status == 404
    assert stdout_of(client.run(a, "cat /w/g")) == "2\n"


def test_nonzero_exit_is_success(client, busybox):
    op = client.run(busybox, "exit 3")
    assert op["status"] == "SUCCESS" and op["metadata"]["result"]["state"]["exit_code"] == 3


def test_missing_command_exit_127(client, busybox):
    op = client.run(busybox, "/no/such/binary", shell=False)
    assert op["status"] == "SUCCESS"
    assert op["metadata"]["result"]["state"]["exit_code"] == 127


def test_args_env_cwd_uid_hostname_stdin(client, busybox):
    op = client.run(busybox, "/bin/sh", shell=False,
                    args=["-c", 'echo "$FOO $(pwd) $(id -u):$(id -g) $(hostname)"; cat'],
                    env={"FOO": "bar"}, cwd="/tmp", uid=1000, gid=1001, hostname="box1",
                    stdin={"value": "aW5wdXQ=", "encoding": "base64"})
    assert stdout_of(op) == "bar /tmp 1000:1001 box1\ninput"
    spawn = [e for e in client.events(op["uuid"]) if e["type"] == "spawn"][0]["data"]
    assert spawn["command"] == "/bin/sh" and spawn["uid"] == 1000


def test_preserve_env(client, busybox):
    img = client.run(busybox, "touch /marker", env={"KEEP": "yes"},
                     preserve_env=True)["result_image_uuid"]
    assert stdout_of(client.run(img, "echo $KEEP")) == "yes\n"
    # no file changed, but the environment is kept: that is a new state, so a new image
    img2 = client.run(busybox, "true", env={"ONLY": "env"}, preserve_env=True)["result_image_uuid"]
    assert img2 != busybox
    assert stdout_of(client.run(img2, "echo $ONLY")) == "env\n"
    # the same environment again changes nothing: the same image
    again = client.run(img2, "true", env={"ONLY": "env"}, preserve_env=True)
    assert again["result_image_uuid"] == img2


def test_timeout_kills_everything(client, busybox):
    t0 = time.time()
    op = client.run(busybox, "setsid sleep 100 & sleep 100", timeout=1)
    assert time.time() - t0 < 10
    st = op["metadata"]["result"]["state"]
    assert st["timed_out"] is True and st["signal"] == 9
    ex = [e for e in client.events(op["uuid"]) if e["type"] == "exit"][0]
    assert ex["data"]["timed_out"] is True


def test_output_cap_and_truncated_event(client, busybox):
    op = client.run(busybox, "yes | head -c 100000; echo err >&2", truncate_output_at=1000)
    out = op["metadata"]["result"]["stdout"]
    assert out["truncated"] is True and len(out["value"]) == 1000
    ev = client.events(op["uuid"])
    tr = [e for e in ev if e["type"] == "truncated"]
    assert tr and tr[0]["data"] == {"stream": "stdout", "bytes_emitted": 1000,
                                    "bytes_dropped": 99000}
    assert sum(len(e["data"]["value"]) for e in ev if e["type"] == "stdout") == 1000


def test_binary_output_is_base64(client, busybox):
    op = client.run(busybox, "printf '\\001\\002\\377'")
    assert op["metadata"]["result"]["stdout"]["encoding"] == "base64"
    assert op["metadata"]["result"]["stdout"]["value"] == "AQL/"


def test_max_layer_bytes_size_cap(client, busybox):
    op = client.run(busybox, "head -c 2000000 /dev/zero > /big",
                    resources_limits={"max_layer_bytes": 100000})
    assert op["status"] == "FAILED" and "max_layer_bytes" in op["error"]
    assert op["result_image_uuid"] is None
    assert any(e["type"] == "size_cap" for e in client.events(op["uuid"]))


def test_oom_is_reported(client, busybox):
    # the default sandbox memory limit is 1 GiB; ask a pipe to buffer 2 GiB in memory
    op = client.run(busybox, "head -c 2000m /dev/zero | sort > /dev/null; echo rc=$?",
                    timeout=60, disposable=True)
    assert op["status"] == "SUCCESS"
    out = stdout_of(op)
    assert "rc=137" in out or op["metadata"]["result"]["state"]["exit_code"] == 137
    exit_event = [e for e in client.events(op["uuid"]) if e["type"] == "exit"][-1]
    assert exit_event["data"]["oom_killed"] is True
    if client.runtime == "gvisor":  # the whole sandbox ends (docs/RUNTIMES.md)
        assert op["metadata"]["result"]["state"]["exit_code"] == 137


def runsc_run_pids(op):
    """(pid, --root) of the host's `runsc ... run` processes whose state root is op's."""
    pids = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/cmdline", "rb") as f:
                args = f.read().decode(errors="replace").split("\0")
        except OSError:
            continue
        roots = [a[len("--root="):] for a in args if a.startswith("--root=") and op in a]
        if args[0].endswith("runsc") and "run" in args and roots:
            pids.append((int(d), roots[0]))
    return pids


def test_a_crashed_runsc_is_a_failure_not_an_exit_status(client, busybox):
    # gVisor's own processes are not the command's: when `runsc run` dies (a Go runtime crash
    # exits 2, as it did once at the memory limit in CI), its status must not be reported as
    # the command's exit status
    if client.runtime != "gvisor":
        pytest.skip("a gVisor-only failure mode")
    op = client.spawn(busybox, "sleep 30; echo finished", disposable=True)
    deadline = time.time() + 30
    pids = []
    # wait until runsc has created its container (its state file): the crash must come after
    while time.time() < deadline:
        pids = runsc_run_pids(op)
        if pids and any(n.endswith(".state") for n in os.listdir(pids[0][1])):
            break
        time.sleep(0.05)
    assert pids, "runsc run did not start"
    time.sleep(0.3)
    for pid, _ in pids:
        os.kill(pid, signal.SIGQUIT)  # Go's runtime dumps its goroutines and exits 2
    done = client.wait(op)
    assert done["status"] == "FAILED", done
    assert "runsc" in done["error"] and "exit status 2" in done["error"], done["error"]
    # the server goes on serving this runtime
    assert stdout_of(client.run(busybox, "echo alive", disposable=True)) == "alive\n"


def test_pids_limit_contains_fork_bomb(client, busybox):
    t0 = time.time()
    op = client.run(busybox, "bomb() { bomb | bomb & }; bomb; sleep 2; echo survived",
                    timeout=5, disposable=True)
    assert op["status"] == "SUCCESS"
    # the forks fail inside the sandbox and the shell goes on; under gVisor the bomb may still
    # take the Sentry past its host backstop, which ends the sandbox with SIGKILL
    # (docs/RUNTIMES.md)
    assert stdout_of(op) == "survived\n" or op["metadata"]["result"]["state"]["exit_code"] == 137
    assert time.time() - t0 < 30
    # the server still serves other runs promptly
    assert stdout_of(client.run(busybox, "echo alive", disposable=True)) == "alive\n"


def test_cancel_running_pending_and_finished(client, busybox):
    op = client.spawn(busybox, "sleep 30")
    for _ in range(200):
        if client.get(f"/v1/operations/{op}").json()["status"] == "EXECUTING":
            break
        time.sleep(0.01)
    r = client.request("DELETE", f"/v1/operations/{op}")
    assert r.status == 202
    final = client.wait(op)
    assert final["status"] == "CANCELLED" and final["result_image_uuid"] is None
    assert client.events(op)[-1]["data"]["status"] == "CANCELLED"
    assert client.request("DELETE", f"/v1/operations/{op}").status == 409
    # cancel right after the spawn: whatever state it is in (PENDING/ASSIGNED/EXECUTING)
    ops = [client.spawn(busybox, "sleep 30") for _ in range(3)]
    for o in ops:
        assert client.request("DELETE", f"/v1/operations/{o}").status == 202
    # and at points spread over the sandbox's start (mounts, file injection, the runtime's
    # own start-up): a cancel that lands in the middle of the setup is still a cancel
    for delay in (0.02, 0.05, 0.1, 0.15, 0.25, 0.4):
        o = client.spawn(busybox, "sleep 30")
        time.sleep(delay)
        assert client.request("DELETE", f"/v1/operations/{o}").status == 202
        ops.append(o)
    for o in ops:
        final = client.wait(o)
        assert final["status"] == "CANCELLED", final
        ev = client.events(o)
        # every instance log has the main process's exit before the completion (SDK requirement)
        assert [e["type"] for e in ev][-2:] == ["exit", "completion"] and ev[-2]["spid"] == 1


def test_an_accepted_cancel_always_ends_cancelled(client, busybox):
    # cancels that race the end of short runs: a 202 must mean CANCELLED (no result image),
    # a 409 that the run had already reached its result
    outcomes = {202: 0, 409: 0}
    for i in range(40):
        op = client.spawn(busybox, f"echo {i} > /f")
        time.sleep((i % 8) * 0.004)
        code = client.request("DELETE", f"/v1/operations/{op}").status
        assert code in (202, 409)
        outcomes[code] += 1
        final = client.wait(op)
        if code == 202:
            assert final["status"] == "CANCELLED" and final["result_image_uuid"] is None, final
        else:
            assert final["status"] == "SUCCESS" and final["result_image_uuid"], final
    print("cancel outcomes", outcomes)


def test_a_cancel_after_the_commands_exit_is_refused(client, busybox):
    # Regression: a cancel that came while the server snapshotted a finished run answered 202
    # and the run still ended SUCCESS with a result image. The exit event is appended at the
    # point of no return, so a cancel sent once it is seen must be refused.
    op = client.spawn(busybox, "mkdir /d && cd /d && seq 4000 | xargs touch")
    assert any(e["type"] == "exit" for e in client.follow(op))  # stops at the exit event
    code = client.request("DELETE", f"/v1/operations/{op}").status
    final = client.wait(op)
    assert code == 409 and final["status"] == "SUCCESS" and final["result_image_uuid"], (
        code, final)


def test_setup_failure_still_ends_with_exit_and_completion(client, busybox):
    op = client.run(busybox, "true", cwd="/does/not/exist")
    assert op["status"] == "FAILED" and "cwd" in op["error"]
    types = [e["type"] for e in client.events(op["uuid"])]
    assert types[-2:] == ["exit", "completion"]


def test_result_image_is_usable_as_soon_as_completion_is_seen(client, busybox):
    """Regression: completion used to be visible before the new image was committed."""
    import http.client
    import json as _json
    conn = http.client.HTTPConnection(client.host, client.port, timeout=30)
    hdr = {"Authorization": f"Bearer {client.token}", "Content-Type": "application/json"}
    img = busybox
    for i in range(60):
        conn.request("POST", "/v1/instances", body=_json.dumps(
            {"image": img, "command": f"echo {i} > /n", "shell": True, "disposable": False}),
            headers=hdr)
        r = conn.getresponse()
        body = r.read()
        assert r.status == 201, body  # a 404 here means the parent image was not there yet
        op = _json.loads(body)["uuid"]
        while True:  # tight polling, as a fast client would
            conn.request("GET", f"/v1/operations/{op}", headers=hdr)
            j = _json.loads(conn.getresponse().read())
            if j["status"] in ("SUCCESS", "FAILED", "CANCELLED"):
                break
        assert j["status"] == "SUCCESS"
        img = j["result_image_uuid"]
    conn.close()


def test_per_run_resource_limits_extension(client, busybox):
    op = client.run(busybox, "bomb() { bomb | bomb & }; bomb; sleep 1; echo ok", disposable=True,
                    timeout=10, resources_limits={"pids": 16})
    assert op["status"] == "SUCCESS"
    assert stdout_of(op) == "ok\n", op  # the forks fail inside the sandbox; the shell goes on
    op = client.run(busybox, "head -c 200m /dev/zero | sort > /dev/null; echo rc=$?",
                    disposable=True, timeout=30, resources_limits={"memory_bytes": 32 << 20})
    assert "rc=137" in stdout_of(op) or op["metadata"]["result"]["state"]["exit_code"] == 137
    assert op["metadata"]["resources_limits"]["memory_bytes"] == 32 << 20
    t = client.run(busybox, "i=0; while [ $i -lt 200000 ]; do i=$((i+1)); done", disposable=True,
                   timeout=60, resources_limits={"cpus": 0.2})
    res = t["metadata"]["result"]["resources"]
    cpu = res["user_cpu_time"] + res["system_cpu_time"]
    assert res["elapsed_time"] > 2 * cpu  # throttled to a fifth of a core
    assert client.post("/v1/instances", {"image": busybox, "command": "true",
                                         "resources_limits": {"cpus": 0}}).status == 400


def test_list_filters_by_live_status(client, busybox):
    """?status=EXECUTING finds running operations (the store keeps them PENDING until they
    end; found by the CLI's `ps`)."""
    op = client.spawn(busybox, "sleep 3")
    deadline = time.time() + 10
    while client.get(f"/v1/operations/{op}").json()["status"] != "EXECUTING":
        assert time.time() < deadline
        time.sleep(0.05)
    running = client.get("/v1/operations", params={"status": "EXECUTING"}).json()
    assert op in [o["uuid"] for o in running]
    assert all(o["status"] == "EXECUTING" for o in running)
    pending = client.get("/v1/operations", params={"status": "PENDING"}).json()
    assert op not in [o["uuid"] for o in pending]
    client.request("DELETE", f"/v1/operations/{op}")
    client.wait(op)


def test_files_with_mode_and_owner(client, busybox):
    f = client.upload(b"#!/bin/sh\necho from-file\n")
    op = client.run(busybox, "/opt/tool/run.sh; stat -c '%a %u %g' /opt/tool/run.sh", files={
        "/opt/tool/run.sh": {"uuid": f["uuid"], "mode": "0750", "uid": 7, "gid": 8}})
    assert stdout_of(op) == "from-file\n750 7 8\n"
    # the injected file is part of the snapshot, with its owner
    img = op["result_image_uuid"]
    entry = client.get(f"/v1/inspect/{img}/list", params={"path": "/opt/tool"}).json()["files"][0]
    assert (entry["uid"], entry["gid"], entry["mode"] & 0o7777) == (7, 8, 0o750)
