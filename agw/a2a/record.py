"""The usage record of one request to an A2A route (:class:`Call`) and the
:class:`~agw.usage.events.A2aUsageEvent` it becomes (docs/a2a.md#usage-rows)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from agw.a2a.protocol import observe, rpc_error_type
from agw.clock import now_ms
from agw.request import Request
from agw.usage.events import A2aUsageEvent

# error_type values the plane itself writes (besides the agent's own, agw.a2a.protocol)
INVALID = "protocol_validation_failed"  # malformed JSON, a bad envelope, 405 / 413 / 415
NOT_FOUND = "route_not_found"  # no A2A operation at the path
SERVICE_DISABLED = "service_disabled"
UPSTREAM = "upstream_failed"  # the agent could not be reached, or its stream broke
TIMEOUT = "upstream_timeout"
AUTH = "upstream_auth_failed"  # the agent refused the service's credentials
CANCELLED = "client_cancelled"
INTERNAL = "internal_error"


@dataclass(slots=True)
class Call:
    """What the usage row of one request says, filled in as the request goes."""

    service_id: str | None
    started_ms: int = field(default_factory=now_ms)
    started_ns: int = field(default_factory=time.perf_counter_ns)
    method: str | None = None
    request_id: str | None = None
    version: str | None = None
    binding: str | None = None
    stream: bool = False
    task_id: str | None = None
    context_id: str | None = None
    task_state: str | None = None
    event_count: int = 0
    status: int = 0
    error_type: str | None = None
    upstream_ns: int = 0  # time spent waiting on the agent

    def fail(self, error_type: str) -> None:
        self.error_type = self.error_type or error_type

    def saw(self, obj: object) -> None:
        """Take the task id, context id and state an answer (or one stream event) names."""
        task_id, context_id, state = observe(obj)
        self.task_id = task_id or self.task_id
        self.context_id = context_id or self.context_id
        self.task_state = state or self.task_state

    def saw_request(self, params: object, task_id: str | None = None) -> None:
        """What the request itself names: a message's task and context, a task's id."""
        if isinstance(params, dict):
            message = params.get("message")
            if isinstance(message, dict):
                self.saw({"taskId": message.get("taskId"), "contextId": message.get("contextId")})
            named = params.get("taskId", params.get("id"))
            if task_id is None and isinstance(named, str):
                task_id = named
        self.task_id = task_id or self.task_id

    def saw_rpc(self, envelope: object) -> None:
        """A JSON-RPC answer (or stream event): its result, or its error's type."""
        if not isinstance(envelope, dict):
            return
        if "error" in envelope:
            self.fail(rpc_error_type(envelope["error"]))
        else:
            self.saw(envelope.get("result"))


def usage_event(req: Request, call: Call) -> A2aUsageEvent:
    """The row of ``call``: the request's shared columns, the A2A context as its session."""
    status = call.status or req.status or 500
    head = req.usage_head(call.started_ms, status, call.error_type)
    head["session_id"] = call.context_id or head["session_id"]
    spent_ns = time.perf_counter_ns() - call.started_ns
    return A2aUsageEvent(
        **head,
        service_id=call.service_id,
        method=call.method,
        request_id=call.request_id,
        protocol_version=call.version,
        binding=call.binding,
        stream=call.stream,
        task_id=call.task_id,
        context_id=call.context_id,
        task_state=call.task_state,
        event_count=call.event_count,
        overhead_ms=max(0, spent_ns - call.upstream_ns) / 1e6,
    )
