"""Prometheus metrics: a recorder tap that counts usage events, and their text exposition.

:class:`PrometheusMetrics` is registered with ``recorder.add_tap(metrics)``: it then sees every
emitted event (written or dropped), on the event loop as the usage writer takes each batch, so
it must stay cheap. It keeps
plain Python numbers, not ``prometheus_client`` metric objects: one event costs a few dict
lookups and integer additions, with no lock (the tap and :meth:`PrometheusMetrics.render` both
run on the event loop's thread) and no ``*_created`` series. A custom collector on the
metrics' own ``CollectorRegistry`` turns the numbers into metric families at scrape time,
together with the recorder's pipeline counters, read then. Rendering copies each table and
each histogram child in one step (``dict.items()`` into a list, a list unpacked), so a render
in a worker thread (``asyncio.to_thread``, for a very large scrape) reads consistent histograms.

Families (``docs`` carries the table): the reference's five ``agentgateway_usage_*`` counters
exactly (§7.4), then ``agw_*`` counters and histograms labelled by route, error class, provider,
model, tool and stop reason. Label values stay bounded: never a session id, a trace id or a
path. Values a client chooses (model, tool and stop-reason names) pass a per-metric
:class:`LabelGuard`: the first ``max_label_values`` distinct values keep their names, later ones
(and over-long or unencodable ones) are counted as ``"other"``. A missing value is ``"none"``.
"""

from __future__ import annotations

import logging
from bisect import bisect_left
from collections.abc import Iterator, Sequence
from typing import Final

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from agw.usage.events import (
    A2aUsageEvent,
    AcpUsageEvent,
    LlmUsageEvent,
    McpUsageEvent,
    UsageEvent,
)
from agw.usage.recorder import UsageRecorder
from agw.usage.taxonomy import error_class

log = logging.getLogger(__name__)

CONTENT_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"

KINDS: Final = ("a2a", "acp", "llm", "mcp")  # the reference's order: sorted
TOKEN_TYPES: Final = ("input", "output", "cached_input", "cache_creation", "reasoning")

# Seconds. A request's duration: a cache-warm proxy hop up to a long agent turn or LLM stream.
DURATION_BUCKETS: Final = (
    *(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5),
    *(1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0),
)
# The gateway's own share of a request: from a tenth of a millisecond.
OVERHEAD_BUCKETS: Final = (
    *(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005),
    *(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0),
)
# A stream's first byte: fast models answer in tens of ms, reasoning models take minutes.
TTFT_BUCKETS: Final = (
    *(0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0),
    *(4.0, 8.0, 15.0, 30.0, 60.0, 120.0),
)

MAX_LABEL_VALUES: Final = 200
MAX_LABEL_LENGTH: Final = 200
NONE: Final = "none"
OTHER: Final = "other"


class LabelGuard:
    """Bounds the values of one label of one metric: the first ``limit`` distinct values keep
    their names, any other value becomes ``"other"``, a missing one ``"none"``.

    A value longer than :data:`MAX_LABEL_LENGTH` or not encodable as UTF-8 (a lone surrogate
    from a client's JSON would break the whole scrape) is ``"other"`` too. The first overflow is
    logged once as ``prometheus_label_overflow``.
    """

    __slots__ = ("_overflowed", "_seen", "label", "limit", "metric")

    def __init__(self, metric: str, label: str, limit: int = MAX_LABEL_VALUES) -> None:
        if limit < 1:
            raise ValueError("a label guard admits at least one value")
        self.metric = metric
        self.label = label
        self.limit = limit
        self._seen: set[str] = set()
        self._overflowed = False

    def __call__(self, value: str | None) -> str:
        if not value:
            return NONE
        if value in self._seen:
            return value
        if len(self._seen) >= self.limit:
            if not self._overflowed:
                self._overflowed = True
                log.warning(
                    "prometheus_label_overflow",
                    extra={"metric": self.metric, "label": self.label, "limit": self.limit},
                )
            return OTHER
        if len(value) > MAX_LABEL_LENGTH or not _encodable(value):
            return OTHER
        self._seen.add(value)
        return value

    def __len__(self) -> int:
        return len(self._seen)


def _encodable(value: str) -> bool:
    try:
        value.encode()
    except UnicodeEncodeError:
        return False
    return True


