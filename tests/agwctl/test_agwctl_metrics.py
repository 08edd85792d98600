"""agwctl gateway metrics summary|events|timeseries|breakdown|interactions and session show,
against one real agwd whose store was seeded with usage rows before it started.

The rows sit in the last five hours (the store's 30-day retention keeps them), so relative
``--from 24h`` works; every number checked below is a sum of the rows in ``EVENTS``.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from agw.store.db import Database
from agw.usage.events import AcpUsageEvent, LlmUsageEvent, McpUsageEvent, UsageEvent
from tests.support.agwctl import Agwctl
from tests.support.agwd import AgwdLauncher

H = 3_600_000
M = 60_000
H0 = (time.time_ns() // 1_000_000) // H * H - 4 * H  # four whole hours ago
SESSION = "sess-1"


def _llm(at: int, route: str, tokens: tuple[int, int], ok: bool = True, **kw: Any) -> UsageEvent:
    return LlmUsageEvent(
        started_at=at,
        finished_at=at + 400,
        route_id=route,
        success=ok,
        status_code=200 if ok else 502,
        error_type=None if ok else "provider_request_failed",
        input_tokens=tokens[0],
        output_tokens=tokens[1],
        total_tokens=sum(tokens),
        **kw,
    )


DIRECT: dict[str, Any] = {
    "virtual_key_id": "team-a",
    "provider_id": "openai-main",
    "upstream_model": "gpt-4o",
    "user_id": "ana@example.com",
    "org_id": "acme",
}
SMART: dict[str, Any] = {
    "virtual_key_id": "team-b",
    "provider_id": "local",
    "upstream_model": "llama-3.2",
    "user_id": "bo@example.com",
    "org_id": "globex",
}
EVENTS: list[UsageEvent] = [
    _llm(H0 + 10 * M, "openai-direct", (100, 50), session_id=SESSION, **DIRECT),
    _llm(H0 + 20 * M, "openai-direct", (200, 100), **DIRECT),
    _llm(H0 + 2 * H + 5 * M, "smart", (1000, 500), **SMART),
    _llm(H0 + 2 * H + 30 * M, "smart", (0, 0), ok=False, **SMART),
    _llm(H0 + 3 * H + 1 * M, "openai-direct", (400, 200), **DIRECT),
    McpUsageEvent(
        started_at=H0 + H, finished_at=H0 + H + 30, route_id="mcp", service_id="tools",
        method="tools/call", tool_name="echo", success=True, status_code=200,
        result_status="success", session_id=SESSION,
    ),
    McpUsageEvent(
        started_at=H0 + H + 10 * M, finished_at=H0 + H + 10 * M + 30, route_id="mcp",
        service_id="tools", method="tools/call", tool_name="echo", success=False,
        status_code=200, result_status="error",
    ),
    McpUsageEvent(
        started_at=H0 + H + 20 * M, finished_at=H0 + H + 20 * M + 5, route_id="mcp",
        service_id="tools", method="tools/list", success=True, status_code=200,
    ),
    AcpUsageEvent(
        started_at=H0 + 2 * H + 10 * M, finished_at=H0 + 2 * H + 11 * M, route_id="coder",
        service_id="opencode", operation="turn", thread_id="t1", success=True, status_code=200,
        session_id=SESSION,
    ),
    AcpUsageEvent(
        started_at=H0 + 3 * H + 10 * M, finished_at=H0 + 3 * H + 11 * M, route_id="coder",
        service_id="opencode", operation="turn", thread_id="t1", success=True, status_code=200,
    ),
]  # fmt: skip


def rfc(ms: int) -> str:
    return (
        datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
    )


async def seed(path: Path, events: list[UsageEvent]) -> None:
    db = await Database.open(path)
    try:
        async with db.transaction() as conn:
            for event in events:
                await conn.execute(event.insert_sql(), event.row())
    finally:
        await db.close()


@pytest.fixture(scope="module")
def gw(module_agwd_factory: AgwdLauncher, tmp_path_factory: pytest.TempPathFactory) -> Any:
    path = tmp_path_factory.mktemp("store") / "configstore.db"
    asyncio.run(seed(path, EVENTS))
    return module_agwd_factory.start(db_path=path)


@pytest.fixture(scope="module")
def ctl(gw: Any, tmp_path_factory: pytest.TempPathFactory) -> Agwctl:
    env = {**gw.env, "COLUMNS": "80", "PYTHONIOENCODING": "utf-8"}
    return Agwctl(env, tmp_path_factory.mktemp("cwd"))


@pytest.fixture(scope="module")
def admin(gw: Any) -> Iterator[httpx.Client]:
    with gw.client() as client:
        yield client


def api(admin: httpx.Client, path: str, **params: str) -> Any:
    resp = admin.get(path, params=params)
    assert resp.status_code == 200, resp.text
    return resp.json()


def blocks(text: str) -> list[list[str]]:
    """The output's paragraphs (tables, charts), each a list of lines."""
    return [b.splitlines() for b in text.strip("\n").split("\n\n")]


