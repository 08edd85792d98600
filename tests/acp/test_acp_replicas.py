"""ACP sessions live on the replica that runs their agent: two agwd replicas (``--replica-id``
and ``AGW_REPLICA_ID``, the same static bundle, each its own store) hand out ids that name them;
a request for one replica's session, transcript or ``/acp`` connection that reaches the other is
answered 421 naming the owner, and continues where it belongs. Every answer says which replica
gave it (``x-agw-replica``)."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest

from agw.acp.replica import Replica
from agw.errors import Refusal
from tests.support.acp import AcpGateway, make_agent, read_events
from tests.support.agwd import AgwdLauncher


@dataclass
class Pair:
    a: AcpGateway
    b: AcpGateway


@pytest.fixture(scope="module")
def pair(module_agwd_factory: AgwdLauncher, tmp_path_factory: pytest.TempPathFactory) -> Pair:
    tmp = tmp_path_factory.mktemp("acp-replicas")
    agent = make_agent(tmp)
    bundle = {
        "apiVersion": "gateway.agw/v1alpha1",
        "kind": "GatewayBundle",
        "acpServices": [
            agent.service_config("fake"),
            agent.service_config("inter", permission_mode="interactive"),
        ],
        "acpRoutes": [
            {"match_policy": {"path_prefix": "/agent"}, "service_id": "fake"},
            {"match_policy": {"path_prefix": "/inter"}, "service_id": "inter"},
        ],
    }
    path = tmp / "bundle.yaml"
    path.write_text(json.dumps(bundle))  # JSON is YAML
    a = module_agwd_factory.start("--replica-id", "replica-a", static=path)
    b = module_agwd_factory.start(static=path, env={"AGW_REPLICA_ID": "replica-b"})
    return Pair(AcpGateway(a, agent), AcpGateway(b, agent))


def assert_misdirected(status: int, body: dict[str, str]) -> None:
    assert status == 421, body
    assert body["owner"] == "replica-a"
    assert '"replica-a"' in body["error"] and "held by replica" in body["error"]


def test_turn_continues_only_on_its_replica(pair: Pair) -> None:
    first = pair.a.turn("/agent", {"thread_id": "t1", "input": "hello"})
    assert first.status == 200 and first.names[-1] == "done", first.names
    assert first.headers["x-agw-replica"] == "replica-a"
    sid = first.session_id
    assert sid.startswith("replica-a~") and sid[len("replica-a~") :] in pair.a.agent.sessions()

    elsewhere = pair.b.turn("/agent", {"thread_id": "t1", "input": "again", "session_id": sid})
    assert elsewhere.events[0].name == "http"
    assert_misdirected(elsewhere.status, elsewhere.events[0].data)
    assert elsewhere.headers["x-agw-replica"] == "replica-b"
    assert elsewhere.headers["x-agw-owner-replica"] == "replica-a"

    home = pair.a.turn("/agent", {"thread_id": "t1", "input": "again", "session_id": sid})
    assert home.status == 200 and home.names[-1] == "done", home.events
    assert home.session_id == sid and "again" in home.text


def test_own_unknown_session_stays_not_found(pair: Pair) -> None:
    r = pair.b.turn("/agent", {"thread_id": "t2", "input": "x", "session_id": "replica-b~nope"})
    assert r.status == 200 and r.names == ["error"], r.events
    assert "not found" in r.events[0].data["message"]


def test_transcript_and_list_name_the_owner(pair: Pair) -> None:
    sid = pair.a.turn("/agent", {"thread_id": "t3", "input": "remember me"}).session_id
    with pair.a.client() as client:
        listed = client.get(pair.a.url("/agent/sessions"))
        assert listed.status_code == 200, listed.text
        assert sid in [s["session_id"] for s in listed.json()["sessions"]]
        path = f"/agent/sessions/{sid}/transcript"
        there = client.get(pair.b.url(path))
        assert_misdirected(there.status_code, there.json())
        assert there.headers["x-agw-owner-replica"] == "replica-a"
        home = client.get(pair.a.url(path))
        assert home.status_code == 200, home.text
        assert home.headers["x-agw-replica"] == "replica-a"
        assert any("remember me" in m["text"] for m in home.json()["messages"])


def test_permission_answer_names_its_replica(pair: Pair) -> None:
    json_type = {"content-type": "application/json"}
    with (
        pair.a.client() as client,
        pair.a.open_turn(client, "/inter", {"thread_id": "t4", "input": "tool"}) as r,
    ):
        events = read_events(r)
        session = next(events)
        perm = next(e for e in events if e.name == "permission")
        assert perm.data["session_id"] == session.data["session_id"]
        request_id = perm.data["request_id"]
        assert request_id.startswith("replica-a~perm-")
        body = {"request_id": request_id, "outcome": "selected", "option_id": "ok"}
        there = client.post(pair.b.url("/inter/permission"), json=body, headers=json_type)
        assert_misdirected(there.status_code, there.json())
        home = client.post(pair.a.url("/inter/permission"), json=body, headers=json_type)
        assert home.status_code == 200, home.text
        assert [e.name for e in events][-1] == "done"


def test_acp_connection_names_its_replica(pair: Pair) -> None:
    init = {"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {"protocolVersion": 1}}
    json_type = {"content-type": "application/json"}
    with pair.a.client() as client:
        opened = client.post(pair.a.url("/agent/acp"), json=init)
        assert opened.status_code == 200, opened.text
        cid = opened.headers["acp-connection-id"]
        assert cid.startswith("replica-a~")
        ids = {**json_type, "acp-connection-id": cid}
        new = {"jsonrpc": "2.0", "id": 1, "method": "session/new", "params": {"cwd": "/"}}
        there = client.post(pair.b.url("/agent/acp"), json=new, headers=ids)
        assert_misdirected(there.status_code, there.json())
        gone = client.delete(pair.b.url("/agent/acp"), headers=ids)
        assert gone.status_code == 421
        assert client.delete(pair.a.url("/agent/acp"), headers=ids).status_code == 202


def test_ids_and_tags() -> None:
    tagged = Replica("replica-a", tagged=True)
    assert tagged.tag("s1") == "replica-a~s1" and tagged.local("replica-a~s1", "x") == "s1"
    assert tagged.local("s1", "x") == "s1"  # untagged: this replica's
    assert tagged.local("bad tag!~s1", "x") == "bad tag!~s1"  # not a replica name: untagged
    with pytest.raises(Refusal) as exc:
        tagged.local("replica-b~s1", "acp session")
    assert exc.value.status == 421 and exc.value.detail == {"owner": "replica-b"}
    untagged = Replica("host:8080", tagged=False)
    assert untagged.tag("s1") == "s1" and untagged.local("other~s1", "x") == "other~s1"


def test_bad_replica_id_is_refused_at_start(agwd_factory: AgwdLauncher) -> None:
    bad = agwd_factory.start("--replica-id", "no spaces~here", wait=False)
    assert bad.proc.wait(timeout=30) != 0
    assert "--replica-id must be" in bad.log_path.read_text()