class _Histogram:
    """The children of one histogram: per label values, the count of observations in each
    bucket (not cumulative; the last one is ``+Inf``) followed by their sum."""

    __slots__ = ("bounds", "children")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(bounds)
        self.children: dict[tuple[str, ...], list[float]] = {}

    def child(self, key: tuple[str, ...]) -> list[float]:
        found = self.children.get(key)
        if found is None:
            found = self.children[key] = [0.0] * (len(self.bounds) + 2)
        return found

    def observe(self, child: list[float], value: float) -> None:
        child[bisect_left(self.bounds, value)] += 1  # the first bucket whose le >= value
        child[-1] += value

    def family(self, name: str, doc: str, labels: Sequence[str]) -> HistogramMetricFamily:
        out = HistogramMetricFamily(name, doc, labels=labels)
        les = [repr(float(b)) for b in self.bounds] + ["+Inf"]
        for key, child in sorted(self.children.items()):
            *counts, observed_sum = child  # one copy: the buckets and their sum agree
            cumulative, total = [], 0.0
            for le, n in zip(les, counts, strict=True):
                total += n
                cumulative.append((le, total))
            out.add_metric(list(key), cumulative, observed_sum)
        return out


class _Kind:
    """Everything one kind (llm, mcp, acp, a2a) counts under labels of the kind alone or of its
    routes, resolved once per kind or per route."""

    __slots__ = ("durations", "failures", "name", "outcomes", "overhead", "requests")

    def __init__(self, name: str, overhead: list[float]) -> None:
        self.name = name
        self.requests = 0
        self.failures = 0
        self.outcomes: dict[tuple[str, str], int] = {}  # (route_id, error_class) -> requests
        self.durations: dict[str, list[float]] = {}  # route_id -> duration histogram child
        self.overhead = overhead


