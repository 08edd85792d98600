"""The ACP runtime: the agent processes of the pool (:mod:`agw.acp.pool`), started, watched and
closed. :class:`AcpRuntime` is the :class:`~agw.acp.pool.InstancePool` the gateway builds.

API (what the plane and the admin API use)::

    runtime = AcpRuntime(manager, gateway_url=lambda: "http://127.0.0.1:8080",
                         directory=SessionDirectory())
    runtime.resolve_cwd(service, cwd) -> str            # AcpError(status 400) outside the roots
    lease = await runtime.acquire(service, TurnRequest(thread_id=..., input=...))
    async with lease:                                   # ALWAYS enter it: exit frees the scope
        lease.instance                                  # Instance: connection, session_id, ...
        await runtime.apply_overrides(lease.instance, {"mode": "code"})
    async with runtime.transient(service, cwd) as conn: # initialized; closed after
        ...
    await runtime.close_thread(service_id, thread_id) -> int
    await runtime.close_service(service_id) -> int
    runtime.view() / runtime.inflight() / runtime.sessions_by_token
    await runtime.reap() -> int                         # one janitor sweep now
    await runtime.close()

**Starting** (within the 30 s handshake timeout): PATH preflight, spawn in its own process
group, ``initialize``, then ``session/load {sessionId, cwd, mcpServers}`` when the client gave a
session id (and ``fresh_session`` is false; the agent must advertise ``loadSession``), else
``session/new {cwd, mcpServers}``; the model is applied through the agent's ``model`` config
option when it has one (``session/set_config_option``), then the service's
``config_overrides``. ``configOptions`` and ``modes`` of the answer seed the instance metadata.

**Closing**: the janitor (every 30 s, sooner for an ``idle_ttl`` under a minute) runs
:meth:`~agw.acp.pool.InstancePool.reap`. A config swap that changes, disables or deletes a
service closes its instances. Every close kills the agent's whole process group.

**Files**: the agents' ``fs/*`` requests run on this runtime's own executor of
:data:`FS_WORKERS` threads (see :mod:`agw.acp.agent_requests`), never asyncio's default one.

**Single origin**: with ``gateway_origin`` on the service, each instance gets a session token
(``acps-<hex>``). ``session/new`` / ``session/load`` carry ``mcpServers = [{type: "http", name:
"agw", url: <gateway><mcp route prefix>, headers: [Authorization: Bearer <virtual key>,
X-Agw-Acp-Session: <token>]}]`` when the agent advertises ``mcpCapabilities.http`` (else none,
logged); the LLM endpoint goes in the agent's environment or arguments (see
:mod:`agw.acp.launch`). The :class:`SessionDirectory` maps the token, and the ACP session id
itself (opencode's ``x-session-id`` / codex's ``session-id`` carry it), to the session id while
the instance lives; :attr:`AcpRuntime.sessions_by_token` is this runtime's own token map.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import AsyncIterator, Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from agw.acp.connection import AcpConnection, AcpError, AgentRpcError
from agw.acp.launch import LaunchSpec, Origin, launch_spec, mcp_servers, resolve_origin
from agw.acp.pool import Instance, InstancePool, TurnRequest, signature
from agw.config.acp import AcpService
from agw.runtime.attribution import SessionDirectory
from agw.types import JsonObj

if TYPE_CHECKING:
    from agw.runtime.manager import ConfigManager
    from agw.runtime.snapshot import Snapshot

log = logging.getLogger(__name__)

HANDSHAKE_TIMEOUT_S = 30.0
JANITOR_EVERY_S = 30.0
FS_WORKERS = 4  # threads of the runtime's own executor for the agents' fs/* requests
JANITOR_MIN_S = 0.25  # the janitor's shortest period (a short idle_ttl shortens it)


class AcpRuntime(InstancePool):
    """The pool of ACP agent processes (see the module docstring)."""

    def __init__(
        self,
        manager: ConfigManager | None = None,
        *,
        gateway_url: Callable[[], str] | None = None,
        directory: SessionDirectory | None = None,
        handshake_timeout: float = HANDSHAKE_TIMEOUT_S,
        janitor_every: float = JANITOR_EVERY_S,
        base_env: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__()
        self.manager = manager
        self.gateway_url = gateway_url
        self.directory = directory if directory is not None else SessionDirectory()
        self.handshake_timeout = handshake_timeout
        self.janitor_every = janitor_every
        self.base_env = base_env  # None: the gateway's own environment at each spawn
        self._unpooled: set[AcpConnection] = set()  # transient or still starting
        self._tokens: dict[str, str] = {}  # token -> session id
        # the agents' fs/* reads and writes: never asyncio's default executor (bcrypt, PATH
        # lookups and the rest of the gateway share that one)
        self._io = ThreadPoolExecutor(max_workers=FS_WORKERS, thread_name_prefix="agw-acp-fs")
        self._tasks: set[asyncio.Task[Any]] = set()
        self._janitor: asyncio.Task[None] | None = None
        if manager is not None:
            manager.on_swap(self._on_swap)

    @property
    def sessions_by_token(self) -> Mapping[str, str]:
        """token -> ACP session id, for the sessions of this runtime's live instances."""
        return MappingProxyType(self._tokens)

    # ---------------------------------------------------------------------------- starting

    def _origin(self, service: AcpService) -> Origin | None:
        snapshot = self.manager.snapshot if self.manager is not None else None
        base = self.gateway_url() if self.gateway_url is not None else ""
        return resolve_origin(service, snapshot, base)

    def _spec(self, service: AcpService, cwd: str, origin: Origin | None, token: str) -> LaunchSpec:
        return launch_spec(service, cwd, base_env=self.base_env, origin=origin, token=token)

    async def _open(
        self, service: AcpService, cwd: str, origin: Origin | None, token: str
    ) -> AcpConnection:
        spec = await asyncio.to_thread(self._spec, service, cwd, origin, token)
        conn = await AcpConnection.spawn(
            spec.argv,
            cwd=spec.cwd,
            env=spec.env,
            label=service.id,
            fs_access=service.fs_access,
            allowed_roots=service.allowed_roots,
            executor=self._io,
        )
        if token and origin is not None:
            # the agent's credential: stands for the virtual key while this agent lives
            self.directory.grant(token, origin.key, conn)
        return conn

    async def _start(
        self,
        service: AcpService,
        scope: str,
        cwd: str,
        model: str,
        turn: TurnRequest,
        resume: str,
        fallback: bool,
    ) -> Instance:
        origin = self._origin(service)
        token = "acps-" + secrets.token_hex(16) if origin is not None else ""
        conn = await self._open(service, cwd, origin, token)
        self._unpooled.add(conn)
        instance = Instance(
            scope=scope,
            service_id=service.id,
            thread_id=turn.thread_id,
            session_id="",
            cwd=cwd,
            model=model,
            connection=conn,
            token=token,
            signature=signature(service),
            idle_ttl_ns=service.idle_ttl,
            route_id=turn.route_id,
            principal=turn.principal,
        )
        conn.subscribe(instance.on_update)
        try:
            async with asyncio.timeout(self.handshake_timeout):
                await conn.initialize()
                servers = mcp_servers(conn.agent_capabilities, origin, token, conn.label)
                await open_session(instance, cwd, servers, resume, fallback)
                await apply_model(instance, model)
                if service.config_overrides:
                    await apply_overrides(instance, service.config_overrides)
        except TimeoutError:
            await conn.close()
            raise AcpError(
                f'acp handshake with service "{service.id}" timed out after '
                f"{self.handshake_timeout:g} s"
            ) from None
        except BaseException:
            await conn.close()
            raise
        finally:
            self._unpooled.discard(conn)
        self._own(turn.owner, instance.session_id)
        self._bind(instance)
        log.info(
            "acp_instance_started",
            extra={"service_id": service.id, "pid": conn.pid, "session_id": instance.session_id},
        )
        return instance

    # --------------------------------------------------------------------------- transient

    @contextlib.asynccontextmanager
    async def transient(self, service: AcpService, cwd: str) -> AsyncIterator[AcpConnection]:
        """A one-off initialized agent for session listing and transcripts (no permission
        handler: interactive degrades to deny), closed when the block ends."""
        if self._closed:
            raise AcpError("the gateway is shutting down")
        if service.disabled:
            raise AcpError(f'acp service "{service.id}" is disabled', status=400)
        cwd = self.resolve_cwd(service, cwd)
        origin = self._origin(service)
        token = "acps-" + secrets.token_hex(16) if origin is not None else ""
        conn = await self._open(service, cwd, origin, token)
        self._unpooled.add(conn)
        try:
            try:
                async with asyncio.timeout(self.handshake_timeout):
                    await conn.initialize()
            except TimeoutError:
                raise AcpError(
                    f'acp handshake with service "{service.id}" timed out after '
                    f"{self.handshake_timeout:g} s"
                ) from None
            yield conn
        finally:
            self._unpooled.discard(conn)
            if token:
                self.directory.revoke(token)
            await conn.close()

    # ------------------------------------------------------------------------------ closing

    def _bind(self, instance: Instance) -> None:
        if instance.token:
            self._tokens[instance.token] = instance.session_id
            self.directory.bind(instance.token, instance.session_id)
        self.directory.bind(instance.session_id, instance.session_id)

    def _unbind(self, instance: Instance) -> None:
        if instance.token:
            self._tokens.pop(instance.token, None)
            self.directory.unbind(instance.token)
            self.directory.revoke(instance.token)
        sid = instance.session_id
        if sid and not any(i.session_id == sid and i is not instance for i in self._pool.values()):
            self.directory.unbind(sid)

    async def _close_instance(self, instance: Instance, reason: str) -> None:
        self._unbind(instance)
        await instance.connection.close()
        log.info(
            "acp_instance_closed",
            extra={"service_id": instance.service_id, "pid": instance.pid, "reason": reason},
        )

    def _on_swap(self, snapshot: Snapshot) -> None:
        services: Mapping[str, AcpService] = snapshot.acp_services
        stale: set[str] = set()
        for instance in self._pool.values():
            new = services.get(instance.service_id)
            if new is None or new.disabled or signature(new) != instance.signature:
                stale.add(instance.service_id)
        for service_id in stale:
            self._spawn(self.close_service(service_id))
        if stale:
            log.info("acp_instances_dropped", extra={"services": sorted(stale)})

    def _spawn(self, work: Any) -> None:
        try:
            task = asyncio.get_running_loop().create_task(work)
        except RuntimeError:  # no loop (a swap before serving): nothing was started yet
            work.close()
            return
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _start_janitor(self) -> None:
        if self._janitor is None and not self._closed:
            self._janitor = asyncio.get_running_loop().create_task(self._sweep())

    def _period(self) -> float:
        """The janitor's next sleep: ``janitor_every``, shorter when a pooled instance has an
        ``idle_ttl`` below twice that (it is reaped within half its ttl of expiring)."""
        ttls = [i.idle_ttl_ns / 1e9 for i in self._pool.values() if i.idle_ttl_ns > 0]
        return max(JANITOR_MIN_S, min([self.janitor_every, *(t / 2 for t in ttls)]))

    async def _sweep(self) -> None:
        due = time.monotonic() + self._period()
        while not self._closed:
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.0, due - time.monotonic())):
                    await self._wake.wait()
            now = time.monotonic()
            if now < due:  # a new instance: its idle_ttl may call for an earlier sweep
                due = min(due, now + self._period())
                continue
            try:
                await self.reap()
            except Exception:
                log.exception("acp_janitor_failed")
            due = time.monotonic() + self._period()

    # ----------------------------------------------------------------------------- lifecycle

    async def close(self) -> None:
        """Close everything: every pooled and transient agent (their process groups killed)."""
        self._closed = True
        if self._janitor is not None:
            self._janitor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._janitor
        await self._close_where(lambda i: True, "shutdown")
        unpooled = list(self._unpooled)
        await asyncio.gather(*(c.close() for c in unpooled), return_exceptions=True)
        if self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)
        self._io.shutdown(wait=False, cancel_futures=True)


