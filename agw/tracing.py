"""Traces: one OpenTelemetry span per data-plane request, exported over OTLP/HTTP.

:class:`TraceExporter` is a usage-recorder tap (``recorder.add_tap(exporter)``): each usage event
becomes one finished span, built from the event alone (the request already carries the ids: the
trace from the inbound ``traceparent`` or a fresh one, the gateway's span id, the caller's span as
the parent), and handed to the OpenTelemetry SDK's ``BatchSpanProcessor``. The tap runs as the
usage writer takes each batch of events (off the request's path): building a small object and a
``deque`` append; encoding and sending happen on the processor's thread, in batches. A collector
that is down or slow costs the data plane nothing: the processor's queue is bounded (the oldest
spans are dropped when it is full), an export gives up after ``timeout`` seconds, and
:meth:`TraceExporter.close` returns within its budget.

Endpoint semantics are those of ``OTEL_EXPORTER_OTLP_ENDPOINT``: a base URL to which
``/v1/traces`` is appended, unless it already ends with it. The OTLP exporter still reads
``OTEL_EXPORTER_OTLP_HEADERS`` / ``OTEL_EXPORTER_OTLP_TRACES_HEADERS`` (collector credentials)
and ``OTEL_EXPORTER_OTLP_TRACES_COMPRESSION``; the resource honours ``OTEL_SERVICE_NAME`` and
``OTEL_RESOURCE_ATTRIBUTES``; the batching, ``OTEL_BSP_SCHEDULE_DELAY`` (ms between exports,
default 1000 here) and ``OTEL_BSP_MAX_QUEUE_SIZE`` (spans held, default 8192).

Span names: ``llm <api_operation>`` (``llm chat_completions``), ``mcp <method>`` (``mcp
tools/call <tool>`` for a tool call), ``acp <operation>`` (``acp turn``). Kind SERVER, status
ERROR (described by the event's ``error_type``) when the request failed, else OK. Attributes
follow OpenInference (what Phoenix and Arize read) where it has a name, ``agw.*`` otherwise:

- every span: ``openinference.span.kind`` (``LLM``, ``TOOL`` for ``tools/call``, ``AGENT`` for an
  ACP turn, ``CHAIN`` for everything else), ``session.id``, ``agw.route_id``,
  ``user.id`` (the caller's user, as its identity provider named it), ``agw.org_id``,
  ``agw.route_kind``, ``agw.route_protocol``, ``agw.virtual_key_id``, ``agw.agent_id``,
  ``agw.agent_depth``, ``agw.event_id``, ``http.request.method``, ``url.path``,
  ``http.response.status_code``, ``error.type``, ``agw.error_class``, ``agw.overhead_ms``;
- LLM: ``llm.model_name``, ``llm.provider``, ``llm.token_count.prompt|completion|total``,
  ``llm.token_count.prompt_details.cache_read|cache_write``,
  ``llm.token_count.completion_details.reasoning``, ``agw.provider_id``, ``agw.logical_model``,
  ``agw.api_operation``, ``agw.stream``, ``agw.usage_source``, ``agw.tool_call_count``,
  ``agw.ttft_ms``, ``agw.acp_session_id``;
- MCP: ``tool.name``, ``mcp.method.name``, ``mcp.session.id`` (the gateway's masked session id),
  ``agw.service_id``, ``agw.result_status``, ``agw.acp_session_id``;
- ACP: ``agent.name`` (the agent type), ``agw.service_id``, ``agw.acp_operation``,
  ``agw.result_status``, ``agw.stop_reason``;
- only with ``content=True`` (agwd ``--trace-content``) and when the event carries them:
  ``input.value`` / ``output.value`` (the prompt and the completion) with their mime types.

Never a key or a token: attributes come from a fixed list of event fields (ids, names, counts),
never from headers; tool arguments and resource URIs are left out.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from collections.abc import Sequence

from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export import SpanExporter as SdkSpanExporter
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import SpanContext, SpanKind, TraceFlags
from opentelemetry.trace.status import Status, StatusCode
from opentelemetry.util.types import AttributeValue

from agw.ids import new_span_id, new_trace_id
from agw.usage.events import (
    A2aUsageEvent,
    AcpUsageEvent,
    LlmUsageEvent,
    McpUsageEvent,
    UsageEvent,
)
from agw.usage.taxonomy import error_class
from agw.version import VERSION

log = logging.getLogger(__name__)

TRACES_PATH = "/v1/traces"
EXPORT_TIMEOUT_S = 5.0
CLOSE_TIMEOUT_S = 5.0
MAX_QUEUE_SIZE = 8192
SCHEDULE_DELAY_MS = 1000
MAX_EXPORT_BATCH_SIZE = 512

_SAMPLED = TraceFlags(TraceFlags.SAMPLED)
_OK = Status(StatusCode.OK)
_SERVER = SpanKind.SERVER


def traces_url(endpoint: str) -> str:
    """The OTLP/HTTP traces URL for a base ``endpoint`` (``OTEL_EXPORTER_OTLP_ENDPOINT``
    semantics: ``/v1/traces`` appended unless the URL already ends with it)."""
    url = endpoint.strip()
    if not url.startswith(("http://", "https://")):
        raise ValueError(f"OTLP endpoint must be an http:// or https:// URL (got {endpoint!r})")
    if url.rstrip("/").endswith(TRACES_PATH):
        return url.rstrip("/")
    return url.rstrip("/") + TRACES_PATH


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name, "").strip()
    return int(raw) if raw.isdigit() and int(raw) > 0 else default


def _resource(service_name: str) -> Resource:
    """The process's resource: OTEL_SERVICE_NAME / OTEL_RESOURCE_ATTRIBUTES when set, else
    ``service_name``; ``service.version`` the agw version."""
    resource = Resource.create({"service.version": VERSION})
    named = str(resource.attributes.get("service.name", ""))
    if not named or named.startswith("unknown_service"):
        resource = resource.merge(Resource({"service.name": service_name}))
    return resource


class _Outbound(SdkSpanExporter):
    """The OTLP exporter, counting what it sent and lost, with an idempotent shutdown (the
    processor shuts it down too, possibly after :meth:`TraceExporter.close` gave up on it)."""

    def __init__(self, otlp: OTLPSpanExporter) -> None:
        self._otlp = otlp
        self._lock = threading.Lock()
        self._down = False
        self.exported = 0
        self.failed = 0

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        if self._down:
            self.failed += len(spans)
            return SpanExportResult.FAILURE
        try:
            result = self._otlp.export(spans)
        except Exception as exc:  # the SDK logs its own failures; this is a last resort
            log.warning("trace_export_failed", extra={"error": type(exc).__name__})
            result = SpanExportResult.FAILURE
        if result is SpanExportResult.SUCCESS:
            self.exported += len(spans)
        else:
            self.failed += len(spans)
        return result

    def shutdown(self) -> None:
        with self._lock:
            if self._down:
                return
            self._down = True
        self._otlp.shutdown()  # type: ignore[no-untyped-call]  # aborts a retry back-off

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True


class TraceExporter:
    """A recorder tap exporting one span per usage event (see the module docstring)."""

    def __init__(
        self,
        endpoint: str,
        content: bool = False,
        service_name: str = "agw",
        *,
        timeout: float = EXPORT_TIMEOUT_S,
        schedule_delay_ms: int | None = None,
        max_queue_size: int | None = None,
    ) -> None:
        if schedule_delay_ms is None:
            schedule_delay_ms = _env_int("OTEL_BSP_SCHEDULE_DELAY", SCHEDULE_DELAY_MS)
        if max_queue_size is None:
            max_queue_size = _env_int("OTEL_BSP_MAX_QUEUE_SIZE", MAX_QUEUE_SIZE)
        self.url = traces_url(endpoint)
        self.content = content
        self.resource = _resource(service_name)
        self._scope = InstrumentationScope("agw", VERSION)
        self._outbound = _Outbound(OTLPSpanExporter(endpoint=self.url, timeout=timeout))
        self._processor = BatchSpanProcessor(
            self._outbound,
            max_queue_size=max_queue_size,
            schedule_delay_millis=schedule_delay_ms,
            max_export_batch_size=min(MAX_EXPORT_BATCH_SIZE, max_queue_size),
        )
        self._closed = False

    @property
    def exported_spans(self) -> int:
        """Spans the collector accepted."""
        return self._outbound.exported

    @property
    def failed_spans(self) -> int:
        """Spans whose export failed (collector down, refused, timed out, or closed)."""
        return self._outbound.failed

    def __call__(self, event: UsageEvent) -> None:
        """The tap: hand the event's span to the batch processor (never waits)."""
        if not self._closed:
            self._processor.on_end(self.span_of(event))

    def span_of(self, event: UsageEvent) -> ReadableSpan:
        """The finished span of one usage event."""
        trace_id = _hex_id(event.trace_id) or int(new_trace_id(), 16)
        span_id = _hex_id(event.span_id) or int(new_span_id(), 16)
        parent_id = _hex_id(event.parent_span_id)
        attrs: dict[str, AttributeValue] = {"agw.route_kind": event.route_kind}
        if isinstance(event, LlmUsageEvent):
            name = f"llm {event.api_operation or 'request'}"
            _llm(event, attrs)
        elif isinstance(event, McpUsageEvent):
            name = _mcp(event, attrs)
        elif isinstance(event, AcpUsageEvent):
            name = f"acp {event.operation or 'request'}"
            _acp(event, attrs)
        elif isinstance(event, A2aUsageEvent):
            name = f"a2a {event.method or 'request'}"
            _a2a(event, attrs)
        else:
            name = f"{event.route_kind or 'agw'} request"
            attrs["openinference.span.kind"] = "CHAIN"
        _common(event, attrs)
        if self.content and event.trace_content:
            _content(event.trace_content, attrs)
        return ReadableSpan(
            name,
            context=SpanContext(trace_id, span_id, False, _SAMPLED),
            parent=SpanContext(trace_id, parent_id, True, _SAMPLED) if parent_id else None,
            resource=self.resource,
            attributes=attrs,
            kind=_SERVER,
            status=_OK if event.success else Status(StatusCode.ERROR, event.error_type),
            start_time=event.started_at * 1_000_000,
            end_time=event.finished_at * 1_000_000,
            instrumentation_scope=self._scope,
        )

    def close(self, timeout: float = CLOSE_TIMEOUT_S) -> None:
        """Send what is queued and stop, within ``timeout`` seconds whatever the collector does
        (blocking: from a coroutine, await :meth:`aclose`). Spans still unsent then are lost
        and logged as ``trace_flush_incomplete``. Closing twice is a no-op."""
        if self._closed:
            return
        self._closed = True
        closer = threading.Thread(
            target=self._processor.shutdown, name="agw-trace-close", daemon=True
        )
        closer.start()
        closer.join(timeout)
        if closer.is_alive():
            self._outbound.shutdown()  # stop retrying; the processor's thread ends on its own
            log.warning("trace_flush_incomplete", extra={"timeout_s": timeout})

    async def aclose(self, timeout: float = CLOSE_TIMEOUT_S) -> None:  # noqa: ASYNC109
        """:meth:`close` off the event loop."""
        await asyncio.to_thread(self.close, timeout)


