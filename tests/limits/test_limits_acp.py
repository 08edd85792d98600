"""Limits on ACP prompt turns (docs/limits.md, "Limits on MCP and ACP"), through a real agwd and
the fake ACP agent as real processes, httpx as the client. A requests limit refuses a turn with
the plane's 429 (``{"error", "limit"}``, ``Retry-After``, RateLimit headers) before any agent
starts; a concurrency limit holds a turn while it runs and releases it when it ends, however it
ends; a session limit on ``<route>/acp`` prompts counts per ACP session; shadow mode.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
import threading
import time
from collections.abc import AsyncGenerator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.acp import AcpGateway, FakeAgentHandle, make_agent, read_events
from tests.support.agwd import AgwdLauncher

PREFIX = "/a"
KEYS = ("team-a", "team-b")
TABLE = "acp_usage_events"


@pytest.fixture(scope="module")
def agent(tmp_path_factory: pytest.TempPathFactory) -> FakeAgentHandle:
    tmp: Path = tmp_path_factory.mktemp("acp-limits")
    return make_agent(tmp)


@pytest.fixture(scope="module")
def gw(module_agwd_factory: AgwdLauncher, agent: FakeAgentHandle) -> AcpGateway:
    return AcpGateway(module_agwd_factory.start(), agent)


MARK: dict[str, int] = {}


@pytest.fixture(autouse=True)
def _clean(gw: AcpGateway) -> Iterator[None]:
    time.sleep(0.3)  # the previous test's rows are written
    with contextlib.closing(sqlite3.connect(gw.agwd.db_path)) as db:
        MARK[TABLE] = int(db.execute(f"SELECT coalesce(max(rowid), 0) FROM {TABLE}").fetchone()[0])
    yield
    with gw.agwd.client() as c:  # the next test applies its own limits
        apply(c, gw.agent, [])


def apply(c: httpx.Client, agent: FakeAgentHandle, limits: list[dict[str, Any]]) -> None:
    bundle = {
        "apiVersion": "gateway.agw/v1alpha1",
        "kind": "GatewayBundle",
        "acpServices": [agent.service_config("fake")],
        "acpRoutes": [
            {
                "id": "a",
                "service_id": "fake",
                "match_policy": {"path_prefix": PREFIX},
                "auth_policy": {"require_virtual_key": True},
            }
        ],
        "virtualKeys": [{"id": k} for k in KEYS],
        "limits": limits,
    }
    r = c.post("/admin/gateway/apply", json={"bundle": bundle, "prune": True})
    assert r.status_code == 200, r.text


def setup(gw: AcpGateway, limits: list[dict[str, Any]]) -> dict[str, str]:
    """Applies the limits; the ``Authorization`` header of each key."""
    with gw.agwd.client() as c:
        apply(c, gw.agent, limits)
        return {k: f"Bearer {c.get(f'/admin/virtual_keys/{k}').json()['key']}" for k in KEYS}


def rows(gw: AcpGateway, n: int, where: str = "1") -> list[dict[str, Any]]:
    """The test's first ``n`` ACP rows matching ``where``, oldest first, once written."""
    deadline = time.monotonic() + 10
    sql = f"SELECT * FROM {TABLE} WHERE rowid > ? AND {where} ORDER BY rowid"
    while True:
        with contextlib.closing(sqlite3.connect(gw.agwd.db_path)) as db:
            db.row_factory = sqlite3.Row
            got = [dict(r) for r in db.execute(sql, (MARK[TABLE],))]
        if len(got) >= n or time.monotonic() > deadline:
            assert len(got) >= n, got
            return got[:n]
        time.sleep(0.05)


def turn(gw: AcpGateway, auth: str, thread: str, text: str = "hello") -> Any:
    return gw.turn(PREFIX, {"thread_id": thread, "input": text}, authorization=auth)


# ------------------------------------------------------------------------------- /turn


def test_a_requests_limit_refuses_the_third_turn_before_an_agent_starts(gw: AcpGateway) -> None:
    # an hour's window: a minute's could roll over between the turns of a slow run
    auth = setup(gw, [{"id": "turns", "subject": "key", "window": "1h", "requests": 2}])
    first = turn(gw, auth["team-a"], "t1")
    assert first.status == 200 and first.names[-1] == "done", first.events
    assert first.headers["ratelimit-policy"] == '"turns";q=2;qu="requests";w=3600'
    assert first.headers["ratelimit"].startswith('"turns";r=1;t=')
    assert turn(gw, auth["team-a"], "t2").names[-1] == "done"
    sessions = len(gw.agent.sessions())
    third = turn(gw, auth["team-a"], "t3")
    assert third.status == 429
    body = third.events[0].data
    assert body["limit"]["id"] == "turns" and body["limit"]["subject"] == "team-a"
    assert body["limit"]["meter"] == "requests" and body["limit"]["remaining"] == 0
    assert 'limit "turns" reached for team-a' in body["error"]
    assert 1 <= int(third.headers["retry-after"]) <= 3600
    assert third.headers["ratelimit"].startswith('"turns";r=0;t=')
    assert len(gw.agent.sessions()) == sessions  # no agent session was opened for it
    assert turn(gw, auth["team-b"], "t1").names[-1] == "done"  # another key's counter
    got = rows(gw, 4, "operation = 'turn'")
    assert [r["limit_action"] for r in got] == [None, None, "refused", None]
    assert got[2]["status_code"] == 429 and got[2]["limit_id"] == "turns"
    assert got[2]["error_type"] == "rate_limited" and got[2]["success"] == 0