# ------------------------------------------------------------------ the session of an agent


async def open_session(
    instance: Instance, cwd: str, servers: list[JsonObj], resume: str, fallback: bool
) -> None:
    """``session/load`` of ``resume`` (a new session instead when that fails and ``fallback``),
    else ``session/new``; the answer seeds the instance's metadata."""
    conn = instance.connection
    if resume:
        if conn.agent_capabilities.get("loadSession") is True:
            try:
                result = await conn.request(
                    "session/load", {"sessionId": resume, "cwd": cwd, "mcpServers": servers}
                )
            except AgentRpcError:
                if not fallback:
                    raise
                log.warning("acp_session_reload_failed", extra={"label": conn.label})
            else:
                instance.session_id = resume
                seed_metadata(instance, result)
                return
        elif not fallback:
            raise AcpError(
                f'acp agent of service "{conn.label}" does not support session/load '
                f'(cannot continue session "{resume}")'
            )
    result = await conn.request("session/new", {"cwd": cwd, "mcpServers": servers})
    session_id = ""
    if isinstance(result, dict):
        nested = result.get("session")
        nested = nested if isinstance(nested, dict) else {}
        for value in (result.get("sessionId"), nested.get("sessionId"), nested.get("id")):
            if isinstance(value, str) and value:
                session_id = value
                break
    if not session_id:
        raise AcpError(f'acp agent of service "{conn.label}" returned no session id')
    instance.session_id = session_id
    seed_metadata(instance, result)


