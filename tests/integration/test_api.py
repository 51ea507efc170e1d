"""Contract details of the HTTP API: auth, tenants, tags, files, lists, errors, encodings."""
import os
import hashlib
import time

from coppice_client import Client, parse_sse, stdout_of


def test_whoami_has_every_field(client):
    j = client.get("/v1/whoami").json()
    for k in ("token_uuid", "token_expiration", "permissions", "limits", "operations_stat"):
        assert k in j
    assert j["permissions"]["list"] is True
    assert j["limits"]["instance_max_timeout"] > 0


def test_auth_required(server):
    anon = Client(server.url, None)
    r = anon.get("/v1/whoami")
    assert r.status == 401 and r.json()["status"] == 401
    assert Client(server.url, "cpc_wrong").get("/v1/images").status == 401


def test_base_path_prefix_is_accepted(client):
    assert client.get("/prefix/v1/whoami").status == 200


def test_tenants_do_not_see_each_other(client, other, busybox):
    img = client.run(busybox, "echo secret > /s")["result_image_uuid"]
    op = client.get("/v1/operations", params={"limit": 1}).json()[0]["uuid"]
    assert other.get(f"/v1/inspect/{img}/").status == 404
    assert other.get(f"/v1/operations/{op}").status == 404
    assert other.post("/v1/instances", {"image": img, "command": "true"}).status == 404
    assert img not in [i["uuid"] for i in other.get("/v1/images").json()["images"]]
    client.request("PATCH", f"/v1/images/{img}/tag", body={"tag": "mine:1"})
    assert other.get("/v1/images", params={"tag": "mine:1"}).json()["images"] == []
    f = client.upload(b"alpha-only")
    assert other.get(f"/v1/files/{f['sha256']}").status == 404
    # public base images are visible to everyone but cannot be retagged by a tenant
    assert other.get(f"/v1/inspect/{busybox}/").status == 200
    r = other.request("PATCH", f"/v1/images/{busybox}/tag", body={"tag": "stolen"})
    assert r.status == 403


def test_tags_move_and_exact_match_first(client, busybox):
    a = client.run(busybox, "echo a > /a")["result_image_uuid"]
    b = client.run(busybox, "echo b > /b")["result_image_uuid"]
    c = client.run(busybox, "echo c > /c")["result_image_uuid"]
    assert client.request("PATCH", f"/v1/images/{a}/tag", body={"tag": "proj:v1"}).status == 200
    client.request("PATCH", f"/v1/images/{c}/tag", body={"tag": "proj:v1-dev"})
    r = client.request("PATCH", f"/v1/images/{b}/tag", body={"tag": "proj:v1"})
    assert r.json()["tag"] == "proj:v1"
    imgs = client.get("/v1/images", params={"tag": "proj:v1"}).json()["images"]
    assert imgs[0]["uuid"] == b and imgs[0]["tag"] == "proj:v1"
    assert {i["uuid"] for i in imgs} == {b, c}  # prefix match, exact first
    assert client.get(f"/v1/inspect/{a}/").json()["tag"] is None  # the tag moved
    loc = client.get("/v1/inspect/", params={"tag": "proj:v1"})
    assert loc.status == 302 and loc.headers["location"] == f"{b}/"
    op = client.run("tag:proj:v1", "cat /b")
    assert stdout_of(op) == "b\n"
    # delete with and without ?tag=
    assert client.request("DELETE", f"/v1/images/{c}/tag").json()["tag"] is None
    assert client.request("DELETE", f"/v1/images/{b}/tag", params={"tag": "other"}).status == 404
    assert client.request("DELETE", f"/v1/images/{b}/tag", params={"tag": "proj:v1"}).status == 200
    assert client.get("/v1/inspect/", params={"tag": "proj:v1"}).status == 404
    assert client.get("/v1/inspect/").status == 400
    assert client.request("PATCH", f"/v1/images/{b}/tag", body={"tag": "bad tag!"}).status == 400


