"""ACP endpoints beyond CRUD (reference §5.9): an agent's own sessions and transcripts, the
runtime's pool, in-flight turns and pending permissions, closing a thread, answering a
permission.

Services and routes themselves are generic families (:mod:`agw.admin.resources`); a ``PUT`` or
``DELETE`` of a service closes its pooled agents through the runtime's own ``on_swap`` watch.

Sessions and transcripts start a transient agent process (``runtime.transient``) in the
requested or the service's cwd, closed afterwards. Errors share the route-side contract: an
unknown service is ``404 acp service not found``; a disabled service, a cwd outside
``allowed_roots`` or a bad body is ``400 invalid_request``; an agent that cannot be started,
dies, lacks the capability or answers an error is ``502 upstream_failed``.

Every call here writes one ``acp_usage_events`` row, an audit event: ``route_id`` ``/admin/acp``,
``route_protocol`` ``admin``, ``operation`` one of ``sessions``, ``transcript``, ``runtime``,
``runtime_inflight``, ``thread_close``, ``permission`` (reference §7.2), failures included.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from quart import Quart, request

from agw.acp import AcpError, list_sessions, load_transcript
from agw.admin.resources import JSONResponse, json_body
from agw.clock import now_ms
from agw.config.acp import AcpService
from agw.errors import AgwError, InvalidRequest, NotFound, UpstreamFailed
from agw.runtime.manager import ConfigManager
from agw.usage.events import AcpUsageEvent

if TYPE_CHECKING:  # the runtime spawns processes; the admin app needs only the types
    from agw.acp import AcpRuntime, PermissionRegistry
    from agw.usage.recorder import UsageRecorder

log = logging.getLogger(__name__)

ADMIN_ROUTE_ID = "/admin/acp"
# A transient agent (spawn, handshake, one call) made for the admin API gets this long (Quart's
# own response timeout is 60 s, so the admin gets a 502 with a reason, not a cut connection).
ADMIN_CALL_TIMEOUT_S = 55.0
NOT_RUNNING = "the ACP plane is not running on this gateway"
_PERMISSION_FIELDS = ("request_id", "outcome", "option_id")
# replayed updates may trail the session/load result: wait for this much quiet, at most the cap


@dataclass
class Audit:
    """The audit row of one admin call, emitted once it is answered (or failed)."""

    operation: str
    service_id: str | None = None
    agent_type: str | None = None
    thread_id: str | None = None
    session_id: str | None = None
    permission_request_id: str | None = None
    started_at: int = field(default_factory=now_ms)

    def event(self, status: int, error_type: str | None) -> AcpUsageEvent:
        result = "success" if status < 400 else ("cancelled" if status == 499 else "error")
        return AcpUsageEvent(
            started_at=self.started_at,
            finished_at=now_ms(),
            route_id=ADMIN_ROUTE_ID,
            route_protocol="admin",
            success=status < 400,
            status_code=status,
            error_type=error_type,
            service_id=self.service_id,
            agent_type=self.agent_type,
            operation=self.operation,
            thread_id=self.thread_id,
            session_id=self.session_id,
            permission_request_id=self.permission_request_id,
            result_status=result,
        )


def _only(body: dict[str, Any], *allowed: str) -> None:
    unknown = set(body) - set(allowed)
    if unknown:
        raise InvalidRequest(f"unknown field {sorted(unknown)[0]!r}; expected {', '.join(allowed)}")


def _optional_text(body: dict[str, Any], name: str) -> str | None:
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidRequest(f"{name} must be a string, not {type(value).__name__}")
    return value


def register(
    app: Quart,
    manager: ConfigManager,
    runtime: AcpRuntime | None,
    permissions: PermissionRegistry | None,
    recorder: UsageRecorder | None,
) -> None:
    service_base = "/admin/acp/services/<oid>"
    runtime_base = "/admin/acp/runtime"

    def _runtime() -> AcpRuntime:
        if runtime is None:
            raise NotFound(NOT_RUNNING)
        return runtime

    def _service(oid: str, audit: Audit) -> AcpService:
        service: AcpService | None = manager.snapshot.acp_services.get(oid)
        if service is None:
            raise NotFound("acp service not found")
        audit.agent_type = service.agent_type
        return service

    def _usable(oid: str, audit: Audit) -> tuple[AcpRuntime, AcpService, str]:
        """The runtime, the enabled service and the effective cwd (request or service)."""
        acp = _runtime()
        service = _service(oid, audit)
        if service.disabled:
            raise InvalidRequest(f'acp service "{oid}" is disabled; enable it first')
        try:
            cwd = acp.resolve_cwd(service, request.args.get("cwd", "").strip())
        except AcpError as exc:  # not absolute, or outside allowed_roots
            raise InvalidRequest(exc.message) from None
        return acp, service, cwd

    async def audited(audit: Audit, work: Callable[[], Awaitable[JSONResponse]]) -> JSONResponse:
        """Run the call; emit its audit row whatever happens (the error re-raised)."""
        status: int = 500
        error_type: str | None = "internal_error"
        try:
            answer = await work()
            status, error_type = answer[1], None
            return answer
        except AgwError as exc:
            status, error_type = exc.status, exc.code
            raise
        except asyncio.CancelledError:
            status, error_type = 499, "client_cancelled"
            raise
        finally:
            if recorder is not None:
                recorder.emit(audit.event(status, error_type))

    async def agent_call(service: AcpService, what: str, call: Awaitable[Any]) -> Any:
        """A transient agent call, bounded; its failures are 502 naming the service."""
        try:
            async with asyncio.timeout(ADMIN_CALL_TIMEOUT_S):
                return await call
        except AcpError as exc:
            if exc.status == 400:  # a request the client can correct
                raise InvalidRequest(exc.message) from None
            raise UpstreamFailed(f"acp service {service.id} failed: {exc.message}") from None
        except TimeoutError:
            raise UpstreamFailed(
                f"acp service {service.id} failed: no {what} within {ADMIN_CALL_TIMEOUT_S:g}s"
            ) from None

    # ---------------------------------------------------------------------- one service

    async def sessions(oid: str) -> JSONResponse:
        audit = Audit("sessions", service_id=oid)

        async def work() -> JSONResponse:
            acp, service, cwd = _usable(oid, audit)
            cursor = request.args.get("cursor", "").strip()
            call = list_sessions(acp, service, cwd, cursor)
            return await agent_call(service, "session list", call), 200

        return await audited(audit, work)

    async def transcript(oid: str, session_id: str) -> JSONResponse:
        audit = Audit("transcript", service_id=oid, session_id=session_id)

        async def work() -> JSONResponse:
            acp, service, cwd = _usable(oid, audit)
            if not session_id.strip():
                raise InvalidRequest("session id is required")
            call = load_transcript(acp, service, session_id, cwd)
            return await agent_call(service, "transcript", call), 200

        return await audited(audit, work)

    # ------------------------------------------------------------------------- runtime

    async def runtime_view() -> JSONResponse:
        async def work() -> JSONResponse:
            view = dict(_runtime().view())
            view["pending_permissions"] = permissions.pending() if permissions else []
            return view, 200

        return await audited(Audit("runtime"), work)

    async def inflight() -> JSONResponse:
        async def work() -> JSONResponse:
            return {"items": _runtime().inflight()}, 200

        return await audited(Audit("runtime_inflight"), work)

    async def close_thread(service_id: str, thread_id: str) -> JSONResponse:
        audit = Audit("thread_close", service_id=service_id, thread_id=thread_id)

        async def work() -> JSONResponse:
            acp = _runtime()
            _service(service_id, audit)
            closed = await acp.close_thread(service_id, thread_id)
            log.info(
                "acp_thread_closed",
                extra={"service_id": service_id, "thread_id": thread_id, "closed": closed},
            )
            return {"closed": closed}, 200

        return await audited(audit, work)

    async def resolve_permission(request_id: str) -> JSONResponse:
        audit = Audit("permission", permission_request_id=request_id)

        async def work() -> JSONResponse:
            _runtime()
            if permissions is None:
                raise NotFound(NOT_RUNNING)
            entry = permissions.get(request_id)
            if entry is not None:
                audit.service_id, audit.session_id = entry.service_id, entry.session_id
                service = manager.snapshot.acp_services.get(entry.service_id)
                audit.agent_type = service.agent_type if service else None
            body = await json_body()
            _only(body, *_PERMISSION_FIELDS)
            body_id = _optional_text(body, "request_id")
            if body_id and body_id != request_id:
                raise InvalidRequest(
                    f"request_id in body ({body_id!r}) does not match the path ({request_id!r})"
                )
            outcome = _optional_text(body, "outcome")
            if not outcome:
                raise InvalidRequest('outcome is required ("selected" or "cancelled")')
            option_id = _optional_text(body, "option_id") or None
            if not permissions.resolve(request_id, outcome, option_id, service_id=None):
                raise NotFound("permission request not found (already answered or expired)")
            log.info(
                "acp_permission_resolved_by_admin",
                extra={"request_id": request_id, "outcome": outcome},
            )
            return {"status": "resolved"}, 200

        return await audited(audit, work)

    rules: tuple[tuple[str, str, Any, str], ...] = (
        (f"{service_base}/sessions", "acp_sessions", sessions, "GET"),
        (
            f"{service_base}/sessions/<session_id>/transcript",
            "acp_transcript",
            transcript,
            "GET",
        ),
        (runtime_base, "acp_runtime", runtime_view, "GET"),
        (f"{runtime_base}/inflight", "acp_runtime_inflight", inflight, "GET"),
        (
            f"{runtime_base}/threads/<service_id>/<thread_id>",
            "acp_runtime_thread_close",
            close_thread,
            "DELETE",
        ),
        (
            f"{runtime_base}/permissions/<request_id>",
            "acp_runtime_permission",
            resolve_permission,
            "POST",
        ),
    )
    for rule, endpoint, handler, method in rules:
        app.add_url_rule(rule, endpoint, handler, methods=[method])