class PrometheusMetrics:
    """The usage counters and latency histograms of one gateway, as a recorder tap.

    ``metrics(event)`` counts one event; :meth:`render` is the body of a scrape. Label values a
    client chooses are capped at ``max_label_values`` distinct values per metric and label.
    """

    def __init__(self, recorder: UsageRecorder, *, max_label_values: int = MAX_LABEL_VALUES):
        self._recorder = recorder
        self._durations = _Histogram(DURATION_BUCKETS)
        self._overhead = _Histogram(OVERHEAD_BUCKETS)
        self._ttft = _Histogram(TTFT_BUCKETS)
        self._llm = _Kind("llm", self._overhead.child(("llm",)))
        self._mcp = _Kind("mcp", self._overhead.child(("mcp",)))
        self._acp = _Kind("acp", self._overhead.child(("acp",)))
        self._a2a = _Kind("a2a", self._overhead.child(("a2a",)))
        self._kinds = (self._a2a, self._acp, self._llm, self._mcp)  # KINDS order
        self._llm_total_tokens = 0
        self._tokens: dict[tuple[str, str], list[int]] = {}  # (provider, model) -> TOKEN_TYPES
        self._cost: dict[tuple[str, str], float] = {}  # (provider, model) -> USD
        self._unpriced: dict[tuple[str, str], int] = {}  # (provider, model) -> requests
        self._ttft_children: dict[tuple[str, str, str], list[float]] = {}
        self._tool_calls: dict[tuple[str, str, str, str], int] = {}
        self._turns: dict[tuple[str, str, str], int] = {}
        self._a2a_calls: dict[tuple[str, str, str, str], int] = {}
        self._limit_actions: dict[tuple[str, str, str], int] = {}  # (kind, limit_id, action)
        limit = max_label_values
        self._token_model = LabelGuard("agw_llm_tokens_total", "model", limit)
        self._ttft_model = LabelGuard("agw_llm_time_to_first_token_seconds", "model", limit)
        self._tool = LabelGuard("agw_mcp_tool_calls_total", "tool", limit)
        self._stop_reason = LabelGuard("agw_acp_turns_total", "stop_reason", limit)
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self)

    def render(self) -> bytes:
        """The scrape: Prometheus text format 0.0.4 (serve it with :data:`CONTENT_TYPE`)."""
        return generate_latest(self.registry)

    # -- the tap ---------------------------------------------------------------------------

    def __call__(self, event: UsageEvent) -> None:
        if isinstance(event, LlmUsageEvent):
            kind = self._llm
            self._count_llm(event)
        elif isinstance(event, McpUsageEvent):
            kind = self._mcp
            if event.method == "tools/call":
                key = (
                    event.route_id or NONE,
                    event.service_id or NONE,
                    self._tool(event.tool_name),
                    event.result_status or NONE,
                )
                self._tool_calls[key] = self._tool_calls.get(key, 0) + 1
        elif isinstance(event, AcpUsageEvent):
            kind = self._acp
            if event.operation == "turn":
                reason = event.stop_reason or ("unknown" if event.success else "error")
                turn = (
                    event.service_id or NONE,
                    event.agent_type or NONE,
                    self._stop_reason(reason),
                )
                self._turns[turn] = self._turns.get(turn, 0) + 1
        elif isinstance(event, A2aUsageEvent):
            kind = self._a2a
            # methods are the ones the plane relays, states the closed set it records
            call = (
                event.route_id or NONE,
                event.service_id or NONE,
                event.method or NONE,
                event.task_state or NONE,
            )
            self._a2a_calls[call] = self._a2a_calls.get(call, 0) + 1
        else:
            return
        if event.limit_action:  # limit ids come from the configuration: a bounded label
            acted = (kind.name, event.limit_id or NONE, event.limit_action)
            self._limit_actions[acted] = self._limit_actions.get(acted, 0) + 1
        kind.requests += 1
        if not event.success:
            kind.failures += 1
        route = event.route_id or NONE
        outcome = (route, error_class(event))
        kind.outcomes[outcome] = kind.outcomes.get(outcome, 0) + 1
        if event.latency_ms is not None:
            child = kind.durations.get(route)
            if child is None:
                child = kind.durations[route] = self._durations.child((kind.name, route))
            self._durations.observe(child, event.latency_ms / 1000)
        if event.overhead_ms is not None:
            self._overhead.observe(kind.overhead, event.overhead_ms / 1000)

    def _count_llm(self, event: LlmUsageEvent) -> None:
        self._llm_total_tokens += event.total_tokens
        provider = event.provider_id or NONE
        model = event.upstream_model or event.logical_model
        key = (provider, self._token_model(model))
        tokens = self._tokens.get(key)
        if tokens is None:
            tokens = self._tokens[key] = [0, 0, 0, 0, 0]
        tokens[0] += event.input_tokens
        tokens[1] += event.output_tokens
        tokens[2] += event.cached_input_tokens
        tokens[3] += event.cache_creation_input_tokens
        tokens[4] += event.reasoning_tokens
        if event.cost_usd is not None:
            self._cost[key] = self._cost.get(key, 0.0) + event.cost_usd
        elif event.cost_source == "unpriced":
            self._unpriced[key] = self._unpriced.get(key, 0) + 1
        if event.ttft_ms is not None:
            ttft_key = (event.route_id or NONE, provider, self._ttft_model(model))
            child = self._ttft_children.get(ttft_key)
            if child is None:
                child = self._ttft_children[ttft_key] = self._ttft.child(ttft_key)
            self._ttft.observe(child, event.ttft_ms / 1000)

    # -- the collector ---------------------------------------------------------------------

    def collect(self) -> Iterator[Metric]:
        """The metric families, read at scrape time (``CollectorRegistry`` calls this)."""
        recorder = self._recorder
        requests = CounterMetricFamily(
            "agentgateway_usage_requests", "Usage events emitted, by kind.", labels=["kind"]
        )
        failures = CounterMetricFamily(
            "agentgateway_usage_failures",
            "Usage events of failed requests, by kind.",
            labels=["kind"],
        )
        for kind in self._kinds:
            requests.add_metric([kind.name], kind.requests)
            failures.add_metric([kind.name], kind.failures)
        yield requests
        yield failures
        tokens = CounterMetricFamily(
            "agentgateway_usage_tokens", "Total tokens of LLM usage events.", labels=["kind"]
        )
        tokens.add_metric(["llm"], self._llm_total_tokens)
        yield tokens
        yield CounterMetricFamily(
            "agentgateway_usage_dropped_events",
            "Usage events not written: queue full, recorder closed or shutdown out of time.",
            value=recorder.dropped_events,
        )
        yield CounterMetricFamily(
            "agentgateway_usage_write_failures",
            "Usage events lost because their write to the store failed.",
            value=recorder.write_failures,
        )
        yield CounterMetricFamily(
            "agw_usage_rejected_events",
            "Usage events whose own row the store refused; the batch's other rows were written.",
            value=recorder.rejected_events,
        )

        outcomes = CounterMetricFamily(
            "agw_requests",
            "Requests by kind, route and error class (none on success).",
            labels=["kind", "route_id", "error_class"],
        )
        for kind in self._kinds:
            for (route, klass), n in sorted(kind.outcomes.items()):
                outcomes.add_metric([kind.name, route, klass], n)
        yield outcomes
        yield self._durations.family(
            "agw_request_duration_seconds",
            "Request duration from route match to the last byte, by kind and route.",
            ["kind", "route_id"],
        )
        yield self._overhead.family(
            "agw_gateway_overhead_seconds",
            "The gateway's own share of request duration (not waiting on the upstream), by kind.",
            ["kind"],
        )
        yield self._ttft.family(
            "agw_llm_time_to_first_token_seconds",
            "Time to the first byte of an LLM stream to the client.",
            ["route_id", "provider_id", "model"],
        )
        llm_tokens = CounterMetricFamily(
            "agw_llm_tokens",
            "LLM tokens by provider, model (upstream, else logical) and type.",
            labels=["provider_id", "model", "type"],
        )
        for (provider, model), counts in sorted(self._tokens.items()):
            for kind_of_token, n in zip(TOKEN_TYPES, counts, strict=True):
                llm_tokens.add_metric([provider, model, kind_of_token], n)
        yield llm_tokens
        cost = CounterMetricFamily(
            "agw_cost_usd",
            "USD of LLM calls at their models' prices, by provider and model.",
            labels=["provider_id", "model"],
        )
        for (provider, model), usd in sorted(self._cost.items()):
            cost.add_metric([provider, model], usd)
        yield cost
        unpriced = CounterMetricFamily(
            "agw_unpriced_requests",
            "LLM calls to a model with no price (no catalog entry, no override).",
            labels=["provider_id", "model"],
        )
        for (provider, model), n in sorted(self._unpriced.items()):
            unpriced.add_metric([provider, model], n)
        yield unpriced
        tool_calls = CounterMetricFamily(
            "agw_mcp_tool_calls",
            "MCP tools/call requests by route, service, tool and result status.",
            labels=["route_id", "service_id", "tool", "result"],
        )
        for call, n in sorted(self._tool_calls.items()):
            tool_calls.add_metric(list(call), n)
        yield tool_calls
        turns = CounterMetricFamily(
            "agw_acp_turns",
            "ACP turns by service, agent type and stop reason.",
            labels=["service_id", "agent_type", "stop_reason"],
        )
        for turn, n in sorted(self._turns.items()):
            turns.add_metric(list(turn), n)
        yield turns
        a2a_calls = CounterMetricFamily(
            "agw_a2a_calls",
            "A2A requests by route, service, method and the task state their answer named.",
            labels=["route_id", "service_id", "method", "task_state"],
        )
        for call, n in sorted(self._a2a_calls.items()):
            a2a_calls.add_metric(list(call), n)
        yield a2a_calls
        limit_actions = CounterMetricFamily(
            "agw_limit_actions",
            "Calls a limit acted on, by kind, limit and action (refused, clamped, cut, exceeded, "
            "shadow).",
            labels=["kind", "limit_id", "action"],
        )
        for acted, n in sorted(self._limit_actions.items()):
            limit_actions.add_metric(list(acted), n)
        yield limit_actions
        yield GaugeMetricFamily(
            "agw_usage_queue_depth",
            "Usage events queued for the store, not yet written.",
            value=recorder.queue_depth,
        )
        yield CounterMetricFamily(
            "agw_usage_written_events",
            "Usage events written to the store.",
            value=recorder.written_events,
        )
        yield CounterMetricFamily(
            "agw_usage_spool_failures",
            "Usage events queued but not appended to the usage spool (still written as usual).",
            value=recorder.spool_failures,
        )
        yield CounterMetricFamily(
            "agw_usage_replayed_events",
            "Usage rows of a previous process's spool written (or found stored) at start.",
            value=recorder.replayed_events,
        )
