"""Permission modes of ACP services through a real agwd: deny, auto_approve, interactive (the
``permission`` event, ``POST <route>/permission``, one-shot answers, the timeout, another route's
service refused, a client that leaves while a request is pending)."""

from __future__ import annotations

import json
import re
import time
from typing import Any

import httpx
import pytest

from tests.support.acp import AcpGateway, SseEvent, make_agent, read_events, start_acp_gateway
from tests.support.agwd import AgwdLauncher

TIMEOUT_S = 3.0  # AGW_ACP_PERMISSION_TIMEOUT_S of this module's gateway
NOT_FOUND = {"error": "permission request not found (already answered or expired)"}
SELECTED = 'permission={"optionId":"ok","outcome":"selected"}'
CANCELLED = 'permission={"outcome":"cancelled"}'


@pytest.fixture(scope="module")
def gw(module_agwd_factory: AgwdLauncher, tmp_path_factory: pytest.TempPathFactory) -> AcpGateway:
    tmp = tmp_path_factory.mktemp("acp-perm")
    agent = make_agent(tmp)
    services = [
        agent.service_config("deny"),
        agent.service_config("auto", permission_mode="auto_approve"),
        agent.service_config("inter", permission_mode="interactive"),
        agent.service_config("other", permission_mode="interactive"),
    ]
    routes = [{"prefix": f"/p/{s['id']}", "service_id": s["id"]} for s in services]
    env = {"AGW_ACP_PERMISSION_TIMEOUT_S": str(TIMEOUT_S)}
    return start_acp_gateway(module_agwd_factory, tmp, agent, services, routes, env)


def answer(
    gw: AcpGateway, prefix: str, body: dict[str, Any] | bytes, **headers: str
) -> httpx.Response:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    with gw.client() as client:
        return client.post(
            gw.url(prefix + "/permission"),
            content=content,
            headers={"content-type": "application/json", **headers},
        )


def until(events: Any, name: str) -> tuple[list[SseEvent], SseEvent]:
    seen = []
    for event in events:
        seen.append(event)
        if event.name == name:
            return seen, event
    raise AssertionError(f"no {name} event in {[e.name for e in seen]}")


def text_of(events: list[SseEvent]) -> str:
    return "".join(e.data.get("text", "") for e in events if e.name == "delta")


def test_deny_and_auto_approve(gw: AcpGateway) -> None:
    deny = gw.turn("/p/deny", {"thread_id": "t-deny", "input": "tool"})
    assert "permission" not in deny.names
    assert deny.text == CANCELLED
    update = [e.data["data"] for e in deny.events if e.name == "tool_call"][-1]
    assert update["status"] == "failed"
    auto = gw.turn("/p/auto", {"thread_id": "t-auto", "input": "tool"})
    assert "permission" not in auto.names
    assert auto.text == SELECTED


def test_interactive_round_trip(gw: AcpGateway) -> None:
    with (
        gw.client() as client,
        gw.open_turn(client, "/p/inter", {"thread_id": "t-inter", "input": "tool shell"}) as r,
    ):
        events = read_events(r)
        before, perm = until(events, "permission")
        names = [e.name for e in before]
        assert names[0] == "session" and names.index("tool_call") < names.index("permission")
        session_id = before[0].data["session_id"]
        request_id = perm.data["request_id"]
        assert re.fullmatch(r"perm-[0-9a-f]{32}", request_id)
        assert perm.data["session_id"] == session_id
        data = perm.data["data"]
        assert data["sessionId"] == session_id
        assert data["toolCall"]["toolCallId"] == "t1" and data["toolCall"]["title"] == "shell"
        assert [o["optionId"] for o in data["options"]] == ["ok", "no"]
        # the admin API sees it pending, with the same shape
        with gw.agwd.client() as admin:
            pending = admin.get("/admin/acp/runtime").json()["pending_permissions"]
        mine = [p for p in pending if p["request_id"] == request_id]
        assert len(mine) == 1
        assert mine[0]["service_id"] == "inter" and mine[0]["session_id"] == session_id
        assert mine[0]["data"] == data and mine[0]["created_at"].endswith("Z")
        # validation leaves it pending
        assert (
            answer(gw, "/p/inter", {"request_id": request_id, "outcome": "maybe"}).status_code
            == 400
        )
        r400 = answer(gw, "/p/inter", {"request_id": request_id, "outcome": "selected"})
        assert r400.status_code == 400 and "option_id" in r400.json()["error"]
        r400 = answer(
            gw, "/p/inter", {"request_id": request_id, "outcome": "selected", "option_id": "zz"}
        )
        assert r400.status_code == 400 and "offered" in r400.json()["error"]
        ok = answer(
            gw, "/p/inter", {"request_id": request_id, "outcome": "selected", "option_id": "ok"}
        )
        assert ok.status_code == 200 and ok.json() == {"status": "resolved"}
        again = answer(
            gw, "/p/inter", {"request_id": request_id, "outcome": "selected", "option_id": "ok"}
        )
        assert again.status_code == 404 and again.json() == NOT_FOUND
        rest = list(events)
    assert [e.name for e in rest][-1] == "done"
    assert text_of(rest) == SELECTED
    assert [e.data["data"]["status"] for e in rest if e.name == "tool_call"] == ["completed"]
    rows = gw.rows("operation = 'permission' AND permission_request_id = ?", (request_id,), count=5)
    by_status = {r["status_code"]: r for r in rows}
    assert sorted(r["status_code"] for r in rows) == [200, 400, 400, 400, 404]
    assert by_status[200]["result_status"] == "success" and by_status[200]["success"] == 1
    assert by_status[200]["session_id"] == session_id and by_status[200]["service_id"] == "inter"
    assert by_status[400]["error_type"] == "protocol_validation_failed"
    assert by_status[404]["error_type"] == "permission_not_found"
    turn = gw.row("operation = 'turn' AND thread_id = ?", ("t-inter",))
    assert json.loads(turn["event_counts_json"])["permission"] == 1


