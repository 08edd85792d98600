"""The metrics API's numbers (reference §7.3) against sums computed here over the generated rows.

One agwd serves a store seeded with a few hundred LLM, MCP and ACP events; every endpoint's
answer is checked against plain-Python filtering, grouping and summing of the same events.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import httpx

from agw.clock import rfc3339_ms
from agw.store.engine import open_store
from agw.usage.answers import MetricsQuery
from agw.usage.query import Attribution
from tests.support.engines import secret_key
from tests.support.metrics import (
    HOUR_MS,
    Dataset,
    Event,
    assert_measures,
    assert_ranked,
    group_key,
    grouped,
    measures,
    ranked,
)


def get(api: httpx.Client, path: str, **params: Any) -> dict[str, Any]:
    r = api.get(path, params=params)
    assert r.status_code == 200, f"{path} {params}: {r.status_code} {r.text}"
    body: dict[str, Any] = r.json()
    return body


def newest(rows: list[Event], n: int) -> list[str]:
    return [r.event_id for r in sorted(rows, key=lambda r: r.started_at, reverse=True)[:n]]


def window(data: Dataset) -> tuple[int, int]:
    """Bounds that are exact start times of LLM events (to see that both are inclusive)."""
    times = sorted(r.started_at for r in data.llm)
    return times[20], times[-20]


def test_summary(api: httpx.Client, dataset: Dataset) -> None:
    body = get(api, "/admin/metrics")
    assert list(body) == ["llm", "mcp", "acp", "a2a", "pipeline"]
    for kind in ("llm", "mcp", "acp"):
        assert_measures(body[kind], measures(kind, dataset.of(kind)), kind)
    assert body["a2a"]["request_count"] == 0  # the dataset has no A2A rows
    assert set(body["pipeline"]) == {
        "dropped_events",
        "write_failures",
        "rejected_events",
        "queue_depth",
    }
    assert all(isinstance(v, int) for v in body["pipeline"].values())

    lo, hi = window(dataset)
    # "to" given with an offset: the same instant as hi in UTC
    shifted = rfc3339_ms(hi + 2 * HOUR_MS).replace("Z", "+02:00")
    body = get(api, "/admin/metrics", **{"from": rfc3339_ms(lo), "to": shifted})
    for kind in ("llm", "mcp", "acp"):
        inside = [r for r in dataset.of(kind) if lo <= r.started_at <= hi]
        assert_measures(body[kind], measures(kind, inside), f"{kind} window")


def test_events(api: httpx.Client, dataset: Dataset) -> None:
    body = get(api, "/admin/metrics/llm/events")
    assert body["limit"] == 100
    assert [i["event_id"] for i in body["items"]] == newest(dataset.llm, 100)

    top = max(dataset.llm, key=lambda r: r.started_at)
    row = body["items"][0]
    assert row["started_at"] == rfc3339_ms(top.started_at)
    assert row["started_at_ms"] == top.started_at
    assert row["finished_at"] == rfc3339_ms(top.finished_at)
    assert row["success"] is top.success and row["stream"] is top.stream
    assert row["usage_finalized"] is True
    assert row["request_tool_names"] == (top.request_tool_names or None)
    assert row["tool_names"] == (top.tool_names or None)
    for name in ("route_id", "upstream_model", "input_tokens", "session_id", "agent_id"):
        assert row[name] == getattr(top, name), name

    body = get(api, "/admin/metrics/llm/events", route_id="llm-code", success="false", limit=1000)
    want = [r for r in dataset.llm if r.route_id == "llm-code" and not r.success]
    assert [i["event_id"] for i in body["items"]] == newest(want, 1000)
    assert body["limit"] == 1000

    body = get(
        api, "/admin/metrics/llm/events", has_tool_use="true", request_tool_name="grep", limit=1000
    )
    want = [
        r
        for r in dataset.llm
        if r.tool_call_count > 0 and any("grep" in n for n in r.request_tool_names)
    ]
    assert want and [i["event_id"] for i in body["items"]] == newest(want, 1000)

    body = get(
        api, "/admin/metrics/llm/events", session_id="sess-b", agent_id="agent-y", limit=1000
    )
    want = [r for r in dataset.llm if r.session_id == "sess-b" and r.agent_id == "agent-y"]
    assert want and [i["event_id"] for i in body["items"]] == newest(want, 1000)

    body = get(
        api, "/admin/metrics/mcp/events", tool_name="search", mcp_session_id="mcp-s1", limit=1000
    )
    mcp_want = [r for r in dataset.mcp if r.tool_name == "search" and r.mcp_session_id == "mcp-s1"]
    assert mcp_want and [i["event_id"] for i in body["items"]] == newest(mcp_want, 1000)
    mcp_by_id = {r.event_id: r for r in mcp_want}
    for item in body["items"]:
        assert item["tool_args_json"] == mcp_by_id[item["event_id"]].tool_args_json
        assert item["cancelled"] is False

    lo, hi = window(dataset)
    params = {"operation": "turn", "thread_id": "t-1", "from": rfc3339_ms(lo), "to": rfc3339_ms(hi)}
    body = get(api, "/admin/metrics/acp/events", limit=1000, **params)
    acp_want = [
        r
        for r in dataset.acp
        if r.operation == "turn" and r.thread_id == "t-1" and lo <= r.started_at <= hi
    ]
    assert acp_want and [i["event_id"] for i in body["items"]] == newest(acp_want, 1000)
    acp_by_id = {r.event_id: r for r in acp_want}
    for item in body["items"]:
        event = acp_by_id[item["event_id"]]
        assert item["fresh_session"] is event.fresh_session
        assert item["event_counts_json"] == event.event_counts_json


def series(
    kind: str, rows: list[Event], width: int, group: str | None
) -> list[tuple[int, Any, dict[str, Any]]]:
    def key(r: Event) -> tuple[int, Any]:
        value = getattr(r, group) if group else None
        return r.started_at // width * width, value

    groups = grouped(rows, key)
    ordered = sorted(groups, key=lambda bg: (bg[0], group_key(bg[1])))
    return [(b, g, measures(kind, groups[(b, g)])) for b, g in ordered]


def assert_series(body: dict[str, Any], kind: str, expected: list[Any], group: str | None) -> None:
    items = body["items"]
    assert [(i["bucket_ms"], i.get("group_value")) for i in items] == [
        (b, g) for b, g, _ in expected
    ]
    for item, (b, g, m) in zip(items, expected, strict=True):
        assert item["bucket"] == rfc3339_ms(b)
        assert ("group_value" in item) is (group is not None)
        assert_measures(item, m, f"{kind} {b} {g}")


def test_timeseries(api: httpx.Client, dataset: Dataset) -> None:
    body = get(api, "/admin/metrics/llm/timeseries", group_by="route_id")
    assert body["bucket"] == "hour" and body["bucket_width_ms"] == HOUR_MS
    assert body["group_by"] == "route_id"
    assert_series(body, "llm", series("llm", dataset.llm, HOUR_MS, "route_id"), "route_id")

    lo, hi = window(dataset)
    params = {"bucket": "30m", "tool_name": "search", "from": rfc3339_ms(lo), "to": rfc3339_ms(hi)}
    body = get(api, "/admin/metrics/mcp/timeseries", **params)
    assert "group_by" not in body
    rows = [r for r in dataset.mcp if r.tool_name == "search" and lo <= r.started_at <= hi]
    assert_series(body, "mcp", series("mcp", rows, 30 * 60_000, None), None)

    # a filter on the group_by column is ignored
    body = get(api, "/admin/metrics/acp/timeseries", bucket="1.5d", group_by="operation",
               operation="turn")  # fmt: skip
    width = int(1.5 * 24 * HOUR_MS)
    assert body["bucket_width_ms"] == width
    assert_series(body, "acp", series("acp", dataset.acp, width, "operation"), "operation")

    body = get(api, "/admin/metrics/llm/timeseries", bucket="day", group_by="stream")
    assert_series(body, "llm", series("llm", dataset.llm, 24 * HOUR_MS, "stream"), "stream")
    assert {i["group_value"] for i in body["items"]} == {True, False}


def test_breakdowns(api: httpx.Client, dataset: Dataset) -> None:
    def check(
        path: str, kind: str, rows: list[Event], group: str, order: str, **params: Any
    ) -> None:
        body = get(api, path, **params)
        limit = int(params.get("limit", 100))
        assert (body["group_by"], body["order_by"], body["limit"]) == (group, order, limit)
        expected = ranked(kind, grouped(rows, lambda r: getattr(r, group)), order, limit)
        assert_ranked(kind, body, expected, order)

    base = "/admin/metrics"
    check(f"{base}/llm/breakdown", "llm", dataset.llm, "upstream_model", "total_tokens",
          group_by="upstream_model", order_by="total_tokens")  # fmt: skip
    check(f"{base}/llm/breakdown", "llm", dataset.llm, "upstream_model", "cost_usd",
          group_by="upstream_model", order_by="cost_usd")  # fmt: skip
    vk_a = [r for r in dataset.llm if r.virtual_key_id == "vk-a"]
    check(f"{base}/llm/breakdown", "llm", vk_a, "route_id", "request_count",
          virtual_key_id="vk-a", limit=1)  # fmt: skip
    # default MCP group: tool_name, whose NULL group (calls that name no tool) is kept
    check(f"{base}/mcp/breakdown", "mcp", dataset.mcp, "tool_name", "avg_latency_ms",
          order_by="avg_latency_ms")  # fmt: skip
    ok = [r for r in dataset.acp if r.success]
    check(f"{base}/acp/breakdown", "acp", ok, "agent_type", "turn_count",
          group_by="agent_type", order_by="turn_count", success="true")  # fmt: skip
    # group_by equal to a filter: the filter is ignored
    check(f"{base}/llm/breakdown", "llm", dataset.llm, "provider_id", "failure_count",
          group_by="provider_id", provider_id="p-openai", order_by="failure_count")  # fmt: skip

    fs_tools = [r for r in dataset.mcp if r.service_id == "svc-fs" and r.tool_name is not None]
    check(f"{base}/mcp/tools/summary", "mcp", fs_tools, "tool_name", "tools_call_count",
          service_id="svc-fs", order_by="tools_call_count")  # fmt: skip
    http_rows = [r for r in dataset.acp if r.route_protocol == "http"]
    check(f"{base}/acp/summary", "acp", http_rows, "operation", "request_count",
          route_protocol="http")  # fmt: skip


def interaction_ids(rows: list[Event], n: int) -> list[str]:
    return newest(rows, n)


def test_interactions(api: httpx.Client, dataset: Dataset) -> None:
    everything = dataset.everything()
    body = get(api, "/admin/metrics/interactions")
    assert [i["event_id"] for i in body["items"]] == newest(everything, 100)
    kinds = {r.event_id: r for r in everything}
    for item in body["items"]:
        event = kinds[item["event_id"]]
        assert item["route_kind"] == event.route_kind
        assert item["started_at"] == rfc3339_ms(event.started_at)
        assert item["success"] is event.success
        assert item["session_id"] == event.session_id
        operation = {"llm": "api_operation", "mcp": "method", "acp": "operation"}
        assert item["operation"] == getattr(event, operation[event.route_kind])
        assert item["upstream_model"] == getattr(event, "upstream_model", None)
        assert item["tool_name"] == getattr(event, "tool_name", None)
        assert item["service_id"] == getattr(event, "service_id", None)
        assert item["input_tokens"] == getattr(event, "input_tokens", None)

    body = get(api, "/admin/metrics/interactions", route_kind="mcp", session_id="sess-a",
               limit=1000)  # fmt: skip
    want = [r for r in dataset.mcp if r.session_id == "sess-a"]
    assert want and [i["event_id"] for i in body["items"]] == newest(want, 1000)

    body = get(api, "/admin/metrics/interactions", service_id="svc-codex", success="false",
               agent_depth="0", limit=1000)  # fmt: skip
    acp_want = [r for r in dataset.acp if r.service_id == "svc-codex" and not r.success]
    assert acp_want and [i["event_id"] for i in body["items"]] == newest(acp_want, 1000)

    summary = "/admin/metrics/interactions/summary"
    body = get(api, summary)
    expected = ranked(
        "interactions", grouped(everything, lambda r: r.route_kind), "request_count", 100
    )
    assert body["group_by"] == "route_kind"
    assert_ranked("interactions", body, expected, "request_count")
    # a route_kind filter is ignored when grouping by route_kind
    assert get(api, summary, route_kind="llm")["items"] == body["items"]

    failed = [r for r in everything if not r.success]
    body = get(api, summary, group_by="agent_id", success="false", order_by="failure_count")
    expected = ranked("interactions", grouped(failed, lambda r: r.agent_id), "failure_count", 100)
    assert_ranked("interactions", body, expected, "failure_count")


def test_attribution(store: Path | str, dataset: Dataset) -> None:
    """The per-agent filter the agents endpoints use: agent_id, or one of the agent's routes,
    or (ACP rows only) its ACP service; an empty one matches nothing."""

    async def read() -> tuple[dict[str, Any], ...]:
        db = await open_store(store, secret_key=secret_key(store))
        try:
            q = MetricsQuery(db)
            attr = Attribution("agent-x", ("mcp-web", "llm-code"), ("svc-claude",))
            return (
                await q.interactions({"limit": "1000"}, attr),
                await q.breakdown("acp", {"group_by": "service_id"}, attr),
                await q.interactions({}, Attribution("")),
                await q.tools_summary({}, Attribution("", ("mcp-fs",))),
            )
        finally:
            await db.close()

    listed, acp, nothing, tools = asyncio.run(read())

    def attributed(r: Event) -> bool:
        return (
            r.agent_id == "agent-x"
            or r.route_id in ("mcp-web", "llm-code")
            or (r.route_kind == "acp" and r.service_id == "svc-claude")
        )

    want = [r for r in dataset.everything() if attributed(r)]
    assert [i["event_id"] for i in listed["items"]] == newest(want, 1000)
    rows = [r for r in dataset.acp if attributed(r)]
    expected = ranked("acp", grouped(rows, lambda r: r.service_id), "request_count", 100)
    assert_ranked("acp", acp, expected, "request_count")
    assert nothing["items"] == []
    tool_rows = [r for r in dataset.mcp if r.route_id == "mcp-fs" and r.tool_name is not None]
    expected = ranked("mcp", grouped(tool_rows, lambda r: r.tool_name), "request_count", 100)
    assert_ranked("mcp", tools, expected, "request_count")
    assert json.dumps(listed)  # JSON-ready as it is