def test_files_dedup_and_legacy_forms(client):
    data = b"content-" + str(time.time()).encode()
    sha = hashlib.sha256(data).hexdigest()
    assert client.request("HEAD", f"/v1/files/{sha}").status == 404
    f1 = client.upload(data)
    f2 = client.upload(data)
    assert f1 == f2 and f1["sha256"] == sha and f1["size"] == len(data)
    assert client.request("HEAD", f"/v1/files/{sha}").status == 200
    rec = client.get(f"/v1/files/{sha}").json()
    assert set(rec) == {"uuid", "sha256", "size", "created_at", "updated_at"}
    assert client.get("/v1/files", params={"sha256": sha}).json()["uuid"] == f1["uuid"]
    assert client.request("HEAD", "/v1/files", params={"uuid": f1["uuid"]}).status == 200
    files = client.get("/v1/files", params={"limit": 1000}).json()["files"]
    assert f1["uuid"] in [x["uuid"] for x in files]


def test_chunked_upload(client):
    def gen():
        yield b"part1-"
        yield b"part2"
    # http.client sends an iterable body with Transfer-Encoding: chunked, no Content-Length
    r = client.request("POST", "/v1/files", body=gen(),
                       headers={"Content-Type": "application/octet-stream"})
    assert r.status == 201 and r.json()["size"] == 11


def test_pagination_and_filters(client, busybox):
    for i in range(3):
        client.run(busybox, f"echo {i} > /p{i}")
    assert client.get("/v1/images", params={"limit": 0}).status == 400
    assert client.get("/v1/images", params={"limit": 1001}).status == 400
    assert client.get("/v1/images", params={"limit": 0}).json() == {
        "error": "limit must be between 1 and 1000", "status": 400}
    page1 = client.get("/v1/images", params={"limit": 2}).json()["images"]
    page2 = client.get("/v1/images", params={"limit": 2, "offset": 2}).json()["images"]
    assert len(page1) == 2 and not {i["uuid"] for i in page1} & {i["uuid"] for i in page2}
    ops = client.get("/v1/operations", params={"limit": 5, "kind": "instance",
                                                "status": "SUCCESS"}).json()
    assert isinstance(ops, list) and len(ops) == 5
    for o in ops:
        for k in ("uuid", "kind", "status", "error", "created_at", "duration", "image_size",
                  "consumed_cpu", "consumed_memory", "image_uuid", "result_image_uuid"):
            assert k in o
    assert client.get("/v1/operations", params={"since": "1h"}).json()
    assert client.get("/v1/operations", params={"until": "2000-01-01T00:00:00Z"}).json() == []
    assert client.get("/v1/operations", params={"since": "bogus"}).status == 400
    assert client.get("/v1/images", params={"tagged": "1"}).json()["images"][0]["tag"]


def test_bad_input_gets_4xx(client, busybox):
    assert client.post("/v1/instances", body=b"{not json",
                       headers={"Content-Type": "application/json"}).status == 400
    assert client.post("/v1/instances", {"image": busybox}).status == 400
    assert client.post("/v1/instances", {"image": "tag:nope", "command": "true"}).status == 404
    assert client.post("/v1/instances", {"image": busybox, "command": "true",
                                         "timeout": -1}).status == 400
    assert client.post("/v1/instances", {"image": busybox, "command": "true",
                                         "files": {"/x": {"uuid": "x", "mode": "0999"}}}
                       ).status == 400
    assert client.post("/v1/instances", {"image": busybox, "command": "true",
                                         "files": {"../x": {"uuid": "x"}}}).status == 400
    assert client.post("/v1/instances", {"image": busybox, "command": "true",
                                         "cwd": "/a/../b"}).status == 400
    assert client.get("/v1/operations/00000000-0000-4000-8000-000000000000").status == 404
    # an oversized body is refused from its Content-Length, before it is read
    import socket
    with socket.create_connection((client.host, client.port), timeout=10) as s:
        s.sendall(f"POST /v1/instances HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
                  f"{client.token}\r\nContent-Type: application/json\r\n"
                  f"Content-Length: {17 << 20}\r\n\r\n".encode())
        assert s.recv(4096).startswith(b"HTTP/1.1 413")


def test_null_fields_behave_like_absent(client, busybox):
    op = client.run(busybox, "echo ok", env=None, args=None, cwd=None, stdin=None, files=None,
                    timeout=None, truncate_output_at=None, hostname=None)
    assert op["status"] == "SUCCESS" and stdout_of(op) == "ok\n"
    md = op["metadata"]
    for k in ("args", "command", "cwd", "disposable", "env", "files", "hostname", "image",
              "result", "shell", "stdin", "timeout", "truncate_output_at"):
        assert md[k] is not None, k


