"""The Grafana dashboard draws what agw exports: every metric and label its queries use is in a
scrape of the Prometheus tap, and every agw_* family has a panel."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from agw.store.db import Database
from agw.usage.events import AcpUsageEvent, LlmUsageEvent, McpUsageEvent
from agw.usage.prometheus import PrometheusMetrics
from agw.usage.recorder import UsageRecorder

DASHBOARD = Path(__file__).resolve().parent.parent / "docs" / "grafana" / "agw-dashboard.json"
T0 = 1_767_225_600_000

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
_MATCHERS = re.compile(r"([A-Za-z_:][A-Za-z0-9_:]*)?\s*\{([^}]*)\}")
_MATCHER_LABEL = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)\s*(?:=~|!~|!=|=)")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
_RANGE = re.compile(r"\[[^\]]*\]")
_NAME = re.compile(r"(?<![A-Za-z0-9_:.])([A-Za-z_:][A-Za-z0-9_:]*)(?![A-Za-z0-9_:]|\s*\()")
_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "offset", "bool"}
_KEYWORDS |= {"and", "or", "unless", "inf", "nan"}
_LABEL_VALUES = re.compile(r"label_values\(\s*([A-Za-z_:][A-Za-z0-9_:]*)\s*,\s*(\w+)\s*\)")


def scraped_labels(tmp_path: Path) -> dict[str, set[str]]:
    """Sample name -> its label names, from a tap that saw one event of each kind."""

    async def main() -> bytes:
        db = await Database.open(tmp_path / "usage.db")
        recorder = UsageRecorder(db)
        metrics = PrometheusMetrics(recorder)
        recorder.add_tap(metrics)
        recorder.start()
        common: dict[str, Any] = dict(started_at=T0, finished_at=T0 + 40, overhead_ms=0.4)
        recorder.emit(
            LlmUsageEvent(
                **common,
                route_id="chat",
                success=True,
                status_code=200,
                provider_id="oai",
                upstream_model="gpt-4o",
                input_tokens=5,
                output_tokens=7,
                total_tokens=12,
                stream=True,
                ttft_ms=30.0,
            )
        )
        recorder.emit(
            McpUsageEvent(
                **common,
                route_id="tools",
                status_code=502,
                error_type="upstream_failed",
                service_id="weather",
                method="tools/call",
                tool_name="get_weather",
                result_status="error",
            )
        )
        recorder.emit(
            AcpUsageEvent(
                **common,
                route_id="agent",
                success=True,
                status_code=200,
                service_id="claude",
                agent_type="claude-code",
                operation="turn",
                stop_reason="end_turn",
            )
        )
        await recorder.close()
        await db.close()
        return metrics.render()

    text = asyncio.run(main()).decode()
    out: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out.setdefault(sample.name, set()).update(sample.labels)
    return out


def expressions(dashboard: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(where, PromQL, legend format) of every panel target, rows' panels included."""
    out = []
    stack = list(dashboard["panels"])
    while stack:
        panel = stack.pop()
        stack.extend(panel.get("panels", []))
        for target in panel.get("targets", []):
            out.append(
                (f"{panel['title']}/{target['refId']}", target["expr"], target["legendFormat"])
            )
    return out


def metric_names(expr: str) -> tuple[set[str], dict[str, set[str]], set[str]]:
    """The metric names a PromQL expression selects, the label names matched per selector,
    and the label names of its by/without/on/ignoring groupings."""
    expr = expr.replace("$__rate_interval", "5m").replace("$__interval", "1m")
    matched: dict[str, set[str]] = {}
    for name, body in _MATCHERS.findall(expr):
        labels = set(_MATCHER_LABEL.findall(_STRING.sub('""', body)))
        matched.setdefault(name, set()).update(labels)
    grouped = {g.strip() for body in _GROUPING.findall(expr) for g in body.split(",") if g.strip()}
    bare = _GROUPING.sub(" ", _RANGE.sub(" ", _MATCHERS.sub(r"\1", _STRING.sub('""', expr))))
    names = {n for n in _NAME.findall(bare) if n.lower() not in _KEYWORDS}
    return names, matched, grouped


def test_the_dashboard_is_a_grafana_10_dashboard_with_a_datasource_variable() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["schemaVersion"] >= 38 and dashboard["uid"] and dashboard["title"]
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert {"h", "w", "x", "y"} <= panel["gridPos"].keys() and panel["targets"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}"
    titles = " | ".join(p["title"].lower() for p in dashboard["panels"])
    for topic in ("request rate", "error", "p99", "overhead", "first token", "tokens by model"):
        assert topic in titles
    for topic in ("tool calls", "stop reason", "queue depth"):
        assert topic in titles


def test_every_metric_and_label_the_dashboard_queries_is_scraped(tmp_path: Path) -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    scraped = scraped_labels(tmp_path)
    used: set[str] = set()
    problems = []
    for where, expr, legend in expressions(dashboard):
        names, matched, grouped = metric_names(expr)
        assert names, f"{where}: no metric in {expr!r}"
        for name in names:
            if name not in scraped:
                problems.append(f"{where}: {name} is not in the scrape")
        for name, labels in matched.items():
            for label in labels - scraped.get(name, set()):
                problems.append(f"{where}: {name} has no label {label}")
        known = set().union(*(scraped.get(n, set()) for n in names))
        for label in grouped - known:
            problems.append(f"{where}: grouping label {label} is on none of {sorted(names)}")
        for label in set(re.findall(r"\{\{\s*(\w+)\s*\}\}", legend)) - (grouped or known):
            problems.append(f"{where}: legend label {label} is not in the result")
        used |= names
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            found = _LABEL_VALUES.fullmatch(variable["definition"])
            assert found, variable["definition"]
            metric, label = found.groups()
            if label not in scraped.get(metric, set()):
                problems.append(f"variable {variable['name']}: {metric} has no label {label}")
            used.add(metric)
    assert not problems, "\n".join(problems)

    families = {re.sub(r"_(bucket|sum|count)$", "", n) for n in scraped if n.startswith("agw_")}
    shown = {re.sub(r"_(bucket|sum|count)$", "", n) for n in used}
    assert families - shown == set(), "agw_* families without a panel"