def _hex_id(text: str | None) -> int:
    if not text:
        return 0
    try:
        return int(text, 16)
    except ValueError:
        return 0


def _common(event: UsageEvent, attrs: dict[str, AttributeValue]) -> None:
    attrs["agw.event_id"] = event.event_id
    attrs["agw.error_class"] = error_class(event)
    if event.route_id:
        attrs["agw.route_id"] = event.route_id
    if event.route_protocol:
        attrs["agw.route_protocol"] = event.route_protocol
    if event.virtual_key_id:
        attrs["agw.virtual_key_id"] = event.virtual_key_id
    if event.agent_id:
        attrs["agw.agent_id"] = event.agent_id
    if event.agent_depth:
        attrs["agw.agent_depth"] = event.agent_depth
    if event.http_method:
        attrs["http.request.method"] = event.http_method
    if event.http_path:
        attrs["url.path"] = event.http_path
    if event.status_code is not None:
        attrs["http.response.status_code"] = event.status_code
    if event.error_type:
        attrs["error.type"] = event.error_type
    if event.overhead_ms is not None:
        attrs["agw.overhead_ms"] = round(event.overhead_ms, 3)
    session = getattr(event, "session_id", None)
    if session:
        attrs["session.id"] = session
    user = getattr(event, "user_id", None)
    if user:
        attrs["user.id"] = user
    org = getattr(event, "org_id", None)
    if org:
        attrs["agw.org_id"] = org


