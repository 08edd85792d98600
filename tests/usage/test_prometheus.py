"""The Prometheus tap against a real recorder and store: scrapes equal independent sums, client
label values are capped, and a full queue drops, counts and never makes emit wait."""

from __future__ import annotations

import asyncio
import logging
import random
import sqlite3
import time
from collections import Counter
from contextlib import closing
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from agw.store.db import Database
from agw.usage.events import AcpUsageEvent, LlmUsageEvent, McpUsageEvent, UsageEvent
from agw.usage.prometheus import PrometheusMetrics
from agw.usage.recorder import UsageRecorder
from tests.support.usage import NOW_MS, count, wait_until

Samples = dict[str, dict[frozenset[tuple[str, str]], float]]

KIND = {LlmUsageEvent: "llm", McpUsageEvent: "mcp", AcpUsageEvent: "acp"}
# (success, status, error_type, the class the taxonomy must give it), written out by hand
OUTCOMES = [
    (True, 200, None, "none"),
    (False, 401, "virtual_key_rejected", "policy"),
    (False, 400, "protocol_validation_failed", "client"),
    (False, 502, "provider_request_failed", "provider"),
    (False, 500, "internal_error", "gateway"),
]
# ms; 5, 1000 and 120000 sit on bucket bounds (le is inclusive), 200000 is past the last one
LATENCIES = [0, 3, 5, 40, 999, 1000, 2500, 120_000, 200_000]


def scrape(metrics: PrometheusMetrics) -> tuple[str, Samples]:
    text = metrics.render().decode()
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out.setdefault(s.name, {})[frozenset(s.labels.items())] = s.value
    return text, out


def series(samples: Samples, name: str) -> dict[tuple[str, ...], float]:
    """One metric's samples keyed by their label values in label-name order (``le`` last)."""
    out = {}
    for labels, value in samples.get(name, {}).items():
        named = dict(labels)
        le = named.pop("le", None)
        key = tuple(v for _, v in sorted(named.items())) + ((le,) if le is not None else ())
        out[key] = value
    return out


def varied_events(n: int) -> list[UsageEvent]:
    rnd = random.Random(6)
    events: list[UsageEvent] = []
    for i in range(n):
        success, status, error_type, _ = rnd.choice(OUTCOMES)
        latency = rnd.choice(LATENCIES)
        common = dict(
            started_at=NOW_MS + i,
            finished_at=NOW_MS + i + latency,
            route_id=rnd.choice(["r1", "r2", None]),
            success=success,
            status_code=status,
            error_type=error_type,
            overhead_ms=rnd.choice([None, 0.05, 0.1, 0.4, 3.0, 2500.0]),
            trace_id=f"{i:032x}",
            http_path=f"/secret-path-{i}",
        )
        kind = i % 3
        event: UsageEvent
        if kind == 0:
            model = rnd.choice([("gpt-4o", "fast"), (None, "fast"), (None, None), ("claude", None)])
            event = LlmUsageEvent(
                **common,  # type: ignore[arg-type]
                provider_id=rnd.choice(["oai", "anthropic", None]),
                upstream_model=model[0],
                logical_model=model[1],
                input_tokens=rnd.randrange(500),
                output_tokens=rnd.randrange(500),
                total_tokens=rnd.randrange(1000),
                cached_input_tokens=rnd.randrange(50),
                cache_creation_input_tokens=rnd.randrange(50),
                reasoning_tokens=rnd.randrange(50),
                ttft_ms=rnd.choice([None, 25.0, 300.0, 200_000.0]),
                session_id=f"session-{i}",
            )
        elif kind == 1:
            event = McpUsageEvent(
                **common,  # type: ignore[arg-type]
                service_id=rnd.choice(["weather", None]),
                method=rnd.choice(["tools/call", "tools/call", "tools/list", "resources/read"]),
                tool_name=rnd.choice(["get_weather", "search", None]),
                result_status=rnd.choice(["success", "error", "cancelled", None]),
                session_id=f"session-{i}",
                mcp_session_id=f"mcp-session-{i}",
            )
        else:
            event = AcpUsageEvent(
                **common,  # type: ignore[arg-type]
                service_id="claude",
                agent_type=rnd.choice(["claude-code", "goose"]),
                operation=rnd.choice(["turn", "turn", "permission", "sessions"]),
                stop_reason=rnd.choice(["end_turn", "max_tokens", "cancelled", None]),
                session_id=f"session-{i}",
                thread_id=f"thread-{i}",
            )
        events.append(event)
    return events


