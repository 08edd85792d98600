"""A2A requests on every observability surface, as the other planes are: the metrics API
(summary, events, breakdown, interactions), Prometheus (``kind="a2a"`` and
``agw_a2a_calls``), the JSON access log, and OpenTelemetry spans."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import pytest

from tests.a2a.conftest import A2aGateway

V1 = {"a2a-version": "1.0"}


@pytest.fixture(scope="module")
def sent(gw: A2aGateway) -> dict[str, Any]:
    """One blocking SendMessage on the keyed route and its row."""
    context = f"ctx-{uuid.uuid4()}"
    body = {
        "jsonrpc": "2.0",
        "id": "usage-1",
        "method": "SendMessage",
        "params": {
            "message": {
                "messageId": "m-usage",
                "role": "ROLE_USER",
                "contextId": context,
                "parts": [{"text": "hello usage"}],
            }
        },
    }
    with gw.data() as http:
        r = http.post("/a2a/keyed", json=body, headers={"authorization": f"Bearer {gw.key}", **V1})
    assert r.status_code == 200, r.text
    (row,) = gw.rows("session_id = ?", (context,))
    return {"context": context, "task": r.json()["result"]["task"], "row": row}


def test_the_metrics_api_serves_a2a(gw: A2aGateway, sent: dict[str, Any]) -> None:
    task_id = sent["task"]["id"]
    with gw.agwd.client() as admin:
        summary = admin.get("/admin/metrics").json()
        events = admin.get("/admin/metrics/a2a/events", params={"task_id": task_id}).json()
        by_method = admin.get("/admin/metrics/a2a/breakdown").json()
        mixed = admin.get("/admin/metrics/interactions", params={"route_kind": "a2a"}).json()
        series = admin.get("/admin/metrics/a2a/timeseries", params={"group_by": "method"})
    assert summary["a2a"]["request_count"] >= 1
    (event,) = events["items"]
    assert event["method"] == "SendMessage" and event["task_state"] == "completed"
    assert event["session_id"] == sent["context"] and event["stream"] is False
    assert by_method["group_by"] == "method"
    assert "SendMessage" in {i["group_value"] for i in by_method["items"]}
    assert {i["route_kind"] for i in mixed["items"]} == {"a2a"}
    assert series.status_code == 200


def test_prometheus_counts_a2a(gw: A2aGateway, sent: dict[str, Any]) -> None:
    with gw.agwd.client() as admin:
        text = admin.get("/admin/metrics/prometheus").text
    assert 'agentgateway_usage_requests_total{kind="a2a"}' in text
    calls = [
        line
        for line in text.splitlines()
        if line.startswith("agw_a2a_calls_total{") and 'method="SendMessage"' in line
    ]
    assert any('route_id="a2a-keyed"' in c and 'task_state="completed"' in c for c in calls)
    assert 'agw_requests_total{error_class="none",kind="a2a",route_id="a2a-keyed"}' in text


def test_the_access_log_has_a_line(gw: A2aGateway, sent: dict[str, Any]) -> None:
    deadline = time.monotonic() + 10
    lines: list[dict[str, Any]] = []
    while not lines and time.monotonic() < deadline:
        lines = [
            e
            for e in gw.agwd.log_events()
            if e.get("kind") == "a2a" and e.get("session_id") == sent["context"]
        ]
        time.sleep(0.05)
    (line,) = lines
    assert (line["operation"], line["upstream"], line["status"]) == ("SendMessage", "planner", 200)
    assert line["virtual_key_id"] == "a2a-caller" and line["error_class"] == "none"
    assert gw.key not in json.dumps(gw.agwd.log_events())  # never a key in the log


def test_a_span_per_request(gw: A2aGateway, sent: dict[str, Any]) -> None:
    row = sent["row"]
    (span,) = gw.otlp.wait_spans(lambda s: s["span_id"] == row["span_id"])
    assert span["name"] == "a2a SendMessage" and span["trace_id"] == row["trace_id"]
    attrs = span["attributes"]
    assert attrs["agw.route_kind"] == "a2a" and attrs["a2a.method"] == "SendMessage"
    assert attrs["a2a.task.id"] == sent["task"]["id"]
    assert attrs["a2a.context.id"] == attrs["session.id"] == sent["context"]
    assert attrs["a2a.task.state"] == "completed" and attrs["a2a.protocol_version"] == "1.0"
    assert attrs["openinference.span.kind"] == "AGENT"
    # the agent got the gateway's span as the parent of its work
    up = [r for r in gw.agent.requests() if r["headers"].get("traceparent", "").split("-")[1:2]]
    assert any(r["headers"]["traceparent"].split("-")[1] == row["trace_id"] for r in up)
