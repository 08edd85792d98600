"""``/admin/metrics/sessions/{id}``: one agent session across the LLM, MCP and ACP tables."""

from __future__ import annotations

from typing import Any

import httpx

from agw.clock import rfc3339_ms
from tests.support.metrics import Dataset, Event

PATH = "/admin/metrics/sessions/sess-a"


def expected_item(r: Event) -> dict[str, Any]:
    item: dict[str, Any] = {"at": rfc3339_ms(r.started_at), "at_ms": r.started_at}
    item |= {"kind": r.route_kind, "route_id": r.route_id}
    if r.route_kind == "llm":
        item |= {"operation": r.api_operation, "model": r.upstream_model or r.logical_model}
    elif r.route_kind == "mcp":
        item |= {"operation": r.method, "tool": r.tool_name, "service_id": r.service_id}
    else:
        item |= {"operation": r.operation, "service_id": r.service_id}
    item |= {
        "status_code": r.status_code,
        "success": r.success,
        "error_type": r.error_type,
        "latency_ms": r.latency_ms,
    }
    if r.route_kind == "llm":
        item |= {"input_tokens": r.input_tokens, "output_tokens": r.output_tokens}
    return item | {"trace_id": r.trace_id, "event_id": r.event_id}


def totals(rows: list[Event]) -> dict[str, Any]:
    llm = [r for r in rows if r.route_kind == "llm"]
    mcp = [r for r in rows if r.route_kind == "mcp"]
    acp = [r for r in rows if r.route_kind == "acp"]
    a2a = [r for r in rows if r.route_kind == "a2a"]
    return {
        "llm": {
            "request_count": len(llm),
            "failure_count": sum(not r.success for r in llm),
            "input_tokens": sum(r.input_tokens for r in llm),
            "output_tokens": sum(r.output_tokens for r in llm),
            "total_tokens": sum(r.total_tokens for r in llm),
        },
        "mcp": {
            "request_count": len(mcp),
            "failure_count": sum(not r.success for r in mcp),
            "tools_call_count": sum(r.method == "tools/call" for r in mcp),
        },
        "acp": {
            "request_count": len(acp),
            "turn_count": sum(r.operation == "turn" for r in acp),
            "failure_count": sum(not r.success for r in acp),
        },
        "a2a": {"request_count": len(a2a), "failure_count": sum(not r.success for r in a2a)},
    }


def test_session_timeline(api: httpx.Client, dataset: Dataset) -> None:
    rows = sorted(
        (r for r in dataset.everything() if r.session_id == "sess-a"), key=lambda r: r.started_at
    )
    assert {r.route_kind for r in rows} == {"llm", "mcp", "acp"}
    r = api.get(PATH)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["session_id"] == "sess-a"
    assert body["first_at"] == rfc3339_ms(rows[0].started_at)
    assert body["last_at"] == rfc3339_ms(rows[-1].started_at)
    assert body["totals"] == totals(rows)
    assert body["limit"] == 1000
    assert body["items"] == [expected_item(x) for x in rows]

    # a limit cuts the items, not the totals
    body = api.get(PATH, params={"limit": 5}).json()
    assert body["items"] == [expected_item(x) for x in rows[:5]]
    assert body["totals"] == totals(rows)

    # from/to narrow everything
    lo, hi = rows[3].started_at, rows[-4].started_at
    params = {"from": rfc3339_ms(lo), "to": rfc3339_ms(hi)}
    body = api.get(PATH, params=params).json()
    inside = rows[3:-3]
    assert body["items"] == [expected_item(x) for x in inside]
    assert body["totals"] == totals(inside)
    assert (body["first_at"], body["last_at"]) == (rfc3339_ms(lo), rfc3339_ms(hi))