def test_a_concurrency_limit_holds_a_turn_while_it_runs(gw: AcpGateway) -> None:
    auth = setup(gw, [{"id": "solo", "subject": "key", "concurrent": 1}])["team-a"]
    started = threading.Event()
    done: list[str] = []

    def slow(thread: str, *, leave_early: bool) -> None:
        with (
            gw.client() as client,
            gw.open_turn(
                client, PREFIX, {"thread_id": thread, "input": "slow 4 0.3"}, authorization=auth
            ) as r,
        ):
            assert r.status_code == 200
            for event in read_events(r):
                if event.name == "delta":
                    started.set()
                    if leave_early:
                        return  # the client goes away mid-turn
                done.append(event.name)

    runner = threading.Thread(target=slow, args=("c1",), kwargs={"leave_early": False})
    runner.start()
    try:
        assert started.wait(15)
        busy = turn(gw, auth, "c2")
        assert busy.status == 429 and busy.headers["retry-after"] == "1"
        assert busy.events[0].data["limit"]["meter"] == "concurrent"
    finally:
        runner.join(30)
    assert done[-1] == "done"
    assert turn(gw, auth, "c2").names[-1] == "done"  # released when the turn ended
    # a turn whose client leaves is released too (once the agent's prompt has ended)
    started.clear()
    slow("c3", leave_early=True)
    deadline = time.monotonic() + 15
    again = turn(gw, auth, "c4")
    while again.status == 429 and time.monotonic() < deadline:
        time.sleep(0.2)
        again = turn(gw, auth, "c4")
    assert again.names[-1] == "done", again.events


def test_shadow_mode_turns_are_counted_never_refused(gw: AcpGateway) -> None:
    limit = {"id": "watch", "subject": "key", "window": "1h", "requests": 1, "enforce": False}
    auth = setup(gw, [limit])["team-a"]
    for thread in ("s1", "s2"):
        result = turn(gw, auth, thread)
        assert result.names[-1] == "done" and "ratelimit" not in result.headers
    got = rows(gw, 2, "operation = 'turn'")
    assert [(r["limit_id"], r["limit_action"]) for r in got] == [(None, None), ("watch", "shadow")]


# ----------------------------------------------------------------------- <route>/acp


async def _stream(
    client: httpx.AsyncClient, url: str, headers: dict[str, str]
) -> AsyncGenerator[dict[str, Any], None]:
    async with client.stream("GET", url, headers=headers) as r:
        assert r.status_code == 200
        async for line in r.aiter_lines():
            if line.startswith("data:"):
                yield json.loads(line[5:])


def test_a_session_limit_counts_the_prompts_of_each_acp_session(gw: AcpGateway) -> None:
    auth = setup(gw, [{"id": "per-session", "subject": "session", "requests": 1}])["team-a"]
    url = gw.url(PREFIX + "/acp")
    init = {"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {"protocolVersion": 1}}
    prompt = {"jsonrpc": "2.0", "id": 2, "method": "session/prompt",
              "params": {"prompt": [{"type": "text", "text": "hello"}]}}  # fmt: skip
    sids: list[str] = []

    async def case() -> None:
        timeout = httpx.Timeout(30.0, connect=5.0)
        async with httpx.AsyncClient(timeout=timeout, trust_env=False) as client:
            r = await client.post(url, json=init, headers={"authorization": auth})
            assert r.status_code == 200, r.text
            conn = {"authorization": auth, "acp-connection-id": r.headers["acp-connection-id"]}
            conn_stream = _stream(client, url, conn)
            for n in range(2):
                new = {"jsonrpc": "2.0", "id": 10 + n, "method": "session/new", "params": {}}
                assert (await client.post(url, json=new, headers=conn)).status_code == 202
                sids.append((await anext(conn_stream))["result"]["sessionId"])
            await conn_stream.aclose()
            first = {**conn, "acp-session-id": sids[0]}
            updates = _stream(client, url, first)
            r = await client.post(url, json=prompt, headers=first)
            assert r.status_code == 202
            assert r.headers["ratelimit-policy"] == '"per-session";q=1;qu="requests"'
            async for msg in updates:
                if msg.get("id") == 2:
                    assert msg["result"]["stopReason"] == "end_turn"
                    break
            await updates.aclose()
            r = await client.post(url, json={**prompt, "id": 3}, headers=first)
            assert r.status_code == 429, r.text
            limit = r.json()["limit"]
            assert limit["id"] == "per-session" and limit["subject"] == f"team-a/{sids[0]}"
            assert "retry-after" not in r.headers  # a lifetime limit never resets
            other = {**conn, "acp-session-id": sids[1]}
            updates = _stream(client, url, other)
            assert (await client.post(url, json=prompt, headers=other)).status_code == 202
            async for msg in updates:
                if msg.get("id") == 2:
                    break
            await updates.aclose()
            await client.delete(url, headers=conn)

    asyncio.run(asyncio.wait_for(case(), 60))
    turns = rows(gw, 2, "operation = 'turn'")
    assert [r["session_id"] for r in turns] == sids
    assert {r["limit_action"] for r in turns} == {None}
    refused = rows(gw, 1, "operation = 'session/prompt'")[0]
    assert refused["status_code"] == 429 and refused["limit_action"] == "refused"
    assert refused["limit_id"] == "per-session" and refused["session_id"] == sids[0]
