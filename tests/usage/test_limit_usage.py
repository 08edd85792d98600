"""What a limit leaves on usage (migration 0010): ``limit_id`` and ``limit_action`` on the rows of
the three planes, written by the real recorder of an in-process gateway, then read back through
the metrics API (filters, ``group_by``) and the Prometheus scrape
(``agw_limit_actions_total``). The planes setting them on real requests is tested with the
limits (tests/llm, tests/mcp, tests/acp).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from agw.clock import now_ms
from agw.usage.events import AcpUsageEvent, LlmUsageEvent, McpUsageEvent, UsageEvent
from tests.support.inproc import InprocGateway
from tests.support.usage import rows, wait_until

BASE = "/admin/metrics"
KINDS: dict[str, type[LlmUsageEvent | McpUsageEvent | AcpUsageEvent]] = {
    "llm": LlmUsageEvent,
    "mcp": McpUsageEvent,
    "acp": AcpUsageEvent,
}
TABLES = {"llm": "llm_usage_events", "mcp": "mcp_usage_events", "acp": "acp_usage_events"}
# (kind, limit_id, limit_action, how many): what the gateway records, besides calls no limit
# acted on (limit_id None)
ACTIONS: list[tuple[str, str | None, str | None, int]] = [
    ("llm", "daily-usd", "refused", 3),
    ("llm", "per-key-requests", "refused", 1),
    ("llm", "daily-usd", "clamped", 2),
    ("llm", "per-key-requests", "shadow", 1),
    ("llm", "stream-tokens", "cut", 1),
    ("llm", "daily-usd", "exceeded", 1),
    ("llm", None, None, 4),
    ("mcp", "tool-calls", "refused", 2),
    ("mcp", "tool-calls", "shadow", 1),
    ("mcp", None, None, 3),
    ("acp", "turns", "refused", 1),
    ("acp", None, None, 2),
]


def event(kind: str, limit_id: str | None, action: str | None, at: int) -> UsageEvent:
    refused = action == "refused"
    return KINDS[kind](
        started_at=at,
        finished_at=at + 5,
        route_id=f"{kind}-route",
        virtual_key_id="vk-1",
        success=not refused,
        status_code=429 if refused else 200,
        error_type="rate_limited" if refused else None,
        limit_id=limit_id,
        limit_action=action,
    )


@pytest.fixture(scope="module")
def gateway(module_inproc: InprocGateway) -> InprocGateway:
    """The module's gateway, its recorder given every event of :data:`ACTIONS` and waited on
    until the store has them."""
    recorder = module_inproc.apps.recorder
    start = now_ms() - 60_000
    events = [
        event(kind, limit_id, action, start + 10 * i)
        for i, (kind, limit_id, action, n) in enumerate(ACTIONS)
        for _ in range(n)
    ]

    async def emit_all() -> None:
        before = recorder.written_events
        for e in events:
            assert recorder.emit(e)
        await wait_until(lambda: recorder.written_events == before + len(events))

    module_inproc.call(emit_all)
    return module_inproc


@pytest.fixture(scope="module")
def api(gateway: InprocGateway) -> Iterator[httpx.Client]:
    with gateway.client() as client:
        yield client


def get(api: httpx.Client, path: str, **params: str) -> dict[str, Any]:
    r = api.get(path, params=params)
    assert r.status_code == 200, f"{path} {params}: {r.status_code} {r.text}"
    body: dict[str, Any] = r.json()
    return body


def expected(kind: str, **where: str) -> Counter[tuple[str | None, str | None]]:
    """(limit_id, limit_action) -> calls of ``kind`` matching ``where``."""
    out: Counter[tuple[str | None, str | None]] = Counter()
    for k, limit_id, action, n in ACTIONS:
        found = {"limit_id": limit_id, "limit_action": action}
        if k == kind and all(found[name] == value for name, value in where.items()):
            out[(limit_id, action)] += n
    return out


def test_the_rows_record_the_limit_and_its_action(gateway: InprocGateway) -> None:
    for kind, table in TABLES.items():
        got = Counter((r["limit_id"], r["limit_action"]) for r in rows(gateway.db_path, table))
        assert got == expected(kind), kind


@pytest.mark.parametrize("kind", ["llm", "mcp", "acp"])
def test_refusals_broken_down_by_limit(api: httpx.Client, kind: str) -> None:
    body = get(api, f"{BASE}/{kind}/breakdown", group_by="limit_id", limit_action="refused")
    assert body["group_by"] == "limit_id"
    got = {i["group_value"]: (i["request_count"], i["failure_count"]) for i in body["items"]}
    want: Counter[str | None] = Counter()
    for (limit_id, _), n in expected(kind, limit_action="refused").items():
        want[limit_id] += n
    assert got == {limit_id: (n, n) for limit_id, n in want.items()}
    counts = [i["request_count"] for i in body["items"]]
    assert counts == sorted(counts, reverse=True)


def test_actions_of_one_limit_and_every_action(api: httpx.Client) -> None:
    body = get(api, f"{BASE}/llm/breakdown", group_by="limit_action", limit_id="daily-usd")
    got = {i["group_value"]: i["request_count"] for i in body["items"]}
    assert got == {"refused": 3, "clamped": 2, "exceeded": 1}

    body = get(api, f"{BASE}/mcp/breakdown", group_by="limit_action")
    got = {i["group_value"]: i["request_count"] for i in body["items"]}
    assert got == {"refused": 2, "shadow": 1, None: 3}  # None: no limit acted


def test_events_filter_by_limit_and_answer_both_columns(api: httpx.Client) -> None:
    body = get(api, f"{BASE}/llm/events", limit_id="per-key-requests", limit="1000")
    got = Counter((i["limit_id"], i["limit_action"]) for i in body["items"])
    assert got == {("per-key-requests", "refused"): 1, ("per-key-requests", "shadow"): 1}

    body = get(api, f"{BASE}/acp/events", limit_action="refused", limit="1000")
    assert [(i["limit_id"], i["status_code"]) for i in body["items"]] == [("turns", 429)]


def test_timeseries_groups_by_limit_action(api: httpx.Client) -> None:
    body = get(api, f"{BASE}/llm/timeseries", bucket="day", group_by="limit_action")
    per_action: Counter[str | None] = Counter()
    for item in body["items"]:
        per_action[item["group_value"]] += item["request_count"]
    want: Counter[str | None] = Counter()
    for (_, action), n in expected("llm").items():
        want[action] += n
    assert per_action == want
    assert per_action["refused"] == 4

    body = get(api, f"{BASE}/mcp/timeseries", bucket="day", limit_id="tool-calls")
    assert sum(i["request_count"] for i in body["items"]) == 3


@pytest.mark.parametrize("kind", ["llm", "mcp", "acp"])
def test_the_limit_parameters_are_known_to_every_kind(api: httpx.Client, kind: str) -> None:
    for path in ("events", "breakdown", "timeseries"):
        r = api.get(f"{BASE}/{kind}/{path}", params={"limit_id": "none-such"})
        assert r.status_code == 200, (kind, path, r.text)
        assert r.json()["items"] == []
    r = api.get(f"{BASE}/{kind}/breakdown", params={"group_by": "limit_action", "limit_act": "x"})
    assert r.status_code == 400
    assert "limit_action" in r.json()["error"]


def test_prometheus_counts_each_limit_action(api: httpx.Client) -> None:
    r = api.get(f"{BASE}/prometheus")
    assert r.status_code == 200
    samples = {
        (s.labels["kind"], s.labels["limit_id"], s.labels["action"]): s.value
        for family in text_string_to_metric_families(r.text)
        if family.name == "agw_limit_actions"
        for s in family.samples
        if s.name == "agw_limit_actions_total"
    }
    want = {
        (kind, limit_id, action): float(n)
        for kind, limit_id, action, n in ACTIONS
        if action is not None and limit_id is not None
    }
    assert samples == want
    assert "# TYPE agw_limit_actions_total counter" in r.text
