"""agw.mcp.sse: SseUpstream (legacy HTTP+SSE) against the fake MCPServer's ``/sse`` endpoint."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import pytest

from agw.config.mcp import McpService
from agw.mcp.jsonrpc import RpcError
from agw.mcp.sse import SseUpstream
from agw.mcp.upstream import Upstream, UpstreamError, create_upstream
from agw.types import JsonObj
from tests.support.agwd import free_port
from tests.support.mcp_server import McpServerHandle, StartMcpServer

T = TypeVar("T")
LIMIT_S = 60.0


def run(work: Callable[[], Awaitable[T]]) -> T:
    async def bounded() -> T:
        async with asyncio.timeout(LIMIT_S):
            return await work()

    return asyncio.run(bounded())


def text_of(result: Any) -> str:
    return str(result["content"][0]["text"])


async def wait_until(check: Callable[[], bool], timeout: float = 5.0) -> None:  # noqa: ASYNC109
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)


def posted(srv: McpServerHandle, method: str) -> list[dict[str, Any]]:
    return [
        e
        for e in srv.events("http")
        if e["method"] == "POST"
        and isinstance(e["body"], dict)
        and e["body"].get("method") == method
    ]


def test_handshake_endpoint_list_and_call(start_mcp_server: StartMcpServer) -> None:
    srv = start_mcp_server("sse", "legacy")

    async def main() -> None:
        up = create_upstream(srv.service())
        assert isinstance(up, SseUpstream)
        try:
            init = await up.ensure_ready()
            assert init["serverInfo"]["name"] == "legacy"
            assert up.state == "ready" and up.protocol_version == "2025-11-25"
            assert up.endpoint is not None
            assert up.endpoint.startswith(f"http://127.0.0.1:{srv.port}/messages/?session_id=")
            assert up.session_id and up.endpoint.endswith(up.session_id)
            get = [e for e in srv.events("http") if e["method"] == "GET"]
            assert get[0]["path"] == "/sse" and get[0]["headers"]["accept"] == "text/event-stream"
            assert posted(srv, "initialize")[0]["path"] == "/messages/"
            assert posted(srv, "notifications/initialized")
            tools = [t["name"] for t in (await up.request("tools/list"))["tools"]]
            assert {"echo", "slow", "whoami"} <= set(tools)
            results = await asyncio.gather(
                *(
                    up.request("tools/call", {"name": "add", "arguments": {"a": i, "b": 2}})
                    for i in range(20)
                )
            )
            assert [r["structuredContent"]["result"] for r in results] == [i + 2 for i in range(20)]
            read = await up.request("resources/read", {"uri": "res://legacy/changelog"})
            assert read["contents"][0]["text"] == "changelog of legacy"
            with pytest.raises(RpcError) as err:
                await up.request("no/such/method")
            assert err.value.code == -32601
        finally:
            await up.close()
        assert up.state == "closed"

    run(main)


def test_progress_listener_and_server_requests(start_mcp_server: StartMcpServer) -> None:
    srv = start_mcp_server("sse")

    async def main() -> None:
        heard: list[JsonObj] = []

        async def listener(up: Upstream, msg: JsonObj) -> None:
            heard.append(msg)

        up = SseUpstream(srv.service(), listener)
        try:
            seen: list[JsonObj] = []

            async def on_message(msg: JsonObj) -> None:
                seen.append(msg)
                if msg["method"] == "elicitation/create":
                    await up.reply(msg["id"], {"action": "decline"})

            params = {"name": "slow", "arguments": {"seconds": 0.3, "steps": 3}}
            result = await up.request(
                "tools/call", params | {"_meta": {"progressToken": "p1"}}, on_message=on_message
            )
            assert text_of(result) == "slept 0.3s in 3 steps"
            assert [(m["params"]["progressToken"], m["params"]["progress"]) for m in seen] == [
                ("p1", 1),
                ("p1", 2),
                ("p1", 3),
            ]
            seen.clear()
            asked = await up.request(
                "tools/call", {"name": "ask", "arguments": {"question": "?"}}, on_message=on_message
            )
            assert text_of(asked) == "action: decline"
            assert [m["method"] for m in seen] == ["elicitation/create"]
            await up.request("tools/call", {"name": "change_tools", "arguments": {}})
            await wait_until(lambda: bool(heard))
            assert heard[0]["method"] == "notifications/tools/list_changed"
        finally:
            await up.close()

    run(main)


def test_cancel_reaches_the_upstream(start_mcp_server: StartMcpServer) -> None:
    srv = start_mcp_server("sse")

    async def main() -> None:
        up = SseUpstream(srv.service())
        try:
            await up.ensure_ready()
            task = asyncio.create_task(
                up.request("tools/call", {"name": "slow", "arguments": {"seconds": 20}})
            )
            await wait_until(lambda: bool(srv.events("call")))
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            await wait_until(lambda: bool(srv.events("cancelled")))
            call_id = posted(srv, "tools/call")[0]["body"]["id"]
            notice = posted(srv, "notifications/cancelled")[0]["body"]
            assert notice["params"]["requestId"] == call_id
            assert srv.events("cancelled")[0]["request_id"] == str(call_id)
        finally:
            await up.close()

    run(main)


def test_stream_drop_fails_calls_and_the_next_call_reconnects(
    start_mcp_server: StartMcpServer,
) -> None:
    srv = start_mcp_server("sse", "legacy")

    async def main() -> None:
        up = SseUpstream(srv.service())
        try:
            await up.ensure_ready()
            first_endpoint = up.endpoint
            calls = [
                asyncio.create_task(
                    up.request("tools/call", {"name": "slow", "arguments": {"seconds": 30}})
                )
                for _ in range(3)
            ]
            await wait_until(lambda: len(srv.events("call")) == 3)
            started = time.monotonic()
            await asyncio.to_thread(srv.kill)
            for call in calls:
                with pytest.raises(UpstreamError, match=r"^mcp service legacy stream closed"):
                    await call
            assert time.monotonic() - started < 5
            assert up.state == "error" and up.last_error
            with pytest.raises(UpstreamError, match="unreachable"):
                await up.request("tools/list")
            await asyncio.to_thread(srv.start)  # the same port again
            tools = await up.request("tools/list")
            assert tools["tools"] and up.state == "ready"
            assert up.endpoint != first_endpoint
        finally:
            await up.close()

    run(main)


def test_unreachable_and_refused(start_mcp_server: StartMcpServer) -> None:
    srv = start_mcp_server("sse", require_key="k")

    async def main() -> None:
        url = f"http://127.0.0.1:{free_port()}/sse"
        down = SseUpstream(McpService(id="gone", name="gone", transport="sse", url=url))
        try:
            with pytest.raises(UpstreamError, match=r"^mcp service gone unreachable: "):
                await down.ensure_ready()
        finally:
            await down.close()
        refused = SseUpstream(srv.service())
        try:
            with pytest.raises(UpstreamError) as err:
                await refused.ensure_ready()
            assert err.value.status == 401
        finally:
            await refused.close()
        allowed = SseUpstream(srv.service(auth={"type": "api_key", "api_key": "k"}))
        try:
            who = await allowed.request("tools/call", {"name": "whoami", "arguments": {}})
            assert who["structuredContent"]["authorization"] == "Bearer k"
        finally:
            await allowed.close()

    run(main)


def test_an_endpoint_on_another_origin_is_refused() -> None:
    from aiohttp import web

    stop = asyncio.Event()

    async def sse(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await resp.prepare(request)
        await resp.write(b"event: endpoint\ndata: http://elsewhere.example/messages\n\n")
        await stop.wait()
        return resp

    async def main() -> None:
        app = web.Application()
        app.router.add_get("/sse", sse)
        runner = web.AppRunner(app, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        url = f"http://127.0.0.1:{port}/sse"
        up = SseUpstream(McpService(id="odd", name="odd", transport="sse", url=url))
        try:
            with pytest.raises(UpstreamError, match="is not on the origin of the SSE URL"):
                await up.ensure_ready()
            assert up.state == "error"
        finally:
            await up.close()
            stop.set()
            await runner.cleanup()

    run(main)
