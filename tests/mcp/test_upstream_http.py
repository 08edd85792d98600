"""agw.mcp.upstream.http: StreamableHttpUpstream against the fake MCPServer over streamable HTTP."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import pytest

from agw.mcp.jsonrpc import RpcError
from agw.mcp.upstream import Upstream, UpstreamError, create_upstream
from agw.mcp.upstream.http import StreamableHttpUpstream
from agw.mcp.upstream.http_wire import header_value
from agw.types import JsonObj
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
    """The HTTP requests the fake logged whose JSON-RPC body had ``method``."""
    return [
        e
        for e in srv.events("http")
        if e["method"] == "POST"
        and isinstance(e["body"], dict)
        and e["body"].get("method") == method
    ]


@pytest.mark.parametrize("json_response", [False, True], ids=["sse", "json"])
def test_handshake_session_and_headers(
    start_mcp_server: StartMcpServer, json_response: bool
) -> None:
    """What only streamable HTTP does in the handshake: a session id and version headers
    (the rest of the handshake is tests/mcp/test_upstream_conformance.py's)."""
    srv = start_mcp_server("streamable-http", "alpha", json_response=json_response)

    async def main() -> None:
        up = create_upstream(srv.service())
        assert isinstance(up, StreamableHttpUpstream)
        try:
            init = await up.ensure_ready()
            assert init["serverInfo"]["name"] == "alpha"
            assert init["protocolVersion"] == up.protocol_version == "2025-11-25"
            assert up.state == "ready" and not up.modern
            assert (
                up.session_id and up.describe()["upstream_session_id"] == up.session_id[:8] + "****"
            )
            who = (await up.request("tools/call", {"name": "whoami", "arguments": {}}))[
                "structuredContent"
            ]
            assert who["mcp_session_id"] == up.session_id
            assert who["mcp_protocol_version"] == "2025-11-25"
            assert who["authorization"] is None
            assert who["headers"]["accept"] == "application/json, text/event-stream"
            # the handshake: initialize without session/version, then initialized with both
            first = posted(srv, "initialize")[0]["headers"]
            assert "mcp-session-id" not in first and "mcp-protocol-version" not in first
            assert posted(srv, "initialize")[0]["body"]["params"]["protocolVersion"] == "2025-11-25"
            done = posted(srv, "notifications/initialized")[0]["headers"]
            assert done["mcp-session-id"] == up.session_id
        finally:
            await up.close()
        assert up.state == "closed"
        deletes = [e for e in srv.events("http") if e["method"] == "DELETE"]
        assert len(deletes) == 1 and deletes[0]["headers"]["mcp-session-id"] == up.session_id

    run(main)


def test_get_stream_messages_go_to_the_listener(start_mcp_server: StartMcpServer) -> None:
    srv = start_mcp_server("streamable-http")

    async def main() -> None:
        heard: list[JsonObj] = []

        async def listener(up: Upstream, msg: JsonObj) -> None:
            heard.append(msg)

        up = StreamableHttpUpstream(srv.service(), listener)
        try:
            await up.ensure_ready()
            await wait_until(lambda: any(e["method"] == "GET" for e in srv.events("http")))
            get = next(e for e in srv.events("http") if e["method"] == "GET")
            assert get["headers"]["accept"] == "text/event-stream"
            assert get["headers"]["mcp-session-id"] == up.session_id
            await asyncio.sleep(0.2)  # let the server attach the stream
            await up.request("tools/call", {"name": "change_tools", "arguments": {}})
            await wait_until(lambda: bool(heard))
            assert heard == [{"jsonrpc": "2.0", "method": "notifications/tools/list_changed"}]
        finally:
            await up.close()

    run(main)


def test_session_expiry_reinitialises_transparently(start_mcp_server: StartMcpServer) -> None:
    srv = start_mcp_server("streamable-http", "alpha")

    async def main() -> None:
        up = StreamableHttpUpstream(srv.service())
        try:
            await up.ensure_ready()
            old = up.session_id
            await asyncio.to_thread(srv.restart)  # same port, no sessions
            who = (await up.request("tools/call", {"name": "whoami", "arguments": {}}))[
                "structuredContent"
            ]
            assert up.session_id and up.session_id != old
            assert who["mcp_session_id"] == up.session_id
            assert up.state == "ready"
            # concurrent callers hitting the expired session share one new handshake
            await asyncio.to_thread(srv.restart)
            results = await asyncio.gather(
                *(
                    up.request("tools/call", {"name": "add", "arguments": {"a": i, "b": i}})
                    for i in range(5)
                )
            )
            assert [r["structuredContent"]["result"] for r in results] == [0, 2, 4, 6, 8]
            assert len(posted(srv, "initialize")) == 3
        finally:
            await up.close()

    run(main)


def test_non_2xx_is_an_upstream_error_with_status_and_excerpt(
    start_mcp_server: StartMcpServer,
) -> None:
    srv = start_mcp_server("streamable-http", require_key="sk-right")

    async def main() -> None:
        up = StreamableHttpUpstream(srv.service())
        try:
            with pytest.raises(UpstreamError) as err:
                await up.ensure_ready()
            assert err.value.status == 401
            assert (
                err.value.message
                == 'mcp service fake answered HTTP 401: {"error": "missing or wrong key"}'
            )
        finally:
            await up.close()
        auth = {"type": "bearer", "api_key": "sk-right"}
        wrong = StreamableHttpUpstream(
            srv.service(url=srv.url[: -len("/mcp")] + "/nowhere", auth=auth)
        )
        try:
            with pytest.raises(UpstreamError) as err:
                await wrong.ensure_ready()  # initialize 404, then server/discover 404 as well
            assert err.value.status == 404
            assert err.value.message == "mcp service fake answered HTTP 404: Not Found"
        finally:
            await wrong.close()
        assert [e["body"]["method"] for e in srv.events("http") if e["path"] == "/nowhere"] == [
            "initialize",
            "server/discover",
        ]

    run(main)


def test_service_auth_is_injected(start_mcp_server: StartMcpServer) -> None:
    srv = start_mcp_server("streamable-http", require_key="sk-right")

    async def main() -> None:
        service = srv.service(auth={"type": "bearer", "api_key": "sk-right"})
        up = StreamableHttpUpstream(service)
        try:
            who = (await up.request("tools/call", {"name": "whoami", "arguments": {}}))[
                "structuredContent"
            ]
            assert who["authorization"] == "Bearer sk-right"
        finally:
            await up.close()
        assert all(
            e["headers"].get("authorization") == "Bearer sk-right" for e in srv.events("http")
        )

    run(main)


def test_modern_only_server_is_reached_with_server_discover(
    start_mcp_server: StartMcpServer,
) -> None:
    srv = start_mcp_server("streamable-http", "neo", modern_only=True)

    async def main() -> None:
        up = StreamableHttpUpstream(srv.service())
        try:
            init = await up.ensure_ready()
            assert up.modern and up.protocol_version == "2026-07-28"
            assert init["protocolVersion"] == "2026-07-28"
            assert init["serverInfo"]["name"] == "neo"
            assert init["instructions"] == "fake server neo"
            assert "tools" in init["capabilities"]
            assert up.session_id is None
            result = await up.request(
                "tools/call", {"name": "echo", "arguments": {"message": "héllo"}}
            )
            assert text_of(result) == "héllo"
            call = posted(srv, "tools/call")[0]
            assert call["headers"]["mcp-protocol-version"] == "2026-07-28"
            assert call["headers"]["mcp-method"] == "tools/call"
            assert call["headers"]["mcp-name"] == "echo"
            meta = call["body"]["params"]["_meta"]
            assert meta["io.modelcontextprotocol/protocolVersion"] == "2026-07-28"
            assert meta["io.modelcontextprotocol/clientInfo"]["name"] == "agw"
            read = await up.request("resources/read", {"uri": "res://neo/items/é"})
            assert read["contents"][0]["text"] == "item é of neo"
            assert posted(srv, "resources/read")[0]["headers"]["mcp-name"] == header_value(
                "res://neo/items/é"
            )
            with pytest.raises(RpcError) as err:  # HTTP 404 + JSON-RPC error in this era
                await up.request("no/such/method")
            assert err.value.code == -32601
            # cancelling closes the stream; no notifications/cancelled in this era
            task = asyncio.create_task(
                up.request("tools/call", {"name": "slow", "arguments": {"seconds": 20}})
            )
            await wait_until(lambda: any(e["tool"] == "slow" for e in srv.events("call")))
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            await wait_until(lambda: bool(srv.events("cancelled")))
            assert posted(srv, "notifications/cancelled") == []
        finally:
            await up.close()
        assert not [e for e in srv.events("http") if e["method"] in ("GET", "DELETE")]

    run(main)


def test_header_value_encoding() -> None:
    assert header_value("get_time") == "get_time"
    assert header_value("é") == "=?base64?w6k=?="
    assert header_value(" padded") == "=?base64?IHBhZGRlZA==?="
    assert header_value("=?base64?abc?=") == "=?base64?PT9iYXNlNjQ/YWJjPz0=?="
