"""The `coppice` CLI end to end: the real binary (subprocess) against a real coppiced on
loopback, each test with its own $COPPICE_HOME."""
import csv
import io
import json
import os
import pathlib
import signal
import stat
import shutil
import subprocess
import time

import pytest

from conftest import COPPICED
from coppice_client import Client
from oci_fixtures import registry  # noqa: F401 (a pytest fixture, used by name)

COPPICE = os.environ.get("COPPICE", str(pathlib.Path(COPPICED).parent / "coppice"))


class Cli:
    """Runs `coppice` with its own home; `session` picks COPPICE_SESSION."""

    def __init__(self, home, server):
        self.home = home
        self.server = server
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("COPPICE_")}
        self.env["COPPICE_HOME"] = str(home)
        self.env["PATH"] = str(pathlib.Path(COPPICE).parent) + ":" + self.env.get("PATH", "")

    def __call__(self, *args, session=None, input=None, check=True, env=None, timeout=60):
        e = dict(self.env)
        if session:
            e["COPPICE_SESSION"] = session
        e.update(env or {})
        p = subprocess.run([COPPICE, *args], env=e, input=input, capture_output=True,
                           timeout=timeout, stdin=None if input is not None else subprocess.DEVNULL)
        if check:
            assert p.returncode == 0, (args, p.returncode, p.stdout, p.stderr)
        return p

    def out(self, *args, **kw):
        return self(*args, **kw).stdout.decode()

    def popen(self, *args, session=None):
        e = dict(self.env)
        if session:
            e["COPPICE_SESSION"] = session
        return subprocess.Popen([COPPICE, *args], env=e, stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    def use(self, image="busybox:latest", new=True):
        out = self.out("use", *(["-N"] if new else []), image)
        assert out.startswith("export COPPICE_SESSION='") and out.endswith("'\n"), out
        return out[len("export COPPICE_SESSION='"):-2]


@pytest.fixture()
def cli(server, tmp_path):
    c = Cli(tmp_path / "home", server)
    c("auth", "--url", server.url, "--token", server.token)
    return c


def one_error_line(p):
    err = p.stderr.decode()
    assert p.returncode != 0
    assert err.count("\n") == 1 and err.startswith("coppice: "), err
    assert "Traceback" not in err and "terminate called" not in err
    return err


# ------------------------------------------------------------------------------------------
# auth and configuration

def test_version(cli):
    p = cli("--version")
    assert p.stdout.decode().startswith("coppice 0.")


def test_auth_profiles(server, tmp_path):
    c = Cli(tmp_path / "h", server)
    out = c.out("auth", "--url", server.url, "--token", server.token)
    assert "profile 'default' saved" in out and "project alpha" in out
    ini = tmp_path / "h" / "auth.ini"
    assert stat.S_IMODE(ini.stat().st_mode) == 0o600
    text = ini.read_text()
    assert "[profile:default]" in text and f"url = {server.url}" in text and server.token in text

    # a refused token is reported in one line and not saved
    bad = c("auth", "--url", server.url, "--token", "nope", "--name", "bad", check=False)
    assert "invalid token" in one_error_line(bad) and "401" in bad.stderr.decode()
    assert "profile:bad" not in ini.read_text()

    c("auth", "--url", server.url, "--token", server.other_token, "--name", "beta")
    rows = [json.loads(l) for l in c.out("auth", "list", "-f", "json").splitlines()]
    by = {r["profile"]: r for r in rows}
    assert by["beta"]["current"] == "*" and by["default"]["current"] == ""
    assert by["default"]["status"] == "ok" and by["default"]["project"] == "alpha"
    assert by["beta"]["project"] == "beta"
    c("auth", "switch", "default")
    assert json.loads(c.out("auth", "ls", "-O", "-f", "json").splitlines()[0])["current"] == "*"
    # a profile whose server is gone probes as an error; whose token is revoked as inactive
    ini.write_text(ini.read_text() + "\n[profile:dead]\nurl = http://127.0.0.1:1\ntoken = x\n"
                   "\n[profile:stale]\nurl = " + server.url + "\ntoken = revoked\n")
    by = {r["profile"]: r for r in
          (json.loads(l) for l in c.out("auth", "list", "-f", "json").splitlines())}
    assert by["dead"]["status"] == "error" and by["stale"]["status"] == "inactive"
    c("auth", "remove", "dead")
    c("auth", "rm", "stale")
    c("auth", "rm", "beta")
    assert [r["profile"] for r in
            (json.loads(l) for l in c.out("auth", "ls", "-O", "-f", "json").splitlines())] == [
        "default"]
    assert "no profile named" in one_error_line(c("auth", "switch", "nope", check=False))


def test_config_precedence(server, tmp_path):
    c = Cli(tmp_path / "h", server)
    # no profile at all: a clear instruction
    p = c("images", check=False)
    assert "coppice auth --url URL --token TOKEN" in one_error_line(p)
    # env alone is enough
    env = {"COPPICE_URL": server.url, "COPPICE_TOKEN": server.token}
    assert "busybox:latest" in c.out("images", env=env)
    # flags beat env; env beats the profile
    c("auth", "--url", server.url, "--token", server.token)
    p = c("images", env={"COPPICE_TOKEN": "wrong"}, check=False)
    assert "invalid token" in one_error_line(p)
    assert "busybox:latest" in c.out("--token", server.token, "images",
                                     env={"COPPICE_TOKEN": "wrong"})
    p = c("-u", "http://127.0.0.1:1", "images", check=False)
    assert "cannot reach the server at http://127.0.0.1:1" in one_error_line(p)
    # -p picks a profile; an unknown one says what to do
    p = c("-p", "nope", "images", check=False)
    assert "no profile 'nope'" in one_error_line(p)
    # -c points at another auth.ini
    other = tmp_path / "other.ini"
    c("-c", str(other), "auth", "--url", server.url, "--token", server.other_token)
    assert ",ok,beta" in c.out("-c", str(other), "auth", "ls", "-f", "csv")


def test_errors_are_one_line(cli):
    p = cli("run", "--", "true", session="no-such-session", check=False)
    assert "coppice use IMAGE" in one_error_line(p)
    p = cli("-f", "bogus", "images", check=False)
    assert "unknown output format 'bogus'" in one_error_line(p)
    p = cli("use", "no/such:image", check=False)
    assert "no image tagged 'no/such:image'" in one_error_line(p)
    p = cli("nonsense", check=False)
    assert p.returncode == 2
    p = cli("--log-level", "debug", "images", "-f", "json")
    assert "> GET " in p.stderr.decode() and "< 200 GET" in p.stderr.decode()


# ------------------------------------------------------------------------------------------
# sessions and runs

def test_use_run_exit_codes_and_streams(cli, busybox):
    s = cli.use()
    p = cli("run", "--", "sh", "-c", "echo out; echo err >&2; exit 7", session=s, check=False)
    assert (p.returncode, p.stdout, p.stderr) == (7, b"out\n", b"err\n")
    assert cli("run", "-s", "exit 3", session=s, check=False).returncode == 3
    assert cli("run", "--", "no-such-command", session=s, check=False).returncode == 127
    # direct argv (no shell): arguments stay as they are
    assert cli.out("run", "echo", "-n", "a  b", "$HOME", session=s) == "a  b $HOME"
    # -s with several words joins them; one word is sent verbatim
    assert cli.out("run", "-s", "echo", "x", "y", session=s) == "x y\n"
    assert cli.out("run", "-s", "--", "echo $((1+2))", session=s) == "3\n"
    # -e, -C, -H
    assert cli.out("run", "-e", "A=1", "-e", "B=two words", "-s", "echo $A-$B", session=s) == \
        "1-two words\n"
    assert cli.out("run", "-C", "/etc", "pwd", session=s) == "/etc\n"
    assert cli.out("run", "-H", "box1", "hostname", session=s) == "box1\n"
    # binary output arrives intact
    assert cli("run", "-s", "printf '\\000\\377\\001'", session=s).stdout == b"\x00\xff\x01"
    # a snapshot advances the session; `cat` reads the new image without a sandbox
    cli("run", "-s", "echo hello > /greeting", session=s)
    assert cli.out("cat", "/greeting", session=s) == "hello\n"
    # global flags may also come after `run`
    assert cli.out("run", "-S", s, "--", "cat", "/greeting") == "hello\n"


def test_piped_stdin(cli, busybox):
    s = cli.use()
    assert cli("run", "--", "wc", "-c", input=b"x" * 100000, session=s).stdout.strip() == b"100000"
    data = bytes(range(256)) * 10
    assert cli("run", "--", "cat", input=data, session=s).stdout == data


def test_disposable_and_timeout(cli, busybox):
    s = cli.use()
    cli("run", "-D", "-s", "echo x > /scratch", session=s)
    assert "no such file" in one_error_line(cli("cat", "/scratch", session=s, check=False))
    hist = [json.loads(l) for l in cli.out("session", "show", "-f", "json", session=s).splitlines()]
    assert [h["kind"] for h in hist] == ["use"]
    t0 = time.time()
    p = cli("run", "-t", "1", "--", "sleep", "30", session=s, check=False)
    assert p.returncode == 137 and time.time() - t0 < 15
    assert "timed out after 1 s" in p.stderr.decode()


def test_two_sessions_at_once(cli, busybox):
    a, b = cli.use(), cli.use()
    assert a != b
    pa = cli.popen("run", "-s", "sleep 0.5; echo A > /who", session=a)
    pb = cli.popen("run", "-s", "sleep 0.5; echo B > /who", session=b)
    assert pa.wait(30) == 0 and pb.wait(30) == 0
    assert cli.out("cat", "/who", session=a) == "A\n"
    assert cli.out("cat", "/who", session=b) == "B\n"
    rows = list(csv.DictReader(io.StringIO(cli.out("session", "list", "-f", "csv", session=a))))
    by = {r["SESSION"]: r for r in rows}
    assert by[a]["CURRENT"] == "*" and by[b]["CURRENT"] == ""
    assert by[a]["IMAGE"] != by[b]["IMAGE"]
    # -S beats COPPICE_SESSION
    assert cli.out("-S", b, "cat", "/who", session=a) == "B\n"
    # `session use` prints the export line for eval
    assert cli.out("session", "use", b) == f"export COPPICE_SESSION='{b}'\n"
    cli("session", "delete", b)
    assert "no session" in one_error_line(cli("cat", "/who", session=b, check=False))


def test_branch_checkout_rollback_show(cli, busybox):
    s = cli.use()
    cli("run", "-s", "echo 1 > /a", session=s)
    cli("session", "branch", "experiment", session=s)
    cli("run", "-s", "echo 2 >> /a", session=s)
    assert cli.out("cat", "/a", session=s) == "1\n2\n"
    cli("session", "checkout", "main", session=s)
    assert cli.out("cat", "/a", session=s) == "1\n"
    cli("run", "-s", "echo 3 >> /a", session=s)
    cli("run", "-s", "echo 4 >> /a", session=s)
    assert cli.out("cat", "/a", session=s) == "1\n3\n4\n"
    cli("session", "rollback", session=s)
    assert cli.out("cat", "/a", session=s) == "1\n3\n"
    cli("session", "rb", "1", session=s)
    assert cli.out("cat", "/a", session=s) == "1\n"
    p = cli("session", "rollback", "9", session=s, check=False)
    assert "cannot roll back 9" in one_error_line(p)
    cli("session", "co", "experiment", session=s)
    assert cli.out("cat", "/a", session=s) == "1\n2\n"

    branches = [json.loads(l) for l in cli.out("session", "branch", "-f", "json", session=s)
                .splitlines()]
    assert {b["branch"]: b["current"] for b in branches} == {"experiment": "*", "main": ""}
    assert "already exists" in one_error_line(cli("session", "branch", "main", session=s,
                                                  check=False))
    assert "no branch 'nope'" in one_error_line(cli("session", "checkout", "nope", session=s,
                                                    check=False))

    # the DAG drawn: the fork after "echo 1", both branch heads labelled
    text = cli.out("session", "show", session=s)
    lines = text.splitlines()
    assert lines[0].startswith(f"session {s} (branch experiment")
    assert any(l.startswith("* #") and "use" in l for l in lines)
    fork = [l for l in lines if l.startswith(("├─", "└─"))]
    assert len(fork) == 2, text
    assert any("echo 2 >> /a" in l and "(HEAD -> experiment)" in l for l in lines), text
    assert any("echo 4 >> /a" in l for l in lines) and "(main)" in text, text
    # the same history as records, parents linking them
    hist = [json.loads(l) for l in cli.out("session", "show", "-f", "json", session=s)
            .splitlines()]
    ids = {h["id"]: h for h in hist}
    assert [h["kind"] for h in hist] == ["use", "run", "run", "run", "run"]
    assert all(h["parent"] in ids for h in hist[1:]) and hist[0]["parent"] is None
    main_head = [h for h in hist if "main" in h["branches"]][0]
    assert main_head["title"] == "echo 1 > /a"

    cli("session", "branch", "-U", "main", session=s)
    assert "checked out" in one_error_line(cli("session", "branch", "-U", "experiment",
                                               session=s, check=False))


def test_file_injection_modes_and_dedup(cli, busybox, tmp_path):
    s = cli.use()
    script = tmp_path / "tool.sh"
    script.write_text("#!/bin/sh\necho tool \"$@\"\n")
    script.chmod(0o755)
    data = tmp_path / "data.bin"
    data.write_bytes(os.urandom(5000))
    p = cli("--log-level", "debug", "run",
            "--file", f"{script}:/opt/bin/tool:u12:g34:m0750",
            "-F", f"{data}",
            "--", "sh", "-c", "stat -c '%a %u %g' /opt/bin/tool /data.bin; /opt/bin/tool x; "
            "sha256sum /data.bin", session=s)
    out = p.stdout.decode().splitlines()
    assert out[0] == "750 12 34" and out[1] == "644 0 0" and out[2] == "tool x"
    import hashlib
    assert out[3].split()[0] == hashlib.sha256(data.read_bytes()).hexdigest()
    assert p.stderr.decode().count("> POST") == 3  # two uploads and the spawn
    # the same content again: looked up by hash, not uploaded
    p = cli("--log-level", "debug", "run", "-F", f"{data}:rel.bin", "-C", "/tmp",
            "--", "stat", "-c", "%n %s", "/tmp/rel.bin", session=s)
    assert p.stdout.decode() == "/tmp/rel.bin 5000\n"
    assert p.stderr.decode().count("> POST") == 1
    assert "GET" in p.stderr.decode() and "/v1/files/" in p.stderr.decode()
    # the file stays in the snapshot
    assert cli.out("cat", "/opt/bin/tool", session=s) == script.read_text()
    bad = cli("run", "--file", f"{script}:/x:zz", "--", "true", session=s, check=False)
    assert "host[:path]" in one_error_line(bad)
    bad = cli("run", "--file", str(tmp_path / "missing"), "--", "true", session=s, check=False)
    assert "cannot read" in one_error_line(bad)


def test_interpreter_mode_and_shebang(cli, busybox, tmp_path):
    s = cli.use()
    script = tmp_path / "job.sh"
    script.write_text("#!/usr/bin/env -S coppice run -I\n"
                      "echo \"args: $*\"\nuname -n\necho done > /job-ran\nexit 4\n")
    script.chmod(0o755)
    p = cli("run", "-I", str(script), "one", "two", session=s, check=False)
    assert p.returncode == 4 and p.stdout == b"args: one two\ncoppice\n"
    # executed directly: the kernel runs `env -S coppice run -I job.sh ARGS`
    env = dict(cli.env, COPPICE_SESSION=s)
    p = subprocess.run([str(script), "three"], env=env, capture_output=True, timeout=60)
    assert p.returncode == 4 and p.stdout == b"args: three\ncoppice\n", p.stderr
    assert cli.out("cat", "/job-ran", session=s) == "done\n"


def test_ctrl_c_cancels_the_operation(cli, busybox, client):
    s = cli.use()
    p = cli.popen("run", "-s", "echo started; sleep 60", session=s)
    assert p.stdout.readline() == b"started\n"
    t0 = time.time()
    p.send_signal(signal.SIGINT)
    assert p.wait(10) == 130 and time.time() - t0 < 5
    err = p.stderr.read().decode()
    assert "cancelled operation" in err, err
    op = err.strip().split()[-1]
    assert client.wait(op, 20)["status"] == "CANCELLED"
    # the session did not move
    hist = [json.loads(l) for l in cli.out("session", "show", "-f", "json", session=s).splitlines()]
    assert [h["kind"] for h in hist] == ["use"]


# ------------------------------------------------------------------------------------------
# images, tags, operations

def parse(fmt, text):
    if fmt == "json":
        return [json.loads(l) for l in text.splitlines()]
    if fmt == "json-pretty":
        return json.loads(text)
    if fmt == "csv":
        return list(csv.DictReader(io.StringIO(text)))
    if fmt == "tsv":
        return list(csv.DictReader(io.StringIO(text), delimiter="\t"))
    if fmt == "table":
        lines = [l for l in text.splitlines() if not l.startswith("+")]
        rows = [[c.strip() for c in l.strip("|").split("|")] for l in lines]
        return [dict(zip(rows[0], r)) for r in rows[1:]]
    if fmt in ("default", "plain"):
        rows = [l.split() for l in text.splitlines()]
        return rows
    raise AssertionError(fmt)


def test_images_formats_and_tags(cli, busybox):
    s = cli.use()
    cli("run", "-s", "echo v1 > /v", session=s)
    img = cli.out("session", "show", "-f", "json", session=s).splitlines()[-1]
    img = json.loads(img)["image"]
    tag = f"cli/test-{os.getpid()}:v1"
    out = cli.out("tag", tag, session=s)
    assert img in out and tag in out
    for fmt in ("json", "json-pretty", "csv", "tsv", "table"):
        rows = parse(fmt, cli.out("images", "-f", fmt))
        key = ("uuid", "tag") if fmt.startswith("json") else ("UUID", "TAG")
        got = {r[key[0]]: r[key[1]] for r in rows}
        assert got[busybox] == "busybox:latest" and got[img] == tag, (fmt, rows)
    rows = parse("default", cli.out("images"))
    assert rows[0] == ["UUID", "TAG", "CREATED"] and [busybox, "busybox:latest"] == rows[-1][:2] \
        or any(r[:2] == [busybox, "busybox:latest"] for r in rows)
    plain = parse("plain", cli.out("images", "ls", "-f", "plain"))
    assert plain[0][0] != "UUID" and any(r[:2] == [img, tag] for r in plain)
    pretty = json.loads(cli.out("images", "--prefix", "cli/test-", "-f", "json-pretty"))
    assert [i["tag"] for i in pretty] == [tag]
    # untagged images need -a; -i picks one
    untagged = [json.loads(l) for l in cli.out("images", "-a", "-f", "json").splitlines()]
    assert any(i["tag"] is None for i in untagged)
    assert [i["uuid"] for i in parse("json", cli.out("images", "-i", img, "-f", "json"))] == [img]
    # use by tag, bare name falls back to :latest
    s2 = cli.use(f"tag:{tag}")
    assert cli.out("cat", "/v", session=s2) == "v1\n"
    cli.use("busybox")
    # tag IMAGE TAG moves the tag; -U removes it; public base images cannot be retagged
    cli("run", "-s", "echo v2 > /v", session=s)
    cli("tag", f"tag:{tag}", tag + "-moved")
    assert [i["uuid"] for i in parse("json", cli.out("images", "--prefix", tag, "-f", "json"))] \
        == [img]
    cli("tag", "-U", tag + "-moved")
    assert parse("json", cli.out("images", "--prefix", tag, "-f", "json")) == []
    p = cli("tag", busybox, "nope:1", check=False)
    assert "403" in one_error_line(p)


def test_ps_show_wait_kill(cli, busybox, client):
    s = cli.use()
    op = cli.out("run", "-d", "--", "sleep", "30", session=s).strip()
    deadline = time.time() + 20
    while client.get(f"/v1/operations/{op}").json()["status"] != "EXECUTING":
        assert time.time() < deadline
        time.sleep(0.05)
    assert op in cli.out("ps", "-q").split()
    rows = parse("csv", cli.out("ps", "-f", "csv"))
    assert any(r["UUID"] == op and r["STATUS"] == "EXECUTING" for r in rows)
    assert cli.out("kill", op).strip() == op
    waited = parse("json", cli.out("operation", "wait", op, "-f", "json", check=False))
    assert waited[0]["status"] == "CANCELLED"
    assert cli("operation", "wait", op, check=False).returncode == 1
    p = cli("kill", op, check=False)
    assert p.returncode == 1 and "already finished" in p.stderr.decode()

    # a finished run: show (default text, json, --raw), wait, and @ references
    cli("run", "-s", "echo shown; exit 2", session=s, check=False)
    text = cli.out("show", session=s)
    assert "status     SUCCESS" in text and "exit code  2" in text and "shown" in text
    raw = json.loads(cli.out("show", "@", "--raw", session=s))
    assert raw["metadata"]["result"]["state"]["exit_code"] == 2
    assert json.loads(cli.out("operation", "show", raw["uuid"], "-f", "json-pretty"))[0][
        "uuid"] == raw["uuid"]
    assert parse("json", cli.out("operation", "wait", "@", "-f", "json", session=s))[0][
        "exit_code"] == 2
    everything = parse("json", cli.out("ps", "-a", "-f", "json"))
    assert {op, raw["uuid"]} <= {o["uuid"] for o in everything}
    assert all(o["status"] == "CANCELLED"
               for o in parse("json", cli.out("operation", "ls", "--status", "C", "-f", "json")))
    # kill -a cancels every active operation
    op2 = cli.out("run", "-d", "--", "sleep", "30", session=s).strip()
    assert op2 in cli.out("kill", "-a").split()
    assert client.wait(op2, 20)["status"] == "CANCELLED"


def test_ls_cat_cp_cd_env(cli, busybox, tmp_path):
    s = cli.use()
    cli("run", "-s", "mkdir -p /w/sub && echo data > /w/sub/f && ln -s f /w/sub/l", session=s)
    text = cli.out("ls", "/w/sub", session=s)
    assert text.startswith("total") and " f\n" in text and "l -> f" in text
    rows = parse("json", cli.out("ls", "/w/sub", "-f", "json", session=s))
    assert {r["path"]: r["is_symlink"] for r in rows} == {"f": False, "l": True}
    rows = parse("csv", cli.out("ls", "/w/sub", "-f", "csv", session=s))
    assert {r["NAME"]: r["MODE"] for r in rows}["f"] == "100644"
    # cd: validated, relative paths follow it, runs start there
    assert cli.out("cd", "/w", session=s) == "/w\n"
    assert cli.out("cd", "sub", session=s) == "/w/sub\n"
    assert cli.out("cat", "f", session=s) == "data\n"
    assert cli.out("run", "pwd", session=s) == "/w/sub\n"
    assert "no such directory" in one_error_line(cli("cd", "nope", session=s, check=False))
    assert "not a directory" in one_error_line(cli("cd", "/w/sub/f", session=s, check=False))
    cli("cd", "..", session=s)
    assert cli.out("run", "pwd", session=s) == "/w\n"
    cli("cd", session=s)
    assert cli.out("run", "pwd", session=s) == "/\n"
    # cp to a file, into a directory, to stdout; a missing file leaves nothing behind
    cli("cp", "/w/sub/f", str(tmp_path / "out"), session=s)
    assert (tmp_path / "out").read_text() == "data\n"
    (tmp_path / "dir").mkdir()
    cli("cp", "/etc/passwd", str(tmp_path / "dir"), session=s)
    assert (tmp_path / "dir" / "passwd").read_text().startswith("root:")
    assert cli.out("cp", "/w/sub/f", "-", session=s) == "data\n"
    p = cli("cp", "/nope", str(tmp_path / "gone"), session=s, check=False)
    assert "no such file" in one_error_line(p)
    assert sorted(os.listdir(tmp_path)) == ["dir", "home", "out"]
    # env: merged into runs, -e wins, -U unsets
    cli("env", "A=1", "B=two words", session=s)
    assert cli.out("env", session=s) == "A=1\nB=two words\n"
    assert cli.out("run", "-s", "echo $A,$B", session=s) == "1,two words\n"
    assert cli.out("run", "-e", "A=9", "-s", "echo $A", session=s) == "9\n"
    cli("env", "-U", "A", session=s)
    assert parse("json", cli.out("env", "-f", "json", session=s)) == [
        {"name": "B", "value": "two words"}]


def test_images_import_with_progress(cli, busybox, registry):
    from oci_fixtures import File, layer_tar, push_image
    push_image(registry, "cli/app", "1", [layer_tar({"app/hello": File("hello from oci\n")}),
                                         layer_tar({"app/two": File("2\n")})])
    ref = registry.ref("cli/app", "1")
    p = cli("images", "import", ref, "-f", "json")
    row = json.loads(p.stdout)
    assert row["tag"] == "cli/app:1" and row["uuid"]
    err = p.stderr.decode()
    assert "layers 2/2" in err, err
    s = cli.use("cli/app:1")
    assert cli.out("cat", "/app/hello", session=s) == "hello from oci\n"
    # explicit tags: --tag and REF?tag=
    assert json.loads(cli.out("images", "import", ref, "--tag", "mine:x", "-f", "json"))[
        "tag"] == "mine:x"
    assert json.loads(cli.out("images", "import", ref + "?tag=mine:y", "-f", "json"))[
        "tag"] == "mine:y"
    # a missing image fails in one line
    p = cli("images", "import", registry.ref("cli/none", "1"), check=False)
    assert "import of" in one_error_line(p) and "failed" in p.stderr.decode()


def test_completion_scripts():
    """`coppice completion bash|zsh` completes commands, subcommands and flags at every level."""
    script = subprocess.run([COPPICE, "completion", "bash"], capture_output=True, text=True,
                            check=True).stdout

    def complete(*words):
        w = " ".join(f"'{x}'" for x in words)
        out = subprocess.run(["bash", "-c", script + f"\nCOMP_WORDS=(coppice {w}); "
                              f"COMP_CWORD={len(words)}; _coppice; printf '%s\\n' \"${{COMPREPLY[@]}}\""],
                             capture_output=True, text=True, check=True).stdout
        return set(out.split())

    assert "session" in complete("se")
    assert {"branch", "checkout", "rollback"} <= complete("session", "")
    assert "--file" in complete("run", "--fi")
    assert "completion" in complete("comp")
    zsh = subprocess.run([COPPICE, "completion", "zsh"], capture_output=True, text=True,
                         check=True).stdout
    assert "bashcompinit" in zsh and "_coppice()" in zsh
    bad = subprocess.run([COPPICE, "completion", "fish"], capture_output=True, text=True)
    assert bad.returncode != 0 and bad.stderr.count("\n") == 1


def test_file_cp_edit_ls_stage_for_the_next_run(cli, busybox, tmp_path):
    s = cli.use()
    local = tmp_path / "conf.txt"
    local.write_text("hello\n")
    cli("file", "cp", str(local), "/etc/app.conf:u7:g8:m0600", session=s)
    # a disposable run gets the staged file, and takes it: the next run no longer has it
    out = cli.out("run", "-D", "--", "sh", "-c", "cat /etc/app.conf; stat -c '%a %u %g' "
                  "/etc/app.conf", session=s)
    assert out == "hello\n600 7 8\n"
    p = cli("run", "--", "cat", "/etc/app.conf", session=s, check=False)
    assert p.returncode != 0
    # edit a file of the image with an editor command; the result is staged
    cli("file", "edit", "/etc/passwd", "-E", "sed -i s/^root:/ROOT:/", session=s)
    assert cli.out("run", "--", "head", "-c", "5", "/etc/passwd", session=s) == "ROOT:"
    # an unchanged edit stages nothing
    p = cli("file", "edit", "/etc/hostname", "-E", "true", session=s)
    assert "unchanged" in p.stderr.decode()
    # the server's files, in JSON and quiet forms
    import hashlib
    want = hashlib.sha256(b"hello\n").hexdigest()
    rows = [json.loads(l) for l in cli.out("file", "ls", "-f", "json", session=s).splitlines()]
    assert any(r["sha256"] == want for r in rows)
    uuids = cli.out("file", "ls", "-q", session=s).split()
    assert {r["uuid"] for r in rows} == set(uuids)


def test_detached_runs_and_session_wait(cli, busybox):
    s = cli.use()
    op = cli.out("run", "-d", "--", "sh", "-c", "sleep 0.5; echo later > /later", session=s).strip()
    assert len(op) == 36
    p = cli("session", "wait", session=s)
    assert op in p.stdout.decode() + p.stderr.decode()
    # the result was recorded: the session now sees the file
    assert cli.out("cat", "/later", session=s) == "later\n"
    # a failing detached run makes `session wait` exit non-zero; nothing left to wait for after
    cli("run", "-d", "--", "false", session=s)
    assert cli("session", "wait", session=s, check=False).returncode == 1
    assert cli("session", "wait", session=s).returncode == 0
    bad = cli("session", "wait", "00000000-0000-4000-8000-000000000000", session=s, check=False)
    one_error_line(bad)


def test_log_shows_the_lineage(cli, busybox):
    s = cli.use()
    cli("run", "--", "sh", "-c", "echo 1 > /a", session=s)
    cli("run", "--", "sh", "-c", "echo 2 >> /a", session=s)
    rows = [json.loads(l) for l in cli.out("log", "-f", "json", session=s).splitlines()]
    assert [r["kind"] for r in rows] == ["run", "run", "use"]
    assert "echo 2" in rows[0]["title"]
    cli("session", "rollback", "1", session=s)
    rows = [json.loads(l) for l in cli.out("log", "-f", "json", session=s).splitlines()]
    assert [r["kind"] for r in rows] == ["run", "use"]
    assert "#" in cli.out("log", session=s)


def test_shell_repl_through_tmux(cli, busybox):
    """`coppice shell` driven like a user would: tmux send-keys / capture-pane, tab completion
    of a remote path, cd, a sandboxed command, history kept per session."""
    if not shutil.which("tmux"):
        pytest.skip("tmux is not installed")
    s = cli.use()
    name = "coppice-it-" + s.replace("+", "-")[-12:]
    env = " ".join(f"{k}='{v}'" for k, v in cli.env.items() if k.startswith("COPPICE_"))
    sock = ["tmux", "-L", name]
    subprocess.run([*sock, "new-session", "-d", "-s", name, "-x", "150", "-y", "40",
                    f"env {env} COPPICE_SESSION='{s}' {COPPICE} shell"], check=True)

    def keys(*k):
        subprocess.run([*sock, "send-keys", "-t", name, *k], check=True)

    def screen_has(text, timeout=15):
        deadline = time.time() + timeout
        while time.time() < deadline:
            out = subprocess.run([*sock, "capture-pane", "-p", "-t", name], capture_output=True,
                                 text=True).stdout
            if text in out:
                return out
            time.sleep(0.1)
        raise AssertionError(f"{text!r} not on screen:\n{out}")

    try:
        screen_has("coppice:/$")
        keys("echo hi > /x && echo done-1", "Enter")
        screen_has("done-1")
        keys("cd /etc", "Enter")
        screen_has("coppice:/etc$")
        keys("cat pass", "Tab")          # completes to "cat passwd" from the image's listing
        screen_has("cat passwd")
        keys("Enter")
        screen_has("root:x:0:0")
        keys("cat /x", "Enter")
        screen_has("hi")
        keys("exit", "Enter")
        deadline = time.time() + 10
        while subprocess.run([*sock, "has-session", "-t", name],
                             capture_output=True).returncode == 0:
            assert time.time() < deadline
            time.sleep(0.1)
    finally:
        subprocess.run([*sock, "kill-server"], capture_output=True)
    hist = (cli.home / "history" / s).read_text()
    assert "cd\\040/etc" in hist or "cd /etc" in hist
    # the run inside the shell advanced the session
    assert cli.out("cat", "/x", session=s) == "hi\n"


def test_build_a_dockerfile_with_step_cache(cli, busybox, tmp_path):
    ctxdir = tmp_path / "ctx"
    (ctxdir / "conf").mkdir(parents=True)
    (ctxdir / "hello.txt").write_text("from the context\n")
    (ctxdir / "conf" / "a.ini").write_text("a=1\n")
    (ctxdir / "Dockerfile").write_text(
        "# a comment\n"
        "FROM busybox:latest\n"
        "ARG GREETING=hello\n"
        "ENV NAME=world\n"
        "WORKDIR /app\n"
        "COPY hello.txt ./\n"
        "COPY conf /etc/conf\n"
        "RUN echo \"$GREETING $NAME\" > out.txt && \\\n"
        "    cat hello.txt >> out.txt\n"
        "USER 1000\n"
        "RUN id -u > /tmp/uid\n"
        "CMD [\"sh\"]\n")
    s = cli.use()
    p = cli("build", str(ctxdir), "--tag", "built:1", "--build-arg", "GREETING=hi", session=s,
            timeout=120)
    img = p.stdout.decode().strip()
    assert len(img) == 36, p
    assert "Step 10/10" in p.stderr.decode()
    cli("use", "built:1", session=s)
    assert cli.out("cat", "/app/out.txt", session=s) == "hi world\nfrom the context\n"
    assert cli.out("cat", "/etc/conf/a.ini", session=s) == "a=1\n"
    assert cli.out("cat", "/tmp/uid", session=s) == "1000\n"
    # again: every snapshot step comes from the cache, same result
    p = cli("build", str(ctxdir), "--build-arg", "GREETING=hi", session=s, timeout=120)
    assert p.stdout.decode().strip() == img
    assert p.stderr.decode().count("using cache") == 5
    # a changed file reruns from its COPY on; the steps before it stay cached
    (ctxdir / "hello.txt").write_text("changed\n")
    p = cli("build", str(ctxdir), "--build-arg", "GREETING=hi", session=s, timeout=120)
    assert p.stdout.decode().strip() != img
    assert p.stderr.decode().count("using cache") == 1
    bad = cli("build", str(tmp_path / "nowhere"), session=s, check=False)
    one_error_line(bad)


def test_diff_between_images(cli, busybox):
    s = cli.use()
    base = cli.out("session", "show", "-f", "json", session=s)
    base_img = json.loads(base.splitlines()[0])["image"]
    cli("run", "-s", "--", "echo new > /added; rm /etc/hostname; echo x >> /etc/passwd; "
        "mkdir -p /d/e; echo f > /d/e/f", session=s)
    out = cli.out("diff", base_img, session=s)
    lines = set(out.splitlines())
    assert {"A /added", "D /etc/hostname", "M /etc/passwd", "A /d"} <= lines, out
    rows = [json.loads(l) for l in cli.out("diff", base_img, "-f", "json", session=s).splitlines()]
    assert {"change": "D", "path": "/etc/hostname"} in rows
    assert cli.out("diff", base_img, base_img, session=s) == ""
