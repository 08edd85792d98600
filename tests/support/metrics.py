"""Helpers for the metrics API tests: a generated usage dataset, the store it is seeded into, and
the answers expected from it, computed here in plain Python (never with SQL).

The dataset is drawn from a seeded ``random.Random``: a few hundred LLM, MCP and ACP events
over two days that ended an hour ago (inside the 30-day retention agwd applies at start), across
a few routes, keys, models, tools, agents and sessions. Start times are distinct, so "newest
first" has one answer.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agw.store.engine import open_store
from agw.usage.events import AcpUsageEvent, LlmUsageEvent, McpUsageEvent, UsageEvent

HOUR_MS = 3_600_000
DAY_MS = 24 * HOUR_MS
SESSIONS = ("sess-a", "sess-b", "sess-c")
AGENTS = ("agent-x", "agent-y")
USERS = {
    "ana@example.com": "org-acme",
    "bo@example.com": "org-acme",
    "cy@example.com": "org-globex",
}
"""The callers a JWT would name (user -> org); a quarter of the rows name none (a virtual key)."""
Event = Any  # an LlmUsageEvent, McpUsageEvent or AcpUsageEvent


@dataclass
class Dataset:
    start_ms: int  # the earliest possible started_at
    end_ms: int  # the latest possible started_at
    llm: list[LlmUsageEvent]
    mcp: list[McpUsageEvent]
    acp: list[AcpUsageEvent]

    def of(self, kind: str) -> list[Event]:
        rows: list[Event] = getattr(self, kind)
        return rows

    def everything(self) -> list[Event]:
        return [*self.llm, *self.mcp, *self.acp]


def _maybe(rng: random.Random, values: Sequence[str], none_share: float = 0.25) -> str | None:
    return None if rng.random() < none_share else rng.choice(values)


def _outcome(rng: random.Random) -> dict[str, Any]:
    if rng.random() < 0.8:
        return {"success": True, "status_code": 200}
    status, error = rng.choice(
        [(401, "virtual_key_rejected"), (429, "rate_limited"), (502, "provider_request_failed")]
    )
    return {"success": False, "status_code": status, "error_type": error}


def _common(rng: random.Random, started: int) -> dict[str, Any]:
    latency = rng.randrange(3, 4000)
    return {
        "trace_id": f"{rng.getrandbits(128):032x}",
        "started_at": started,
        "finished_at": started + latency,
        "latency_ms": latency,
        "virtual_key_id": _maybe(rng, ("vk-a", "vk-b")),
        "agent_id": _maybe(rng, AGENTS, 0.4),
        "session_id": _maybe(rng, SESSIONS, 0.3),
        **_outcome(rng),
    }


def generate(seed: int = 6, n_llm: int = 240, n_mcp: int = 150, n_acp: int = 90) -> Dataset:
    rng = random.Random(seed)
    end = (time.time_ns() // 1_000_000 - HOUR_MS) // 1000 * 1000
    start = end - 2 * DAY_MS
    stamps = rng.sample(range(start, end, 7), n_llm + n_mcp + n_acp)  # distinct, shuffled
    llm, mcp, acp = [], [], []
    models = {"p-openai": ("gpt-4o", "gpt-4.1"), "p-anthropic": ("claude-sonnet",)}
    tools = ("read_file", "write_file", "grep_search")
    for started in stamps[:n_llm]:
        provider = rng.choice(tuple(models))
        requested = rng.sample(tools, rng.randrange(0, 3))
        calls = rng.sample(requested, rng.randrange(0, len(requested) + 1)) if requested else []
        tokens_in, tokens_out = rng.randrange(0, 5000), rng.randrange(0, 900)
        # a binary fraction: float sums of these are exact in any order, as SQL's SUM is
        priced = provider == "p-openai"
        cost = (tokens_in + 4 * tokens_out) / 2**20 if priced else None
        llm.append(
            LlmUsageEvent(
                **_common(rng, started),
                route_id=rng.choice(("llm-chat", "llm-code")),
                route_protocol="openai",
                llm_api=rng.choice(("openai", "anthropic")),
                api_operation=rng.choice(("chat_completions", "responses", "messages")),
                provider_id=provider,
                provider_type="openai",
                logical_model=rng.choice(("fast", "smart")),
                upstream_model=rng.choice(models[provider]),
                credential_source=rng.choice(("static", "api_key")),
                stream=rng.random() < 0.5,
                input_tokens=tokens_in,
                output_tokens=tokens_out,
                total_tokens=tokens_in + tokens_out,
                cached_input_tokens=rng.randrange(0, tokens_in + 1),
                reasoning_tokens=rng.randrange(0, 100),
                request_tool_count=len(requested),
                request_tool_names=requested,
                tool_call_count=len(calls),
                tool_names=calls,
                usage_source="provider",
                cost_usd=cost,
                cost_source="catalog" if priced else "unpriced",
            )
        )
    for started in stamps[n_llm : n_llm + n_mcp]:
        method = rng.choice(("tools/call", "tools/call", "tools/call", "tools/list", "initialize"))
        common = _common(rng, started)
        mcp.append(
            McpUsageEvent(
                **common,
                route_id=rng.choice(("mcp-fs", "mcp-web")),
                route_protocol="streamable_http",
                service_id=rng.choice(("svc-fs", "svc-web")),
                method=method,
                tool_name=rng.choice(("read", "search", "fetch"))
                if method == "tools/call"
                else None,
                result_status="success" if common["success"] else "error",
                tool_args_json={"path": "/tmp/x", "n": rng.randrange(9)}
                if method == "tools/call" and rng.random() < 0.5
                else None,
                mcp_session_id=rng.choice(("mcp-s1", "mcp-s2")),
            )
        )
    for started in stamps[n_llm + n_mcp :]:
        agent_type = rng.choice(("codex", "claude"))
        common = _common(rng, started)
        acp.append(
            AcpUsageEvent(
                **common,
                route_id=rng.choice(("acp-codex", "acp-claude", "/admin/acp")),
                route_protocol=rng.choice(("http", "admin")),
                service_id=f"svc-{agent_type}",
                agent_type=agent_type,
                operation=rng.choice(("turn", "turn", "permission", "sessions")),
                thread_id=rng.choice(("t-1", "t-2")),
                fresh_session=rng.choice((None, True, False)),
                event_counts_json={"agent_message_chunk": rng.randrange(1, 9)},
                result_status="success" if common["success"] else "error",
            )
        )
    _principals(random.Random(seed + 1), [*llm, *mcp, *acp])
    _tool_costs(random.Random(seed + 2), mcp)
    return Dataset(start, end, llm, mcp, acp)


def _tool_costs(rng: random.Random, events: Sequence[McpUsageEvent]) -> None:
    """A price on most answered tool calls, from a generator of its own: binary fractions, so
    sums are exact in any order."""
    for event in events:
        if event.method == "tools/call" and event.success and rng.random() < 0.8:
            event.cost_usd = rng.randrange(1, 64) / 64


def _principals(
    rng: random.Random, events: Iterable[LlmUsageEvent | McpUsageEvent | AcpUsageEvent]
) -> None:
    """Stamp a user and their org on most events, from a generator of its own (the other
    columns stay as they were before users existed)."""
    for event in events:
        user = _maybe(rng, tuple(USERS))
        event.user_id = user
        event.org_id = USERS[user] if user is not None else None


def seed(db_path: Path | str, data: Dataset, secret_key: bytes | None = None) -> None:
    """The events into a fresh store (a file, or a PostgreSQL URL opened with ``secret_key``),
    with each class's own INSERT."""

    async def write() -> None:
        db = await open_store(db_path, secret_key=secret_key)
        try:
            async with db.transaction() as conn:
                tables: list[tuple[type[UsageEvent], Sequence[UsageEvent]]] = [
                    (LlmUsageEvent, data.llm),
                    (McpUsageEvent, data.mcp),
                    (AcpUsageEvent, data.acp),
                ]
                for cls, events in tables:
                    await conn.executemany(cls.insert_sql(), [e.row() for e in events])
        finally:
            await db.close()

    asyncio.run(write())


