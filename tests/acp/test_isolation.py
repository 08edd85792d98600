"""ACP sessions belong to the route and the principal that opened them, through a real agwd.

Two virtual keys on one keyed route, and an open route of the same service: a caller cannot
continue, read, list, cancel or answer the permissions of another caller's session or thread,
by ``/turn``, ``/sessions``, ``/permission`` or the HTTP transport at ``<route>/acp``; and a
session the gateway never opened for the caller is refused exactly like someone else's (its
existence is not revealed). Each test performs the attack (issue 12)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.acp import AcpGateway, TurnResult, make_agent, read_events
from tests.support.agwd import AgwdLauncher

KEYED, OPEN = "/k", "/open"


@dataclass
class Tenants:
    gw: AcpGateway
    alice: str  # bearer of virtual key "alice"
    bob: str  # bearer of virtual key "bob"

    def turn(self, who: str | None, prefix: str, body: dict[str, Any]) -> TurnResult:
        headers = {"authorization": f"Bearer {who}"} if who else {}
        return self.gw.turn(prefix, body, **headers)

    def headers(self, who: str | None) -> dict[str, str]:
        return {"authorization": f"Bearer {who}"} if who else {}


@pytest.fixture(scope="module")
def tenants(module_agwd_factory: AgwdLauncher, tmp_path_factory: pytest.TempPathFactory) -> Tenants:
    tmp: Path = tmp_path_factory.mktemp("acp-isolation")
    agent = make_agent(tmp)
    agwd = module_agwd_factory.start()
    with agwd.client() as admin:
        keys = {}
        for name in ("alice", "bob"):
            r = admin.post("/admin/virtual_keys", json={"id": name})
            assert r.status_code in (200, 201), r.text
            keys[name] = r.json()["key"]
        bundle = {
            "apiVersion": "gateway.agw/v1alpha1",
            "kind": "GatewayBundle",
            "acpServices": [agent.service_config("shared", permission_mode="interactive")],
            "acpRoutes": [
                {"id": "keyed", "service_id": "shared", "match_policy": {"path_prefix": KEYED},
                 "auth_policy": {"require_virtual_key": True}},
                {"id": "open", "service_id": "shared", "match_policy": {"path_prefix": OPEN}},
            ],
        }  # fmt: skip
        r = admin.post("/admin/gateway/apply", json={"bundle": bundle})
        assert r.status_code == 200, r.text
    return Tenants(AcpGateway(agwd, agent), keys["alice"], keys["bob"])


def not_found(result: TurnResult, session_id: str) -> bool:
    return result.names == ["error"] and result.events[0].data == {
        "message": f'acp session "{session_id}" not found'
    }


def instances(gw: AcpGateway) -> list[dict[str, Any]]:
    with gw.agwd.client() as admin:
        view: dict[str, Any] = admin.get("/admin/acp/runtime").json()
    return list(view["instances"])


def pending(gw: AcpGateway) -> list[str]:
    with gw.agwd.client() as admin:
        view = admin.get("/admin/acp/runtime").json()
    return [p["request_id"] for p in view["pending_permissions"]]


# -------------------------------------------------------------------------------- /turn


def test_another_principal_cannot_continue_a_thread_or_session(tenants: Tenants) -> None:
    t = tenants
    mine = t.turn(t.alice, KEYED, {"thread_id": "t-secret", "input": "think alpha-secret"})
    assert mine.names[-1] == "done"
    sid = mine.session_id
    # the same thread id is another scope for another key, or for no key on the open route
    for who, prefix in ((t.bob, KEYED), (None, OPEN), (t.alice, OPEN)):
        theirs = t.turn(who, prefix, {"thread_id": "t-secret", "input": "hello"})
        assert theirs.names[-1] == "done", theirs.events
        assert theirs.session_id != sid
    # a session id is refused to anyone but its owner, as an unknown one is
    for who, prefix in ((t.bob, KEYED), (None, OPEN), (t.alice, OPEN)):
        for thread in ("t-secret", "t-other"):
            stolen = t.turn(who, prefix, {"thread_id": thread, "input": "x", "session_id": sid})
            assert not_found(stolen, sid), stolen.events
    fresh = {"thread_id": "t-f", "input": "x", "session_id": sid, "fresh_session": True}
    assert not_found(t.turn(t.bob, KEYED, fresh), sid)
    for variant in (sid.upper(), f" {sid}", f"{sid}/", sid[:-1]):
        body = {"thread_id": "t-v", "input": "x", "session_id": variant}
        assert not_found(t.turn(t.bob, KEYED, body), variant)
    # NUL separates the parts of a scope: no id may carry one (nor be unbounded)
    for bad in ({"session_id": f"{sid}\u0000"}, {"thread_id": "t\u0000keyed\u0000key:alice"},
                {"thread_id": "t" * 1025}):  # fmt: skip
        refused = t.turn(t.bob, KEYED, {"thread_id": "t-nul", "input": "x", **bad})
        assert refused.status == 400 and "no NUL" in refused.events[0].data["error"]
    unknown = t.turn(t.bob, KEYED, {"thread_id": "t-u", "input": "x", "session_id": "sess-nope"})
    assert not_found(unknown, "sess-nope")
    row = t.gw.row("thread_id = 't-other' AND virtual_key_id = 'bob'")
    assert row["error_type"] == "session_not_found" and row["success"] == 0
    # the owner still continues it, by thread and by session id, on the same agent
    again = t.turn(t.alice, KEYED, {"thread_id": "t-secret", "input": "more", "session_id": sid})
    assert again.names[-1] == "done" and again.session_id == sid
    scopes = [i for i in instances(t.gw) if i["session_id"] == sid]
    assert {(i["route_id"], i["principal"]) for i in scopes} == {("keyed", "key:alice")}


def test_another_principal_cannot_drop_or_interrupt_a_thread(tenants: Tenants) -> None:
    t = tenants
    first = t.turn(t.alice, KEYED, {"thread_id": "t-long", "input": "hi"})
    (mine,) = [i for i in instances(t.gw) if i["session_id"] == first.session_id]
    with t.gw.client() as client:
        body = {"thread_id": "t-long", "input": "slow 3 0.3"}
        with t.gw.open_turn(client, KEYED, body, **t.headers(t.alice)) as r:
            events = read_events(r)
            assert next(events).name == "session"
            # bob's fresh_session on the same thread id: his own scope, not alice's
            for who, prefix in ((t.bob, KEYED), (None, OPEN)):
                fresh = {"thread_id": "t-long", "input": "hi", "fresh_session": True}
                assert t.turn(who, prefix, fresh).names[-1] == "done"
            rest = list(events)
    assert [e.data.get("text") for e in rest if e.name == "delta"] == [
        "tick0 ",
        "tick1 ",
        "tick2 ",
    ]
    assert rest[-1].name == "done"
    # alice's agent was neither replaced nor closed
    (still,) = [i for i in instances(t.gw) if i["session_id"] == first.session_id]
    assert still["pid"] == mine["pid"] and still["alive"] is True


# ------------------------------------------------------------------ /sessions, /transcript


def test_another_principal_cannot_list_or_read_a_session(tenants: Tenants) -> None:
    t = tenants
    sid = t.turn(t.alice, KEYED, {"thread_id": "t-read", "input": "think private"}).session_id
    gw = t.gw
    with gw.client() as client:
        for who, prefix in ((t.bob, KEYED), (None, OPEN), (t.alice, OPEN)):
            r = client.get(gw.url(f"{prefix}/sessions/{sid}/transcript"), headers=t.headers(who))
            assert r.status_code == 404, r.text
            assert r.json() == {"error": f'acp session "{sid}" not found'}
            r = client.get(gw.url(f"{prefix}/sessions"), headers=t.headers(who))
            assert r.status_code == 200
            assert sid not in {s["session_id"] for s in r.json()["sessions"]}
        r = client.get(gw.url(f"{KEYED}/sessions/{sid}/transcript"), headers=t.headers(t.alice))
        assert r.status_code == 200
        assert {"role": "reasoning", "text": "private"} in r.json()["messages"]
        r = client.get(gw.url(f"{KEYED}/sessions"), headers=t.headers(t.alice))
        assert sid in {s["session_id"] for s in r.json()["sessions"]}


# ---------------------------------------------------------------------------- /permission


def test_another_principal_cannot_answer_a_permission(tenants: Tenants) -> None:
    t = tenants
    gw = t.gw
    with gw.client() as client:
        body = {"thread_id": "t-perm", "input": "tool rm -rf"}
        with gw.open_turn(client, KEYED, body, **t.headers(t.alice)) as r:
            events = read_events(r)
            perm = next(e for e in events if e.name == "permission")
            request_id = perm.data["request_id"]
            approve = {"request_id": request_id, "outcome": "selected", "option_id": "ok"}
            for who, prefix in ((t.bob, KEYED), (None, OPEN), (t.alice, OPEN)):
                r2 = client.post(
                    gw.url(prefix + "/permission"),
                    json=approve,
                    headers=t.headers(who),
                )
                assert r2.status_code == 404, r2.text
                assert request_id in pending(gw)
            r2 = client.post(
                gw.url(KEYED + "/permission"),
                json={"request_id": request_id, "outcome": "cancelled"},
                headers=t.headers(t.alice),
            )
            assert r2.status_code == 200
            text = "".join(e.data.get("text", "") for e in events if e.name == "delta")
    assert text == 'permission={"outcome":"cancelled"}'


def test_permission_and_turn_posts_need_json(tenants: Tenants) -> None:
    """A cross-site form post (``text/plain``, no preflight) cannot start a turn or answer."""
    gw = tenants.gw
    before = len(gw.agent.pids())
    with gw.client() as client:
        for path in ("/turn", "/permission"):
            for ctype in ("text/plain", "application/x-www-form-urlencoded", None, "json"):
                headers = {"content-type": ctype} if ctype else {}
                body = json.dumps({"thread_id": "t-form", "input": "hi", "request_id": "perm-x"})
                r = client.post(gw.url(OPEN + path), content=body.encode(), headers=headers)
                assert r.status_code == 415, (path, ctype, r.status_code)
                assert r.json() == {"error": "Content-Type must be application/json"}
        r = client.post(
            gw.url(OPEN + "/turn"),
            content=b'{"thread_id": "t-form", "input": "hi"}',
            headers={"content-type": "Application/JSON; charset=utf-8"},
        )
        assert r.status_code == 200
    assert len(gw.agent.pids()) == before + 1  # only the JSON turn started an agent


# ----------------------------------------------------------------------- <route>/acp


async def _stream(
    client: httpx.AsyncClient, url: str, headers: dict[str, str]
) -> AsyncGenerator[dict[str, Any], None]:
    async with client.stream("GET", url, headers=headers) as r:
        assert r.status_code == 200
        async for line in r.aiter_lines():
            if line.startswith("data:"):
                yield json.loads(line[5:])


def test_http_transport_sessions_and_permissions_are_the_callers(tenants: Tenants) -> None:
    t = tenants
    gw = t.gw
    url = gw.url(KEYED + "/acp")
    init = {"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {"protocolVersion": 1}}

    async def case() -> None:
        timeout = httpx.Timeout(30.0, connect=5.0)
        async with httpx.AsyncClient(timeout=timeout, trust_env=False) as client:

            async def connect(who: str) -> dict[str, str]:
                r = await client.post(url, json=init, headers=t.headers(who))
                assert r.status_code == 200, r.text
                return {**t.headers(who), "acp-connection-id": r.headers["acp-connection-id"]}

            a, b = await connect(t.alice), await connect(t.bob)
            new = {"jsonrpc": "2.0", "id": 1, "method": "session/new", "params": {}}
            assert (await client.post(url, json=new, headers=a)).status_code == 202
            conn_stream = _stream(client, url, a)
            sid = (await anext(conn_stream))["result"]["sessionId"]
            await conn_stream.aclose()
            # bob's connection does not know alice's session; nor does his /turn
            prompt = {"jsonrpc": "2.0", "id": 2, "method": "session/prompt",
                      "params": {"prompt": [{"type": "text", "text": "tool x"}]}}  # fmt: skip
            r = await client.post(url, json=prompt, headers={**b, "acp-session-id": sid})
            assert r.status_code == 404
            r = await client.post(url, json=prompt, headers={**a, "authorization": ""})
            assert r.status_code == 401  # alice's connection id without her key
            stolen = await asyncio.to_thread(
                t.turn, t.bob, KEYED, {"thread_id": "x", "input": "x", "session_id": sid}
            )
            assert not_found(stolen, sid)
            # alice's prompt asks for a permission; bob's connection answers it: refused
            a_session = {**a, "acp-session-id": sid}
            updates = _stream(client, url, a_session)
            assert (await client.post(url, json=prompt, headers=a_session)).status_code == 202
            ask = None
            async for msg in updates:
                if msg.get("method") == "session/request_permission":
                    ask = msg
                    break
            assert ask is not None
            steal = {"jsonrpc": "2.0", "id": ask["id"],
                     "result": {"outcome": {"outcome": "selected", "optionId": "ok"}}}  # fmt: skip
            assert (await client.post(url, json=steal, headers=b)).status_code == 202
            await asyncio.sleep(0.2)
            assert ask["id"] in await asyncio.to_thread(pending, gw)
            deny = {"jsonrpc": "2.0", "id": ask["id"],
                    "result": {"outcome": {"outcome": "cancelled"}}}  # fmt: skip
            assert (await client.post(url, json=deny, headers=a)).status_code == 202
            async for msg in updates:
                if msg.get("id") == 2:
                    assert msg["result"]["stopReason"] == "end_turn"
                    break
            await updates.aclose()
            for h in (a, b):
                await client.delete(url, headers=h)

    asyncio.run(asyncio.wait_for(case(), 60))
    rows = t.gw.rows("operation = 'permission' AND virtual_key_id = 'bob'")
    assert rows[0]["error_type"] == "permission_not_found"
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(
        i["thread_id"].startswith("acp-http-") for i in instances(gw)
    ):
        time.sleep(0.1)
