"""Shared pieces of the MCP ingress tests: the gateway the test modules run (routes over
``mcp-server-time`` and fake MCP servers), its usage-row reader, and raw JSON-RPC helpers."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from tests.support.agwd import Agwd, AgwdLauncher, usage_rows
from tests.support.mcp_server import McpServerHandle

TIME_SERVER = str(Path(sys.executable).parent / "mcp-server-time")
WAIT_S = 10.0

# route prefix -> (services, extra route fields)
ROUTES: dict[str, tuple[list[str], dict[str, Any]]] = {
    "/mcp": (["time", "alpha"], {}),
    "/paged": (["paged", "alpha"], {}),
    "/sse-up": (["beta", "time"], {}),
    "/local": (["local"], {}),
    "/policy": (["time", "alpha"], {"prefix_mode": "conditional",
                                    "tool_policy": {"deny": ["crash", "who*"]}}),
    "/open": (["down", "alpha"], {}),
    "/closed": (["down", "alpha"], {"fail_closed": True}),
    "/keyed": (["alpha"], {"auth_policy": {"require_virtual_key": True}}),
    "/audit": (["audited"], {}),
    "/single": (["alpha"], {}),
}  # fmt: skip


def sync(case: Callable[[], Coroutine[Any, Any, None]]) -> Callable[[], None]:
    def run() -> None:
        asyncio.run(asyncio.wait_for(case(), 60))

    return run


@dataclass
class Gateway:
    agwd: Agwd
    servers: dict[str, McpServerHandle]
    keys: dict[str, str] = field(default_factory=dict)

    def url(self, prefix: str) -> str:
        return self.agwd.data_url + prefix

    def admin(self) -> httpx.Client:
        return self.agwd.client()

    def rows(
        self, where: str, args: tuple[Any, ...] = (), *, count: int = 1
    ) -> list[dict[str, Any]]:
        """``mcp_usage_events`` rows matching ``where``, waiting (bounded) for ``count``."""
        return usage_rows(self.agwd.db_path, "mcp_usage_events", where, count, args)


def start_gateway(
    factory: AgwdLauncher,
    tmp: Path,
    services: list[dict[str, Any]],
    routes: dict[str, tuple[list[str], dict[str, Any]]],
    env: dict[str, str] | None = None,
) -> Agwd:
    route_list = []
    for prefix, (ids, extra) in routes.items():
        route: dict[str, Any] = {"id": "r" + prefix.replace("/", "-"),
                                 "match_policy": {"path_prefix": prefix}, **extra}  # fmt: skip
        route |= {"service_id": ids[0]} if len(ids) == 1 else {"service_ids": ids}
        route_list.append(route)
    bundle = {
        "apiVersion": "gateway.agw/v1alpha1",
        "kind": "GatewayBundle",
        "mcpServices": services,
        "mcpRoutes": route_list,
    }
    path = tmp / "bundle.yaml"
    path.write_text(json.dumps(bundle, indent=1))  # JSON is YAML
    return factory.start(static=path, env=env)


TIME_TOOLS = {"time_get_current_time", "time_convert_time"}
ALPHA_TOOLS = {f"alpha_{t}" for t in ("echo", "add", "slow", "fail", "whoami", "log", "ask")}


BOTH = "application/json, text/event-stream"
MODERN = "2026-07-28"
META = {
    "io.modelcontextprotocol/protocolVersion": MODERN,
    "io.modelcontextprotocol/clientCapabilities": {},
    "io.modelcontextprotocol/clientInfo": {"name": "raw", "version": "1"},
}


def rpc(method: str, params: dict[str, Any] | None = None, msg_id: Any = 1) -> dict[str, Any]:
    msg: dict[str, Any] = {"jsonrpc": "2.0", "id": msg_id, "method": method}
    if params is not None:
        msg["params"] = params
    return msg


def note(method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
    msg: dict[str, Any] = {"jsonrpc": "2.0", "method": method}
    if params is not None:
        msg["params"] = params
    return msg


def post(
    http: httpx.Client,
    path: str,
    body: Any,
    *,
    session: str | None = None,
    version: str | None = None,
    accept: str | None = BOTH,
    headers: dict[str, str] | None = None,
    content_type: str | None = "application/json",
) -> httpx.Response:
    h = {} if content_type is None else {"content-type": content_type}
    if accept is not None:
        h["accept"] = accept
    if session is not None:
        h["mcp-session-id"] = session
    if version is not None:
        h["mcp-protocol-version"] = version
    h |= headers or {}
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return http.post(path, content=content, headers=h)


def initialize(
    http: httpx.Client,
    path: str = "/mcp",
    version: str = "2025-11-25",
    headers: dict[str, str] | None = None,
    capabilities: dict[str, Any] | None = None,
) -> tuple[str, dict[str, Any]]:
    params = {
        "protocolVersion": version,
        "capabilities": capabilities or {},
        "clientInfo": {"name": "raw", "version": "1"},
    }
    r = post(http, path, rpc("initialize", params), headers=headers)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/json"
    sid = r.headers["mcp-session-id"]
    negotiated = r.json()["result"]["protocolVersion"]
    r = post(
        http,
        path,
        note("notifications/initialized"),
        session=sid,
        version=negotiated,
        headers=headers,
    )
    assert r.status_code == 202 and r.content == b""
    return sid, r.json() if r.content else {}
