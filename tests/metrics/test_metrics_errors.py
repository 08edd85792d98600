"""Every documented 400 of the metrics API once, the 404 of an unknown session, the 503 of an
admin app without Prometheus metrics, and the empty shapes of one without usage tables."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest

from agw.admin.app import create_admin_app
from agw.clock import rfc3339_ms
from agw.errors import NotFound
from agw.runtime.manager import ConfigManager
from agw.usage.answers import MetricsQuery
from tests.support.metrics import DAY_MS, Dataset

BASE = "/admin/metrics"
LIMIT = "limit must be an integer between 1 and 1000"

CASES: list[tuple[str, dict[str, Any], str]] = [
    (f"{BASE}/llm/events", {"routeid": "x"}, 'unknown parameter "routeid"; this endpoint accepts'),
    (BASE, {"limit": "5"}, 'unknown parameter "limit"'),
    (f"{BASE}/mcp/events", {"from": "yesterday"}, "from must be RFC3339"),
    (f"{BASE}/acp/events", {"to": "2026-01-02T03:04:05"}, "to must be RFC3339"),  # no offset
    (
        f"{BASE}/interactions",
        {"from": "2026-01-02T00:00:00Z", "to": "2026-01-01T00:00:00Z"},
        "from must not be after to",
    ),
    (f"{BASE}/llm/events", {"limit": "ten"}, LIMIT),
    (f"{BASE}/llm/breakdown", {"limit": "0"}, LIMIT),
    (f"{BASE}/interactions", {"limit": "1001"}, LIMIT),
    (f"{BASE}/llm/events", {"success": "yes"}, "success must be true or false"),
    (f"{BASE}/llm/events", {"has_tool_use": "1"}, "has_tool_use must be true or false"),
    (
        f"{BASE}/llm/breakdown",
        {"group_by": "tool_name"},
        'unsupported group_by "tool_name"; use one of: agent_id, api_operation',
    ),
    (f"{BASE}/interactions/summary", {"group_by": "service_id"}, 'unsupported group_by "service'),
    (f"{BASE}/mcp/breakdown", {"order_by": "total_tokens"}, 'unsupported order_by "total_tokens"'),
    (f"{BASE}/llm/timeseries", {"bucket": "fortnight"}, 'invalid bucket "fortnight"'),
    (f"{BASE}/llm/timeseries", {"bucket": "0.5s"}, 'invalid bucket "0.5s"'),
    (
        f"{BASE}/acp/timeseries",
        {"bucket": "1s", "from": "2026-01-01T00:00:00Z", "to": "2026-01-02T00:00:00Z"},
        "too many buckets",
    ),
    (f"{BASE}/interactions", {"agent_depth": "deep"}, "agent_depth must be an integer"),
    (f"{BASE}/sessions/sess-a", {"limit": "2000"}, LIMIT),
]


def test_invalid_parameters(api: httpx.Client) -> None:
    for path, params, message in CASES:
        r = api.get(path, params=params)
        assert r.status_code == 400, (path, params, r.status_code, r.text)
        body = r.json()
        assert body["code"] == "invalid_parameter", body
        assert body["error"].startswith(message), (path, params, body)
    r = api.get(f"{BASE}/llm/events?route_id=a&route_id=b")
    assert r.status_code == 400
    assert r.json()["error"] == 'parameter "route_id" given more than once'


def test_not_found_and_not_enabled(api: httpx.Client, dataset: Dataset) -> None:
    r = api.get(f"{BASE}/sessions/no-such-session")
    assert r.status_code == 404
    assert r.json() == {
        "error": 'session "no-such-session" has no usage events',
        "code": "not_found",
    }
    # a known session, outside the window asked for
    before = {"to": rfc3339_ms(dataset.start_ms - DAY_MS)}
    assert api.get(f"{BASE}/sessions/sess-a", params=before).status_code == 404

    r = api.get(f"{BASE}/prometheus")
    assert r.status_code == 200
    assert r.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    assert "# TYPE " in r.text


def test_prometheus_not_enabled() -> None:
    """An admin app built without Prometheus metrics (agwd always has them) answers 503."""
    app = create_admin_app(ConfigManager(db=None), auth=None)  # type: ignore[arg-type]

    async def scrape() -> tuple[int, Any]:
        response = await app.test_client().get(f"{BASE}/prometheus")
        return response.status_code, await response.get_json()

    assert asyncio.run(scrape()) == (
        503,
        {"error": "prometheus metrics are not enabled", "code": "not_enabled"},
    )


def test_without_a_database_shapes_are_empty() -> None:
    q = MetricsQuery(None)

    async def read() -> list[dict[str, Any]]:
        return [
            await q.summary({}),
            await q.events("mcp", {"limit": "5"}),
            await q.timeseries("llm", {"group_by": "route_id", "bucket": "5m"}),
            await q.breakdown("acp", {}),
            await q.tools_summary({}),
            await q.acp_summary({}),
            await q.interactions({}),
            await q.interactions_summary({}),
        ]

    summary, events, series, acp, tools, acp_summary, listed, kinds = asyncio.run(read())
    assert summary["llm"]["request_count"] == 0 and summary["llm"]["avg_latency_ms"] is None
    assert summary["acp"] == {
        "request_count": 0,
        "turn_count": 0,
        "success_count": 0,
        "failure_count": 0,
        "avg_latency_ms": None,
    }
    assert events == {"items": [], "limit": 5}
    assert series == {"bucket": "5m", "bucket_width_ms": 300_000, "group_by": "route_id",
                      "items": []}  # fmt: skip
    assert (
        acp
        == acp_summary
        == {
            "group_by": "operation",
            "order_by": "request_count",
            "items": [],
            "limit": 100,
        }
    )
    assert tools["group_by"] == "tool_name" and tools["items"] == []
    assert listed == {"items": [], "limit": 100}
    assert kinds["group_by"] == "route_kind" and kinds["items"] == []
    with pytest.raises(NotFound):
        asyncio.run(q.session("s", {}))
    with pytest.raises(Exception, match="limit must be"):
        asyncio.run(q.events("llm", {"limit": "-1"}))