# ----------------------------------------------------------------------- expected answers

MEASURES: dict[str, tuple[str, ...]] = {
    "llm": (
        "request_count",
        "success_count",
        "failure_count",
        "input_tokens",
        "output_tokens",
        "total_tokens",
        "cached_input_tokens",
        "reasoning_tokens",
        "cost_usd",
        "avg_latency_ms",
    ),
    "mcp": (
        "request_count",
        "success_count",
        "failure_count",
        "tools_call_count",
        "cost_usd",
        "avg_latency_ms",
    ),
    "acp": ("request_count", "turn_count", "success_count", "failure_count", "avg_latency_ms"),
    "a2a": ("request_count", "success_count", "failure_count", "avg_latency_ms"),
    "interactions": ("request_count", "success_count", "failure_count", "avg_latency_ms"),
}


def measures(kind: str, rows: Sequence[Event]) -> dict[str, Any]:
    """The measures of ``rows``, summed here: the numbers the API must answer."""
    latencies = [r.latency_ms for r in rows if r.latency_ms is not None]
    out: dict[str, Any] = {
        "request_count": len(rows),
        "success_count": sum(1 for r in rows if r.success),
        "failure_count": sum(1 for r in rows if not r.success),
        "avg_latency_ms": sum(latencies) / len(latencies) if latencies else None,
    }
    if kind == "llm":
        for name in (
            "input_tokens",
            "output_tokens",
            "total_tokens",
            "cached_input_tokens",
            "reasoning_tokens",
        ):
            out[name] = sum(getattr(r, name) for r in rows)
        out["cost_usd"] = sum(r.cost_usd or 0 for r in rows if isinstance(r, LlmUsageEvent))
    if kind == "mcp":
        out["tools_call_count"] = sum(1 for r in rows if r.method == "tools/call")
        out["cost_usd"] = sum(r.cost_usd or 0 for r in rows if isinstance(r, McpUsageEvent))
    if kind == "acp":
        out["turn_count"] = sum(1 for r in rows if r.operation == "turn")
    return {name: out[name] for name in MEASURES[kind]}


