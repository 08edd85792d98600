"""Usage events: one value per dispatched request, one class per usage table.

A handler builds the event it knows about (reference §7.1) and hands it to the recorder; the
fields are the columns of the table (reference §7.2 plus migrations 0002-0004), common columns
first, in table order, plus a few marked as not columns (``column_fields`` leaves them out): what
the access log, Prometheus and traces read besides the row (HTTP method and path, gateway
overhead, time to first token, trace content, a turn's stop reason). Python types are the
natural ones: ``bool`` for the 0/1 columns, ``list`` for the JSON-array columns, ``dict`` for the
``*_json`` columns, unix milliseconds for times.
:meth:`UsageEvent.row` turns an event into the values of its ``INSERT``:

- booleans become 0/1 (``fresh_session`` stays NULL when unknown);
- a name list becomes a JSON array, an empty one NULL (most requests carry no tools);
- a ``*_json`` payload becomes compact JSON, cut to :data:`PAYLOAD_LIMIT_BYTES` (what does not fit
  is lost: the stored text is then a prefix, not valid JSON).

Events are slotted, not frozen (a frozen dataclass pays a ``object.__setattr__`` per field at
construction, measurable on the hot path): a handler builds one and never changes it after
:meth:`UsageRecorder.emit`. Only ``started_at`` and ``finished_at`` are required; ``event_id``
and ``span_id`` are generated, ``latency_ms`` defaults to ``finished_at - started_at`` and
``route_kind`` to the table's kind.
"""

from __future__ import annotations

import json
import operator
import time
from collections.abc import Callable, Mapping
from dataclasses import Field, dataclass, field, fields
from typing import Any, ClassVar, Literal

from agw.ids import new_event_id as new_event_id
from agw.ids import new_span_id

PAYLOAD_LIMIT_BYTES = 4096

UsageSource = Literal["provider", "estimated", "missing"]


def now_ms() -> int:
    """Wall-clock time in unix milliseconds, the unit of every usage timestamp."""
    return time.time_ns() // 1_000_000


def encode_payload(value: Mapping[str, object]) -> str:
    """Compact JSON of a free-form payload, at most :data:`PAYLOAD_LIMIT_BYTES` bytes.

    The text is ASCII (non-ASCII characters escaped), so a cut never splits a character; values
    JSON cannot encode are written as their ``str``.
    """
    text = json.dumps(value, separators=(",", ":"), default=str)
    return text[:PAYLOAD_LIMIT_BYTES]


_NOT_COLUMN: Mapping[str, object] = {"column": False}


def column_fields(cls: type[UsageEvent]) -> tuple[Field[Any], ...]:
    """The fields that are columns of the event's table, in table order."""
    return tuple(f for f in fields(cls) if f.metadata.get("column", True))


def _sql_value(value: object) -> object:
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, list):
        return json.dumps(value, separators=(",", ":"), default=str) if value else None
    if isinstance(value, Mapping):
        return encode_payload(value)
    return value


@dataclass(slots=True, kw_only=True)
class UsageEvent:
    """The columns the three usage tables share. Build one of the subclasses, not this."""

    table: ClassVar[str]

    event_id: str = field(default_factory=new_event_id)
    trace_id: str | None = None
    span_id: str = field(default_factory=new_span_id)
    parent_span_id: str | None = None
    agent_depth: int = 0
    started_at: int
    finished_at: int
    route_id: str | None = None
    route_kind: str = ""
    route_protocol: str | None = None
    virtual_key_id: str | None = None
    success: bool = False
    status_code: int | None = None
    error_type: str | None = None
    latency_ms: int | None = None
    agent_id: str | None = None
    # Not columns: what the access log, Prometheus and traces read at emit time. overhead_ms is
    # the gateway's own share of latency_ms (the rest waited on the upstream); ttft_ms is a
    # stream's time to its first byte to the client; trace_content (only with --trace-content)
    # holds the prompt and completion for the trace exporter.
    http_method: str | None = field(default=None, metadata=_NOT_COLUMN)
    http_path: str | None = field(default=None, metadata=_NOT_COLUMN)
    overhead_ms: float | None = field(default=None, metadata=_NOT_COLUMN)
    ttft_ms: float | None = field(default=None, metadata=_NOT_COLUMN)
    trace_content: dict[str, object] | None = field(default=None, metadata=_NOT_COLUMN)

    def __post_init__(self) -> None:
        if not hasattr(type(self), "table"):
            raise TypeError("UsageEvent is abstract: build an Llm/Mcp/AcpUsageEvent")
        if self.latency_ms is None:
            self.latency_ms = max(0, self.finished_at - self.started_at)

    @classmethod
    def columns(cls) -> tuple[str, ...]:
        """The column names, in table order (the order of :meth:`row`)."""
        return tuple(f.name for f in column_fields(cls))

    @classmethod
    def insert_sql(cls) -> str:
        """``INSERT INTO <table> (<columns>) VALUES (?, ...)`` for :meth:`row` values."""
        names = cls.columns()
        marks = ", ".join("?" for _ in names)
        return f"INSERT INTO {cls.table} ({', '.join(names)}) VALUES ({marks})"

    def row(self) -> tuple[object, ...]:
        """The column values in :meth:`columns` order, converted for SQLite (booleans bind as
        the integers they are; only the list and payload columns need encoding)."""
        getter, encoded = _plan(type(self))
        values = getter(self)
        if not encoded:
            return values
        out = list(values)
        for i in encoded:
            if out[i] is not None:
                out[i] = _sql_value(out[i])
        return tuple(out)