def histogram_expectation(
    observed: dict[tuple[str, ...], list[float]], bounds: list[str]
) -> tuple[dict[tuple[str, ...], float], dict[tuple[str, ...], float]]:
    """Bucket counts (keyed label values + le) and counts (keyed label values) of the
    observations, computed from their definition: le is inclusive, +Inf counts everything."""
    buckets = {
        (*key, le): float(sum(1 for v in values if v <= float(le)))
        for key, values in observed.items()
        for le in bounds
    }
    counts = {key: float(len(values)) for key, values in observed.items()}
    return buckets, counts


def test_a_scrape_equals_independent_sums(tmp_path: Path) -> None:
    path = tmp_path / "usage.db"
    events = varied_events(300)
    # One more, written twice: the second write fails on the primary key (a real failure).
    again = McpUsageEvent(
        started_at=NOW_MS, finished_at=NOW_MS + 7, route_id="r1", success=True, status_code=200
    )

    async def main() -> tuple[str, Samples, str, Samples]:
        db = await Database.open(path)
        recorder = UsageRecorder(db, flush_interval=0)
        metrics = PrometheusMetrics(recorder)
        recorder.add_tap(metrics)
        recorder.start()
        for event in [*events, again]:
            assert recorder.emit(event)
        await wait_until(lambda: recorder.written_events == len(events) + 1)
        assert recorder.emit(again)
        await wait_until(lambda: recorder.write_failures == 1)
        before = scrape(metrics)
        await recorder.close()
        await db.close()
        return (*before, *scrape(metrics))

    _, samples_open, text, samples = asyncio.run(main())
    emitted = [*events, again, again]

    # §7.4: the five counters, each with HELP and TYPE, kinds sorted
    for name in (
        "agentgateway_usage_requests_total",
        "agentgateway_usage_failures_total",
        "agentgateway_usage_tokens_total",
        "agentgateway_usage_dropped_events_total",
        "agentgateway_usage_write_failures_total",
    ):
        assert f"# HELP {name} " in text and f"# TYPE {name} counter\n" in text
    kind_lines = [ln for ln in text.splitlines() if ln.startswith("agentgateway_usage_requests")]
    assert [ln.split('"')[1] for ln in kind_lines] == ["a2a", "acp", "llm", "mcp"]

    kinds = Counter(KIND[type(e)] for e in emitted)
    assert series(samples, "agentgateway_usage_requests_total") == {
        (k,): float(kinds[k]) for k in ("a2a", "acp", "llm", "mcp")
    }
    failed = Counter(KIND[type(e)] for e in emitted if not e.success)
    assert series(samples, "agentgateway_usage_failures_total") == {
        (k,): float(failed[k]) for k in ("a2a", "acp", "llm", "mcp")
    }
    llm = [e for e in events if isinstance(e, LlmUsageEvent)]
    assert series(samples, "agentgateway_usage_tokens_total") == {
        ("llm",): float(sum(e.total_tokens for e in llm))
    }
    # ... and what the store holds agrees (the failed duplicate is an MCP event)
    with closing(sqlite3.connect(path)) as conn:
        stored_tokens = conn.execute("SELECT sum(total_tokens) FROM llm_usage_events").fetchone()
    assert stored_tokens[0] == sum(e.total_tokens for e in llm)
    assert count(path, "llm_usage_events") == kinds["llm"]
    assert count(path, "acp_usage_events") == kinds["acp"]
    assert count(path, "mcp_usage_events") == kinds["mcp"] - 1
    pipeline = {
        name: series(samples, name)[()]
        for name in (
            "agentgateway_usage_dropped_events_total",
            "agentgateway_usage_write_failures_total",
            "agw_usage_written_events_total",
            "agw_usage_queue_depth",
        )
    }
    assert pipeline == {
        "agentgateway_usage_dropped_events_total": 0.0,
        "agentgateway_usage_write_failures_total": 1.0,
        "agw_usage_written_events_total": float(len(events) + 1),
        "agw_usage_queue_depth": 0.0,
    }
    assert series(samples_open, "agw_usage_written_events_total") == {(): len(events) + 1.0}

    # agw_requests_total{error_class, kind, route_id}: the classes written out in OUTCOMES
    klass: dict[tuple[bool, int | None, str | None], str] = {
        (s, st, et): c for s, st, et, c in OUTCOMES
    }
    expected = Counter(
        (klass[(e.success, e.status_code, e.error_type)], KIND[type(e)], e.route_id or "none")
        for e in emitted
    )
    assert series(samples, "agw_requests_total") == {k: float(v) for k, v in expected.items()}

    # histograms: buckets, counts and sums from the raw observations
    durations: dict[tuple[str, ...], list[float]] = {}
    overheads: dict[tuple[str, ...], list[float]] = {(k,): [] for k in ("a2a", "acp", "llm", "mcp")}
    ttfts: dict[tuple[str, ...], list[float]] = {}
    for e in emitted:
        assert e.latency_ms is not None
        durations.setdefault((KIND[type(e)], e.route_id or "none"), []).append(e.latency_ms / 1000)
        if e.overhead_ms is not None:
            overheads[(KIND[type(e)],)].append(e.overhead_ms / 1000)
        if isinstance(e, LlmUsageEvent) and e.ttft_ms is not None:
            model = e.upstream_model or e.logical_model or "none"
            key = (model, e.provider_id or "none", e.route_id or "none")
            ttfts.setdefault(key, []).append(e.ttft_ms / 1000)
    for name, observed in (
        ("agw_request_duration_seconds", durations),
        ("agw_gateway_overhead_seconds", overheads),
        ("agw_llm_time_to_first_token_seconds", ttfts),
    ):
        bounds = sorted({k[-1] for k in series(samples, name + "_bucket")}, key=float)
        assert bounds[-1] == "+Inf" and len(bounds) > 10
        buckets, counts = histogram_expectation(observed, bounds)
        assert series(samples, name + "_bucket") == buckets, name
        assert series(samples, name + "_count") == counts, name
        sums = series(samples, name + "_sum")
        assert sums.keys() == observed.keys()
        for labels, values in observed.items():
            assert sums[labels] == pytest.approx(sum(values)), (name, labels)
    assert float("0.0001") in {
        float(le) for *_, le in series(samples, "agw_gateway_overhead_seconds_bucket")
    }
    assert {"0.005", "120.0"} <= {
        le for *_, le in series(samples, "agw_request_duration_seconds_bucket")
    }

    tokens: Counter[tuple[str, str, str]] = Counter()
    for e in llm:
        m = e.upstream_model or e.logical_model or "none"
        p = e.provider_id or "none"
        tokens[(m, p, "input")] += e.input_tokens
        tokens[(m, p, "output")] += e.output_tokens
        tokens[(m, p, "cached_input")] += e.cached_input_tokens
        tokens[(m, p, "cache_creation")] += e.cache_creation_input_tokens
        tokens[(m, p, "reasoning")] += e.reasoning_tokens
    assert series(samples, "agw_llm_tokens_total") == {k: float(v) for k, v in tokens.items()}

    calls = Counter(
        (
            e.result_status or "none",
            e.route_id or "none",
            e.service_id or "none",
            e.tool_name or "none",
        )
        for e in emitted
        if isinstance(e, McpUsageEvent) and e.method == "tools/call"
    )
    assert calls and series(samples, "agw_mcp_tool_calls_total") == {
        k: float(v) for k, v in calls.items()
    }
    turns = Counter(
        (
            e.agent_type or "none",
            e.service_id or "none",
            e.stop_reason or ("unknown" if e.success else "error"),
        )
        for e in emitted
        if isinstance(e, AcpUsageEvent) and e.operation == "turn"
    )
    assert {k[2] for k in turns} >= {"unknown", "error", "end_turn"}
    assert series(samples, "agw_acp_turns_total") == {k: float(v) for k, v in turns.items()}

    # bounded labels: no session, trace or path ever becomes a label value
    for secret in ("session-", "thread-", "/secret-path", f"{5:032x}"):
        assert secret not in text


