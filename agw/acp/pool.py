"""The agent instance pool: which pooled agent serves a scope, who owns each session, and which
instances are closed when. :class:`InstancePool` holds the rules; how an agent starts and stops
is its subclass's (:class:`agw.acp.runtime.AcpRuntime`).

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
4. else a new instance is started; with ``max_instances > 0``, once the service's instances
   being reaped or closed are gone, and that many instances of the service pooled (or
   starting), the least recently used one without a turn in flight is closed first (evicted;
   its session is remembered as in 2), and only when every one is busy is the turn refused:
   ``acp instance capacity exceeded: service "<id>" reached max_instances N``.

**Metadata**: a lifetime subscription keeps the latest update of each kind of
:data:`METADATA_KINDS` per instance, as the raw ACP update object (``config_option_update``,
``available_commands_update``, ``session_info_update``, ``current_mode_update``,
``usage_update``), for the replay at the start of each turn and for the admin view.

**Closing**: :meth:`InstancePool.reap` (the janitor's sweep) drops dead instances and those idle
longer than the service's ``idle_ttl`` (when > 0), remembering their sessions as in 2; active
scopes are never reaped. ``close_thread`` / ``close_service`` close on demand (an active
instance too: its turn then fails).
"""

from __future__ import annotations

import abc
import asyncio
import json
import logging
import os
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

from agw.acp.connection import AcpConnection, AcpError
from agw.clock import rfc3339
from agw.config.acp import AcpService
from agw.config.base import within
from agw.types import JsonObj

log = logging.getLogger(__name__)

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

    def __init__(self, pool: InstancePool, instance: Instance) -> None:
        self.pool = pool
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
        await self.pool._release(self.instance)


class InstancePool(abc.ABC):
    """The pooled instances, their scopes and owners (module docstring). A subclass starts and
    closes the agents themselves (:meth:`_start`, :meth:`_close_instance`) and runs the janitor
    (:meth:`_start_janitor`)."""

    def __init__(self) -> None:
        self._pool: dict[str, Instance] = {}
        self._inflight: dict[str, float] = {}  # scope -> since (unix seconds)
        self._spawning: dict[str, int] = {}  # service id -> instances being started
        self._evicting: dict[str, int] = {}  # service id -> evicted instances still closing
        # service id -> closes in progress of instances reaped or closed on demand
        self._closing: dict[str, set[asyncio.Future[Any]]] = {}
        self._lost: dict[str, str] = {}  # scope -> session of its dead instance, to load again
        # session id -> owner_key(route, principal) of the request that opened it
        self._owners: OrderedDict[str, str] = OrderedDict()
        self._wake = asyncio.Event()  # a new pooled instance: the janitor looks at its ttl
        self._closed = False

    # ------------------------------------------------------------------- the subclass's part

    @abc.abstractmethod
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
        """A new instance for ``scope``, its session opened (``resume``: loaded; ``fallback``:
        a new one when that load fails)."""

    @abc.abstractmethod
    async def _close_instance(self, instance: Instance, reason: str) -> None:
        """Close an instance already taken out of the pool."""

    @abc.abstractmethod
    def _start_janitor(self) -> None:
        """Make sure idle instances get reaped (called at each acquire)."""

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
        if service.max_instances > 0:
            # the service's instances being reaped or closed go first: never more processes
            # than the cap
            while pending := self._closing.get(service.id):
                await asyncio.wait(set(pending))
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

    async def _close_where(self, match: Callable[[Instance], bool], reason: str) -> int:
        doomed = [i for i in self._pool.values() if match(i)]
        for instance in doomed:
            del self._pool[instance.scope]
            if reason == "reaped":  # dead or idle: its scope's next turn loads the session
                self._remember(instance)
        if not doomed:
            return 0
        closing = asyncio.gather(*(self._close_instance(i, reason) for i in doomed))
        services = {i.service_id for i in doomed}
        for service_id in services:
            self._closing.setdefault(service_id, set()).add(closing)
        try:
            await closing
        finally:
            for service_id in services:
                pending = self._closing.get(service_id)
                if pending is not None:
                    pending.discard(closing)
                    if not pending:
                        del self._closing[service_id]
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


def _scope_view(scope: str) -> JsonObj:
    parts = scope.split(SCOPE_SEP)
    names = ("service_id", "cwd", "thread_id", "session_id", "model", "route_id", "principal")
    return {"scope": scope, **dict(zip(names, parts, strict=False))}
