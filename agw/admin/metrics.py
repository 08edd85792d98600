"""The metrics endpoints (reference §7.3): usage summaries, events, time series, breakdowns,
interactions across the planes, one agent session's timeline, and the Prometheus scrape.

The answers come from :class:`agw.usage.answers.MetricsQuery`, the kinds (``llm``, ``mcp``,
``acp``) from the metric catalog (:mod:`agw.usage.measures`); this module only routes requests
to them, adds the recorder's pipeline counters to the summary, and serves
``prometheus.render()``. Every endpoint is a ``GET`` under the admin API's basic auth. A
parameter given twice is refused (the API takes one value per parameter).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from functools import partial
from typing import TYPE_CHECKING, Protocol

from quart import Quart, Response, request

from agw.admin.resources import JSONResponse
from agw.types import JsonObj
from agw.usage.answers import MetricsQuery
from agw.usage.measures import KINDS
from agw.usage.query import InvalidParameter

if TYPE_CHECKING:
    from agw.store.engine import Store
    from agw.usage.recorder import UsageRecorder

PROMETHEUS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
PROMETHEUS_DISABLED = "prometheus metrics are not enabled"


class Exposition(Protocol):
    """What ``/admin/metrics/prometheus`` serves: the text exposition of the gateway's metrics."""

    def render(self) -> bytes: ...


def query_args() -> dict[str, str]:
    """The request's query parameters, one value each."""
    out: dict[str, str] = {}
    for name, values in request.args.lists():
        if len(values) > 1:
            raise InvalidParameter(f'parameter "{name}" given more than once')
        out[name] = values[0]
    return out


def pipeline(recorder: UsageRecorder | None) -> dict[str, int]:
    """The usage pipeline's own counters (zeros without a recorder)."""
    if recorder is None:
        return {"dropped_events": 0, "write_failures": 0, "rejected_events": 0, "queue_depth": 0}
    return {
        "dropped_events": recorder.dropped_events,
        "write_failures": recorder.write_failures,
        "rejected_events": recorder.rejected_events,
        "queue_depth": recorder.queue_depth,
    }


def register(
    app: Quart,
    db: Store | None,
    recorder: UsageRecorder | None,
    prometheus: Exposition | None,
) -> None:
    query = MetricsQuery(db)
    base = "/admin/metrics"

    async def summary() -> JSONResponse:
        body = await query.summary(query_args())
        return body | {"pipeline": pipeline(recorder)}, 200

    async def scrape() -> Response | JSONResponse:
        if prometheus is None:
            return {"error": PROMETHEUS_DISABLED, "code": "not_enabled"}, 503
        return Response(prometheus.render(), status=200, content_type=PROMETHEUS_CONTENT_TYPE)

    def answer(
        call: Callable[[dict[str, str]], Awaitable[JsonObj]],
    ) -> Callable[[], Awaitable[JSONResponse]]:
        async def handler() -> JSONResponse:
            return await call(query_args()), 200

        return handler

    async def session(session_id: str) -> JSONResponse:
        return await query.session(session_id, query_args()), 200

    app.add_url_rule(base, "metrics_summary", summary, methods=["GET"])
    app.add_url_rule(f"{base}/prometheus", "metrics_prometheus", scrape, methods=["GET"])
    for kind in KINDS:
        for view, method in (
            ("events", query.events),
            ("timeseries", query.timeseries),
            ("breakdown", query.breakdown),
        ):
            handler = answer(partial(method, kind))
            app.add_url_rule(
                f"{base}/{kind}/{view}", f"metrics_{kind}_{view}", handler, methods=["GET"]
            )
    for rule, endpoint, call in (
        (f"{base}/mcp/tools/summary", "metrics_mcp_tools_summary", query.tools_summary),
        (f"{base}/acp/summary", "metrics_acp_summary", query.acp_summary),
        (f"{base}/interactions", "metrics_interactions", query.interactions),
        (
            f"{base}/interactions/summary",
            "metrics_interactions_summary",
            query.interactions_summary,
        ),
    ):
        app.add_url_rule(rule, endpoint, answer(call), methods=["GET"])
    app.add_url_rule(f"{base}/sessions/<session_id>", "metrics_session", session, methods=["GET"])