def seed_metadata(instance: Instance, result: Any) -> None:
    """The config options and mode of a ``session/new`` or ``session/load`` answer."""
    if not isinstance(result, dict):
        return
    instance.set_config_options(result.get("configOptions"))
    modes = result.get("modes")
    if isinstance(modes, dict) and isinstance(modes.get("currentModeId"), str):
        instance.metadata.setdefault(
            "mode",
            {"sessionUpdate": "current_mode_update", "currentModeId": modes["currentModeId"]},
        )


async def apply_model(instance: Instance, model: str) -> None:
    """The model through the agent's ``model`` config option, when it has one."""
    if not model:
        return
    for option in instance.config_options():
        if option.get("id") == "model" or option.get("category") == "model":
            offered = _option_values(option)
            if offered and model not in offered and f"agw/{model}" in offered:
                # opencode names models <provider>/<model>; gateway_origin's provider is agw
                model = f"agw/{model}"
            if option.get("currentValue") != model:
                await apply_overrides(instance, {str(option.get("id")): model})
            return


async def apply_overrides(instance: Instance, overrides: dict[str, str]) -> None:
    """``session/set_config_option`` per item, in order; AcpError when the agent rejects
    one. A boolean option gets ``true``/``false`` (``1``/``yes``/``on`` are true)."""
    conn = instance.connection
    for config_id, value in overrides.items():
        params: JsonObj = {
            "sessionId": instance.session_id,
            "configId": config_id,
            "value": value,
        }
        for option in instance.config_options():
            if option.get("id") == config_id and option.get("type") == "boolean":
                params["type"] = "boolean"
                params["value"] = value.strip().lower() in ("true", "1", "yes", "on")
        try:
            result = await conn.request("session/set_config_option", params)
        except AgentRpcError as exc:
            detail = exc.message.removeprefix("acp session/set_config_option failed: ")
            raise AcpError(
                f'acp config option "{config_id}" = "{value}" rejected: {detail}'
            ) from None
        if isinstance(result, dict):
            instance.set_config_options(result.get("configOptions"))


def _option_values(option: JsonObj) -> set[str]:
    """The values a select config option offers (flat, or in groups of ``options``)."""
    out: set[str] = set()
    stack = list(option.get("options") or [])
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            if isinstance(item.get("value"), str):
                out.add(item["value"])
            stack.extend(item.get("options") or [])
    return out
