"""The SSE event stream: order, resume, follow (contract §3)."""

from coppice_client import parse_sse


def test_event_sequence(client, busybox):
    op = client.run(busybox, "echo out; echo err >&2")
    ev = client.events(op["uuid"])
    types = [e["type"] for e in ev]
    assert types[0] == "init" and types[1] == "spawn" and types[-2:] == ["exit", "completion"]
    assert [e["id"] for e in ev] == list(range(len(ev)))
    assert ev[0]["spid"] == 0 and ev[1]["spid"] == 1 and ev[-1]["spid"] == 0
    assert "".join(e["data"]["value"] for e in ev if e["type"] == "stdout") == "out\n"
    assert "".join(e["data"]["value"] for e in ev if e["type"] == "stderr") == "err\n"
    exit_ev = ev[-2]["data"]
    assert len(exit_ev["resources"]) == 15 and exit_ev["code"] == 0 and exit_ev["signal"] == -1
    assert ev[-1]["data"]["status"] == "SUCCESS"


def test_resume_with_since_and_last_event_id(client, busybox):
    op = client.run(busybox, "echo a")
    all_ev = client.events(op["uuid"])
    after = client.events(op["uuid"], since=1)
    assert [e["id"] for e in after] == [e["id"] for e in all_ev if e["id"] > 1]
    r = client.get(f"/v1/operations/{op['uuid']}/events", headers={"Last-Event-Id": "2"})
    assert [e["id"] for e in parse_sse(r.text)] == [e["id"] for e in all_ev if e["id"] > 2]
    r = client.get(f"/v1/operations/{op['uuid']}/events", params={"since": "3"},
                   headers={"Last-Event-Id": "1"})
    assert parse_sse(r.text)[0]["id"] == 4
    only1 = client.events(op["uuid"], spid=1)
    assert only1 and all(e["spid"] == 1 for e in only1)


def test_follow_streams_live(client, busybox):
    op = client.spawn(busybox, "for i in 1 2 3; do echo $i; sleep 0.2; done")
    got = list(client.follow(op))
    assert got[-1]["type"] == "completion"
    assert "".join(e["data"]["value"] for e in got if e["type"] == "stdout") == "1\n2\n3\n"
    assert [e["id"] for e in got] == list(range(len(got)))


def test_unknown_operation_events_404(client):
    assert client.get("/v1/operations/00000000-0000-4000-8000-000000000000/events").status == 404
