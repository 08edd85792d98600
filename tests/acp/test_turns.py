"""Turns through a real agwd: ``POST <route>/turn`` as SSE, pooled fake agents (real processes).

The helpers at the top (:class:`AcpGateway`, :func:`start_acp_gateway`, :func:`agent_pids`) are
shared by tests/acp/test_permissions.py and tests/acp/test_sessions.py.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.acp import (
    WAIT_S,
    AcpGateway,
    SdkClient,
    agent_pids,
    group_members,
    make_agent,
    read_events,
    start_acp_gateway,
    wait_group_gone,
    wait_pids,
)
from tests.support.agwd import AgwdLauncher


@pytest.fixture(scope="module")
def gw(module_agwd_factory: AgwdLauncher, tmp_path_factory: pytest.TempPathFactory) -> AcpGateway:
    tmp = tmp_path_factory.mktemp("acp-turns")
    agent = make_agent(tmp)
    sub = agent.workdir / "sub"
    sub.mkdir()
    services = [
        agent.service_config("echo", permission_mode="auto_approve"),
        agent.service_config("cap", max_instances=1),
        agent.service_config("crash", "--spawn-child"),
        agent.service_config("off", disabled=True),
        agent.service_config("ask", permission_mode="interactive"),
    ]
    routes: list[dict[str, Any]] = [
        {"prefix": "/acp/echo", "service_id": "echo"},
        {"prefix": "/acp/cap", "service_id": "cap"},
        {"prefix": "/acp/crash", "service_id": "crash"},
        {"prefix": "/acp/off", "service_id": "off"},
        {"id": "acp-locked", "prefix": "/acp/locked", "service_id": "echo",
         "auth_policy": {"require_virtual_key": True}},
        {"id": "acp-shut", "prefix": "/acp/shut", "service_id": "echo", "disabled": True},
        {"prefix": "/acp/ask", "service_id": "ask"},
    ]  # fmt: skip
    return start_acp_gateway(module_agwd_factory, tmp, agent, services, routes)


def test_turn_streams_sse_in_order_and_records_a_row(gw: AcpGateway) -> None:
    r = gw.turn("/acp/echo", {"thread_id": "t-order", "input": "hello there"})
    assert r.status == 200
    assert r.headers["content-type"] == "text/event-stream"
    assert r.headers["cache-control"] == "no-cache"
    assert r.headers["connection"] == "keep-alive"
    assert r.names[0] == "session"
    assert r.names[-1] == "done"
    assert r.events[-1].data == {"stop_reason": "end_turn"}
    # the cached config options of the new session come right after the session event
    assert r.names[1] == "config_options"
    replayed = r.events[1].data["data"]
    assert replayed["sessionUpdate"] == "config_option_update"
    assert [o["id"] for o in replayed["configOptions"]] == ["model", "mode"]
    assert set(r.names[2:-1]) == {"delta"}
    assert r.text == "echo: hello there "
    assert r.session_id.startswith("sess-")
    row = gw.row("thread_id = ?", ("t-order",))
    assert row["operation"] == "turn"
    assert row["status_code"] == 200 and row["success"] == 1 and row["error_type"] is None
    assert row["result_status"] == "success"
    assert row["service_id"] == "echo" and row["agent_type"] == "command"
    assert row["session_id"] == r.session_id
    assert row["fresh_session"] == 0
    assert row["route_id"] and row["route_protocol"] == "acp" and row["route_kind"] == "acp"
    counts = json.loads(row["event_counts_json"])
    assert counts == {"session": 1, "config_options": 1, "delta": 3, "done": 1}


def test_turn_maps_reasoning_plan_tool_call_and_usage(gw: AcpGateway) -> None:
    think = gw.turn("/acp/echo", {"thread_id": "t-map", "input": "think deeply"})
    assert think.first("reasoning").data == {"text": "deeply"}
    assert think.names.index("reasoning") < think.names.index("delta")
    plan = gw.turn("/acp/echo", {"thread_id": "t-map", "input": "plan"})
    entries = plan.first("plan").data["data"]["entries"]
    assert [e["content"] for e in entries] == ["look around", "answer"]
    assert plan.first("plan").data["data"]["sessionUpdate"] == "plan"
    tool = gw.turn("/acp/echo", {"thread_id": "t-map", "input": "tool"})
    calls = [e.data["data"] for e in tool.events if e.name == "tool_call"]
    assert [c["sessionUpdate"] for c in calls] == ["tool_call", "tool_call_update"]
    assert calls[0]["toolCallId"] == "t1" and calls[1]["status"] == "completed"
    assert "permission" not in tool.names  # auto_approve: nobody is asked
    assert tool.text == 'permission={"optionId":"ok","outcome":"selected"}'
    usage = gw.turn("/acp/echo", {"thread_id": "t-map", "input": "usage"})
    assert usage.first("usage").data["data"] == {
        "sessionUpdate": "usage_update", "used": 42, "size": 1000
    }  # fmt: skip
    rows = gw.rows("thread_id = ?", ("t-map",), count=4)
    assert len(rows) == 4
    assert len({r["session_id"] for r in rows}) == 1  # one pooled instance for the thread
    # usage_json: the prompt result's usage wins over the usage_update
    assert json.loads(rows[3]["usage_json"]) == {
        "totalTokens": 10, "inputTokens": 7, "outputTokens": 3
    }  # fmt: skip
    assert rows[0]["usage_json"] is None


def test_metadata_is_replayed_in_order_at_the_start_of_every_turn(gw: AcpGateway) -> None:
    meta = gw.turn("/acp/echo", {"thread_id": "t-meta", "input": "meta"})
    live = [n for n in meta.names if n not in ("session", "delta", "done")]
    # replayed config_options first, then the live updates in the agent's order
    assert live == [
        "config_options", "available_commands", "session_info", "mode", "config_options", "usage"
    ]  # fmt: skip
    assert meta.first("session_info").data["data"]["title"] == "fake title"
    again = gw.turn("/acp/echo", {"thread_id": "t-meta", "input": "again"})
    assert again.session_id == meta.session_id
    assert again.names[:6] == [
        "session", "config_options", "available_commands", "session_info", "mode", "usage"
    ]  # fmt: skip
    assert again.events[4].data["data"]["currentModeId"] == "code"
    assert again.events[5].data["data"]["used"] == 7
    assert again.names[6:] == ["delta", "delta", "done"]
    row = gw.rows("thread_id = ?", ("t-meta",), count=2)[1]
    assert row["usage_json"] is None  # a replayed usage is not this turn's


def test_tail_updates_after_the_result_are_drained_before_done(gw: AcpGateway) -> None:
    r = gw.turn("/acp/echo", {"thread_id": "t-tail", "input": "tail"})
    assert r.text == "before after1 after2 "
    assert r.names[-1] == "done"


def test_config_overrides_per_turn(gw: AcpGateway) -> None:
    r = gw.turn(
        "/acp/echo",
        {"thread_id": "t-cfg", "input": "config", "config_overrides": {"model": "fake-large"}},
    )
    assert json.loads(r.text) == {"model": "fake-large", "mode": "ask"}
    bad = gw.turn(
        "/acp/echo",
        {"thread_id": "t-cfg", "input": "config", "config_overrides": {"colour": "red"}},
    )
    assert bad.names[0] == "session" and bad.names[-1] == "error"
    assert "done" not in bad.names and "delta" not in bad.names
    assert "colour" in bad.events[-1].data["message"]
    row = gw.rows("thread_id = ?", ("t-cfg",), count=2)[1]
    assert row["result_status"] == "error" and row["success"] == 0
    assert row["status_code"] == 200 and row["error_type"] == "upstream_failed"


def test_reuse_by_thread_and_rebind_by_session(gw: AcpGateway) -> None:
    first = gw.turn("/acp/echo", {"thread_id": "t-reuse", "input": "one"})
    pids = agent_pids(gw.agent)
    second = gw.turn("/acp/echo", {"thread_id": "t-reuse", "input": "two"})
    assert second.session_id == first.session_id
    # by session: the thread's instance moves to the (thread, session) scope, no new process
    third = gw.turn(
        "/acp/echo", {"thread_id": "t-reuse", "input": "three", "session_id": first.session_id}
    )
    assert third.session_id == first.session_id
    assert agent_pids(gw.agent) == pids
    history = gw.agent.sessions()[first.session_id]["history"]
    assert [h[1] for h in history if h[0] == "user"] == ["one", "two", "three"]
    rows = gw.rows("thread_id = ?", ("t-reuse",), count=3)
    assert [r["session_id"] for r in rows] == [first.session_id] * 3


def test_fresh_session_replaces_the_instance(gw: AcpGateway) -> None:
    first = gw.turn("/acp/echo", {"thread_id": "t-fresh", "input": "one"})
    before = set(agent_pids(gw.agent))
    fresh = gw.turn("/acp/echo", {"thread_id": "t-fresh", "input": "two", "fresh_session": True})
    assert fresh.names[-1] == "done"
    assert fresh.session_id != first.session_id
    after = set(wait_pids(gw.agent, len(before)))
    assert len(after - before) == 1 and len(before - after) == 1  # one spawned, one closed
    row = gw.rows("thread_id = ?", ("t-fresh",), count=2)[1]
    assert row["fresh_session"] == 1 and row["session_id"] == fresh.session_id


def test_a_second_turn_on_a_busy_scope_is_refused(gw: AcpGateway) -> None:
    with (
        gw.client() as client,
        gw.open_turn(client, "/acp/echo", {"thread_id": "t-busy", "input": "slow 3 0.3"}) as slow,
    ):
        events = read_events(slow)
        assert next(events).name == "session"
        busy = gw.turn("/acp/echo", {"thread_id": "t-busy", "input": "hi"})
        assert busy.status == 200
        assert busy.names == ["error"]
        assert "acp turn is already active for scope" in busy.events[0].data["message"]
        rest = [e.name for e in events]
    assert rest[-1] == "done"
    row = gw.rows("thread_id = ? AND result_status = 'error'", ("t-busy",))[0]
    assert row["error_type"] == "scope_busy" and row["success"] == 0
    assert json.loads(row["event_counts_json"]) == {"error": 1}


def test_capacity_of_the_service(gw: AcpGateway) -> None:
    ok = gw.turn("/acp/cap", {"thread_id": "t-cap-1", "input": "hi"})
    assert ok.names[-1] == "done"
    # while the only instance runs a turn, a new thread is refused...
    slow = {"thread_id": "t-cap-1", "input": "slow 3 0.3"}
    with gw.client() as client, gw.open_turn(client, "/acp/cap", slow) as r:
        events = read_events(r)
        assert next(events).name == "session"
        full = gw.turn("/acp/cap", {"thread_id": "t-cap-2", "input": "hi"})
        assert [e.name for e in events][-1] == "done"
    assert full.names == ["error"]
    assert full.events[0].data["message"] == (
        'acp instance capacity exceeded: service "cap" reached max_instances 1'
    )
    row = gw.row("thread_id = ?", ("t-cap-2",))
    assert row["error_type"] == "capacity_exceeded" and row["result_status"] == "error"
    # ...and once it is idle, it is closed for the new thread (least recently used first)
    assert gw.turn("/acp/cap", {"thread_id": "t-cap-2", "input": "hi"}).names[-1] == "done"
    again = gw.turn("/acp/cap", {"thread_id": "t-cap-1", "input": "hi"})
    assert again.names[-1] == "done" and again.session_id == ok.session_id  # loaded again


def test_disabled_service_and_cwd_outside_roots_are_sse_errors(gw: AcpGateway) -> None:
    off = gw.turn("/acp/off", {"thread_id": "t-off", "input": "hi"})
    assert off.status == 200 and off.names == ["error"]
    assert off.events[0].data["message"] == 'acp service "off" is disabled'
    outside = gw.turn("/acp/echo", {"thread_id": "t-cwd", "input": "hi", "cwd": "/etc"})
    assert outside.names == ["error"]
    assert "allowed_roots" in outside.events[0].data["message"]
    assert gw.row("thread_id = ?", ("t-off",))["error_type"] == "invalid_request"
    assert gw.row("thread_id = ?", ("t-cwd",))["error_type"] == "invalid_request"
    sub = gw.turn(
        "/acp/echo", {"thread_id": "t-cwd", "input": "env", "cwd": str(gw.agent.workdir / "sub")}
    )
    assert json.loads(sub.text)["cwd"] == str(gw.agent.workdir / "sub")


def test_client_disconnect_cancels_the_prompt(gw: AcpGateway) -> None:
    with (
        gw.client() as client,
        gw.open_turn(client, "/acp/echo", {"thread_id": "t-gone", "input": "slow 40 0.25"}) as r,
    ):
        events = read_events(r)
        session_id = ""
        for event in events:
            if event.name == "session":
                session_id = event.data["session_id"]
            if event.name == "delta":
                break
        pids = agent_pids(gw.agent)
    # leaving closed the connection: the agent got session/cancel and ended its prompt
    row = gw.row("thread_id = ?", ("t-gone",))
    assert row["status_code"] == 499 and row["result_status"] == "cancelled"
    assert row["error_type"] == "client_cancelled" and row["success"] == 0
    assert row["session_id"] == session_id
    counts = json.loads(row["event_counts_json"])
    assert counts["session"] == 1 and counts["delta"] >= 1 and "done" not in counts
    # the row is written once the prompt ended; the fake saved its history before answering
    history = gw.agent.sessions()[session_id]["history"]
    assert history[0] == ["user", "slow 40 0.25"]
    ticks = [h for h in history if h[0] == "agent"]
    assert 1 <= len(ticks) < 10  # stopped long before its 40 ticks (10 s)
    # the process was not killed (it honoured the cancel): the next turn reuses it at once
    started = time.monotonic()
    again = gw.turn("/acp/echo", {"thread_id": "t-gone", "input": "back"})
    assert time.monotonic() - started < 3
    assert again.session_id == session_id and again.text == "echo: back "
    assert agent_pids(gw.agent) == pids


def test_agent_crash_mid_turn(gw: AcpGateway) -> None:
    first = gw.turn("/acp/crash", {"thread_id": "t-crash", "input": "hi"})
    assert first.names[-1] == "done"
    pids = set(agent_pids(gw.agent))
    crash = gw.turn("/acp/crash", {"thread_id": "t-crash", "input": "crash"})
    assert crash.status == 200
    assert crash.names[0] == "session" and crash.names[-1] == "error"
    assert crash.text == "crashing "
    message = crash.events[-1].data["message"]
    assert message.startswith("acp process exited: 3")
    assert "fake agent: crash requested" in message
    # the agent started a child in its group: nothing of the group survives
    gone = pids - set(agent_pids(gw.agent))
    assert len(gone) == 1
    (pgid,) = gone
    wait_group_gone(pgid)
    row = gw.rows("thread_id = ?", ("t-crash",), count=2)[1]
    assert row["error_type"] == "agent_exited" and row["result_status"] == "error"
    # the next turn works, on a new process (whether it reloaded the session or made a new
    # one depends on when the runtime saw the exit: both are the runtime's documented ways)
    again = gw.turn("/acp/crash", {"thread_id": "t-crash", "input": "after"})
    assert again.names[-1] == "done" and again.text == "echo: after "
    assert set(agent_pids(gw.agent)) - pids
    assert group_members(pgid) == []


def test_gateway_shutdown_leaves_no_agent_process(
    agwd_factory: AgwdLauncher, tmp_path: Path
) -> None:
    agent = make_agent(tmp_path)
    services = [agent.service_config("kids", "--spawn-child")]
    gw = start_acp_gateway(
        agwd_factory, tmp_path, agent, services, [{"prefix": "/acp", "service_id": "kids"}]
    )
    for thread in ("t1", "t2"):
        assert gw.turn("/acp", {"thread_id": thread, "input": "hi"}).names[-1] == "done"
    pids = wait_pids(agent, 2)
    assert all(len(group_members(pid)) == 2 for pid in pids)  # the agent and its child
    assert gw.agwd.stop() == 0
    for pid in pids:
        wait_group_gone(pid)


def test_pre_stream_errors(gw: AcpGateway) -> None:
    bad = gw.turn("/acp/echo", b"{not json")
    assert bad.status == 400 and bad.events[0].data["error"].startswith("decode request: ")
    assert gw.turn("/acp/echo", b"[1]").status == 400
    wrong = gw.turn("/acp/echo", {"thread_id": 5, "input": "x"})
    assert wrong.status == 400 and wrong.events[0].data == {
        "error": "decode request: thread_id must be a string"
    }
    no_thread = gw.turn("/acp/echo", {"input": "x"})
    assert no_thread.status == 400
    assert no_thread.events[0].data == {"error": "thread_id is required"}
    no_input = gw.turn("/acp/echo", {"thread_id": "t-pre", "input": "  "})
    assert no_input.events[0].data == {"error": "input is required"}
    bad_fresh = gw.turn("/acp/echo", {"thread_id": "t", "input": "x", "fresh_session": "yes"})
    assert bad_fresh.status == 400
    rows = gw.rows("thread_id = ?", ("t-pre",))
    assert rows[0]["status_code"] == 400 and rows[0]["error_type"] == "protocol_validation_failed"


def test_methods_paths_and_body_limit(gw: AcpGateway) -> None:
    with gw.client() as client:
        r = client.get(gw.url("/acp/echo/turn"))
        assert r.status_code == 405 and r.json() == {"error": "method not allowed"}
        r = client.post(gw.url("/acp/echo/sessions"))
        assert r.status_code == 405 and r.json() == {"error": "method not allowed"}
        r = client.get(gw.url("/acp/echo/permission"))
        assert r.status_code == 405
        r = client.get(gw.url("/acp/echo/sessions/abc/transcript/more"))
        assert r.status_code == 404 and "error" in r.json()
        r = client.get(gw.url("/acp/echo/nowhere"))
        assert r.status_code == 404
        r = client.get(gw.url("/acp/echo"))
        assert r.status_code == 404
        big = b'{"thread_id": "t-big", "input": "' + b"x" * (4 * 1024 * 1024) + b'"}'
        json_type = {"content-type": "application/json"}
        r = client.post(gw.url("/acp/echo/turn"), content=big, headers=json_type)
        assert r.status_code == 413 and "error" in r.json()
    rows = gw.rows("status_code = 413")
    assert rows[0]["operation"] == "turn" and rows[0]["error_type"] == "protocol_validation_failed"
    assert gw.rows("status_code = 405", count=3)[0]["route_kind"] == "acp"


def test_rejections_answer_json_and_are_recorded(gw: AcpGateway) -> None:
    with gw.client() as client:
        r = client.post(gw.url("/acp/locked/turn"), json={"thread_id": "t", "input": "x"})
        assert r.status_code == 401 and r.json() == {"error": "virtual key is required"}
        r = client.post(
            gw.url("/acp/locked/turn"),
            json={"thread_id": "t", "input": "x"},
            headers={"Authorization": "Bearer vk-nope"},
        )
        assert r.status_code == 401 and r.json() == {"error": "invalid virtual key"}
        r = client.get(gw.url("/acp/shut/sessions"))
        assert r.status_code == 403 and r.json() == {"error": 'route "acp-shut" is disabled'}
    locked = gw.rows("route_id = 'acp-locked'", count=2)
    assert [x["error_type"] for x in locked] == ["virtual_key_rejected"] * 2
    assert locked[0]["operation"] == "turn" and locked[0]["status_code"] == 401
    shut = gw.row("route_id = 'acp-shut'")
    assert shut["error_type"] == "route_disabled" and shut["operation"] == "sessions"


async def texted(client: SdkClient, want: str) -> bool:
    """Whether ``client`` shows ``want`` within 5 s: the SDK runs each notification in a task of
    its own, so a turn's last updates may be handled just after its prompt returns."""
    for _ in range(500):
        if client.text() == want:
            return True
        await asyncio.sleep(0.01)
    return client.text() == want


