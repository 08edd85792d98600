"""Fake MCP servers (``tests/fakes/mcp_server.py``, the official ``MCPServer``) as real processes.

How to use (any test under tests/mcp gets the fixture; elsewhere use :func:`run_mcp_server`)::

    def test_x(start_mcp_server: StartMcpServer) -> None:
        srv = start_mcp_server("streamable-http", "alpha", json_response=True, page_size=2)
        srv.url        # http://127.0.0.1:P/mcp   (sse: http://127.0.0.1:P/sse; stdio: "")
        srv.port       # P (stdio: 0)
        srv.command, srv.args   # how to spawn it (stdio: what a stdio service runs)
        srv.service("alpha")    # an McpService for it (url / command+args filled in)
        srv.service_config("alpha")  # the same as a bundle dict, for mcpServices in a bundle
        srv.events()   # the server's event log: calls, cancellations, HTTP requests (see fake)
        srv.kill()     # SIGKILL the group now (server down); srv.restart(): same port again
        srv.stop()     # SIGTERM, then SIGKILL after 3 s; every server is stopped at teardown

``start_mcp_server(transport, name="fake", *, json_response=False, page_size=0,
require_key=None, modern_only=False, port=0) -> McpServerHandle``; transport is
``"stdio" | "streamable-http" | "sse"``. A stdio handle starts nothing: the upstream under test
spawns ``srv.command *srv.args`` itself. HTTP servers listen on 127.0.0.1 in their own process
group; the handle is returned once the server printed ``READY <port>``."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.agwd import AgwdLauncher, free_port
from tests.support.mcp import ROUTES, TIME_SERVER, Gateway, start_gateway
from tests.support.mcp_server import (
    McpServerHandle,
    StartMcpServer,
    run_mcp_server,
)


@pytest.fixture
def start_mcp_server(tmp_path: Path) -> Iterator[StartMcpServer]:
    """A factory: ``start_mcp_server(transport, name, **kw) -> McpServerHandle``."""
    with contextlib.ExitStack() as stack:

        def start(transport: str, name: str = "fake", **kw: Any) -> McpServerHandle:
            return stack.enter_context(run_mcp_server(tmp_path / "mcp", transport, name, **kw))

        starter: Callable[..., McpServerHandle] = start
        yield starter


@pytest.fixture(scope="module")
def gw(
    module_agwd_factory: AgwdLauncher, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Gateway]:
    """One agwd per test module with the routes of ``tests.support.mcp.ROUTES`` over mcp-server-time
    and fake servers (streamable HTTP, paged, legacy SSE, stdio), and two virtual keys."""
    tmp = tmp_path_factory.mktemp("mcp-ingress")
    with contextlib.ExitStack() as stack:
        alpha = stack.enter_context(run_mcp_server(tmp, "streamable-http", "alpha"))
        paged = stack.enter_context(run_mcp_server(tmp, "streamable-http", "paged", page_size=2))
        beta = stack.enter_context(run_mcp_server(tmp, "sse", "beta"))
        local = stack.enter_context(run_mcp_server(tmp, "stdio", "local"))
        services = [
            {"id": "time", "name": "time", "transport": "stdio", "command": TIME_SERVER},
            alpha.service_config(),
            paged.service_config(),
            beta.service_config(),
            local.service_config(),
            alpha.service_config("audited", audit={"capture_tool_args": True}),
            {"id": "down", "name": "down", "transport": "streamable_http",
             "url": f"http://127.0.0.1:{free_port()}/mcp"},
        ]  # fmt: skip
        agwd = start_gateway(module_agwd_factory, tmp, services, ROUTES)
        gateway = Gateway(agwd, {"alpha": alpha, "paged": paged, "beta": beta, "local": local})
        with gateway.admin() as admin:
            for name in ("one", "two"):
                r = admin.post("/admin/virtual_keys", json={"id": f"vk-{name}"})
                assert r.status_code in (200, 201), r.text
                gateway.keys[name] = r.json()["key"]
        yield gateway
