"""agw.mcp.upstream.sse: SseUpstream (legacy HTTP+SSE) against the fake MCPServer's ``/sse``."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import pytest

from agw.config.mcp import McpService
from agw.mcp.upstream import UpstreamError, create_upstream
from agw.mcp.upstream.sse import SseUpstream
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


def test_handshake_finds_the_endpoint_on_the_stream(start_mcp_server: StartMcpServer) -> None:
    """Where the legacy transport POSTs (the rest of the handshake is
    tests/mcp/test_upstream_conformance.py's)."""
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
        finally:
            await up.close()
        assert up.state == "closed"

    run(main)


def test_the_service_key_is_required_and_sent(start_mcp_server: StartMcpServer) -> None:
    srv = start_mcp_server("sse", require_key="k")

    async def main() -> None:
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