def test_http_transport_with_the_sdk_client(gw: AcpGateway) -> None:
    from acp import PROTOCOL_VERSION, connect_to_agent, text_block
    from acp.http import create_http_stream
    from acp.schema import ClientCapabilities, Implementation

    async def case() -> None:
        client = SdkClient()
        http = httpx.AsyncClient(timeout=httpx.Timeout(None, connect=5.0), trust_env=False)
        transport = create_http_stream(gw.url("/acp/ask/acp"), client=http)
        conn = connect_to_agent(client, transport)  # type: ignore[arg-type]
        try:
            init = await conn.initialize(
                protocol_version=PROTOCOL_VERSION,
                client_capabilities=ClientCapabilities(),
                client_info=Implementation(name="sdk-test", version="1"),
            )
            assert init.protocol_version == 1
            assert init.agent_capabilities is not None
            assert init.agent_capabilities.load_session is False
            session = await conn.new_session(cwd=str(gw.agent.workdir), mcp_servers=[])
            assert session.session_id.startswith("sess-")
            done = await conn.prompt(session_id=session.session_id, prompt=[text_block("hello")])
            assert done.stop_reason == "end_turn"
            assert await texted(client, "echo: hello ")
            client.updates.clear()
            tool = await conn.prompt(session_id=session.session_id, prompt=[text_block("tool")])
            assert tool.stop_reason == "end_turn"
            assert client.asked == [(session.session_id, ["ok", "no"])]
            assert await texted(client, 'permission={"optionId":"ok","outcome":"selected"}')
        finally:
            await conn.close()
            await http.aclose()

    asyncio.run(asyncio.wait_for(case(), 60))
    rows = gw.rows("route_id LIKE '%ask%' AND operation = 'turn'", count=2)
    assert [r["result_status"] for r in rows] == ["success", "success"]
    assert json.loads(rows[0]["event_counts_json"]) == {"delta": 2}
    ops = {r["operation"] for r in gw.rows("route_id LIKE '%ask%'", count=6)}
    assert {"initialize", "session_new", "turn", "permission", "stream"} <= ops
    new_rows = gw.rows("route_id LIKE '%ask%' AND operation = 'session_new'")
    assert [(r["result_status"], r["success"]) for r in new_rows] == [("success", 1)]
    # DELETE closed the connection's instance: no fake agent of that thread is left
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        with gw.agwd.client() as admin:
            view = admin.get("/admin/acp/runtime").json()
        if not [i for i in view["instances"] if i["service_id"] == "ask"]:
            break
        time.sleep(0.1)
    assert not [i for i in view["instances"] if i["service_id"] == "ask"]