_PLANS: dict[str, tuple[Callable[[UsageEvent], tuple[object, ...]], tuple[int, ...]]] = {}


def _plan(
    cls: type[UsageEvent],
) -> tuple[Callable[[UsageEvent], tuple[object, ...]], tuple[int, ...]]:
    """Per table, once: a getter of every column value, and the indexes of the columns whose
    values are lists or mappings (JSON text in the table)."""
    plan = _PLANS.get(cls.table)
    if plan is None:
        encoded = tuple(
            i
            for i, f in enumerate(column_fields(cls))
            if "list[" in str(f.type) or "dict[" in str(f.type)
        )
        plan = _PLANS[cls.table] = (operator.attrgetter(*cls.columns()), encoded)
    return plan


@dataclass(slots=True, kw_only=True)
class LlmUsageEvent(UsageEvent):
    """One LLM call (chat completions, responses, messages), stream or not."""

    table: ClassVar[str] = "llm_usage_events"

    route_kind: str = "llm"
    llm_api: str | None = None
    api_operation: str | None = None
    provider_id: str | None = None
    provider_type: str | None = None
    logical_model: str | None = None
    upstream_model: str | None = None
    credential_source: str | None = None
    credential_id: str | None = None
    stream: bool = False
    input_tokens: int = 0
    output_tokens: int = 0
    total_tokens: int = 0
    usage_finalized: bool = True
    request_tool_count: int = 0
    request_tool_names: list[str] = field(default_factory=list)
    tool_call_count: int = 0
    tool_names: list[str] = field(default_factory=list)
    # migration 0002
    usage_source: UsageSource | None = None
    cached_input_tokens: int = 0
    cache_creation_input_tokens: int = 0
    reasoning_tokens: int = 0
    session_id: str | None = None
    acp_session_id: str | None = None


@dataclass(slots=True, kw_only=True)
class McpUsageEvent(UsageEvent):
    """One MCP JSON-RPC request (``tools/call``, ``resources/read``, ...)."""

    table: ClassVar[str] = "mcp_usage_events"

    route_kind: str = "mcp"
    request_id: str | None = None
    service_id: str | None = None
    method: str | None = None
    tool_name: str | None = None
    presented_tool_name: str | None = None
    executed_tool_name: str | None = None
    execution_mode: str | None = None
    policy_action: str | None = None
    resource_uri: str | None = None
    prompt_name: str | None = None
    completion_ref_type: str | None = None
    completion_argument: str | None = None
    arg_count: int | None = None
    result_status: str | None = None
    cancelled: bool = False
    tool_args_json: dict[str, object] | None = None
    acp_session_id: str | None = None
    mcp_session_id: str | None = None  # the gateway's masked Mcp-Session-Id (migration 0004)
    session_id: str | None = None  # the agent session (migration 0004)


@dataclass(slots=True, kw_only=True)
class AcpUsageEvent(UsageEvent):
    """One ACP call: a turn, a permission answer, a session or transcript read, an admin audit."""

    table: ClassVar[str] = "acp_usage_events"

    route_kind: str = "acp"
    service_id: str | None = None
    agent_type: str | None = None
    operation: str | None = None
    thread_id: str | None = None
    session_id: str | None = None
    permission_request_id: str | None = None
    fresh_session: bool | None = None
    event_counts_json: dict[str, int] | None = None
    usage_json: dict[str, object] | None = None
    result_status: str | None = None
    stop_reason: str | None = field(default=None, metadata=_NOT_COLUMN)  # a turn's, not a column


EVENT_TYPES: tuple[type[UsageEvent], ...] = (LlmUsageEvent, McpUsageEvent, AcpUsageEvent)
USAGE_TABLES: tuple[str, ...] = tuple(cls.table for cls in EVENT_TYPES)