def cells(lines: list[str]) -> list[list[str]]:
    """A plain table: cells are separated by two spaces or more."""
    return [re.split(r" {2,}", line.strip()) for line in lines]


def by_first(lines: list[str]) -> dict[str, dict[str, str]]:
    """Table rows keyed by their first cell, each a {header: cell} map."""
    head, *rows = cells(lines)
    return {row[0]: dict(zip(head, row, strict=True)) for row in rows}


def test_summary_and_breakdown(ctl: Agwctl, admin: httpx.Client) -> None:
    summary, pipeline = blocks(ctl.ok("gateway", "metrics", "summary"))
    kinds = by_first(summary)
    assert kinds["llm"]["REQUEST-COUNT"] == "5"
    assert (kinds["llm"]["SUCCESS-COUNT"], kinds["llm"]["FAILURE-COUNT"]) == ("4", "1")
    assert (kinds["llm"]["INPUT-TOKENS"], kinds["llm"]["OUTPUT-TOKENS"]) == ("1700", "850")
    assert kinds["llm"]["TOTAL-TOKENS"] == "2550"
    assert (kinds["mcp"]["REQUEST-COUNT"], kinds["mcp"]["TOOLS-CALL-COUNT"]) == ("3", "2")
    assert kinds["mcp"]["FAILURE-COUNT"] == "1" and kinds["mcp"]["TURN-COUNT"] == "-"
    assert (kinds["acp"]["REQUEST-COUNT"], kinds["acp"]["TURN-COUNT"]) == ("2", "2")
    assert pipeline[0].startswith("pipeline: dropped_events=0 write_failures=0")
    assert json.loads(ctl.ok("-o", "json", "gateway", "metrics", "summary")) == api(
        admin, "/admin/metrics"
    )

    out = ctl.ok("gateway", "metrics", "breakdown", "--group-by", "route_id", "--order-by",
                 "total_tokens")  # fmt: skip
    (lines,) = blocks(out)
    assert [row[0] for row in cells(lines)] == ["ROUTE-ID", "smart", "openai-direct"]
    routes = by_first(lines)
    assert (routes["smart"]["TOTAL-TOKENS"], routes["smart"]["FAILURE-COUNT"]) == ("1500", "1")
    assert (routes["openai-direct"]["REQUEST-COUNT"], routes["openai-direct"]["TOTAL-TOKENS"]) == (
        "3",
        "1050",
    )
    tools = by_first(blocks(ctl.ok("gateway", "metrics", "breakdown", "--kind", "mcp"))[0])
    assert tools["echo"]["REQUEST-COUNT"] == "2" and tools["-"]["REQUEST-COUNT"] == "1"
    as_json = ctl.ok("-o", "json", "gateway", "metrics", "breakdown", "--kind", "acp",
                     "--group-by", "service_id", "--limit", "5")  # fmt: skip
    assert json.loads(as_json) == api(
        admin, "/admin/metrics/acp/breakdown", group_by="service_id", limit="5"
    )


def test_events_and_interactions(ctl: Agwctl, admin: httpx.Client) -> None:
    (failed,) = blocks(ctl.ok("gateway", "metrics", "events", "--failure"))
    head, row = cells(failed)
    got = dict(zip(head, row, strict=True))
    assert (got["ROUTE-ID"], got["STATUS"], got["OK"]) == ("smart", "502", "no")
    assert got["ERROR-TYPE"] == "provider_request_failed" and got["MODEL"] == "llama-3.2"
    assert got["TIME"] == rfc(H0 + 2 * H + 30 * M)

    args = ("gateway", "metrics", "events", "--filter", "route_id=openai-direct", "--limit", "2")
    (lines,) = blocks(ctl.ok(*args))
    assert [r[-2] for r in cells(lines)] == ["TOTAL-TOKENS", "600", "300"]  # newest first
    assert json.loads(ctl.ok("-o", "json", *args)) == api(
        admin, "/admin/metrics/llm/events", route_id="openai-direct", limit="2"
    )

    (lines,) = blocks(
        ctl.ok("gateway", "metrics", "interactions", "--filter", f"session_id={SESSION}")
    )
    rows = cells(lines)
    assert [r[1] for r in rows] == ["KIND", "acp", "mcp", "llm"]
    assert [r[4] for r in rows[1:]] == ["opencode", "echo", "gpt-4o"]  # TARGET
    (lines,) = blocks(ctl.ok("gateway", "metrics", "interactions", "--group-by", "route_kind"))
    counts = {k: v["REQUEST-COUNT"] for k, v in by_first(lines).items()}
    assert counts == {"llm": "5", "mcp": "3", "acp": "2"}