def one_model(model: str | None) -> LlmUsageEvent:
    return LlmUsageEvent(
        started_at=NOW_MS,
        finished_at=NOW_MS + 1,
        provider_id="oai",
        upstream_model=model,
        input_tokens=1000,
    )


def test_client_chosen_label_values_are_capped_per_metric(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="agw.usage.prometheus")
    long_name = "m" * 300

    async def main() -> tuple[str, Samples]:
        db = await Database.open(tmp_path / "usage.db")
        recorder = UsageRecorder(db)
        metrics = PrometheusMetrics(recorder)  # the default cap: 200 values per label
        recorder.add_tap(metrics)
        # over-long names are "other" and take no place under the cap (a lone surrogate never
        # reaches a tap: UsageEvent.bound replaces it first)
        for model in (long_name, "n" * 250):
            recorder.emit(one_model(model))
        for i in range(300):
            recorder.emit(
                LlmUsageEvent(
                    started_at=NOW_MS,
                    finished_at=NOW_MS + 1,
                    success=True,
                    provider_id="oai",
                    upstream_model=f"model-{i}",
                    input_tokens=i,
                    ttft_ms=10.0 if i < 5 else None,  # the TTFT guard sees 5 values only
                )
            )
            recorder.emit(
                McpUsageEvent(
                    started_at=NOW_MS,
                    finished_at=NOW_MS + 1,
                    method="tools/call",
                    tool_name=f"tool-{i}",
                    result_status="success",
                    success=True,
                )
            )
            recorder.emit(
                AcpUsageEvent(
                    started_at=NOW_MS,
                    finished_at=NOW_MS + 1,
                    operation="turn",
                    stop_reason=f"reason-{i}",
                    success=True,
                )
            )
        # a name seen before the cap keeps its series, a missing one is "none"
        for known in ("model-7", None):
            recorder.emit(one_model(known))
        await recorder.close()
        await db.close()
        return scrape(metrics)

    text, samples = asyncio.run(main())
    inputs = {
        model: v
        for (model, provider, kind), v in series(samples, "agw_llm_tokens_total").items()
        if kind == "input"
    }
    named = {f"model-{i}" for i in range(200)}
    assert set(inputs) == named | {"other", "none"}
    assert inputs["model-7"] == 7 + 1000
    assert inputs["other"] == sum(range(200, 300)) + 2000  # the two over-long names
    assert inputs["none"] == 1000
    assert sum(inputs.values()) == sum(range(300)) + 4000
    tools = {k[3] for k in series(samples, "agw_mcp_tool_calls_total")}
    assert tools == {f"tool-{i}" for i in range(200)} | {"other"}
    assert series(samples, "agw_mcp_tool_calls_total")[("success", "none", "none", "other")] == 100
    reasons = {k[2] for k in series(samples, "agw_acp_turns_total")}
    assert len(reasons) == 201 and "other" in reasons
    ttft_models = {k[0] for k in series(samples, "agw_llm_time_to_first_token_seconds_count")}
    assert ttft_models == {f"model-{i}" for i in range(5)}  # a guard per metric
    assert long_name not in text
    overflows = [r for r in caplog.records if r.getMessage() == "prometheus_label_overflow"]
    assert sorted((r.metric, r.label) for r in overflows) == [  # type: ignore[attr-defined]
        ("agw_acp_turns_total", "stop_reason"),
        ("agw_llm_tokens_total", "model"),
        ("agw_mcp_tool_calls_total", "tool"),
    ]


