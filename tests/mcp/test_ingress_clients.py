"""The official ``mcp`` 2.x client through a real agwd: both eras (``auto`` is the stateless
2026-07-28 era, ``legacy`` the initialize handshake), the legacy HTTP+SSE ingress, and routes
multiplexing ``mcp-server-time`` (stdio, from PyPI) with fake MCP servers over streamable HTTP,
legacy SSE and stdio."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import httpx
import pytest
from mcp import Client
from mcp.client.session import ElicitationFnT
from mcp.client.sse import sse_client
from mcp.shared.exceptions import MCPError
from mcp_types import (
    ElicitRequestParams,
    ElicitResult,
    ErrorData,
    LoggingMessageNotificationParams,
)

from tests.support.mcp import ALPHA_TOOLS, TIME_TOOLS, WAIT_S, Gateway, sync

# ----------------------------------------------------------------------------- both eras


def test_auto_client_speaks_the_modern_era_natively(gw: Gateway) -> None:
    @sync
    async def case() -> None:
        async with Client(gw.url("/mcp"), mode="auto") as client:
            assert client.protocol_version == "2026-07-28"
            assert client.server_info is not None and client.server_info.name == "agw"
            caps = client.server_capabilities
            assert caps.tools is not None and caps.resources is not None
            await exercise(client)

    case()


def test_legacy_client_gets_the_same_tools(gw: Gateway) -> None:
    @sync
    async def case() -> None:
        async with Client(gw.url("/mcp"), mode="auto") as modern:
            modern_tools = (await modern.list_tools()).tools
        async with Client(gw.url("/mcp"), mode="legacy") as legacy:
            assert legacy.protocol_version == "2025-11-25"
            legacy_tools = (await legacy.list_tools()).tools
            await exercise(legacy)
        assert [t.model_dump() for t in legacy_tools] == [t.model_dump() for t in modern_tools]
        assert modern_tools[0].name == "time_get_current_time"  # route order: time first

    case()


async def exercise(client: Client) -> None:
    """List, call, read and prompt through a route of ``time`` (stdio) + ``alpha`` (HTTP)."""
    names = {t.name for t in (await client.list_tools()).tools}
    assert names >= TIME_TOOLS | ALPHA_TOOLS, names
    result = await client.call_tool("alpha_echo", {"message": "hi there"})
    assert not result.is_error and result.content[0].text == "hi there"  # type: ignore[union-attr]
    result = await client.call_tool("alpha_add", {"a": 2, "b": 40})
    assert result.structured_content == {"result": 42}
    result = await client.call_tool("time_get_current_time", {"timezone": "UTC"})
    assert json.loads(result.content[0].text)["timezone"] == "UTC"  # type: ignore[union-attr]
    failed = await client.call_tool("alpha_fail", {"message": "nope"})
    assert failed.is_error
    resources = (await client.list_resources()).resources
    uris = [str(r.uri) for r in resources]
    assert uris == ["agw://alpha/res%3A%2F%2Falpha%2Freadme",
                    "agw://alpha/res%3A%2F%2Falpha%2Fchangelog"]  # fmt: skip
    read = await client.read_resource(uris[0])
    assert read.contents[0].text == "readme of alpha"  # type: ignore[union-attr]
    assert str(read.contents[0].uri) == uris[0]
    templates = (await client.list_resource_templates()).resource_templates
    assert [t.uri_template for t in templates] == ["agw://alpha/res%3A%2F%2Falpha%2Fitems%2F{item}"]
    item = await client.read_resource(templates[0].uri_template.replace("{item}", "7"))
    assert item.contents[0].text == "item 7 of alpha"  # type: ignore[union-attr]
    prompts = (await client.list_prompts()).prompts
    assert [p.name for p in prompts] == ["alpha_greet"]
    prompt = await client.get_prompt("alpha_greet", {"name": "bob"})
    assert prompt.messages[0].content.text == "Hello, bob!"  # type: ignore[union-attr]
    with pytest.raises(MCPError) as info:
        await client.call_tool("alpha_nonexistent", {})
    assert info.value.error.code == -32602
    assert info.value.error.message == 'unknown tool "alpha_nonexistent"'


def test_pagination_across_upstreams(gw: Gateway) -> None:
    @sync
    async def case() -> None:
        for mode in ("auto", "legacy"):
            async with Client(gw.url("/paged"), mode=mode) as client:
                seen: list[str] = []
                cursor = None
                pages = 0
                for pages in range(1, 30):  # noqa: B007
                    page = await client.list_tools(cursor=cursor)
                    seen += [t.name for t in page.tools]
                    cursor = page.next_cursor
                    if cursor is None:
                        break
                assert cursor is None
                assert pages >= 4, pages  # the paged service answers two tools a page
                assert len(seen) == len(set(seen))
                assert {f"paged_{t}" for t in ("echo", "add", "crash")} <= set(seen)
                assert set(seen) >= ALPHA_TOOLS
                assert seen.index("paged_crash") < seen.index("alpha_echo")  # route order
                with pytest.raises(MCPError) as info:
                    await client.list_tools(cursor="not-a-cursor")
                assert info.value.error.code == -32602
                assert info.value.error.message == "invalid cursor"

    case()


def test_sse_upstream(gw: Gateway) -> None:
    @sync
    async def case() -> None:
        async with Client(gw.url("/sse-up"), mode="auto") as client:
            names = {t.name for t in (await client.list_tools()).tools}
            assert {"beta_echo", "time_get_current_time"} <= names
            result = await client.call_tool("beta_echo", {"message": "via sse"})
            assert result.content[0].text == "via sse"  # type: ignore[union-attr]
            read = await client.read_resource("agw://beta/res%3A%2F%2Fbeta%2Freadme")
            assert read.contents[0].text == "readme of beta"  # type: ignore[union-attr]

    case()


def test_legacy_sse_ingress(gw: Gateway) -> None:
    @sync
    async def case() -> None:
        async with Client(sse_client(gw.url("/mcp/sse"))) as client:
            names = {t.name for t in (await client.list_tools()).tools}
            assert names >= TIME_TOOLS | ALPHA_TOOLS
            result = await client.call_tool("alpha_echo", {"message": "old client"})
            assert result.content[0].text == "old client"  # type: ignore[union-attr]
            seen_progress: list[float] = []

            async def on_progress(
                progress: float, total: float | None, message: str | None
            ) -> None:
                seen_progress.append(progress)

            result = await client.call_tool(
                "alpha_slow", {"seconds": 0.2, "steps": 3}, progress_callback=on_progress
            )
            assert not result.is_error
            assert seen_progress == [1, 2, 3]

    case()


def test_single_service_route_keeps_names_and_uris(gw: Gateway) -> None:
    @sync
    async def case() -> None:
        async with Client(gw.url("/single"), mode="auto") as client:
            names = {t.name for t in (await client.list_tools()).tools}
            assert {"echo", "add", "slow"} <= names
            uris = [str(r.uri) for r in (await client.list_resources()).resources]
            assert uris == ["res://alpha/readme", "res://alpha/changelog"]
            read = await client.read_resource("res://alpha/readme")
            assert read.contents[0].text == "readme of alpha"  # type: ignore[union-attr]

    case()


# --------------------------------------------------------------------- notifications


def test_progress_and_logging_reach_the_client(gw: Gateway) -> None:
    @sync
    async def case() -> None:
        for mode in ("auto", "legacy"):
            logs: list[Any] = []

            async def on_log(params: LoggingMessageNotificationParams) -> None:
                logs.append(params.data)  # noqa: B023

            async with Client(
                gw.url("/mcp"), mode=mode, logging_callback=on_log, log_level="debug"
            ) as client:
                seen: list[tuple[float, float | None]] = []

                async def on_progress(
                    progress: float, total: float | None, message: str | None
                ) -> None:
                    seen.append((progress, total))  # noqa: B023

                result = await client.call_tool(
                    "alpha_slow", {"seconds": 0.3, "steps": 3}, progress_callback=on_progress
                )
                assert result.content[0].text == "slept 0.3s in 3 steps"  # type: ignore[union-attr]
                assert seen == [(1, 3), (2, 3), (3, 3)], mode
                # the stdio service too
                result = await client.call_tool("alpha_log", {"message": f"hello {mode}"})
                assert result.content[0].text == "logged"  # type: ignore[union-attr]
            assert f"hello {mode}" in logs, (mode, logs)

    case()


def test_elicitation_is_relayed_to_a_capable_client_only(gw: Gateway) -> None:
    @sync
    async def case() -> None:
        asked: list[str] = []

        async def answer(context: Any, params: ElicitRequestParams) -> ElicitResult | ErrorData:
            asked.append(params.message)
            return ElicitResult(action="accept", content={"text": "forty-two"})

        async with Client(gw.url("/mcp"), mode="legacy", elicitation_callback=answer) as client:
            result = await client.call_tool("alpha_ask", {"question": "meaning?"})
            assert result.content[0].text == "answer: forty-two"  # type: ignore[union-attr]
        assert asked == ["meaning?"]
        # a client that declared nothing, and a 2026-07-28 client (that era has no
        # server->client requests): the gateway answers the upstream's request with an error,
        # which the fake lets fail the call
        callbacks: list[tuple[str, ElicitationFnT | None]] = [("legacy", None), ("auto", answer)]
        for mode, callback in callbacks:
            async with Client(gw.url("/mcp"), mode=mode, elicitation_callback=callback) as client:
                with pytest.raises(MCPError) as info:
                    await client.call_tool("alpha_ask", {"question": mode})
                assert info.value.error.message == "client does not support elicitation/create"
        assert asked == ["meaning?"]

    case()


def test_tool_list_change_reaches_the_client_and_the_name_map(gw: Gateway) -> None:
    @sync
    async def case() -> None:
        changed = asyncio.Event()

        async def on_message(message: Any) -> None:
            if getattr(message, "method", None) == "notifications/tools/list_changed":
                changed.set()

        async with Client(gw.url("/single"), mode="legacy", message_handler=on_message) as client:
            await client.list_tools()
            await stream_opened(gw, "r-single")  # the client opens it after initialize
            result = await client.call_tool("change_tools", {})
            added = result.content[0].text.removeprefix("added ")  # type: ignore[union-attr]
            await asyncio.wait_for(changed.wait(), WAIT_S)
            names = {t.name for t in (await client.list_tools()).tools}
            assert added in names
            echoed = await client.call_tool(added, {"message": "new tool"})
            assert echoed.content[0].text == "new tool"  # type: ignore[union-attr]

    case()


async def stream_opened(gw: Gateway, route_id: str) -> None:
    """Wait (bounded) until a session of the route holds its standalone GET stream."""
    deadline = time.monotonic() + WAIT_S
    user, _, password = (gw.agwd.auth or ":").partition(":")
    async with httpx.AsyncClient(base_url=gw.agwd.admin_url, auth=(user, password)) as admin:
        while time.monotonic() < deadline:
            sessions = (await admin.get("/admin/mcp/sessions")).json()["items"]
            if any(s["route_id"] == route_id and s["stream_open"] for s in sessions):
                return
            await asyncio.sleep(0.05)
    raise AssertionError(f"no session of {route_id} opened its stream")


# ---------------------------------------------------------------------------- policies


def test_conditional_prefix_and_tool_policy(gw: Gateway) -> None:
    @sync
    async def case() -> None:
        async with Client(gw.url("/policy"), mode="auto") as client:
            names = {t.name for t in (await client.list_tools()).tools}
            # no collisions between time and alpha: bare names; crash and whoami denied
            assert {"get_current_time", "echo", "slow"} <= names
            assert not {"crash", "whoami"} & names
            assert not any(n.startswith(("time_", "alpha_")) for n in names)
            with pytest.raises(MCPError) as info:
                await client.call_tool("whoami", {})
            assert info.value.error.message == 'tool "whoami" is denied by route policy'
            assert info.value.error.code == -32602
            result = await client.call_tool("echo", {"message": "allowed"})
            assert result.content[0].text == "allowed"  # type: ignore[union-attr]
        rows = gw.rows("route_id = ? AND tool_name = ?", ("r-policy", "whoami"))
        assert rows[0]["policy_action"] == "deny" and rows[0]["success"] == 0
        assert rows[0]["error_type"] == "policy_denied"
        rows = gw.rows("route_id = ? AND tool_name = ?", ("r-policy", "echo"))
        assert rows[0]["policy_action"] == "allow" and rows[0]["executed_tool_name"] == "echo"

    case()


def test_client_credentials_never_reach_the_upstream(gw: Gateway) -> None:
    @sync
    async def case() -> None:
        key = gw.keys["one"]
        headers = {"Authorization": f"Bearer {key}"}
        async with (
            httpx2_client(headers) as http,
            Client(streamable(gw.url("/keyed"), http), mode="legacy") as client,
        ):
            result = await client.call_tool("whoami", {})
            seen = result.structured_content or json.loads(result.content[0].text)  # type: ignore[union-attr]
            assert seen["authorization"] is None
            assert key not in json.dumps(seen)
            assert seen["mcp_session_id"]  # the gateway's upstream session, not the client's

    case()


def httpx2_client(headers: dict[str, str]) -> Any:
    import httpx2

    return httpx2.AsyncClient(headers=headers, timeout=30)


def streamable(url: str, http: Any) -> Any:
    from mcp.client.streamable_http import streamable_http_client

    return streamable_http_client(url, http_client=http)