def _llm(event: LlmUsageEvent, attrs: dict[str, AttributeValue]) -> None:
    attrs["openinference.span.kind"] = "LLM"
    model = event.upstream_model or event.logical_model
    if model:
        attrs["llm.model_name"] = model
    if event.provider_type:
        attrs["llm.provider"] = event.provider_type
    if event.provider_id:
        attrs["agw.provider_id"] = event.provider_id
    if event.logical_model:
        attrs["agw.logical_model"] = event.logical_model
    if event.api_operation:
        attrs["agw.api_operation"] = event.api_operation
    attrs["agw.stream"] = event.stream
    attrs["llm.token_count.prompt"] = event.input_tokens
    attrs["llm.token_count.completion"] = event.output_tokens
    attrs["llm.token_count.total"] = event.total_tokens
    if event.cached_input_tokens:
        attrs["llm.token_count.prompt_details.cache_read"] = event.cached_input_tokens
    if event.cache_creation_input_tokens:
        attrs["llm.token_count.prompt_details.cache_write"] = event.cache_creation_input_tokens
    if event.reasoning_tokens:
        attrs["llm.token_count.completion_details.reasoning"] = event.reasoning_tokens
    if event.usage_source:
        attrs["agw.usage_source"] = event.usage_source
    if event.tool_call_count:
        attrs["agw.tool_call_count"] = event.tool_call_count
    if event.ttft_ms is not None:
        attrs["agw.ttft_ms"] = round(event.ttft_ms, 3)
    if event.acp_session_id:
        attrs["agw.acp_session_id"] = event.acp_session_id


