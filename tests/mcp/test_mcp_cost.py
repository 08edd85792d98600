"""MCP tool prices (docs/limits.md, "MCP tool calls"): a tools/call the service answered costs
its service's price_per_call or its tool's tool_prices entry, nothing else does, and the
metrics API sums it; through a real agwd and the official mcp client."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from mcp import Client
from mcp.shared.exceptions import MCPError

from tests.support.agwd import Agwd, AgwdLauncher, usage_rows
from tests.support.mcp import sync
from tests.support.mcp_server import McpServerHandle, run_mcp_server

CALL = "tools/call"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[McpServerHandle]:
    with run_mcp_server(tmp_path_factory.mktemp("mcp"), "streamable-http", "alpha") as srv:
        yield srv


@pytest.fixture(scope="module")
def gw(module_agwd_factory: AgwdLauncher, server: McpServerHandle) -> Agwd:
    agwd = module_agwd_factory.start()
    bundle = {
        "apiVersion": "gateway.agw/v1alpha1",
        "kind": "GatewayBundle",
        "mcpServices": [
            server.service_config("priced", price_per_call=0.25, tool_prices={"add": 1.5}),
            server.service_config("free"),
        ],
        "mcpRoutes": [
            {"id": "priced", "service_id": "priced", "match_policy": {"path_prefix": "/priced"}},
            {"id": "free", "service_id": "free", "match_policy": {"path_prefix": "/free"}},
        ],
    }
    with agwd.client() as c:
        r = c.post("/admin/gateway/apply", json={"bundle": bundle})
        assert r.status_code == 200, r.text
    return agwd


def _costs(gw: Agwd, route: str, calls: int) -> list[tuple[Any, ...]]:
    """Every row of ``route`` once its ``calls`` tools/call rows are written."""
    usage_rows(gw.db_path, "mcp_usage_events", "route_id = ? AND method = ?", calls, (route, CALL))
    rows = usage_rows(gw.db_path, "mcp_usage_events", "route_id = ?", calls, (route,))
    return [(r["method"], r["executed_tool_name"], r["cost_usd"]) for r in rows]


def test_answered_tool_calls_cost_their_price(gw: Agwd) -> None:
    @sync
    async def case() -> None:
        async with Client(f"{gw.data_url}/priced", mode="auto") as client:
            await client.list_tools()
            await client.call_tool("echo", {"message": "hi"})
            await client.call_tool("add", {"a": 1, "b": 2})
            await client.call_tool("fail", {})  # the tool's own isError result: it ran
            with pytest.raises(MCPError):
                await client.call_tool("nope", {})  # unknown: never reached the service
        async with Client(f"{gw.data_url}/free", mode="auto") as client:
            await client.call_tool("echo", {"message": "hi"})

    case()
    priced = _costs(gw, "priced", 4)
    calls = {(m, t): c for m, t, c in priced if m == CALL}
    assert calls[("tools/call", "echo")] == 0.25
    assert calls[("tools/call", "add")] == 1.5
    assert calls[("tools/call", "fail")] == 0.25
    assert calls[("tools/call", None)] is None  # the unknown tool
    assert {c for m, _, c in priced if m != CALL} == {None}  # tools/list and the like
    assert {c for _, _, c in _costs(gw, "free", 1)} == {None}
    with gw.client() as c:
        r = c.get("/admin/metrics/mcp/breakdown", params={"group_by": "route_id"})
        assert r.status_code == 200, r.text
        by_route = {item["group_value"]: item for item in r.json()["items"]}
    assert by_route["priced"]["cost_usd"] == 2.0
    assert by_route["free"]["cost_usd"] in (0, None)


def test_a_negative_price_is_refused(gw: Agwd, server: McpServerHandle) -> None:
    with gw.client() as c:
        for bad in ({"price_per_call": -1}, {"tool_prices": {"add": -0.5}}):
            r = c.post("/admin/mcp/services", json=server.service_config("bad", **bad))
            assert r.status_code == 400, r.text
            assert "price" in r.text
