"""Usage events: one value per dispatched request, one class per usage table.

A handler builds the event it knows about (reference §7.1) and hands it to the recorder; the
fields are the columns of the table (reference §7.2 plus migrations 0002-0005 and 0008-0011),
common columns first, in table order (``user_id`` and ``org_id``, shared by all four, come
after each table's own: migration 0005 added them to each table; the LLM table's ``cost_usd``
and ``cost_source``, migration 0008, and the MCP table's ``cost_usd``, migration 0009, come
after them; ``limit_id`` and ``limit_action``, migration 0010, last on all four; the A2A
table, migration 0011, keeps that order), plus a few
marked as not columns (``column_fields`` leaves them out): what the access log, Prometheus and
traces read besides the row (HTTP method and path, gateway overhead, time to first token, trace
content, a turn's stop reason). Python types are the natural ones: ``bool`` for the 0/1 columns,
``list`` for the JSON-array columns, ``dict`` for the ``*_json`` columns, unix milliseconds for
times. :meth:`UsageEvent.row` turns an event into the values of its ``INSERT``:

- booleans become 0/1 (``fresh_session`` stays NULL when unknown);
- a name list becomes a JSON array, an empty one NULL (most requests carry no tools);
- a ``*_json`` payload becomes compact JSON, cut to :data:`PAYLOAD_LIMIT_BYTES` (what does not fit
  is lost: the stored text is then a prefix, not valid JSON).

Many values come from the client or the upstream (a header, a JSON-RPC id, a model or tool name,
a token count). :meth:`UsageEvent.bound` makes them fit before anything stores or logs them:
integers are clamped to SQLite's 64-bit range, text is cut to :data:`TEXT_LIMITS` (else
:data:`TEXT_LIMIT`) characters and its lone surrogates (which UTF-8 cannot encode) become ``?``,
a name list keeps at most :data:`NAME_LIMIT` characters per name and :data:`NAMES_LIMIT` in all.
The recorder bounds every event once, off the request path, before its observers and the store
see it (docs/observability.md, "Limits on stored values").

Events are slotted, not frozen (a frozen dataclass pays a ``object.__setattr__`` per field at
construction, measurable on the hot path): a handler builds one and never changes it after
:meth:`UsageRecorder.emit`. Only ``started_at`` and ``finished_at`` are required; ``event_id``
and ``span_id`` are generated, ``latency_ms`` defaults to ``finished_at - started_at`` and
``route_kind`` to the table's kind.
"""

from __future__ import annotations

import functools
import json
import math
import operator
from collections.abc import Callable, Mapping
from dataclasses import Field, dataclass, field, fields
from typing import Any, ClassVar, Literal, cast

from agw.ids import new_event_id as new_event_id
from agw.ids import new_span_id
from agw.store import usage_sql

PAYLOAD_LIMIT_BYTES = 4096

INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1
TEXT_LIMIT = 256
"""Characters kept of a text value that :data:`TEXT_LIMITS` does not name."""
TEXT_LIMITS: Mapping[str, int] = {
    "request_id": 200,  # a JSON-RPC id
    "session_id": 200,
    "mcp_session_id": 200,
    "acp_session_id": 200,
    "thread_id": 200,
    "task_id": 200,
    "context_id": 200,
    "permission_request_id": 200,
    "http_path": 2048,
    "resource_uri": 2048,
    # ids from the configuration (no bundle limit): cut only far beyond any sane id
    "route_id": 1024,
    "virtual_key_id": 1024,
    "provider_id": 1024,
    "credential_id": 1024,
    "service_id": 1024,
    "agent_id": 1024,
    "limit_id": 1024,
    # who called, as the identity provider named them (an email, a subject, an org id)
    "user_id": 512,
    "org_id": 512,
}
"""Characters kept, per field, where the default :data:`TEXT_LIMIT` does not fit."""
NAME_LIMIT = 128
"""Characters kept of each name in a name list (``tool_names``, ``request_tool_names``)."""
NAMES_LIMIT = 8192
"""Characters of names kept per list; the names after are left out (the count columns keep the
real counts)."""

UsageSource = Literal["provider", "estimated", "missing"]
CostSource = Literal["catalog", "override", "unpriced"]


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


