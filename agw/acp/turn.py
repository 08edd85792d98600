"""One turn of ``POST <route>/turn``, streamed: the agent's updates as SSE events
(:mod:`agw.acp.events`), its permission requests, and the client's presence.

After ``session`` and the instance's cached metadata (``config_options``, ``available_commands``,
``session_info``, ``mode``, ``usage``), the request's ``config_overrides`` are applied, then
``session/prompt`` runs while the agent's updates stream; the tail is drained (250 ms quiet, 2 s
cap), then ``done {stop_reason}``. Any failure: ``error {message}`` ends the stream. A client
that goes away: ``session/cancel`` to the agent, whose prompt must then end within
:data:`CANCEL_GRACE_S` (else the process is killed), and the row records 499 / cancelled. The
turn's events wait in a bounded :class:`~agw.acp.events.UpdateQueue` (backpressure on the agent
when the client does not keep up); a client that takes nothing for :data:`SEND_STALL_S` is gone.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from agw.acp.connection import AcpConnection, AcpError
from agw.acp.events import Event, UpdateQueue
from agw.acp.permissions import PermissionRegistry, auto_approve, cancelled
from agw.acp.pool import METADATA_KINDS, Instance, TurnRequest
from agw.acp.record import CLIENT_ERROR, INTERNAL, Op, error_type_of
from agw.acp.runtime import AcpRuntime, apply_overrides
from agw.config.acp import AcpService
from agw.request import Request
from agw.types import JsonObj

log = logging.getLogger(__name__)

CANCEL_GRACE_S = 5.0  # after session/cancel, the prompt must end within this, else kill
SEND_STALL_S = 60.0  # a client that takes no bytes of a turn's stream for this long is gone


class TurnStream:
    """One streaming turn: the SSE writer, the agent's updates and the client's presence.
    ``owner`` (route and principal of the request) owns the permission requests it opens."""

    def __init__(
        self,
        runtime: AcpRuntime,
        permissions: PermissionRegistry,
        req: Request,
        op: Op,
        service: AcpService,
        owner: str,
    ) -> None:
        self.runtime = runtime
        self.permissions = permissions
        self.label: Callable[[str], str] = str  # the session id handed out (agw.acp.replica)
        self.req = req
        self.op = op
        self.service = service
        self.owner = owner
        self.gone = False
        self.counts: dict[str, int] = {}
        self.last_usage: JsonObj | None = None
        self.queue: UpdateQueue | None = None
        self.instance: Instance | None = None
        self.stalled = False  # the client stopped reading (SEND_STALL_S)

    async def emit(self, event: Event, frame: bytes | None = None) -> None:
        if self.gone:
            return
        try:
            async with asyncio.timeout(SEND_STALL_S):
                await self.req.body(event.frame() if frame is None else frame, more=True)
        except TimeoutError:  # the client stopped reading: it is treated as gone
            log.warning("acp_client_stalled", extra={"service_id": self.service.id})
            self.stalled = True
            self._lost()
            return
        except Exception:  # the client is gone; the watcher says so too
            self._lost()
            return
        self.counts[event.name] = self.counts.get(event.name, 0) + 1

    async def forward(self, event: Event, frame: bytes | None = None) -> None:
        """An event of the agent's (not a replay): the last usage update is kept for the row."""
        if event.name == "usage" and isinstance(event.payload.get("data"), dict):
            self.last_usage = event.payload["data"]
        await self.emit(event, frame)

    def _lost(self) -> None:
        if not self.gone:
            self.gone = True
            if self.queue is not None:  # nobody reads: the agent must not wait on the queue
                self.queue.close()
            self.permissions.cancel_owned(self)

    async def fail(self, message: str, error_type: str) -> None:
        self.op.fail(error_type)
        await self.emit(Event("error", {"message": message}))

    async def permission(self, params: JsonObj) -> JsonObj:
        """The connection's permission handler while this turn runs."""
        mode = self.service.permission_mode
        if mode == "auto_approve":
            return auto_approve(params)
        if mode != "interactive" or self.gone or self.queue is None or self.instance is None:
            return cancelled()
        registry = self.permissions
        entry = registry.open(
            self.service.id,
            self.instance.session_id,
            params,
            owner=self,
            principal=self.owner,
        )
        self.queue.put(
            Event(
                "permission",
                {
                    "request_id": entry.request_id,
                    "session_id": self.label(self.instance.session_id),
                    "data": params,
                },
            )
        )
        return await registry.wait(entry)

    async def run(self, turn: TurnRequest) -> None:
        watcher = asyncio.create_task(self.req.watch_disconnect())
        try:
            await self._run(turn, watcher)
        except Exception:
            log.exception("acp_turn_failed", extra={"service_id": self.service.id})
            await self.fail("internal gateway error", INTERNAL)
        finally:
            watcher.cancel()
            await asyncio.wait({watcher})
            if not watcher.cancelled():
                watcher.exception()  # a receive that failed means the client is gone: known
            self.permissions.cancel_owned(self)
        self.op.event_counts = dict(self.counts)
        self.op.usage = self.last_usage
        if self.gone:
            self.op.cancelled()

    async def _run(self, turn: TurnRequest, watcher: asyncio.Task[None]) -> None:
        runtime = self.runtime
        service = self.service
        if service.disabled:
            await self.fail(f'acp service "{service.id}" is disabled', CLIENT_ERROR)
            return
        try:
            runtime.resolve_cwd(service, turn.cwd)
        except AcpError as exc:
            await self.fail(exc.message, error_type_of(exc))
            return
        try:
            lease = await runtime.acquire(service, turn)
        except AcpError as exc:
            await self.fail(exc.message, error_type_of(exc))
            return
        async with lease:
            instance = lease.instance
            self.instance = instance
            self.op.session_id = instance.session_id or None
            if watcher.done():
                self._lost()
                return
            await self.emit(Event("session", {"session_id": self.label(instance.session_id)}))
            for kind in METADATA_KINDS:
                value = instance.metadata.get(kind)
                if value:
                    await self.emit(Event(kind, {"data": value}))
            conn = instance.connection
            self.queue = UpdateQueue(instance.session_id)
            unsubscribe = conn.subscribe(self.queue.on_update)
            conn.permission_handler = self.permission
            try:
                await self._prompt(instance, conn, turn, watcher)
            finally:
                conn.permission_handler = None
                self.queue.close()
                unsubscribe()

    async def _prompt(
        self,
        instance: Instance,
        conn: AcpConnection,
        turn: TurnRequest,
        watcher: asyncio.Task[None],
    ) -> None:
        assert self.queue is not None
        queue = self.queue
        if turn.config_overrides:
            try:
                await apply_overrides(instance, turn.config_overrides)
            except AcpError as exc:
                await self._flush()
                await self.fail(exc.message, error_type_of(exc))
                return
        prompt = asyncio.create_task(
            conn.request(
                "session/prompt",
                {
                    "sessionId": instance.session_id,
                    "prompt": [{"type": "text", "text": turn.input}],
                },
            )
        )
        getter: asyncio.Task[tuple[Event, bytes]] | None = None
        try:
            while True:
                await self._flush()
                if getter is None:
                    getter = asyncio.create_task(queue.get())
                waiting: set[asyncio.Future[Any]] = {getter, prompt}
                if not self.gone:
                    waiting.add(watcher)
                done, _ = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
                if getter in done:
                    await self.forward(*getter.result())
                    getter = None
                if prompt in done:
                    break
                if watcher in done and not self.gone:
                    self._lost()
                    await self._cancel(instance, conn, prompt)
                    break
        finally:
            if getter is not None:
                getter.cancel()
            if not prompt.done():  # the request's task itself was cancelled (shutdown)
                prompt.cancel()
        if self.gone:
            return
        await self._flush()
        try:
            result = prompt.result()
        except AcpError as exc:
            await self.fail(exc.message, error_type_of(exc))
            return
        await queue.drain(self.forward)
        stop = "end_turn"
        if isinstance(result, dict):
            if isinstance(result.get("stopReason"), str) and result["stopReason"]:
                stop = result["stopReason"]
            if isinstance(result.get("usage"), dict):
                self.last_usage = result["usage"]
        self.op.result_status = "cancelled" if stop == "cancelled" else "success"
        self.op.stop_reason = stop
        await self.emit(Event("done", {"stop_reason": stop}))

    async def _flush(self) -> None:
        assert self.queue is not None
        while not self.gone and (item := self.queue.get_nowait()) is not None:
            await self.forward(*item)

    async def _cancel(
        self, instance: Instance, conn: AcpConnection, prompt: asyncio.Task[Any]
    ) -> None:
        """The client left mid-turn: ``session/cancel``; an agent that does not end its prompt
        within the grace period is killed (its instance is then dropped by the lease)."""
        try:
            await conn.notify("session/cancel", {"sessionId": instance.session_id})
        except AcpError as exc:
            log.info("acp_cancel_failed", extra={"error": exc.message})
        await asyncio.wait({prompt}, timeout=CANCEL_GRACE_S)
        if not prompt.done():
            log.warning(
                "acp_cancel_ignored",
                extra={"service_id": self.service.id, "session_id": instance.session_id},
            )
            prompt.cancel()
            await conn.close()
            await asyncio.wait({prompt})
        if not prompt.cancelled():
            prompt.exception()  # retrieved: a failure after the client left is not reported