def test_http_transport_wire_errors(gw: AcpGateway) -> None:
    url = gw.url("/acp/ask/acp")
    init = {"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {"protocolVersion": 1}}
    with gw.client() as client:
        r = client.post(url, json=init)
        assert r.status_code == 200 and r.json()["id"] == 0
        cid = r.headers["acp-connection-id"]
        assert r.json()["result"]["authMethods"] == []
        new = {"jsonrpc": "2.0", "id": 1, "method": "session/new", "params": {"cwd": "/etc"}}
        assert client.post(url, json=new).status_code == 400  # no connection id
        r = client.post(url, json=new, headers={"acp-connection-id": "nope"})
        assert r.status_code == 404 and r.json() == {"error": "Unknown connection id"}
        r = client.post(url, content=b"{}", headers={"content-type": "text/plain"})
        assert r.status_code == 415
        prompt = {"jsonrpc": "2.0", "id": 2, "method": "session/prompt", "params": {}}
        r = client.post(url, json=prompt, headers={"acp-connection-id": cid})
        assert r.status_code == 400 and r.json() == {"error": "Missing session id header"}
        r = client.post(url, json=prompt, headers={"acp-connection-id": cid, "acp-session-id": "x"})
        assert r.status_code == 404 and r.json() == {"error": "Unknown session id"}
        assert client.put(url, json=init).status_code == 405
        # a cwd outside allowed_roots: 202, then a JSON-RPC error on the connection stream
        assert client.post(url, json=new, headers={"acp-connection-id": cid}).status_code == 202
        with client.stream("GET", url, headers={"acp-connection-id": cid}) as stream:
            assert stream.status_code == 200
            second = client.get(url, headers={"acp-connection-id": cid})
            assert second.status_code == 409
            for line in stream.iter_lines():
                if line.startswith("data:"):
                    msg = json.loads(line[5:])
                    break
        assert msg["id"] == 1 and msg["error"]["code"] == -32602
        assert "allowed_roots" in msg["error"]["message"]
        assert client.delete(url, headers={"acp-connection-id": cid}).status_code == 202
        assert client.delete(url, headers={"acp-connection-id": cid}).status_code == 404
    # the session/new row says what the answer was, not just that the POST was accepted
    (row,) = gw.rows("route_id LIKE '%ask%' AND operation = 'session_new' AND status_code = 202"
                     " AND result_status = 'error'")  # fmt: skip
    assert row["success"] == 0 and row["error_type"] == "invalid_request", row