def test_interactive_cancelled_answer(gw: AcpGateway) -> None:
    with (
        gw.client() as client,
        gw.open_turn(client, "/p/inter", {"thread_id": "t-inter-no", "input": "tool"}) as r,
    ):
        events = read_events(r)
        _, perm = until(events, "permission")
        ok = answer(gw, "/p/inter", {"request_id": perm.data["request_id"], "outcome": "cancelled"})
        assert ok.status_code == 200
        rest = list(events)
    assert text_of(rest) == CANCELLED and rest[-1].name == "done"


def test_another_routes_service_cannot_answer(gw: AcpGateway) -> None:
    with (
        gw.client() as client,
        gw.open_turn(client, "/p/inter", {"thread_id": "t-cross", "input": "tool"}) as r,
    ):
        events = read_events(r)
        _, perm = until(events, "permission")
        body = {"request_id": perm.data["request_id"], "outcome": "selected", "option_id": "ok"}
        refused = answer(gw, "/p/other", body)
        assert refused.status_code == 404 and refused.json() == NOT_FOUND
        assert answer(gw, "/p/inter", body).status_code == 200
        rest = list(events)
    assert text_of(rest) == SELECTED


def test_unanswered_request_times_out_cancelled(gw: AcpGateway) -> None:
    started = time.monotonic()
    with (
        gw.client() as client,
        gw.open_turn(client, "/p/inter", {"thread_id": "t-timeout", "input": "tool"}) as r,
    ):
        events = read_events(r)
        _, perm = until(events, "permission")
        asked = time.monotonic()
        rest = list(events)
        waited = time.monotonic() - asked
    assert TIMEOUT_S - 0.5 <= waited < TIMEOUT_S + 5, waited
    assert text_of(rest) == CANCELLED and rest[-1].name == "done"
    late = answer(
        gw,
        "/p/inter",
        {"request_id": perm.data["request_id"], "outcome": "selected", "option_id": "ok"},
    )
    assert late.status_code == 404
    assert time.monotonic() - started < TIMEOUT_S + 15


def test_client_leaving_cancels_its_pending_request(gw: AcpGateway) -> None:
    with (
        gw.client() as client,
        gw.open_turn(client, "/p/inter", {"thread_id": "t-leave", "input": "tool"}) as r,
    ):
        events = read_events(r)
        _, perm = until(events, "permission")
    row = gw.row("operation = 'turn' AND thread_id = ?", ("t-leave",))
    assert row["status_code"] == 499 and row["result_status"] == "cancelled"
    late = answer(
        gw,
        "/p/inter",
        {"request_id": perm.data["request_id"], "outcome": "selected", "option_id": "ok"},
    )
    assert late.status_code == 404
    # the agent was told (the permission cancelled, then session/cancel): the thread goes on
    after = gw.turn("/p/inter", {"thread_id": "t-leave", "input": "hello"})
    assert after.text == "echo: hello " and after.session_id == perm.data["session_id"]
    history = gw.agent.sessions()[after.session_id]["history"]
    assert ["agent", CANCELLED] in history


def test_admin_api_answers_a_pending_request(gw: AcpGateway) -> None:
    with (
        gw.client() as client,
        gw.open_turn(client, "/p/inter", {"thread_id": "t-admin", "input": "tool"}) as r,
    ):
        events = read_events(r)
        _, perm = until(events, "permission")
        with gw.agwd.client() as admin:
            ok = admin.post(
                f"/admin/acp/runtime/permissions/{perm.data['request_id']}",
                json={"outcome": "selected", "option_id": "ok"},
            )
        assert ok.status_code == 200 and ok.json() == {"status": "resolved"}
        rest = list(events)
    assert text_of(rest) == SELECTED


def test_permission_request_errors(gw: AcpGateway) -> None:
    assert answer(gw, "/p/inter", b"{nope").json()["error"].startswith("decode request: ")
    missing = answer(gw, "/p/inter", {"outcome": "cancelled"})
    assert missing.status_code == 400 and missing.json() == {"error": "request_id is required"}
    unknown = answer(gw, "/p/inter", {"request_id": "perm-" + "0" * 32, "outcome": "cancelled"})
    assert unknown.status_code == 404 and unknown.json() == NOT_FOUND
    with gw.client() as client:
        assert client.get(gw.url("/p/inter/permission")).status_code == 405
