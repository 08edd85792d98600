"""agwctl gateway agent workspace|activity|usage|interactions|resources|health, against one real
agwd: the store is seeded with usage rows before it starts, then tests/agwctl/gateway.yaml is
applied (agent ``coder`` on ACP service ``opencode``, route ``opencode-turns``).

Attribution (reference §5.10): a row is the agent's when its agent_id is ``coder``, its route is
one of the agent's, or (ACP rows) its service is ``opencode``. ``EVENTS`` holds four such rows
and one that is not.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from agw.store.db import Database
from agw.usage.events import AcpUsageEvent, LlmUsageEvent, McpUsageEvent, UsageEvent
from tests.support.agwctl import BUNDLE, Agwctl, assert_one_line_error
from tests.support.agwd import AgwdLauncher

H = 3_600_000
M = 60_000
H0 = (time.time_ns() // 1_000_000) // H * H - 3 * H
EVENTS: list[UsageEvent] = [
    LlmUsageEvent(
        started_at=H0, finished_at=H0 + 900, route_id="smart", agent_id="coder", success=True,
        status_code=200, upstream_model="meta/llama-3.2", input_tokens=1000, output_tokens=500,
        total_tokens=1500,
    ),
    LlmUsageEvent(  # not the agent's: another route, no agent id
        started_at=H0 + M, finished_at=H0 + M + 100, route_id="openai-direct", success=True,
        status_code=200, upstream_model="gpt-4o", total_tokens=300,
    ),
    McpUsageEvent(
        started_at=H0 + H, finished_at=H0 + H + 20, route_id="mcp:tools:mcp", agent_id="coder",
        service_id="tools", method="tools/call", tool_name="now", success=True, status_code=200,
        result_status="success",
    ),
    AcpUsageEvent(  # the agent's route
        started_at=H0 + 2 * H, finished_at=H0 + 2 * H + 5000, route_id="opencode-turns",
        service_id="opencode", operation="turn", success=True, status_code=200,
    ),
    AcpUsageEvent(  # the agent's service, another route
        started_at=H0 + 2 * H + M, finished_at=H0 + 2 * H + M + 10, route_id="elsewhere",
        service_id="opencode", operation="turn", success=False, status_code=500,
        error_type="internal_error",
    ),
]  # fmt: skip


async def seed(path: Path) -> None:
    db = await Database.open(path)
    try:
        async with db.transaction() as conn:
            for event in EVENTS:
                await conn.execute(event.insert_sql(), event.row())
    finally:
        await db.close()


@pytest.fixture(scope="module")
def gw(module_agwd_factory: AgwdLauncher, tmp_path_factory: pytest.TempPathFactory) -> Any:
    path = tmp_path_factory.mktemp("store") / "configstore.db"
    asyncio.run(seed(path))
    return module_agwd_factory.start(db_path=path)


@pytest.fixture(scope="module")
def ctl(gw: Any, tmp_path_factory: pytest.TempPathFactory) -> Agwctl:
    env = {**gw.env, "COLUMNS": "80", "PYTHONIOENCODING": "utf-8"}
    ctl = Agwctl(env, tmp_path_factory.mktemp("cwd"))
    ctl.ok("gateway", "apply", "-f", str(BUNDLE))
    return ctl


@pytest.fixture(scope="module")
def admin(gw: Any) -> Iterator[httpx.Client]:
    with gw.client() as client:
        yield client


def api(admin: httpx.Client, path: str, **params: str) -> Any:
    resp = admin.get(path, params=params)
    assert resp.status_code == 200, resp.text
    return resp.json()


def blocks(text: str) -> list[list[str]]:
    return [b.splitlines() for b in text.strip("\n").split("\n\n")]


def cells(lines: list[str]) -> list[list[str]]:
    return [re.split(r" {2,}", line.strip()) for line in lines]


def fields(lines: list[str]) -> dict[str, str]:
    """A FIELD/VALUE table as a map."""
    head, *rows = cells(lines)
    assert head == ["FIELD", "VALUE"]
    return {row[0]: row[1] for row in rows}


def test_workspace_health_activity(ctl: Agwctl, admin: httpx.Client) -> None:
    table, (routes_title, *routes) = blocks(ctl.ok("gateway", "agent", "workspace", "coder"))
    got = fields(table)
    assert (got["id"], got["name"], got["disabled"]) == ("coder", "Coding agent", "no")
    assert (got["runtime.type"], got["runtime.service_id"]) == ("acp", "opencode")
    assert (got["acp_service"], got["agent_type"]) == ("opencode", "opencode")
    assert (got["pooled_instances"], got["in_flight_turns"], got["pending_permissions"]) == (
        "0",
        "0",
        "0",
    )
    assert (got["usage.request_count"], got["usage.turn_count"]) == ("2", "2")
    assert got["usage.failure_count"] == "1"
    assert got["links.admin_sessions"] == "/admin/acp/services/opencode/sessions"
    assert routes_title == "ACP routes"
    assert cells(routes) == [
        ["ID", "PATH-PREFIX", "SERVICE-ID"],
        ["opencode-turns", "/agents/opencode", "opencode"],
    ]
    assert json.loads(ctl.ok("-o", "json", "gateway", "agent", "workspace", "coder")) == api(
        admin, "/admin/agents/coder/workspace"
    )

    got = fields(blocks(ctl.ok("gateway", "agent", "health", "coder"))[0])
    assert (got["agent_id"], got["disabled"], got["runtime.status"]) == ("coder", "no", "ready")
    assert (got["recent_window"], got["recent_failures"]) == ("4", "1")
    assert (got["pipeline.dropped_events"], got["pipeline.write_failures"]) == ("0", "0")

    interactions, (title, *pending) = blocks(ctl.ok("gateway", "agent", "activity", "coder"))
    rows = cells(interactions)
    assert [(r[1], r[2]) for r in rows[1:]] == [
        ("acp", "elsewhere"),
        ("acp", "opencode-turns"),
        ("mcp", "mcp:tools:mcp"),
        ("llm", "smart"),
    ]
    assert title == "Pending permissions"
    assert cells(pending) == [["REQUEST-ID", "SERVICE-ID", "SESSION-ID", "CREATED-AT"]]

    args = ("gateway", "agent", "interactions", "coder", "--filter", "route_kind=acp")
    rows = cells(blocks(ctl.ok(*args, "--failure"))[0])
    assert len(rows) == 2 and rows[1][2] == "elsewhere"
    assert json.loads(ctl.ok("-o", "json", *args)) == api(
        admin, "/admin/agents/coder/interactions", route_kind="acp"
    )


def test_usage(ctl: Agwctl, admin: httpx.Client) -> None:
    out = ctl.ok("gateway", "agent", "usage", "coder", "--from", "24h")
    parts = {b[0]: b[1:] for b in blocks(out)}
    llm = cells(parts["LLM by upstream model"])
    assert llm[0][:2] == ["UPSTREAM-MODEL", "REQUEST-COUNT"]
    assert [r[0] for r in llm[1:]] == ["meta/llama-3.2"]  # gpt-4o is not the agent's
    assert llm[1][llm[0].index("TOTAL-TOKENS")] == "1500"
    chart = next(lines for title, lines in parts.items() if title.startswith("total_tokens per"))
    assert chart[0].startswith("smart ") and chart[0].endswith("total 1,500") and "█" in chart[0]
    assert all(len(line) <= 80 for line in chart)
    mcp = cells(parts["MCP tools"])
    assert mcp[1][:2] == ["now", "1"]
    acp = cells(parts["ACP by operation"])
    assert acp[0][0] == "OPERATION" and acp[1][:3] == ["turn", "2", "2"]
    assert json.loads(ctl.ok("-o", "json", "gateway", "agent", "usage", "coder")) == api(
        admin, "/admin/agents/coder/usage"
    )
    proc = ctl("gateway", "agent", "usage", "coder", "--measure", "tools_call_count")
    assert proc.returncode == 2 and "'tools_call_count' is not a llm measure" in proc.stderr


def test_resources(ctl: Agwctl, tmp_path: Path) -> None:
    rows = cells(blocks(ctl.ok("gateway", "agent", "resources", "coder"))[0])
    assert rows == [
        ["KIND", "ID", "EXISTS", "DISABLED", "DETAIL"],
        ["acp_route", "opencode-turns", "yes", "no", "/agents/opencode -> acp service opencode"],
    ]
    change = tmp_path / "resources.yaml"
    change.write_text("resources:\n  provider_ids: [openai-main]\n")
    rows = cells(blocks(ctl.ok("gateway", "agent", "resources", "coder", "-f", str(change)))[0])
    assert [r[:3] for r in rows[1:]] == [
        ["provider", "openai-main", "yes"],
        ["acp_route", "opencode-turns", "yes"],  # routes were not in the file: kept
    ]

    change.write_text("routes:\n  llm_route_ids: [no-such-route]\n")
    proc = ctl("gateway", "agent", "resources", "coder", "-f", str(change))
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr.startswith("agwctl: PUT /admin/agents/coder/resources: 400 ")
    assert "no-such-route" in proc.stderr

    change.write_text("name: renamed\n")
    proc = ctl("gateway", "agent", "resources", "coder", "-f", str(change))
    assert_one_line_error(proc, f"{change}: only resources and routes can be set (got name)")
    proc = ctl("gateway", "agent", "workspace", "nope")
    assert_one_line_error(proc, "GET /admin/agents/nope/workspace: 404 agent not found")
