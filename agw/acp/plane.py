"""The ACP plane: what an ACP route serves under its path prefix, and one usage row per request.

:class:`AcpPlane` satisfies :class:`agw.dataplane.Plane`: it routes each request to its operation
(:mod:`agw.acp.ops`; ``/acp`` to :mod:`agw.acp.http_transport`), renders every refusal, the
dispatcher's (:class:`agw.errors.Refusal`) and its own, and records the row
(:func:`agw.acp.record.usage_event`).

Anything else under the prefix: 404; a known path with another method: 405 ``{"error":"method
not allowed"}``; a POST without ``Content-Type: application/json``: 415; bodies over 4 MiB:
413; the dispatcher's refusals: ``{"error": msg}`` with their status. Every JSON error is
``{"error": "<message>"}``; a refusal after a stream began is only recorded.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from agw.acp.authorization import REST_METHODS, check
from agw.acp.http_transport import HttpTransport
from agw.acp.ops import Operations, json_reply, operation_of, refuse
from agw.acp.permissions import PermissionRegistry, timeout_from_env
from agw.acp.record import INTERNAL, INVALID, Op, usage_event
from agw.acp.replica import Replica
from agw.acp.runtime import AcpRuntime
from agw.errors import PayloadTooLarge, Refusal
from agw.policy.limits import Limiter
from agw.request import ClientGone, Request
from agw.types import JsonObj, Message
from agw.usage.recorder import UsageRecorder

log = logging.getLogger(__name__)


class AcpPlane:
    """The data plane's handler of ``acp`` routes. ``permissions`` is shared with the admin API.

    ``permission_timeout_s``: how long an interactive permission request waits for its answer;
    default ``AGW_ACP_PERMISSION_TIMEOUT_S`` from the environment, else 60. ``limiter``: the
    gateway's limit counters, which prompt turns are admitted against (agw.acp.limits).
    ``replica``: this replica's name and whether its ids carry it (agw.acp.replica); every
    answer carries its ``x-agw-replica``."""

    edge_always = True  # a browser may hold an ACP session

    def __init__(
        self,
        recorder: UsageRecorder | None,
        runtime: AcpRuntime,
        *,
        permission_timeout_s: float | None = None,
        limiter: Limiter | None = None,
        replica: Replica | None = None,
    ) -> None:
        self.recorder = recorder
        self.replica = replica or Replica("agw", tagged=False)
        self.runtime = runtime
        self.permissions = PermissionRegistry(
            timeout_from_env() if permission_timeout_s is None else permission_timeout_s,
            label=self.replica.tag,
        )
        limiter = limiter or Limiter()
        self.ops = Operations(runtime, self.permissions, limiter, self.replica)
        self.http = HttpTransport(runtime, self.permissions, self.record, limiter, self.replica)
        self._routes: dict[str, Callable[[Request, Op], Awaitable[None]]] = {
            "turn": self.ops.turn,
            "permission": self.ops.permission,
            "sessions": self.ops.sessions,
            "transcript": self.ops.transcript,
            "acp": self._http,
        }

    def drain(self) -> None:
        """The server is stopping: end the streams that never end by themselves."""
        self.http.drain()

    async def close(self) -> None:
        await self.http.close()
        self.permissions.close()
        await self.runtime.close()

    async def handle(self, req: Request, refusal: Refusal | None) -> None:
        op = Op(operation_of(req.path))
        self._mark(req)
        try:
            if refusal is not None:
                raise refusal
            handler = self._routes.get(op.operation or "")
            if handler is None:
                raise refuse(404, f"not found: {req.path}")
            if op.operation in REST_METHODS:  # authorization, before any agent starts
                check(req, op, REST_METHODS[op.operation])
            await handler(req, op)
        except Refusal as exc:
            op.fail(exc.code)
            op.status = exc.status
            if not req.started:
                await self.render(req, exc)
        except PayloadTooLarge as exc:
            op.fail(INVALID)
            op.status = 413
            if not req.started:
                await json_reply(req, 413, {"error": exc.message}, req.close_if_unread())
        except ClientGone:
            op.cancelled()
        except Exception:
            log.exception("acp_request_failed", extra={"route_id": req.route.id})
            op.fail(INTERNAL)
            op.status = 500
            if not req.started:
                await json_reply(req, 500, {"error": "internal gateway error"})
        if req.started and op.status == 0:
            op.status = req.status
        self.record(req, op)

    def _mark(self, req: Request) -> None:
        """Every answer to ``req`` carries this replica's ``x-agw-replica``."""
        send = req.send

        async def marked(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", ()), self.replica.header]}
            await send(message)

        req.send = marked

    @staticmethod
    async def render(req: Request, refusal: Refusal) -> None:
        """A refusal before any streaming: ``{"error": "<message>"}`` with its status (a
        limit's 429 adds ``"limit": {...}``, agw.acp.limits)."""
        headers = [*refusal.answer_headers(), *req.close_if_unread()]
        body: JsonObj = {"error": refusal.message}
        if isinstance(refusal.detail, dict):
            body |= refusal.detail
        await json_reply(req, refusal.status, body, headers)

    async def _http(self, req: Request, op: Op) -> None:
        """``<route>/acp``: the draft ACP Streamable HTTP transport."""
        op.operation = None
        await self.http.handle(req, op, self.ops.service(req, op))

    def record(self, req: Request, op: Op) -> None:
        if self.recorder is None or op.skip:
            return
        self.recorder.emit(usage_event(req, op))
