"""Per-user attribution in the metrics API: the ``user_id`` and ``org_id`` filters and
``group_by`` values on every endpoint that filters by key or route, checked against sums computed
here over the generated rows (a quarter of them name no user: virtual-key callers).
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.support.metrics import (
    DAY_MS,
    USERS,
    Dataset,
    Event,
    assert_measures,
    assert_ranked,
    grouped,
    measures,
    ranked,
)

BASE = "/admin/metrics"


def get(api: httpx.Client, path: str, **params: Any) -> dict[str, Any]:
    r = api.get(path, params=params)
    assert r.status_code == 200, f"{path} {params}: {r.status_code} {r.text}"
    body: dict[str, Any] = r.json()
    return body


def newest(rows: list[Event], n: int = 1000) -> list[str]:
    return [r.event_id for r in sorted(rows, key=lambda r: r.started_at, reverse=True)[:n]]


def test_the_dataset_has_several_users_in_two_orgs(dataset: Dataset) -> None:
    users = {r.user_id for r in dataset.everything()}
    assert users == {*USERS, None}
    assert {r.org_id for r in dataset.everything()} == {"org-acme", "org-globex", None}


def test_events_filter_by_user_and_org_and_answer_both(api: httpx.Client, dataset: Dataset) -> None:
    body = get(api, f"{BASE}/llm/events", user_id="ana@example.com", limit=1000)
    want = [r for r in dataset.llm if r.user_id == "ana@example.com"]
    assert want and [i["event_id"] for i in body["items"]] == newest(want)
    assert {(i["user_id"], i["org_id"]) for i in body["items"]} == {("ana@example.com", "org-acme")}

    body = get(api, f"{BASE}/mcp/events", org_id="org-globex", limit=1000)
    mcp_want = [r for r in dataset.mcp if r.org_id == "org-globex"]
    assert mcp_want and [i["event_id"] for i in body["items"]] == newest(mcp_want)

    body = get(api, f"{BASE}/acp/events", org_id="org-acme", user_id="bo@example.com", limit=1000)
    acp_want = [r for r in dataset.acp if r.user_id == "bo@example.com"]
    assert acp_want and [i["event_id"] for i in body["items"]] == newest(acp_want)


@pytest.mark.parametrize("kind", ["llm", "mcp", "acp"])
def test_breakdown_by_user_and_by_org(api: httpx.Client, dataset: Dataset, kind: str) -> None:
    rows = dataset.of(kind)
    order = {"llm": "total_tokens", "mcp": "tools_call_count", "acp": "turn_count"}[kind]
    body = get(api, f"{BASE}/{kind}/breakdown", group_by="user_id", order_by=order)
    assert body["group_by"] == "user_id"
    assert_ranked(kind, body, ranked(kind, grouped(rows, lambda r: r.user_id), order, 100), order)

    # spend per person inside one org; a user filter is ignored when grouping by user
    acme = [r for r in rows if r.org_id == "org-acme"]
    body = get(api, f"{BASE}/{kind}/breakdown", group_by="user_id", org_id="org-acme",
               user_id="cy@example.com", order_by=order)  # fmt: skip
    expected = ranked(kind, grouped(acme, lambda r: r.user_id), order, 100)
    assert {g for g, _ in expected} == {"ana@example.com", "bo@example.com"}
    assert_ranked(kind, body, expected, order)

    body = get(api, f"{BASE}/{kind}/breakdown", group_by="org_id", success="true")
    ok = [r for r in rows if r.success]
    expected = ranked(kind, grouped(ok, lambda r: r.org_id), "request_count", 100)
    assert_ranked(kind, body, expected, "request_count")


def test_timeseries_by_user_within_an_org(api: httpx.Client, dataset: Dataset) -> None:
    body = get(api, f"{BASE}/llm/timeseries", bucket="day", group_by="user_id", org_id="org-acme")
    assert body["group_by"] == "user_id"
    acme = [r for r in dataset.llm if r.org_id == "org-acme"]
    per_user: dict[Any, int] = {}
    for item in body["items"]:
        assert item["bucket_ms"] % DAY_MS == 0
        per_user[item["group_value"]] = per_user.get(item["group_value"], 0) + item["total_tokens"]
    assert per_user == {
        user: sum(r.total_tokens for r in rows)
        for user, rows in grouped(acme, lambda r: r.user_id).items()
    }


def test_the_summaries_filter_by_user_and_org(api: httpx.Client, dataset: Dataset) -> None:
    body = get(api, f"{BASE}/mcp/tools/summary", user_id="cy@example.com")
    tools = [r for r in dataset.mcp if r.user_id == "cy@example.com" and r.tool_name is not None]
    assert_ranked("mcp", body, ranked("mcp", grouped(tools, lambda r: r.tool_name),
                                      "request_count", 100), "request_count")  # fmt: skip

    body = get(api, f"{BASE}/acp/summary", org_id="org-acme", group_by="user_id")
    acme = [r for r in dataset.acp if r.org_id == "org-acme"]
    expected = ranked("acp", grouped(acme, lambda r: r.user_id), "request_count", 100)
    assert_ranked("acp", body, expected, "request_count")


def test_interactions_by_user_and_org(api: httpx.Client, dataset: Dataset) -> None:
    everything = dataset.everything()
    body = get(api, f"{BASE}/interactions", user_id="bo@example.com", limit=1000)
    want = [r for r in everything if r.user_id == "bo@example.com"]
    assert {r.route_kind for r in want} == {"llm", "mcp", "acp"}
    assert [i["event_id"] for i in body["items"]] == newest(want)
    assert all(i["org_id"] == "org-acme" for i in body["items"])

    body = get(api, f"{BASE}/interactions/summary", group_by="org_id")
    assert body["group_by"] == "org_id"
    expected = ranked("interactions", grouped(everything, lambda r: r.org_id), "request_count", 100)
    assert_ranked("interactions", body, expected, "request_count")

    body = get(api, f"{BASE}/interactions/summary", group_by="user_id", org_id="org-globex",
               route_kind="llm")  # fmt: skip
    (item,) = body["items"]
    globex = [r for r in dataset.llm if r.org_id == "org-globex"]
    assert item["group_value"] == "cy@example.com"
    assert_measures(item, measures("interactions", globex), "globex llm")


def test_where_user_and_org_are_refused(api: httpx.Client) -> None:
    """The whole-gateway summary takes only from/to; the API's group_by names are the columns'
    (agwctl's ``--group-by user`` is its own shorthand)."""
    r = api.get(BASE, params={"user_id": "ana@example.com"})
    assert r.status_code == 400
    assert r.json()["error"].startswith('unknown parameter "user_id"')
    r = api.get(f"{BASE}/llm/breakdown", params={"group_by": "user"})
    assert r.status_code == 400
    assert r.json()["error"].startswith('unsupported group_by "user"')
