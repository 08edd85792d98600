"""The tables of ``agwctl gateway metrics`` and ``agent usage``: which columns each answer of the
metrics API is shown with, and the measures of each kind, read from the server's metric catalog
(:mod:`agw.usage.measures`; a newer gateway's extra measures are shown too).
"""

from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import typer

from agw.usage.measures import COMMON, KINDS, session_total_measures, summary_measures
from agwctl import render
from agwctl.render import Column, dig

MEASURES: Mapping[str, tuple[str, ...]] = {k.name: k.measure_names for k in KINDS.values()}
"""The measures of each kind, in the admin API's order."""
INTERACTION_MEASURES = tuple(m.name for m in COMMON)
SUMMARY_MEASURES = summary_measures()
SESSION_TOTAL_MEASURES = session_total_measures()


def col(name: str, *path: str) -> Column:
    return name, lambda obj: dig(obj, *path)


def format_ms(value: int | float, *, seconds: bool = True) -> str:
    moment = datetime.fromtimestamp(value / 1000, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ" if seconds else "%Y-%m-%dT%H:%MZ")


def when(*names: str) -> Callable[[dict[str, Any]], object]:
    """A time cell from the first of ``names`` present: unix ms as RFC 3339 (seconds), text as
    the gateway wrote it."""

    def get(obj: dict[str, Any]) -> object:
        for name in names:
            value = obj.get(name)
            if isinstance(value, bool) or value is None:
                continue
            if isinstance(value, int | float):
                return format_ms(value)
            if isinstance(value, str):
                try:
                    return format_ms(datetime.fromisoformat(value).timestamp() * 1000)
                except ValueError:
                    return value
            return value
        return None

    return get


def first(*names: str) -> Callable[[dict[str, Any]], object]:
    """The first non-empty of several fields (a model, else a tool, else a service...)."""

    def get(obj: dict[str, Any]) -> object:
        return next((obj[n] for n in names if obj.get(n) not in (None, "")), None)

    return get


def header(name: str) -> str:
    """A column title from a JSON field: ``total_tokens`` -> ``TOTAL-TOKENS``."""
    return name.upper().replace("_", "-")


def measure_columns(names: Sequence[str]) -> tuple[Column, ...]:
    return tuple(col(header(n), n) for n in names)


TIME = ("TIME", when("started_at_ms", "started_at"))
STATUS = col("STATUS", "status_code")
SUCCESS = col("OK", "success")
LATENCY = col("LATENCY-MS", "latency_ms")
ERROR = col("ERROR-TYPE", "error_type")

EVENT_COLUMNS: Mapping[str, tuple[Column, ...]] = {
    "llm": (
        TIME,
        col("ROUTE-ID", "route_id"),
        col("VIRTUALKEY", "virtual_key_id"),
        col("USER", "user_id"),
        col("PROVIDER-ID", "provider_id"),
        ("MODEL", first("upstream_model", "logical_model")),
        STATUS,
        SUCCESS,
        LATENCY,
        col("INPUT-TOKENS", "input_tokens"),
        col("OUTPUT-TOKENS", "output_tokens"),
        col("TOTAL-TOKENS", "total_tokens"),
        ERROR,
    ),
    "mcp": (
        TIME,
        col("ROUTE-ID", "route_id"),
        col("VIRTUALKEY", "virtual_key_id"),
        col("USER", "user_id"),
        col("SERVICE-ID", "service_id"),
        col("METHOD", "method"),
        col("TOOL", "tool_name"),
        STATUS,
        SUCCESS,
        LATENCY,
        col("RESULT", "result_status"),
        ERROR,
    ),
    "acp": (
        TIME,
        col("ROUTE-ID", "route_id"),
        col("USER", "user_id"),
        col("SERVICE-ID", "service_id"),
        col("OPERATION", "operation"),
        col("THREAD-ID", "thread_id"),
        col("SESSION-ID", "session_id"),
        STATUS,
        SUCCESS,
        LATENCY,
        col("RESULT", "result_status"),
        ERROR,
    ),
    "a2a": (
        TIME,
        col("ROUTE-ID", "route_id"),
        col("USER", "user_id"),
        col("SERVICE-ID", "service_id"),
        col("METHOD", "method"),
        col("VERSION", "protocol_version"),
        col("TASK-ID", "task_id"),
        col("STATE", "task_state"),
        STATUS,
        SUCCESS,
        LATENCY,
        ERROR,
    ),
}
INTERACTION_COLUMNS: tuple[Column, ...] = (
    TIME,
    col("KIND", "route_kind"),
    col("ROUTE-ID", "route_id"),
    col("OPERATION", "operation"),
    ("TARGET", first("tool_name", "upstream_model", "service_id")),
    STATUS,
    SUCCESS,
    LATENCY,
    col("INPUT-TOKENS", "input_tokens"),
    col("OUTPUT-TOKENS", "output_tokens"),
    col("SESSION-ID", "session_id"),
    ERROR,
)
SESSION_COLUMNS: tuple[Column, ...] = (
    ("AT", when("at_ms", "at")),
    col("KIND", "kind"),
    col("ROUTE-ID", "route_id"),
    col("OPERATION", "operation"),
    ("TARGET", first("model", "tool", "service_id")),
    STATUS,
    SUCCESS,
    LATENCY,
    col("INPUT-TOKENS", "input_tokens"),
    col("OUTPUT-TOKENS", "output_tokens"),
    ERROR,
    col("TRACE-ID", "trace_id"),
)


def table(columns: Sequence[Column], items: Sequence[dict[str, Any]]) -> None:
    render.print_table([name for name, _ in columns], render.rows_of(items, columns))


def group_columns(group_by: object, measures: Sequence[str]) -> tuple[Column, ...]:
    name = header(group_by) if isinstance(group_by, str) and group_by else "GROUP"
    return ((name, lambda obj: obj.get("group_value")), *measure_columns(measures))


def measures_of(kind: str, items: Sequence[dict[str, Any]]) -> tuple[str, ...]:
    """The kind's measures, plus any other the gateway answered with (a newer one)."""
    known = MEASURES[kind]
    extra = sorted({k for item in items for k in item if k.endswith(("_count", "_tokens", "_ms"))})
    return (*known, *(k for k in extra if k not in known and k != "bucket_ms"))


def print_pipeline(data: Mapping[str, Any]) -> None:
    pipeline = data.get("pipeline")
    if isinstance(pipeline, dict) and pipeline:
        parts = " ".join(f"{k}={render.cell(v)}" for k, v in pipeline.items())
        typer.echo(f"\npipeline: {parts}")