def clip(value: object, limit: int) -> str:
    """``value`` as text that fits a row or a log line: at most ``limit`` characters, lone
    surrogates replaced (UTF-8 cannot encode them, so SQLite and the JSON log would refuse it)."""
    text = value if type(value) is str else _text(value)
    if len(text) > limit:
        text = text[:limit]
    if not text.isascii():
        try:
            text.encode()
        except UnicodeEncodeError:
            text = text.encode(errors="replace").decode()
    return text


def _text(value: object) -> str:
    if isinstance(value, int) and not INT64_MIN <= value <= INT64_MAX:
        return "<integer out of range>"  # str() of a huge int is slow, or refused past 4300 digits
    try:
        return str(value)
    except Exception:
        return f"<{type(value).__name__}>"


def clamp(value: object) -> int:
    """``value`` as an integer SQLite can store: clamped to 64 bits; a non-integer (a float from
    an upstream's JSON, NaN included) is truncated, or 0 when it is not a finite number."""
    # an int subclass (bool) converts too
    if not (isinstance(value, int) or (isinstance(value, float) and math.isfinite(value))):
        return 0
    number = int(value)
    return INT64_MIN if number < INT64_MIN else INT64_MAX if number > INT64_MAX else number


def _names_fit(values: list[str]) -> bool:
    """Whether a name list is within its limits and ASCII (else :func:`_names` goes over it:
    JSON would escape a lone surrogate, but whoever prints the name read back could not)."""
    try:
        return (
            len(values) * NAME_LIMIT <= NAMES_LIMIT
            and max(map(len, values)) <= NAME_LIMIT
            and "".join(values).isascii()
        )
    except TypeError:  # not a list of strings
        return False


def _names(values: list[str]) -> list[str]:
    out: list[str] = []
    left = NAMES_LIMIT
    for value in values:
        name = clip(value, NAME_LIMIT)
        left -= len(name)
        if left < 0:
            break
        out.append(name)
    return out


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
    """The columns every usage table share. Build one of the subclasses, not this."""

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
            raise TypeError("UsageEvent is abstract: build an Llm/Mcp/Acp/A2aUsageEvent")
        if self.latency_ms is None:
            self.latency_ms = max(0, self.finished_at - self.started_at)

    def bound(self) -> None:
        """Make every value fit its column and the log, in place (see the module doc). Cheap
        when nothing is out of bounds: all the integers, then all the texts, are checked at
        once in C (their types, the largest magnitude; the longest text against the shortest
        limit, one ASCII test of them joined); only a family that fails is gone over value by
        value, as it must be."""
        plan = _bounds(type(self))
        ints, texts, lists = plan.ints, plan.texts, plan.lists
        values = plan.int_values(self)
        if not _INT_KINDS.issuperset(map(type, values)) or (
            max(map(abs, cast("list[int]", list(filter(None, values)))), default=0) > INT64_MAX
        ):
            for name in ints:
                value = getattr(self, name)
                if value is not None and (
                    type(value) is not int or not INT64_MIN <= value <= INT64_MAX
                ):
                    setattr(self, name, clamp(value))
        present = cast("list[str]", list(filter(_is_not_none, plan.text_values(self))))
        if not (
            _TEXT_KINDS.issuperset(map(type, present))
            and max(map(len, present), default=0) <= plan.shortest
            and "".join(present).isascii()
        ):
            for name, limit in texts:
                value = getattr(self, name)
                if value is not None and (
                    type(value) is not str or len(value) > limit or not value.isascii()
                ):
                    setattr(self, name, clip(value, limit))
        for name in lists:
            value = getattr(self, name)
            if value and not _names_fit(value):
                setattr(self, name, _names(value))

    @classmethod
    def columns(cls) -> tuple[str, ...]:
        """The column names, in table order (the order of :meth:`row`)."""
        return tuple(f.name for f in column_fields(cls))

    @classmethod
    def insert_sql(cls) -> str:
        """The store's one-row ``INSERT`` for :meth:`row` values (the recorder inserts in
        chunks, :func:`agw.store.usage_repo.insert`; tests seed a store with this)."""
        return usage_sql.insert(cls.table, cls.columns())

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