def test_spend_per_user_and_org(ctl: Agwctl, admin: httpx.Client) -> None:
    """``--group-by user`` (the API's user_id) and ``org``; ``--user``/``--org`` filter."""
    out = ctl.ok("gateway", "metrics", "breakdown", "--group-by", "user", "--order-by",
                 "total_tokens")  # fmt: skip
    (lines,) = blocks(out)
    assert [row[0] for row in cells(lines)] == ["USER-ID", "bo@example.com", "ana@example.com"]
    users = by_first(lines)
    assert (users["bo@example.com"]["TOTAL-TOKENS"], users["bo@example.com"]["REQUEST-COUNT"]) == (
        "1500",
        "2",
    )
    assert users["ana@example.com"]["TOTAL-TOKENS"] == "1050"
    args = ("gateway", "metrics", "breakdown", "--group-by", "org", "--from", "24h")
    assert json.loads(ctl.ok("-o", "json", *args))["group_by"] == "org_id"
    orgs = by_first(blocks(ctl.ok(*args))[0])
    assert (orgs["acme"]["INPUT-TOKENS"], orgs["globex"]["INPUT-TOKENS"]) == ("700", "1000")

    (lines,) = blocks(ctl.ok("gateway", "metrics", "breakdown", "--group-by", "route_id",
                             "--org", "globex"))  # fmt: skip
    assert [row[0] for row in cells(lines)] == ["ROUTE-ID", "smart"]
    as_json = ctl.ok("-o", "json", "gateway", "metrics", "breakdown", "--user", "ana@example.com")
    assert json.loads(as_json) == api(
        admin, "/admin/metrics/llm/breakdown", user_id="ana@example.com"
    )

    (lines,) = blocks(ctl.ok("gateway", "metrics", "events", "--user", "bo@example.com"))
    head, *rows = cells(lines)
    assert [dict(zip(head, r, strict=True))["USER"] for r in rows] == ["bo@example.com"] * 2

    (lines,) = blocks(ctl.ok("gateway", "metrics", "interactions", "--group-by", "user"))
    counts = {k: v["REQUEST-COUNT"] for k, v in by_first(lines).items()}
    assert counts == {"-": "5", "ana@example.com": "3", "bo@example.com": "2"}  # MCP, ACP: none

    out = ctl.ok("gateway", "metrics", "timeseries", "--group-by", "user", "--org", "acme",
                 "--bucket", "day", "--no-chart")  # fmt: skip
    (table,) = blocks(out)
    rows = cells(table)
    assert rows[0][:2] == ["BUCKET", "USER-ID"]
    assert {r[1] for r in rows[1:]} == {"ana@example.com"}


