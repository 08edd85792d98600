"""The usage record of one request to an ACP route (:class:`Op`), the error types its row may
carry, and the :class:`~agw.usage.events.AcpUsageEvent` it becomes (:func:`usage_event`)."""

from __future__ import annotations

from dataclasses import dataclass, field

from agw.acp.connection import AcpError, AgentExited
from agw.clock import now_ms
from agw.request import Request
from agw.types import JsonObj
from agw.usage.events import AcpUsageEvent

# error_type values of the acp_usage_events rows written here (besides the dispatcher's)
INVALID = "protocol_validation_failed"  # 400 / 404 / 405 / 413 of the HTTP surface
CLIENT_ERROR = "invalid_request"  # service disabled, cwd outside allowed_roots, no session id
SERVICE_NOT_FOUND = "service_not_found"
PERMISSION_NOT_FOUND = "permission_not_found"
SESSION_NOT_FOUND = "session_not_found"  # a session id the caller did not open (or unknown)
UPSTREAM = "upstream_failed"  # the agent or its process failed (spawn, handshake, RPC error)
AGENT_EXITED = "agent_exited"  # the process died during the turn
SCOPE_BUSY = "scope_busy"
CAPACITY = "capacity_exceeded"
CANCELLED = "client_cancelled"
INTERNAL = "internal_error"
METHOD_NOT_RELAYED = "method_not_found"  # a method <route>/acp does not relay


def error_type_of(exc: AcpError) -> str:
    if isinstance(exc, AgentExited):
        return AGENT_EXITED
    if exc.message.startswith("acp turn is already active"):
        return SCOPE_BUSY
    if exc.message.startswith("acp instance capacity exceeded"):
        return CAPACITY
    if exc.status == 404 and exc.message.startswith("acp session "):
        return SESSION_NOT_FOUND
    return CLIENT_ERROR if exc.status < 500 else UPSTREAM


@dataclass(slots=True)
class Op:
    """What the usage row of one request says."""

    operation: str | None
    started_ms: int = field(default_factory=now_ms)
    status: int = 0
    error_type: str | None = None
    result_status: str | None = None
    service_id: str | None = None
    agent_type: str | None = None
    thread_id: str | None = None
    session_id: str | None = None
    permission_request_id: str | None = None
    fresh_session: bool | None = None
    event_counts: dict[str, int] | None = None
    usage: JsonObj | None = None
    stop_reason: str | None = None  # a turn's, for the metrics (not a column)
    skip: bool = False  # written elsewhere (a prompt over the HTTP transport: its turn row)

    def fail(self, error_type: str) -> None:
        self.error_type = self.error_type or error_type
        self.result_status = self.result_status or "error"

    def cancelled(self) -> None:
        """The client went away: 499."""
        self.status, self.error_type, self.result_status = 499, CANCELLED, "cancelled"


def usage_event(req: Request, op: Op) -> AcpUsageEvent:
    """The row of ``op``: the request's shared columns, the session the plane itself knows."""
    status = op.status or req.status or 500
    if op.result_status is None:
        op.result_status = "error" if op.error_type else "success"
    head = req.usage_head(op.started_ms, status, op.error_type)
    head["session_id"] = op.session_id  # the ACP session of the op, not the attribution's
    return AcpUsageEvent(
        **head,
        service_id=op.service_id,
        agent_type=op.agent_type,
        operation=op.operation,
        thread_id=op.thread_id,
        permission_request_id=op.permission_request_id,
        fresh_session=op.fresh_session,
        event_counts_json=op.event_counts,
        usage_json=op.usage,
        result_status=op.result_status,
        stop_reason=op.stop_reason,
    )