@dataclass(frozen=True, slots=True)
class _Bounds:
    """What :meth:`UsageEvent.bound` checks of one table's events."""

    ints: tuple[str, ...]  # the integer fields
    texts: tuple[tuple[str, int], ...]  # the text fields, with their limits
    lists: tuple[str, ...]  # the name lists
    int_values: Callable[[UsageEvent], tuple[object, ...]]
    text_values: Callable[[UsageEvent], tuple[object, ...]]
    shortest: int  # the smallest of the texts' limits


_INT_KINDS = frozenset({int, type(None)})
_is_not_none = functools.partial(operator.is_not, None)  # every text but None: "" and 0 too
_TEXT_KINDS = frozenset({str})


def _values(names: tuple[str, ...]) -> Callable[[UsageEvent], tuple[object, ...]]:
    """A getter of these fields' values as a tuple (however many there are)."""
    if len(names) >= 2:
        return operator.attrgetter(*names)
    return lambda event: tuple(getattr(event, name) for name in names)


_BOUNDS: dict[str, _Bounds] = {}


def _bounds(cls: type[UsageEvent]) -> _Bounds:
    """Per table, once: the integer fields, the text fields with their limits, the name lists
    (payloads are cut when encoded; floats and booleans are the gateway's own)."""
    plan = _BOUNDS.get(cls.table)
    if plan is None:
        ints, texts, lists = [], [], []
        for f in fields(cls):
            kind = str(f.type).removesuffix(" | None")
            if kind == "int":
                ints.append(f.name)
            elif kind in ("str", "UsageSource", "CostSource"):
                texts.append((f.name, TEXT_LIMITS.get(f.name, TEXT_LIMIT)))
            elif kind == "list[str]":
                lists.append(f.name)
        plan = _BOUNDS[cls.table] = _Bounds(
            tuple(ints),
            tuple(texts),
            tuple(lists),
            _values(tuple(ints)),
            _values(tuple(name for name, _ in texts)),
            min((limit for _, limit in texts), default=0),
        )
    return plan


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
    # migration 0005: the caller's principal (Request.usage_head)
    user_id: str | None = None
    org_id: str | None = None
    # migration 0008: USD at the model's price (agw.llm.pricing), and where the price came from
    cost_usd: float | None = None
    cost_source: CostSource | None = None
    # migration 0010: the limit that acted on the call and what it did (docs/limits.md)
    limit_id: str | None = None
    limit_action: str | None = None


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
    # migration 0005: the caller's principal (Request.usage_head)
    user_id: str | None = None
    org_id: str | None = None
    # migration 0009: USD of a tools/call the service answered (its price_per_call/tool_prices)
    cost_usd: float | None = None
    # migration 0010: the limit that acted on the call and what it did (docs/limits.md)
    limit_id: str | None = None
    limit_action: str | None = None


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
    # migration 0005: the caller's principal (Request.usage_head)
    user_id: str | None = None
    org_id: str | None = None
    # migration 0010: the limit that acted on the call and what it did (docs/limits.md)
    limit_id: str | None = None
    limit_action: str | None = None
    stop_reason: str | None = field(default=None, metadata=_NOT_COLUMN)  # a turn's, not a column


@dataclass(slots=True, kw_only=True)
class A2aUsageEvent(UsageEvent):
    """One request to an A2A route: a JSON-RPC call, an HTTP+JSON call, or the agent card
    (migration 0011; docs/a2a.md#usage-rows)."""

    table: ClassVar[str] = "a2a_usage_events"

    route_kind: str = "a2a"
    service_id: str | None = None
    method: str | None = None
    request_id: str | None = None  # the JSON-RPC id
    protocol_version: str | None = None
    binding: str | None = None
    stream: bool = False
    task_id: str | None = None
    context_id: str | None = None
    task_state: str | None = None
    event_count: int = 0
    session_id: str | None = None  # the A2A contextId, else the agent session of the headers
    user_id: str | None = None
    org_id: str | None = None
    limit_id: str | None = None
    limit_action: str | None = None


EVENT_TYPES: tuple[type[UsageEvent], ...] = (
    LlmUsageEvent,
    McpUsageEvent,
    AcpUsageEvent,
    A2aUsageEvent,
)
USAGE_TABLES: tuple[str, ...] = tuple(cls.table for cls in EVENT_TYPES)