def _mcp(event: McpUsageEvent, attrs: dict[str, AttributeValue]) -> str:
    method = event.method or "request"
    tool = event.tool_name
    is_call = method == "tools/call"
    attrs["openinference.span.kind"] = "TOOL" if is_call else "CHAIN"
    attrs["mcp.method.name"] = method
    if tool:
        attrs["tool.name"] = tool
    if event.service_id:
        attrs["agw.service_id"] = event.service_id
    if event.result_status:
        attrs["agw.result_status"] = event.result_status
    if event.mcp_session_id:
        attrs["mcp.session.id"] = event.mcp_session_id
    if event.acp_session_id:
        attrs["agw.acp_session_id"] = event.acp_session_id
    return f"mcp {method} {tool}" if is_call and tool else f"mcp {method}"


def _acp(event: AcpUsageEvent, attrs: dict[str, AttributeValue]) -> None:
    attrs["openinference.span.kind"] = "AGENT" if event.operation == "turn" else "CHAIN"
    if event.operation:
        attrs["agw.acp_operation"] = event.operation
    if event.agent_type:
        attrs["agent.name"] = event.agent_type
    if event.service_id:
        attrs["agw.service_id"] = event.service_id
    if event.result_status:
        attrs["agw.result_status"] = event.result_status
    if event.stop_reason:
        attrs["agw.stop_reason"] = event.stop_reason


def _a2a(event: A2aUsageEvent, attrs: dict[str, AttributeValue]) -> None:
    attrs["openinference.span.kind"] = "AGENT"
    if event.method:
        attrs["a2a.method"] = event.method
    if event.service_id:
        attrs["agw.service_id"] = event.service_id
    if event.protocol_version:
        attrs["a2a.protocol_version"] = event.protocol_version
    if event.binding:
        attrs["a2a.binding"] = event.binding
    if event.task_id:
        attrs["a2a.task.id"] = event.task_id
    if event.context_id:
        attrs["a2a.context.id"] = event.context_id
    if event.task_state:
        attrs["a2a.task.state"] = event.task_state
    attrs["agw.stream"] = event.stream


def _content(content: dict[str, object], attrs: dict[str, AttributeValue]) -> None:
    for key in ("input", "output"):
        value = content.get(key)
        if isinstance(value, str) and value:
            attrs[f"{key}.value"] = value
            json_like = value[0] in "{[" and value[-1] in "}]"
            attrs[f"{key}.mime_type"] = "application/json" if json_like else "text/plain"