def test_gzip_only_when_asked(server, busybox):
    plain = Client(server.url, server.token)
    r = plain.get("/v1/images")
    assert "content-encoding" not in r.headers and r.json()["images"]
    gz = Client(server.url, server.token, gzip_ok=True)
    r = gz.get("/v1/images")
    assert r.headers["content-encoding"] == "gzip"
    assert r.raw[:2] == b"\x1f\x8b" and r.json()["images"]
    err = gz.get("/v1/images", params={"limit": 0})
    assert err.headers["content-encoding"] == "gzip" and err.json()["status"] == 400
    op = gz.spawn(busybox, "echo zipped")
    gz.wait(op)
    ev = gz.get(f"/v1/operations/{op}/events")
    assert ev.headers["content-encoding"] == "gzip"
    assert parse_sse(ev.text)[-1]["type"] == "completion"


def test_unauthenticated_upload_is_refused_before_its_body(server):
    import socket
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        s.sendall(b"POST /v1/files HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
                  b"Content-Type: application/octet-stream\r\nContent-Length: 500000000\r\n\r\n")
        reply = s.recv(4096)
        assert reply.startswith(b"HTTP/1.1 401"), reply  # no "100 Continue" first
    assert not [f for f in os.listdir(os.path.join(server.data_dir, "tmp"))
                if f.startswith("upload-")]


def test_invalid_utf8_in_path_gets_a_json_error(client):
    r = client.get("/v1/inspect/%ff%fe/")
    assert r.status == 404 and r.json()["status"] == 404



def test_connection_limit_answers_503(coppiced_bin):
    """Past --max-connections a connection gets 503 with Retry-After (it used to be closed
    without a word), and a freed slot serves again."""
    import json
    import pathlib
    import shutil
    import socket
    import tempfile

    from conftest import admin
    from coppice_client import Server
    data = pathlib.Path(tempfile.mkdtemp(prefix="coppice-conns-", dir="/var/tmp"))
    admin(data, "image", "bootstrap", "busybox")
    token = admin(data, "token", "create", "--project", "p")
    srv = Server(coppiced_bin, data, extra_args=["--max-connections", "2"])
    srv.start()

    def exchange(keep_alive):
        """Sends whoami on a new connection: (status line, headers, body, socket)."""
        s = socket.create_connection(("127.0.0.1", srv.port), timeout=10)
        s.sendall(b"GET /v1/whoami HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " +
                  token.encode() + b"\r\nConnection: " +
                  (b"keep-alive" if keep_alive else b"close") + b"\r\n\r\n")
        f = s.makefile("rb")
        status = f.readline().decode().strip()
        headers = {}
        while (line := f.readline().decode().strip()):
            k, _, v = line.partition(":")
            headers[k.strip().lower()] = v.strip()
        body = f.read(int(headers.get("content-length", "0")))
        f.close()
        return status, headers, body, s

    held = []
    try:
        # hold both slots with served keep-alive connections (a slot that a just-closed
        # connection still holds for a moment answers 503: try again)
        deadline = time.time() + 10
        while len(held) < 2 and time.time() < deadline:
            status, _, _, s = exchange(keep_alive=True)
            if status.startswith("HTTP/1.1 200"):
                held.append(s)
            else:
                s.close()
                time.sleep(0.1)
        assert len(held) == 2
        status, headers, body, s = exchange(keep_alive=False)
        s.close()
        assert status.startswith("HTTP/1.1 503"), (status, body)
        assert headers["retry-after"] == "1", headers
        err = json.loads(body)
        assert err["status"] == 503 and "connection limit" in err["error"]
        # free a slot: the server serves again
        held.pop().close()
        deadline, served = time.time() + 10, False
        while not served and time.time() < deadline:
            status, _, _, s = exchange(keep_alive=False)
            s.close()
            served = status.startswith("HTTP/1.1 200")
            time.sleep(0.1)
        assert served
    finally:
        for s in held:
            s.close()
        srv.stop()
        shutil.rmtree(data, ignore_errors=True)
