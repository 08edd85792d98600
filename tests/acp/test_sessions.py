"""``GET <route>/sessions`` and ``GET <route>/sessions/{id}/transcript`` through a real agwd: a
transient fake agent lists and replays the sessions that turns left in its state directory."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import quote

import pytest

from tests.support.acp import AcpGateway, FakeAgentHandle, agent_pids, make_agent, start_acp_gateway
from tests.support.agwd import AgwdLauncher


@dataclass
class Env:
    gw: AcpGateway
    paged: FakeAgentHandle  # its own state directory: only its own sessions


@pytest.fixture(scope="module")
def env(module_agwd_factory: AgwdLauncher, tmp_path_factory: pytest.TempPathFactory) -> Env:
    tmp = tmp_path_factory.mktemp("acp-sessions")
    agent = make_agent(tmp)
    paged = make_agent(tmp / "paged")
    lst = agent.workdir / "lst"
    (lst / "sub").mkdir(parents=True)
    (agent.workdir / "link").symlink_to(lst)
    services = [
        agent.service_config("lst", cwd=str(lst), allowed_roots=[str(agent.workdir)]),
        paged.service_config("paged", "--page-size", "1"),
        agent.service_config("nolist", "--no-list", "--no-load"),
        agent.service_config("off", disabled=True),
        agent.service_config("dead", "--exit-on-start", "7"),
    ]
    routes = [{"prefix": f"/s/{s['id']}", "service_id": s["id"]} for s in services]
    return Env(start_acp_gateway(module_agwd_factory, tmp, agent, services, routes), paged)


def test_sessions_lists_the_services_cwd(env: Env) -> None:
    gw = env.gw
    lst = gw.agent.workdir / "lst"
    a = gw.turn("/s/lst", {"thread_id": "t-a", "input": "first of a"})
    b = gw.turn("/s/lst", {"thread_id": "t-b", "input": "first of b"})
    sub = gw.turn("/s/lst", {"thread_id": "t-c", "input": "in sub", "cwd": str(lst / "sub")})
    pids = agent_pids(gw.agent)
    with gw.client() as client:
        r = client.get(gw.url("/s/lst/sessions"))
        assert r.status_code == 200
        body = r.json()
        assert "next_cursor" not in body
        got = {s["session_id"]: s for s in body["sessions"]}
        assert set(got) == {a.session_id, b.session_id}
        assert got[a.session_id]["cwd"] == str(lst)
        assert got[a.session_id]["title"] == "first of a"
        assert got[a.session_id]["updated_at"].endswith("Z")
        r = client.get(gw.url("/s/lst/sessions"), params={"cwd": str(lst / "sub")})
        assert [s["session_id"] for s in r.json()["sessions"]] == [sub.session_id]
        # symlinks are resolved on both sides: the link names the same directory
        link = gw.agent.workdir / "link"
        r = client.get(gw.url("/s/lst/sessions"), params={"cwd": str(link)})
        assert {s["session_id"] for s in r.json()["sessions"]} == {a.session_id, b.session_id}
    # the listing ran on a transient process, closed afterwards
    assert agent_pids(gw.agent) == pids
    row = gw.rows("operation = 'sessions' AND route_id LIKE '%lst%'", count=3)[0]
    assert row["status_code"] == 200 and row["result_status"] == "success"
    assert row["service_id"] == "lst" and row["agent_type"] == "command"


def test_sessions_pages_with_cursor(env: Env) -> None:
    gw = env.gw
    made = {gw.turn("/s/paged", {"thread_id": f"p{i}", "input": "hi"}).session_id for i in range(3)}
    seen: list[str] = []
    cursor = None
    with gw.client() as client:
        for _ in range(5):
            r = client.get(gw.url("/s/paged/sessions"), params={"cursor": cursor} if cursor else {})
            assert r.status_code == 200
            body = r.json()
            assert len(body["sessions"]) == 1
            seen += [s["session_id"] for s in body["sessions"]]
            cursor = body.get("next_cursor")
            if cursor is None:
                break
    assert sorted(seen) == sorted(made) and len(seen) == 3


def test_transcript_replays_the_session(env: Env) -> None:
    gw = env.gw
    first = gw.turn("/s/lst", {"thread_id": "t-tr", "input": "think hard"})
    gw.turn("/s/lst", {"thread_id": "t-tr", "input": "second"})
    with gw.client() as client:
        r = client.get(gw.url(f"/s/lst/sessions/{first.session_id}/transcript"))
    assert r.status_code == 200
    assert r.json() == {
        "session_id": first.session_id,
        "messages": [
            {"role": "user", "text": "think hard"},
            {"role": "reasoning", "text": "hard"},
            {"role": "assistant", "text": "echo: think hard"},
            {"role": "user", "text": "second"},
            {"role": "assistant", "text": "echo: second"},
        ],
    }
    row = gw.row("operation = 'transcript' AND session_id = ?", (first.session_id,))
    assert row["status_code"] == 200 and row["service_id"] == "lst"


def test_transcript_ids_are_one_unescaped_segment(env: Env) -> None:
    gw = env.gw
    with gw.client() as client:
        # an escaped slash is part of the id (not a session of this caller: 404)
        r = client.get(gw.url("/s/lst/sessions/" + quote("a/b", safe="") + "/transcript"))
        assert r.status_code == 404 and r.json() == {"error": 'acp session "a/b" not found'}
        row = gw.row("operation = 'transcript' AND session_id = 'a/b'")
        assert row["status_code"] == 404 and row["error_type"] == "session_not_found"
        r = client.get(gw.url("/s/lst/sessions/a/b/transcript"))
        assert r.status_code == 404
        r = client.get(gw.url("/s/lst/sessions//transcript"))
        assert r.status_code == 400 and r.json() == {"error": "session id is required"}
        r = client.post(gw.url("/s/lst/sessions/x/transcript"))
        assert r.status_code == 405 and r.json() == {"error": "method not allowed"}


def test_errors_of_the_shared_contract(env: Env) -> None:
    gw = env.gw
    mine = gw.turn("/s/nolist", {"thread_id": "t-nolist", "input": "hi"}).session_id
    with gw.client() as client:
        r = client.get(gw.url("/s/nolist/sessions"))
        assert r.status_code == 502
        assert r.json() == {"error": "acp agent does not advertise session/list"}
        r = client.get(gw.url(f"/s/nolist/sessions/{mine}/transcript"))
        assert r.status_code == 502
        assert r.json() == {"error": "acp agent does not advertise session/load"}
        r = client.get(gw.url("/s/off/sessions"))
        assert r.status_code == 400 and r.json() == {"error": 'acp service "off" is disabled'}
        r = client.get(gw.url("/s/lst/sessions"), params={"cwd": "/etc"})
        assert r.status_code == 400 and "allowed_roots" in r.json()["error"]
        r = client.get(gw.url("/s/lst/sessions"), params={"cwd": "relative"})
        assert r.status_code == 400
        r = client.get(gw.url("/s/dead/sessions"))
        assert r.status_code == 502
        assert r.json()["error"].startswith("acp process exited: 7")
        assert "fake agent: exit on start" in r.json()["error"]
    rows = gw.rows("route_id LIKE '%nolist%' AND operation != 'turn'", count=2)
    assert {r["error_type"] for r in rows} == {"upstream_failed"}
    assert gw.rows("route_id LIKE '%off%'")[0]["error_type"] == "invalid_request"
    assert gw.rows("route_id LIKE '%dead%'")[0]["error_type"] == "agent_exited"