def test_timeseries_table_and_chart(ctl: Agwctl, admin: httpx.Client) -> None:
    out = ctl.ok("gateway", "metrics", "timeseries", "--from", "24h", "--group-by", "route_id")
    table, chart = blocks(out)
    rows = cells(table)
    assert rows[0][:3] == ["BUCKET", "ROUTE-ID", "REQUEST-COUNT"]
    got = {(r[0], r[1]): r for r in rows[1:]}
    total = rows[0].index("TOTAL-TOKENS")
    assert got[(rfc(H0), "openai-direct")][total] == "450"
    assert got[(rfc(H0 + 2 * H), "smart")][2] == "2"  # two requests, one failed
    assert len(got) == 3
    # one sparkline row per route on a shared scale (max 1,500), then the time axis
    assert chart[0].startswith("total_tokens per ") and " by route_id (UTC)" in chart[0]
    assert chart[0].endswith("max 1,500 per bucket")
    spark = {line.split()[0]: line for line in chart[1:3]}
    assert spark["smart"].endswith("total 1,500") and "█" in spark["smart"]
    assert spark["openai-direct"].endswith("total 1,050")
    assert "▃" in spark["openai-direct"] and "▄" in spark["openai-direct"]  # 450, 600 of 1,500
    assert all(len(line) <= 80 for line in chart)  # the table is never cut, the chart fits

    # no group: one bar per hour, empty hours included; readable in plain ASCII
    window = ("--from", rfc(H0), "--to", rfc(H0 + 3 * H + 59 * M))
    proc = ctl("gateway", "metrics", "timeseries", "--measure", "request_count", *window,
               env={"PYTHONIOENCODING": "ascii"})  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    _, chart = blocks(proc.stdout)
    assert chart[0].startswith("request_count per ") and chart[0].endswith("max 2, total 5")
    bars = chart[1:]
    assert len(bars) == 4 and bars[0].startswith(
        datetime.fromtimestamp(H0 / 1000, UTC).strftime("%Y-%m-%d %H:00")
    )
    assert [b.split()[-1] for b in bars] == ["2", "0", "2", "1"]
    assert bars[0].count("#") == bars[2].count("#") > 40  # the longest bars fill the width
    assert abs(bars[0].count("#") - 2 * bars[3].count("#")) <= 1
    assert "#" not in bars[1]

    args = ("timeseries", "--kind", "mcp", "--group-by", "tool_name", "--bucket", "30m")
    assert json.loads(ctl.ok("-o", "json", "gateway", "metrics", *args)) == api(
        admin, "/admin/metrics/mcp/timeseries", group_by="tool_name", bucket="30m"
    )
    no_chart = ctl.ok("gateway", "metrics", "timeseries", "--kind", "acp", "--no-chart")
    assert len(blocks(no_chart)) == 1


def test_session_show(ctl: Agwctl, admin: httpx.Client) -> None:
    head, totals, items = blocks(ctl.ok("gateway", "session", "show", SESSION))
    assert head == [
        f"session {SESSION}: 3 events, {rfc(H0 + 10 * M)} to {rfc(H0 + 2 * H + 10 * M)}"
    ]
    kinds = by_first(totals)
    assert (kinds["llm"]["REQUEST-COUNT"], kinds["llm"]["TOTAL-TOKENS"]) == ("1", "150")
    assert kinds["mcp"]["TOOLS-CALL-COUNT"] == "1" and kinds["acp"]["TURN-COUNT"] == "1"
    rows = cells(items)
    assert [r[1] for r in rows] == ["KIND", "llm", "mcp", "acp"]  # in time order
    assert [r[4] for r in rows[1:]] == ["gpt-4o", "echo", "opencode"]
    assert json.loads(ctl.ok("-o", "json", "gateway", "session", "show", SESSION)) == api(
        admin, f"/admin/metrics/sessions/{SESSION}"
    )
    proc = ctl("gateway", "session", "show", "nope")
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr == (
        'agwctl: GET /admin/metrics/sessions/nope: 404 session "nope" has no usage events\n'
    )


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (("events", "--kind", "xyz"), 2, "Invalid value for '--kind'"),
        (("events", "--limit", "0"), 2, "Invalid value for '--limit'"),
        (("events", "--from", "yesterday"), 2, "'yesterday' is neither RFC 3339"),
        (("events", "--filter", "route_id"), 2, "'route_id' must look like KEY=VALUE"),
        (("events", "--filter", "limit=5"), 2, "use --limit instead of --filter limit=..."),
        (("events", "--filter", "user_id=a"), 2, "use --user instead of --filter user_id=..."),
        (("timeseries", "--measure", "turn_count"), 2, "'turn_count' is not a llm measure"),
        (("events", "--filter", "colour=red"), 1, 'unknown parameter "colour"'),
        (("breakdown", "--group-by", "colour"), 1, 'unsupported group_by "colour"'),
        (("timeseries", "--bucket", "7x"), 1, 'invalid bucket "7x"'),
    ],
)
def test_bad_options(ctl: Agwctl, args: tuple[str, ...], code: int, message: str) -> None:
    proc = ctl("gateway", "metrics", *args)
    assert proc.returncode == code, (proc.stdout, proc.stderr)
    assert proc.stdout == "" and "Traceback" not in proc.stderr
    assert message in proc.stderr
    if code == 1:
        assert proc.stderr.startswith(f"agwctl: GET /admin/metrics/llm/{args[0]}: 400 ")
