"""The metric catalog (agw/usage/measures.py): the measures the metrics API answers, in the
order it answers them, and agwctl reading the same catalog instead of a copy."""

from __future__ import annotations

import pytest

from agw.store.usage_sql import Aggregate
from agw.usage.measures import (
    COMMON,
    KINDS,
    LLM,
    Kind,
    is_average,
    session_total_measures,
    summary_measures,
)
from agwctl import metrics, metrics_tables
from tests.support.metrics import MEASURES


def test_each_kind_answers_the_documented_measures_in_order() -> None:
    for name, kind in KINDS.items():
        assert kind.name == name
        assert kind.measure_names == MEASURES[name]
    assert tuple(m.name for m in COMMON) == MEASURES["interactions"]


def test_the_cross_kind_tables_take_headline_measures_averages_last() -> None:
    assert summary_measures() == (
        "request_count",
        "success_count",
        "failure_count",
        "input_tokens",
        "output_tokens",
        "total_tokens",
        "tools_call_count",
        "turn_count",
        "avg_latency_ms",
    )
    assert session_total_measures() == (
        "request_count",
        "failure_count",
        "input_tokens",
        "output_tokens",
        "total_tokens",
        "tools_call_count",
        "turn_count",
    )
    assert is_average("avg_latency_ms")
    assert not is_average("total_tokens")
    assert not is_average("a_measure_of_a_newer_gateway")


def test_a_kind_refuses_an_order_or_default_that_is_not_its_measure() -> None:
    with pytest.raises(ValueError, match="tools_call_count is not one of its measures"):
        Kind(**{**LLM.__dict__, "order_by": ("request_count", "tools_call_count")})
    with pytest.raises(ValueError, match="turn_count"):
        Kind(**{**LLM.__dict__, "chart_measure": "turn_count"})


def test_agwctl_reads_the_catalog() -> None:
    assert {k.value for k in metrics.Kind} == set(KINDS)
    assert {k.name: k.measure_names for k in KINDS.values()} == metrics_tables.MEASURES
    assert metrics.check_measure("llm", None) == "total_tokens"
    assert metrics.check_measure("acp", None) == "request_count"
    assert metrics.check_measure("mcp", "tools_call_count") == "tools_call_count"
    # the --measure help is built from the catalog; docs/reference/cli.md quotes it
    assert metrics.measure_help() == (
        "What the chart draws: llm total_tokens (default), input_tokens, output_tokens, "
        "cached_input_tokens, reasoning_tokens, cost_usd; any kind request_count "
        "(mcp/acp/a2a default), success_count, failure_count, avg_latency_ms; "
        "mcp tools_call_count, cost_usd; acp turn_count."
    )


def test_every_measure_aggregates_a_column_or_counts() -> None:
    for kind in KINDS.values():
        for measure in kind.measures:
            assert isinstance(measure.aggregate, Aggregate)
            assert (measure.aggregate.column is None) == (measure.aggregate.how == "count")
            assert measure.unit in ("requests", "tokens", "calls", "turns", "ms", "usd")