def test_a_full_queue_drops_and_counts_and_emit_never_waits(tmp_path: Path) -> None:
    async def main() -> tuple[list[bool], float, float, Samples, Samples]:
        db = await Database.open(tmp_path / "usage.db")
        recorder = UsageRecorder(db, queue_size=1)  # the writer is not started
        metrics = PrometheusMetrics(recorder)
        recorder.add_tap(metrics)
        results, slowest = [], 0.0
        began = time.perf_counter()
        for i in range(2000):
            t0 = time.perf_counter()
            results.append(
                recorder.emit(
                    LlmUsageEvent(
                        started_at=NOW_MS + i,
                        finished_at=NOW_MS + i + 20,
                        route_id="chat",
                        success=True,
                        total_tokens=3,
                        overhead_ms=0.5,
                    )
                )
            )
            slowest = max(slowest, time.perf_counter() - t0)
        elapsed = time.perf_counter() - began
        _, full = scrape(metrics)
        await recorder.close()  # writes the one queued event
        _, closed = scrape(metrics)
        await db.close()
        return results, elapsed, slowest, full, closed

    results, elapsed, slowest, full, closed = asyncio.run(main())
    assert results == [True] + [False] * 1999
    # never waits on the writer: 2000 emits (tap included) take milliseconds; the bounds are
    # loose for a loaded CI machine
    assert elapsed < 1.0 and slowest < 0.1
    assert series(full, "agentgateway_usage_dropped_events_total") == {(): 1999.0}
    # the taps saw each dropped event at once; the queued one reaches them with the writer
    assert series(full, "agentgateway_usage_requests_total")[("llm",)] == 1999
    assert series(full, "agentgateway_usage_tokens_total") == {("llm",): 5997.0}
    assert series(full, "agw_requests_total") == {("none", "llm", "chat"): 1999.0}
    assert series(full, "agw_gateway_overhead_seconds_count")[("llm",)] == 1999
    assert series(full, "agw_usage_queue_depth") == {(): 1.0}
    assert series(full, "agw_usage_written_events_total") == {(): 0.0}
    assert series(closed, "agw_usage_queue_depth") == {(): 0.0}
    assert series(closed, "agw_usage_written_events_total") == {(): 1.0}
    assert series(closed, "agentgateway_usage_dropped_events_total") == {(): 1999.0}
    assert series(closed, "agentgateway_usage_requests_total")[("llm",)] == 2000  # taps see all