def assert_measures(actual: dict[str, Any], expected: dict[str, Any], where: str = "") -> None:
    """Equal counts and sums; the average equal to its 1-decimal rounding."""
    for name, value in expected.items():
        got = actual.get(name)
        if name == "avg_latency_ms" and value is not None:
            assert isinstance(got, float), f"{where} {name}: {got!r}"
            assert abs(got - value) <= 0.051, f"{where} {name}: {got} != {value}"
        else:
            assert got == value, f"{where} {name}: {got!r} != {value!r}"


def group_key(value: object) -> tuple[bool, str]:
    """SQLite's ascending order of a group value: NULL first, then by text."""
    return (value is not None, str(value) if value is not None else "")


def grouped(rows: Iterable[Event], key: Callable[[Event], Any]) -> dict[Any, list[Event]]:
    out: dict[Any, list[Event]] = defaultdict(list)
    for r in rows:
        out[key(r)].append(r)
    return dict(out)


def ranked(
    kind: str, groups: dict[Any, list[Event]], order_by: str, limit: int
) -> list[tuple[Any, dict[str, Any]]]:
    """Groups with their measures, descending by ``order_by``, ties by group value."""
    items = [(g, measures(kind, rows)) for g, rows in groups.items()]
    items.sort(key=lambda gm: group_key(gm[0]))
    items.sort(key=lambda gm: gm[1][order_by], reverse=True)
    return items[:limit]


def assert_ranked(
    kind: str, body: dict[str, Any], expected: list[tuple[Any, dict[str, Any]]], order_by: str
) -> None:
    got = body["items"]
    assert [i["group_value"] for i in got] == [g for g, _ in expected], (
        [(i["group_value"], i[order_by]) for i in got],
        [(g, m[order_by]) for g, m in expected],
    )
    for item, (g, m) in zip(got, expected, strict=True):
        assert_measures(item, m, f"{kind} group {g!r}")
