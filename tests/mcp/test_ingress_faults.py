"""Faults behind the MCP ingress: a stdio server killed mid-call, an HTTP upstream down or
restarted, fail-open versus fail-closed lists, a service deleted at runtime, and a gateway that
stops while clients hold standalone streams."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from mcp import Client
from mcp.shared.exceptions import MCPError

from agw.clock import now_ms
from agw.mcp.sessions import Stream
from agw.mcp.state import McpState
from tests.support.agwd import AgwdLauncher
from tests.support.mcp import ALPHA_TOOLS, Gateway, initialize, post, rpc, start_gateway, sync
from tests.support.mcp_server import run_mcp_server

WAIT_S = 10.0


@pytest.fixture
def http(gw: Gateway) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=gw.agwd.data_url, timeout=30, trust_env=False) as client:
        yield client


def runtime_view(gw: Gateway) -> dict[str, Any]:
    with gw.admin() as admin:
        r = admin.get("/admin/mcp/runtime")
        assert r.status_code == 200, r.text
        view: dict[str, Any] = r.json()
        return view


def stdio_pid(gw: Gateway, service_id: str) -> int:
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        for proc in runtime_view(gw)["stdio"]:
            if proc["service_id"] == service_id and proc["pid"] and proc["state"] == "ready":
                return int(proc["pid"])
        time.sleep(0.05)
    raise AssertionError(f"no running stdio process for {service_id}")


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def call_until_ok(http: httpx.Client, path: str, sid: str, name: str) -> dict[str, Any]:
    """A call retried (bounded) while the service restarts."""
    deadline = time.monotonic() + WAIT_S
    body: dict[str, Any] = {}
    while time.monotonic() < deadline:
        call = {"name": name, "arguments": {"message": "again"}}
        body = post(http, path, rpc("tools/call", call), session=sid).json()
        if "result" in body:
            return body
        time.sleep(0.2)
    raise AssertionError(f"never answered again: {body}")


def test_stdio_server_killed_mid_call(http: httpx.Client, gw: Gateway) -> None:
    sid, _ = initialize(http, "/local")
    pid = stdio_pid(gw, "local")
    restarts = [p["restarts"] for p in runtime_view(gw)["stdio"] if p["service_id"] == "local"]
    box: dict[str, Any] = {}

    async def slow_call() -> None:
        async with httpx.AsyncClient(base_url=gw.agwd.data_url, timeout=30) as client:
            call = {"name": "slow", "arguments": {"seconds": 30, "steps": 3}}
            headers = {
                "accept": "application/json",
                "mcp-session-id": sid,
                "content-type": "application/json",
            }
            task = asyncio.create_task(
                client.post("/local", json=rpc("tools/call", call, msg_id="k-1"), headers=headers)
            )
            await asyncio.sleep(0.5)
            os.kill(pid, signal.SIGKILL)
            killed = time.monotonic()
            box["response"] = await asyncio.wait_for(task, 10)
            box["after_s"] = time.monotonic() - killed

    asyncio.run(slow_call())
    assert box["after_s"] < 3, box  # an error at once, not a hang
    err = box["response"].json()["error"]
    assert err["code"] == -32001 and err["message"].startswith("mcp service local failed: ")
    assert "exited" in err["message"]
    body = call_until_ok(http, "/local", sid, "echo")  # restarted with backoff
    assert body["result"]["content"][0]["text"] == "again"
    assert stdio_pid(gw, "local") != pid
    view = runtime_view(gw)
    assert [p["restarts"] for p in view["stdio"] if p["service_id"] == "local"] == [restarts[0] + 1]
    row = gw.rows("request_id = ?", ("k-1",))[0]
    assert row["error_type"] == "upstream_failed" and row["result_status"] == "error"


def test_stdio_crash_tool_then_next_call_works(gw: Gateway) -> None:
    @sync
    async def case() -> None:
        async with Client(gw.url("/local"), mode="auto") as client:
            with pytest.raises(MCPError) as info:
                await client.call_tool("crash", {})
            assert info.value.error.code == -32001
            deadline = time.monotonic() + WAIT_S
            while True:
                try:
                    result = await client.call_tool("echo", {"message": "back"})
                    break
                except MCPError:
                    if time.monotonic() > deadline:
                        raise
                    await asyncio.sleep(0.2)
            assert result.content[0].text == "back"  # type: ignore[union-attr]

    case()


def test_down_upstream_fail_open_and_fail_closed(http: httpx.Client, gw: Gateway) -> None:
    sid, _ = initialize(http, "/open")
    r = post(http, "/open", rpc("tools/list"), session=sid)
    names = {t["name"] for t in r.json()["result"]["tools"]}
    assert names >= ALPHA_TOOLS and not any(n.startswith("down_") for n in names)
    failures = runtime_view(gw)["failures"]
    assert any(f["route_id"] == "r-open" and f["service_id"] == "down" for f in failures)
    assert all({"method", "error", "at"} <= set(f) for f in failures)
    r = post(http, "/open", rpc("tools/call", {"name": "down_echo", "arguments": {}}), session=sid)
    assert r.json()["error"]["code"] == -32602  # never listed
    sid, _ = initialize(http, "/closed")  # the session opens; the list fails closed
    r = post(http, "/closed", rpc("tools/list"), session=sid)
    err = r.json()["error"]
    assert r.status_code == 200 and err["code"] == -32001
    assert err["message"].startswith("mcp service down failed: ")
    # fail_closed is about lists: a call to the healthy service's tool still works
    call = rpc("tools/call", {"name": "alpha_echo", "arguments": {"message": "still here"}})
    r = post(http, "/closed", call, session=sid)
    assert r.status_code == 200 and "still here" in json.dumps(r.json()["result"]), r.text


def test_http_upstream_down_then_restarted(
    module_agwd_factory: AgwdLauncher, tmp_path: Any
) -> None:
    with run_mcp_server(tmp_path, "streamable-http", "flaky") as flaky:
        agwd = start_gateway(
            module_agwd_factory, tmp_path, [flaky.service_config()], {"/f": (["flaky"], {})}
        )
        with httpx.Client(base_url=agwd.data_url, timeout=30, trust_env=False) as http:
            sid, _ = initialize(http, "/f")
            echo = {"name": "echo", "arguments": {"message": "one"}}
            assert post(http, "/f", rpc("tools/call", echo), session=sid).json()["result"]
            flaky.kill()
            started = time.monotonic()
            r = post(http, "/f", rpc("tools/call", echo), session=sid)
            assert time.monotonic() - started < 5
            err = r.json()["error"]
            assert err["code"] == -32001 and err["message"].startswith("mcp service flaky failed")
            flaky.restart()  # same port, its sessions gone: re-initialised transparently
            body = call_until_ok(http, "/f", sid, "echo")
            assert body["result"]["content"][0]["text"] == "again"


def test_deleting_a_service_stops_its_stdio_process(gw: Gateway, tmp_path: Any) -> None:
    local = gw.servers["local"]
    service = local.service_config("runtime-local")
    route = {
        "id": "r-runtime",
        "service_id": "runtime-local",
        "match_policy": {"path_prefix": "/runtime-local"},
    }
    with gw.admin() as admin, httpx.Client(base_url=gw.agwd.data_url, timeout=30) as http:
        assert admin.post("/admin/mcp/services", json=service).status_code in (200, 201)
        assert admin.post("/admin/mcp/routes", json=route).status_code in (200, 201)
        sid, _ = initialize(http, "/runtime-local")
        r = post(http, "/runtime-local", rpc("tools/list"), session=sid)
        assert "echo" in {t["name"] for t in r.json()["result"]["tools"]}
        pid = stdio_pid(gw, "runtime-local")
        assert admin.delete("/admin/mcp/routes/r-runtime").status_code == 200
        assert admin.delete("/admin/mcp/services/runtime-local").status_code == 200
        deadline = time.monotonic() + WAIT_S
        while alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not alive(pid), "the stdio process outlived its service"
        assert all(p["service_id"] != "runtime-local" for p in runtime_view(gw)["stdio"])
        # the session went with its route
        sessions = admin.get("/admin/mcp/sessions").json()["items"]
        assert all(s["route_id"] != "r-runtime" for s in sessions)


def test_gateway_stops_promptly_with_open_streams(
    module_agwd_factory: AgwdLauncher, tmp_path: Any
) -> None:
    with run_mcp_server(tmp_path, "stdio", "quiet") as quiet:
        agwd = start_gateway(
            module_agwd_factory, tmp_path, [quiet.service_config()], {"/q": (["quiet"], {})}
        )
        with httpx.Client(base_url=agwd.data_url, timeout=30, trust_env=False) as http:
            sid, _ = initialize(http, "/q")
            headers = {"accept": "text/event-stream", "mcp-session-id": sid}
            with contextlib.ExitStack() as streams:
                get = streams.enter_context(http.stream("GET", "/q", headers=headers))
                legacy = streams.enter_context(http.stream("GET", "/q/sse"))
                assert get.status_code == 200 and legacy.status_code == 200
                first = next(legacy.iter_lines())
                assert first == "event: endpoint"
                with agwd.client() as admin:
                    pids = [p["pid"] for p in admin.get("/admin/mcp/runtime").json()["stdio"]]
                started = time.monotonic()
                code = agwd.stop(timeout=15)
                took = time.monotonic() - started
        assert code == 0, agwd.logs()[-2000:]
        assert took < 8, f"shutdown took {took:.1f}s"
        assert pids and not any(alive(p) for p in pids), "stdio server survived the gateway"


def test_idle_sessions_expire_and_the_oldest_idle_is_evicted() -> None:
    async def case() -> None:
        runtime = McpState(session_limit=3)
        handshake = runtime.new_session("handshake", "r", None)
        stateless = runtime.stateless("r", "vk")
        streaming = runtime.new_session("handshake", "r", None)
        streaming.stream = Stream()
        assert runtime.stateless("r", "vk") is stateless  # one per (route, key)
        now = now_ms()
        runtime.expire(now + 10 * 60_000 + 1_000)  # stateless: 10 minutes
        assert runtime.find_session(stateless.key) is None
        assert runtime.find_session(handshake.key) is handshake
        runtime.expire(now + 30 * 60_000 + 1_000)  # handshake: 30 minutes, unless streaming
        assert runtime.find_session(handshake.key) is None
        assert runtime.find_session(streaming.key) is streaming
        fresh = [runtime.new_session("sse", "r", None) for _ in range(3)]
        assert len(runtime.store) == 3  # the limit: the oldest idle one made room
        assert runtime.find_session(fresh[0].key) is None
        assert runtime.find_session(streaming.key) is streaming
        await runtime.close()
        assert all(s.closed for s in (handshake, stateless, streaming, *fresh))
        assert len(runtime.store) == 0

    asyncio.run(case())
