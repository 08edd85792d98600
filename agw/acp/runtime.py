"""The ACP runtime: a pool of agent processes, one per scope, and their lifecycle.

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

**Scope** (reference §8.2): ``service_id``, effective cwd (request cwd or the service's, inside
``allowed_roots``), ``thread_id``, ``session_id`` as the client sent it, effective model
(request model or ``default_model``), the route id and the principal (:func:`principal_of`:
the virtual key, or ``anonymous``), NUL-joined. One turn at a time per scope: a second gets
``acp turn is already active for scope``.

**Owners**: every session an instance opens (or loads) belongs to the route and principal of
the request that started it (:func:`owner_key`; the last :data:`OWNER_LIMIT`, in memory). A
request naming a ``session_id`` its owner key does not own gets :func:`session_not_found`
(404), the same answer as for an unknown id (docs/acp.md#who-a-session-belongs-to).

An instance is resolved in this order:

1. a live instance of the scope, without ``fresh_session``: reused;
2. a dead one, one started with another version of the service's config, or
   ``fresh_session``: closed, and a new one started. Without
   ``fresh_session``, the session of a scope's dead instance (still pooled, or dropped by the
   end of its turn or by the janitor; the last 1024 are remembered, ``close_thread`` /
   ``close_service`` forget them) is loaded again when the agent advertises ``loadSession``;
   if that load fails, a new session is made;
3. none, and the request carries a ``session_id``: **rebind**: the thread's session-less scope
   (same service, cwd, thread, model) holding a live, idle instance bound to that session id is
   moved to the new scope instead of starting a process;
4. else a new instance is started; with ``max_instances > 0`` and that many instances of the
   service pooled (or starting), the least recently used one without a turn in flight is
   closed first (evicted; its session is remembered as in 2), and only when every one is busy
   is the turn refused: ``acp instance capacity exceeded: service "<id>" reached
   max_instances N``.

**Starting** (within the 30 s handshake timeout): PATH preflight, spawn in its own process
group, ``initialize``, then ``session/load {sessionId, cwd, mcpServers}`` when the client gave a
session id (and ``fresh_session`` is false; the agent must advertise ``loadSession``), else
``session/new {cwd, mcpServers}``; the model is applied through the agent's ``model`` config
option when it has one (``session/set_config_option``), then the service's
``config_overrides``. ``configOptions`` and ``modes`` of the answer seed the instance metadata.

**Metadata**: a lifetime subscription keeps the latest update of each kind of
:data:`METADATA_KINDS` per instance, as the raw ACP update object (``config_option_update``,
``available_commands_update``, ``session_info_update``, ``current_mode_update``,
``usage_update``), for the replay at the start of each turn and for the admin view.

**Closing**: the janitor (every 30 s, sooner for an ``idle_ttl`` under a minute) drops dead
instances and those idle longer than the service's ``idle_ttl`` (when > 0), remembering their
sessions as in 2; active scopes are never reaped. A config swap that changes,
disables or deletes a service closes its instances. ``close_thread`` / ``close_service`` close
on demand (an active instance too: its turn then fails). Every close kills the agent's whole
process group.

**Files**: the agents' ``fs/*`` requests run on this runtime's own executor of
:data:`FS_WORKERS` threads (see :mod:`agw.acp.connection`), never asyncio's default one.

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
import json
import logging
import os
import secrets
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from types import MappingProxyType, TracebackType
from typing import TYPE_CHECKING, Any

from agw.acp.connection import AcpConnection, AcpError, AgentRpcError
from agw.acp.launch import LaunchSpec, Origin, launch_spec, mcp_servers, resolve_origin
from agw.clock import rfc3339
from agw.config.acp import AcpService
from agw.config.base import within
from agw.runtime.attribution import SessionDirectory
from agw.types import JsonObj

if TYPE_CHECKING:
    from agw.runtime.manager import ConfigManager
    from agw.runtime.snapshot import Snapshot

log = logging.getLogger(__name__)

HANDSHAKE_TIMEOUT_S = 30.0
JANITOR_EVERY_S = 30.0
SCOPE_SEP = "\x00"
METADATA_KINDS = ("config_options", "available_commands", "session_info", "mode", "usage")
UPDATE_KINDS = {
    "config_option_update": "config_options",
    "available_commands_update": "available_commands",
    "session_info_update": "session_info",
    "current_mode_update": "mode",
    "usage_update": "usage",
}
BUSY = "acp turn is already active for scope"
LOST_LIMIT = 1024  # sessions of dead instances remembered for their scope's next turn
OWNER_LIMIT = 65536  # sessions whose owner is remembered; a forgotten one is refused to all
ANONYMOUS = "anonymous"  # the principal of a request without a virtual key (an open route)
FS_WORKERS = 4  # threads of the runtime's own executor for the agents' fs/* requests
JANITOR_MIN_S = 0.25  # the janitor's shortest period (a short idle_ttl shortens it)


def principal_of(virtual_key_id: str | None) -> str:
    """Who a request is: ``key:<virtual key id>``, or :data:`ANONYMOUS` on an open route (every
    caller without a key is the same principal there)."""
    return f"key:{virtual_key_id}" if virtual_key_id else ANONYMOUS


def scope_key(
    service_id: str,
    cwd: str,
    thread_id: str,
    session_id: str,
    model: str,
    route_id: str = "",
    principal: str = "",
) -> str:
    return SCOPE_SEP.join((service_id, cwd, thread_id, session_id, model, route_id, principal))


def session_not_found(session_id: str) -> AcpError:
    """The one answer for a session id the caller may not use: unknown and another caller's
    look the same (the existence of someone else's session is not revealed)."""
    return AcpError(f'acp session "{session_id}" not found', status=404)


def signature(service: AcpService) -> str:
    """What, when changed, makes a service's instances stale (timestamps excluded)."""
    return json.dumps(service.model_dump(mode="json"), sort_keys=True)


@dataclass
class TurnRequest:
    thread_id: str
    input: str
    session_id: str = ""
    cwd: str = ""
    model: str = ""
    fresh_session: bool = False
    config_overrides: dict[str, str] = field(default_factory=dict)
    route_id: str = ""  # the route the request came by (part of the scope)
    principal: str = ANONYMOUS  # principal_of(the request's virtual key) (part of the scope)

    @property
    def owner(self) -> str:
        return owner_key(self.route_id, self.principal)


def owner_key(route_id: str, principal: str) -> str:
    """Who owns a session: the route and the principal that opened it."""
    return route_id + SCOPE_SEP + principal


@dataclass(eq=False)
class Instance:
    """One pooled agent process bound to one ACP session."""

    scope: str
    service_id: str
    thread_id: str
    session_id: str
    cwd: str
    model: str
    connection: AcpConnection
    active: bool = False
    last_used: float = field(default_factory=time.time)  # unix seconds
    fresh: bool = True  # spawned for the turn that acquired it
    metadata: dict[str, Any] = field(default_factory=dict)
    token: str = ""  # the gateway_origin session token ("" without gateway_origin)
    signature: str = ""
    idle_ttl_ns: int = 0
    created_at: float = field(default_factory=time.time)
    route_id: str = ""
    principal: str = ANONYMOUS

    @property
    def alive(self) -> bool:
        return self.connection.alive

    @property
    def pid(self) -> int | None:
        return self.connection.pid

    async def on_update(self, params: JsonObj) -> None:
        """The lifetime subscription: the latest update of each metadata kind."""
        update = params.get("update")
        if isinstance(update, dict):
            kind = UPDATE_KINDS.get(str(update.get("sessionUpdate")))
            if kind is not None:
                self.metadata[kind] = update

    def config_options(self) -> list[JsonObj]:
        update = self.metadata.get("config_options")
        options = update.get("configOptions") if isinstance(update, dict) else None
        return [o for o in options or [] if isinstance(o, dict)]

    def set_config_options(self, options: Any) -> None:
        if isinstance(options, list):
            self.metadata["config_options"] = {
                "sessionUpdate": "config_option_update",
                "configOptions": options,
            }

    def view(self) -> JsonObj:
        return {
            "scope": self.scope,
            "service_id": self.service_id,
            "thread_id": self.thread_id,
            "route_id": self.route_id,
            "principal": self.principal,
            "cwd": self.cwd,
            "model": self.model,
            "session_id": self.session_id,
            "alive": self.alive,
            "active": self.active,
            "last_used": rfc3339(self.last_used),
            "idle_ttl": self.idle_ttl_ns,
            "pid": self.pid,
            "metadata": {k: self.metadata[k] for k in METADATA_KINDS if k in self.metadata},
        }


class Lease:
    """A scope held for one turn; leaving it (``async with``) frees the scope, and closes the
    instance when its process died."""

    def __init__(self, runtime: AcpRuntime, instance: Instance) -> None:
        self.runtime = runtime
        self.instance = instance
        self._released = False

    async def __aenter__(self) -> Lease:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.release()

    async def release(self) -> None:
        if self._released:
            return
        self._released = True
        await self.runtime._release(self.instance)


class AcpRuntime:
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
        self.manager = manager
        self.gateway_url = gateway_url
        self.directory = directory if directory is not None else SessionDirectory()
        self.handshake_timeout = handshake_timeout
        self.janitor_every = janitor_every
        self.base_env = base_env  # None: the gateway's own environment at each spawn
        self._pool: dict[str, Instance] = {}
        self._inflight: dict[str, float] = {}  # scope -> since (unix seconds)
        self._spawning: dict[str, int] = {}  # service id -> instances being started
        self._evicting: dict[str, int] = {}  # service id -> evicted instances still closing
        self._unpooled: set[AcpConnection] = set()  # transient or still starting
        self._tokens: dict[str, str] = {}  # token -> session id
        self._lost: dict[str, str] = {}  # scope -> session of its dead instance, to load again
        # session id -> owner_key(route, principal) of the request that opened it
        self._owners: OrderedDict[str, str] = OrderedDict()
        # the agents' fs/* reads and writes: never asyncio's default executor (bcrypt, PATH
        # lookups and the rest of the gateway share that one)
        self._io = ThreadPoolExecutor(max_workers=FS_WORKERS, thread_name_prefix="agw-acp-fs")
        self._tasks: set[asyncio.Task[Any]] = set()
        self._janitor: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()  # a new pooled instance: the janitor looks at its ttl
        self._closed = False
        if manager is not None:
            manager.on_swap(self._on_swap)

    @property
    def sessions_by_token(self) -> Mapping[str, str]:
        """token -> ACP session id, for the sessions of this runtime's live instances."""
        return MappingProxyType(self._tokens)

    # ------------------------------------------------------------------------------ owners

    def owns(self, owner: str, session_id: str) -> bool:
        """Whether ``owner`` (:func:`owner_key`) opened ``session_id`` through this gateway."""
        return bool(session_id) and self._owners.get(session_id) == owner

    def check_owner(self, owner: str, session_id: str) -> None:
        """:func:`session_not_found` unless ``owner`` opened ``session_id``."""
        if not self.owns(owner, session_id):
            raise session_not_found(session_id)

    def _own(self, owner: str, session_id: str) -> None:
        if not session_id:
            return
        held = self._owners.get(session_id)
        if held is not None and held != owner:
            # an agent answered session/new with a session id someone else holds: keep the
            # first owner (the caller gets the session, not the other's history)
            log.warning("acp_session_owner_conflict", extra={"session_id": session_id})
            return
        self._owners[session_id] = owner
        self._owners.move_to_end(session_id)
        while len(self._owners) > OWNER_LIMIT:
            self._owners.popitem(last=False)

    # ------------------------------------------------------------------------------ scopes

    def resolve_cwd(self, service: AcpService, cwd: str) -> str:
        """The effective cwd of a request: ``cwd`` or the service's, normalised; AcpError
        (status 400) when it is not absolute or lies outside ``allowed_roots`` (symlinks
        resolved)."""
        cwd = cwd or service.cwd
        if not os.path.isabs(cwd):
            raise AcpError(f"cwd must be an absolute path (got {cwd!r})", status=400)
        cwd = os.path.normpath(cwd)
        real = os.path.realpath(cwd)
        for root in service.allowed_roots:
            if within(cwd, root) and within(real, os.path.realpath(root)):
                return cwd
        raise AcpError(
            f'cwd "{cwd}" is outside the allowed_roots of acp service "{service.id}"', status=400
        )

    async def acquire(self, service: AcpService, turn: TurnRequest) -> Lease:
        """The instance for a turn (module docstring), its scope marked active."""
        if self._closed:
            raise AcpError("the gateway is shutting down")
        if service.disabled:
            raise AcpError(f'acp service "{service.id}" is disabled', status=400)
        if not turn.thread_id:
            raise AcpError("thread_id is required", status=400)
        if turn.session_id:
            self.check_owner(turn.owner, turn.session_id)
        cwd = self.resolve_cwd(service, turn.cwd)
        model = turn.model or service.default_model
        scope = scope_key(
            service.id, cwd, turn.thread_id, turn.session_id, model, turn.route_id, turn.principal
        )
        if scope in self._inflight:
            raise AcpError(BUSY, status=409)
        self._inflight[scope] = time.time()
        self._start_janitor()
        try:
            instance = await self._resolve(service, turn, scope, cwd, model)
        except BaseException:
            self._inflight.pop(scope, None)
            raise
        instance.active = True
        instance.last_used = time.time()
        return Lease(self, instance)

    async def _resolve(
        self, service: AcpService, turn: TurnRequest, scope: str, cwd: str, model: str
    ) -> Instance:
        resume = turn.session_id if not turn.fresh_session else ""
        fallback = False  # a failed load of a remembered session falls back to a new one
        existing = self._pool.get(scope)
        lost = self._lost.pop(scope, "")
        if existing is not None:
            current = existing.signature == signature(service)  # else started before a swap
            if existing.alive and current and not turn.fresh_session:
                existing.fresh = False
                return existing
            del self._pool[scope]
            lost = existing.session_id
            await self._close_instance(existing, "replaced")
        if lost and not resume and not turn.fresh_session:
            resume, fallback = lost, True
        elif existing is None and resume:
            base = scope_key(
                service.id, cwd, turn.thread_id, "", model, turn.route_id, turn.principal
            )
            held = self._pool.get(base)
            if (
                held is not None
                and held.alive
                and not held.active
                and base not in self._inflight
                and held.session_id == turn.session_id
            ):
                del self._pool[base]
                held.scope = scope
                held.fresh = False
                self._pool[scope] = held
                log.info("acp_instance_rebound", extra={"service_id": service.id})
                return held
        count = sum(1 for i in self._pool.values() if i.service_id == service.id)
        count += self._spawning.get(service.id, 0) + self._evicting.get(service.id, 0)
        victim: Instance | None = None
        if service.max_instances > 0 and count >= service.max_instances:
            victim = self._least_recently_used(service.id)
            if victim is None:
                raise AcpError(
                    f'acp instance capacity exceeded: service "{service.id}" reached '
                    f"max_instances {service.max_instances}"
                )
            # taken out of the pool now (its slot is this turn's); its session is remembered,
            # so its scope's next turn loads it again (session/load) on a new agent
            del self._pool[victim.scope]
            self._remember(victim)
            self._evicting[service.id] = self._evicting.get(service.id, 0) + 1
            try:  # closed before the new one starts: never more processes than the cap
                await self._close_instance(victim, "evicted")
            finally:
                self._evicting[service.id] -= 1
                if not self._evicting[service.id]:
                    del self._evicting[service.id]
        self._spawning[service.id] = self._spawning.get(service.id, 0) + 1
        try:
            instance = await self._start(service, scope, cwd, model, turn, resume, fallback)
        finally:
            self._spawning[service.id] -= 1
            if not self._spawning[service.id]:
                del self._spawning[service.id]
        if self._closed:
            await self._close_instance(instance, "shutdown")
            raise AcpError("the gateway is shutting down")
        self._pool[scope] = instance
        self._wake.set()
        return instance

    def _least_recently_used(self, service_id: str) -> Instance | None:
        """The service's instance to close for a new one at the cap: a dead one, else the idle
        one (no turn in flight) used least recently; None when every one is busy."""
        idle = [
            i
            for i in self._pool.values()
            if i.service_id == service_id and not i.active and i.scope not in self._inflight
        ]
        if not idle:
            return None
        return min(idle, key=lambda i: (i.alive, i.last_used))

    async def _release(self, instance: Instance) -> None:
        instance.active = False
        instance.last_used = time.time()
        self._inflight.pop(instance.scope, None)
        if not instance.alive and self._pool.get(instance.scope) is instance:
            del self._pool[instance.scope]
            self._remember(instance)
            await self._close_instance(instance, "dead")

    def _remember(self, instance: Instance) -> None:
        """A dead instance's session, loaded again at its scope's next turn."""
        if instance.session_id:
            self._lost.pop(instance.scope, None)
            self._lost[instance.scope] = instance.session_id
            while len(self._lost) > LOST_LIMIT:
                del self._lost[next(iter(self._lost))]

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
                await self._open_session(instance, conn, cwd, servers, resume, fallback)
                await self._apply_model(instance, model)
                if service.config_overrides:
                    await self.apply_overrides(instance, service.config_overrides)
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

    async def _open_session(
        self,
        instance: Instance,
        conn: AcpConnection,
        cwd: str,
        servers: list[JsonObj],
        resume: str,
        fallback: bool,
    ) -> None:
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
                    self._seed(instance, result)
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
        self._seed(instance, result)

    @staticmethod
    def _seed(instance: Instance, result: Any) -> None:
        if not isinstance(result, dict):
            return
        instance.set_config_options(result.get("configOptions"))
        modes = result.get("modes")
        if isinstance(modes, dict) and isinstance(modes.get("currentModeId"), str):
            instance.metadata.setdefault(
                "mode",
                {"sessionUpdate": "current_mode_update", "currentModeId": modes["currentModeId"]},
            )

    async def _apply_model(self, instance: Instance, model: str) -> None:
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
                    await self.apply_overrides(instance, {str(option.get("id")): model})
                return

    async def apply_overrides(self, instance: Instance, overrides: dict[str, str]) -> None:
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

    async def _close_where(self, match: Callable[[Instance], bool], reason: str) -> int:
        doomed = [i for i in self._pool.values() if match(i)]
        for instance in doomed:
            del self._pool[instance.scope]
            if reason == "reaped":  # dead or idle: its scope's next turn loads the session
                self._remember(instance)
        await asyncio.gather(*(self._close_instance(i, reason) for i in doomed))
        return len(doomed)

    async def close_thread(self, service_id: str, thread_id: str) -> int:
        """Close every instance of a thread (all its scopes); returns how many."""
        self._forget(lambda parts: parts[0] == service_id and parts[2] == thread_id)
        return await self._close_where(
            lambda i: i.service_id == service_id and i.thread_id == thread_id, "thread_closed"
        )

    async def close_service(self, service_id: str) -> int:
        """Close every instance of a service; returns how many."""
        self._forget(lambda parts: parts[0] == service_id)
        return await self._close_where(lambda i: i.service_id == service_id, "service_closed")

    def _forget(self, match: Callable[[list[str]], bool]) -> None:
        for scope in [s for s in self._lost if match(s.split(SCOPE_SEP))]:
            del self._lost[scope]

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

    async def reap(self, now: float | None = None) -> int:
        """One janitor sweep: drop dead instances and those idle past their ``idle_ttl``;
        active scopes are never reaped. Returns how many were closed."""
        now = time.time() if now is None else now

        def doomed(i: Instance) -> bool:
            if i.active or i.scope in self._inflight:
                return False
            if not i.alive:
                return True
            return i.idle_ttl_ns > 0 and (now - i.last_used) * 1e9 > i.idle_ttl_ns

        return await self._close_where(doomed, "reaped")

    # --------------------------------------------------------------------------------- views

    def inflight(self) -> list[JsonObj]:
        return [_scope_view(scope) for scope in self._inflight]

    def view(self) -> JsonObj:
        return {
            "in_flight": self.inflight(),
            "instances": [i.view() for i in self._pool.values()],
        }

    def instances(self) -> list[Instance]:
        return list(self._pool.values())

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


def _scope_view(scope: str) -> JsonObj:
    parts = scope.split(SCOPE_SEP)
    names = ("service_id", "cwd", "thread_id", "session_id", "model", "route_id", "principal")
    return {"scope": scope, **dict(zip(names, parts, strict=False))}


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
