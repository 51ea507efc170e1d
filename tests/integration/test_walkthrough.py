"""The four user steps of the core issue, driven over HTTP exactly as a curl user would."""
import io
import tarfile

from coppice_client import stdout_of


def test_step1_run_snapshots_a_new_image(client, busybox):
    r = client.post("/v1/instances", {"image": "tag:busybox:latest",
                                      "command": "echo hi > /f; cat /f", "shell": True,
                                      "disposable": False})
    assert r.status == 201
    assert r.headers["location"] == f"/v1/operations/{r.json()['uuid']}"
    op = client.wait(r.json()["uuid"])
    assert op["status"] == "SUCCESS"
    assert stdout_of(op) == "hi\n"
    res = op["metadata"]["result"]
    assert res["state"]["exit_code"] == 0
    assert res["resources"]["elapsed_time"] > 0
    assert set(res["resources"]) >= {"user_cpu_time", "system_cpu_time", "max_rss",
                                     "block_input", "block_output", "page_faults",
                                     "voluntary_switches", "involuntary_switches"}
    assert op["result_image_uuid"] and op["result_image_uuid"] != busybox
    assert op["result"]["image"] == op["result_image_uuid"]
    events = client.events(op["uuid"])
    assert [e["type"] for e in events][0] == "init"
    assert events[-1]["type"] == "completion"
    assert events[-1]["data"]["result_image_uuid"] == op["result_image_uuid"]


def test_step2_branches_are_independent(client, busybox):
    parent = client.run(busybox, "echo hi > /f")["result_image_uuid"]
    a = client.spawn(parent, "rm /f", disposable=False)
    b = client.spawn(parent, "echo more >> /f", disposable=False)
    a, b = client.wait(a), client.wait(b)
    assert a["status"] == b["status"] == "SUCCESS"
    ia, ib = a["result_image_uuid"], b["result_image_uuid"]
    assert len({parent, ia, ib}) == 3
    assert stdout_of(client.run(ia, "cat /f 2>&1; echo rc=$?")).endswith("rc=1\n")
    assert stdout_of(client.run(ib, "cat /f")) == "hi\nmore\n"
    assert stdout_of(client.run(parent, "cat /f")) == "hi\n"  # rollback: the parent is intact


def test_step3_inspect_without_a_sandbox(client, busybox):
    img = client.run(busybox, "mkdir -p /d && echo hello > /d/x && ln -s /d/x /d/link")[
        "result_image_uuid"]
    lst = client.get(f"/v1/inspect/{img}/list", params={"path": "/d"}).json()
    names = {f["path"]: f for f in lst["files"]}
    assert set(names) == {"x", "link"}
    assert names["link"]["is_symlink"] and names["link"]["symlink_to"] == "/d/x"
    assert len(names["x"]) == 15
    assert client.get(f"/v1/inspect/{img}/download", params={"path": "/d/link"}).body == b"hello\n"
    head = client.request("HEAD", f"/v1/inspect/{img}/download", params={"path": "/d/x"})
    assert head.status == 200 and head.headers["content-length"] == "6"
    assert client.request("HEAD", f"/v1/inspect/{img}/download",
                          params={"path": "/nope"}).status == 404
    assert client.get(f"/v1/inspect/{img}/download", params={"path": "/d"}).status == 422
    assert client.request("HEAD", f"/v1/inspect/{img}/archive", params={"path": "/d"}).status == 200
    txt = client.get(f"/v1/inspect/{img}/list", params={"path": "/d", "text": "1"})
    assert txt.headers["content-type"].startswith("text/plain") and "link -> /d/x" in txt.text
    tar = client.get(f"/v1/inspect/{img}/archive", params={"path": "/d"})
    assert tar.status == 200
    with tarfile.open(fileobj=io.BytesIO(tar.body)) as t:
        assert "d/x" in t.getnames()
        assert t.extractfile("d/x").read() == b"hello\n"
    g = client.get(f"/v1/inspect/{img}/grep", params={"pattern": "hel+o", "path": "/d"}).json()
    assert [m["path"] for m in g["matches"]] == ["/d/x"]
    assert g["matches"][0]["submatches"][0] == {"text": "hello", "start": 0, "end": 5}


def test_step4_files_injected_with_mode_and_owner(client, busybox):
    f = client.upload(b"#!/bin/sh\necho from-file\n")
    op = client.run(busybox, "ls -ln /opt/tool.sh; /opt/tool.sh",
                    files={"/opt/tool.sh": {"uuid": f["uuid"], "mode": "0o750", "uid": 7,
                                            "gid": 8}})
    out = stdout_of(op)
    assert out.startswith("-rwxr-x---")
    assert " 7 " in out and " 8 " in out
    assert out.endswith("from-file\n")
