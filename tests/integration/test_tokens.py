"""API tokens: list, revoke, expiry and project names (`coppiced token ...` beside a live
server, which notices what another process changed within its 2 s cache bound)."""
import json
import sqlite3
import subprocess
import time

from conftest import admin
from coppice_client import Client

CACHE_BOUND_S = 2  # api::ApiConfig::token_cache_ms


def run_admin(server, *args):
    return subprocess.run([server.binary, *args, "--data-dir", str(server.data_dir)],
                          capture_output=True, text=True)


def token_list(server):
    return json.loads(admin(server.data_dir, "token", "list", "--json"))


def create(server, *args):
    r = run_admin(server, "token", "create", *args)
    assert r.returncode == 0, r.stderr
    token_id = r.stderr.split()[1]
    return r.stdout.strip(), token_id


def wait_status(c, status, within):
    deadline = time.time() + within
    while True:
        got = c.get("/v1/whoami").status
        if got == status or time.time() > deadline:
            return got
        time.sleep(0.1)


def test_list_shows_tokens_without_secrets(server):
    secret, token_id = create(server, "--project", "listed")
    assert Client(server.url, secret).get("/v1/whoami").json()["token_uuid"] == token_id
    listed = {t["id"]: t for t in token_list(server)}
    t = listed[token_id]
    assert t["project"] == "listed" and t["expires_at"] is None and not t["expired"]
    assert t["last_used_at"]  # the whoami above
    table = admin(server.data_dir, "token", "list")
    assert token_id in table and "listed" in table
    for out in (table, json.dumps(token_list(server))):
        assert secret not in out and secret[4:] not in out
    # only a SHA-256 of the secret is stored
    with open(f"{server.data_dir}/coppice.db", "rb") as f:
        assert secret[4:].encode() not in f.read()


def test_revoke_is_refused_by_the_running_server_within_the_bound(server):
    secret, token_id = create(server, "--project", "revoked")
    c = Client(server.url, secret)
    assert c.get("/v1/whoami").status == 200  # now in the server's cache
    r = run_admin(server, "token", "revoke", token_id[:8])
    assert r.returncode == 0, r.stderr
    t0 = time.time()
    assert wait_status(c, 401, CACHE_BOUND_S + 2) == 401
    assert time.time() - t0 <= CACHE_BOUND_S + 0.5
    assert token_id not in {t["id"] for t in token_list(server)}
    assert c.get("/v1/images").status == 401
    r = run_admin(server, "token", "revoke", token_id)
    assert r.returncode != 0 and "no token" in r.stderr
    r = run_admin(server, "token", "revoke", "zz")
    assert r.returncode != 0


def test_expired_token_is_refused(server):
    secret, token_id = create(server, "--project", "shortlived", "--ttl", "2s")
    c = Client(server.url, secret)
    who = c.get("/v1/whoami").json()
    assert isinstance(who["token_expiration"], int)
    assert 0 < who["token_expiration"] - time.time() <= 3
    deadline = time.time() + 5
    while time.time() < deadline and c.get("/v1/whoami").status == 200:
        time.sleep(0.1)
    r = c.get("/v1/whoami")
    assert r.status == 401 and "expired" in r.json()["error"]
    assert time.time() <= who["token_expiration"] + 1
    assert {t["id"]: t for t in token_list(server)}[token_id]["expired"]
    # --expires takes an RFC 3339 time in the future
    secret, _ = create(server, "--project", "later", "--expires", "2100-01-01T00:00:00Z")
    assert Client(server.url, secret).get("/v1/whoami").json()["token_expiration"] == 4102444800
    for bad in (["--expires", "2000-01-01T00:00:00Z"], ["--expires", "tomorrow"],
                ["--ttl", "0"], ["--ttl", "5y"], ["--ttl", "1h", "--expires", "2100-01-01T00:00:00Z"]):
        r = run_admin(server, "token", "create", "--project", "x", *bad)
        assert r.returncode != 0, bad
        assert not r.stdout.strip(), bad


def test_project_names_are_validated(server):
    before = len(token_list(server))
    for bad in ("", " ", "a b", "../x", "-x", "x" * 65, "é"):
        r = run_admin(server, "token", "create", "--project", bad)
        assert r.returncode != 0, bad
        assert not r.stdout.strip() and "project" in r.stderr, (bad, r.stderr)
    assert len(token_list(server)) == before
    r = run_admin(server, "image", "import-rootfs", "/nonexistent", "--private", "--project", "")
    assert r.returncode != 0 and "project" in r.stderr


def test_a_public_namespace_token_from_an_older_server_is_refused(server):
    # what `token create --project ""` stored before: a tenant of the public namespace
    db = sqlite3.connect(f"{server.data_dir}/coppice.db", timeout=10)
    import hashlib
    secret = "cpc_legacy_public_namespace_token"
    with db:
        db.execute("INSERT INTO tokens (uuid, project, secret_hash, created_us) VALUES "
                   "('00000000-0000-4000-8000-000000000001', '', ?, 1)",
                   (hashlib.sha256(secret.encode()).hexdigest(),))
    db.close()
    r = Client(server.url, secret).get("/v1/whoami")
    assert r.status == 401 and "no project" in r.json()["error"]
    assert "(none" in admin(server.data_dir, "token", "list")
    assert run_admin(server, "token", "revoke",
                     "00000000-0000-4000-8000-000000000001").returncode == 0
