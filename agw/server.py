"""Composition root: settings -> store -> config manager -> admin app + data-plane app -> servers.

Listeners are bound here (so port 0 works and the real port is known before serving), handed to
uvicorn or hypercorn with the listener limits of agw.listener, and served until the shutdown
event is set; in-flight requests then get ``shutdown_grace_seconds`` to finish. Under ``agwd
--workers N`` each worker process runs a Gateway on sockets the supervisor bound
(:mod:`agw.workers`): worker 0 serves both listeners, the others the data listener only. The same
composition (:func:`open_store`, :func:`compose`) runs without listeners in :func:`in_process`,
for the in-process test tier.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import httpx
import uvicorn
from hypercorn.config import Config
from quart import Quart

from agw.a2a import A2aPlane
from agw.acp import AcpPlane, AcpRuntime, Replica
from agw.admin.app import create_admin_app
from agw.auth.admin_basic import BasicAuth
from agw.auth.identity import Identity
from agw.dataplane import READINESS_HEADER, Plane, create_data_app
from agw.edge import HostPolicy
from agw.listener import (
    ListenerLimits,
    connection_caps,
    httptools_protocol,
    serve_hypercorn,
    sweep_httptools,
)
from agw.llm import LlmPlane
from agw.mcp import McpPlane, McpState, env_session_key
from agw.policy.limit_types import LimitBackend
from agw.policy.limits import Limiter
from agw.runtime.attribution import SessionDirectory
from agw.runtime.manager import ConfigManager, load_static
from agw.settings import Settings, split_host_port
from agw.store.engine import Store
from agw.store.engine import open_store as open_database
from agw.types import ASGIApp, Receive, Scope, Send
from agw.usage.accesslog import OFF, AccessLog
from agw.usage.prometheus import PrometheusMetrics
from agw.usage.recorder import UsageRecorder
from agw.usage.retention import RetentionJanitor
from agw.usage.spool import open_spool
from agw.workers import WorkerSlot

if TYPE_CHECKING:
    from agw.policy.limit_lease import LeaseBackend
    from agw.policy.limit_redis import RedisBackend
    from agw.tracing import TraceExporter

log = logging.getLogger(__name__)


def bind(addr: str) -> socket.socket:
    host, port = split_host_port(addr)
    infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family, _, _, _, sockaddr = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    # accepted connections inherit it: answers are written in several small pieces (head, body,
    # stream events) and must not wait for the client's delayed ACK
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        sock.bind(sockaddr)
        sock.listen(1024)
    except OSError as exc:
        sock.close()
        raise OSError(f"cannot listen on {addr}: {exc.strerror or exc}") from None
    sock.setblocking(False)
    return sock


def local_addr(addr: str) -> str:
    """A bound address as this host reaches it (every-interface addresses become loopback)."""
    return addr.replace("0.0.0.0", "127.0.0.1").replace("[::]", "[::1]")


def shares_listener(settings: Settings) -> bool:
    """One listener serves both when the addresses are equal (port 0 always means two)."""
    return settings.admin_addr == settings.addr and split_host_port(settings.addr)[1] != 0


def bound_addr(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def admin_auth(settings: Settings) -> BasicAuth | None:
    """The admin API's basic auth; None only when the operator opted out (``--admin-insecure``).
    agwd puts the generated password's hash in ``admin_basic_auth_hash`` when none is given."""
    if settings.admin_basic_auth_hash:
        return BasicAuth(settings.admin_basic_auth_hash)
    if not settings.admin_insecure:
        raise ValueError("the admin API needs a basic auth hash unless admin_insecure is set")
    return None


def combined_app(admin: ASGIApp, data: ASGIApp) -> ASGIApp:
    """One listener for both (``--admin-addr`` equal to ``--addr``): ``/admin`` and
    ``/admin/*`` go to the admin API, everything else to the data plane."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _fan_out_lifespan(scope, receive, send, (admin, data))
            return
        path = scope.get("path", "")
        target = admin if path == "/admin" or path.startswith("/admin/") else data
        await target(scope, receive, send)

    return app


async def _fan_out_lifespan(
    scope: Scope, receive: Receive, send: Send, apps: tuple[ASGIApp, ...]
) -> None:
    """Run the lifespan protocol of several apps behind one."""
    queues = [asyncio.Queue[dict[str, Any]]() for _ in apps]
    replies: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

    async def run(app: ASGIApp, q: asyncio.Queue[dict[str, Any]]) -> None:
        async def recv() -> dict[str, Any]:
            return await q.get()

        async def snd(msg: Any) -> None:
            await replies.put(dict(msg))

        await app(scope, recv, snd)

    tasks = [asyncio.create_task(run(a, q)) for a, q in zip(apps, queues, strict=True)]
    try:
        while True:
            message = await receive()
            for q in queues:
                await q.put(dict(message))
            results = [await replies.get() for _ in apps]
            failed = [r for r in results if r["type"].endswith(".failed")]
            await send(failed[0] if failed else results[0])
            if message["type"] == "lifespan.shutdown" or failed:
                break
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def open_store(settings: Settings) -> tuple[Store, ConfigManager]:
    """The config store opened (created, migrated) and the config loaded from it and from the
    static file: where the daemon and the in-process tests (tests/support/inproc.py) start."""
    if settings.static_config is not None:
        load_static(settings.static_config)  # fail before the store is created or migrated
    env_session_key()  # a malformed AGW_SESSION_KEY too
    db = await open_database(
        settings.store_url or settings.config_store, secret_key=settings.secret_key
    )
    try:
        manager = ConfigManager(
            db, provider_types=settings.provider_types, static_path=settings.static_config
        )
        await manager.start()
        await db.watch(manager.refresh)  # PostgreSQL: the other replicas' writes
    except BaseException:
        await db.close()
        raise
    return db, manager


@dataclass
class Apps:
    """The admin app and the data-plane app, and the long-lived services they share, as
    :func:`compose` built them; ``close`` ends those services (the store stays open)."""

    admin: Quart
    data: ASGIApp
    recorder: UsageRecorder
    mcp_runtime: McpState
    acp: AcpPlane
    janitor: RetentionJanitor
    identity: Identity
    limiter: Limiter
    tracer: TraceExporter | None = None

    def drain(self) -> None:
        """End the streams that never end by themselves (standalone MCP streams, the ACP HTTP
        transport's), so that a graceful shutdown does not wait its whole grace period."""
        self.mcp_runtime.drain()
        self.acp.drain()

    async def close(self) -> None:
        await self.mcp_runtime.close()  # idempotent; the lifespan shutdown closed it already
        await self.acp.close()  # idempotent too: no agent process outlives the gateway
        await self.janitor.close()
        await self.identity.close()  # idempotent: the data app's lifespan closed it already
        await self.limiter.close()  # idempotent: saves what changed since
        await self.recorder.close()
        if self.tracer is not None:  # after the recorder: its last events are spans too
            await asyncio.to_thread(self.tracer.close)


def _replica(settings: Settings) -> Replica:
    """``--replica-id`` (ids tagged with it), else hostname:port of the data listener (untagged)."""
    if settings.replica_id:
        return Replica(settings.replica_id, tagged=True)
    port = split_host_port(settings.addr)[1]
    return Replica(f"{socket.gethostname()}:{port}", tagged=False)


def _limit_backend(
    settings: Settings, db: Store, prometheus: PrometheusMetrics
) -> LimitBackend | None:
    """Where the limit counters live (docs/scale-out.md#shared-limits): Redis, leases from the
    shared store (their failures on /metrics either way), or None: in this process."""
    mode = settings.limit_mode
    backend: RedisBackend | LeaseBackend
    if mode == "redis":
        from agw.policy.limit_redis import RedisBackend

        backend = RedisBackend(settings.redis_url)
    elif mode == "store":
        from agw.policy.limit_lease import LeaseBackend

        backend = LeaseBackend(db)
    else:
        return None
    prometheus.registry.register(backend.metrics)
    log.info("limit_counters", extra={"mode": mode})
    return backend


def compose(
    settings: Settings,
    db: Store,
    manager: ConfigManager,
    *,
    access_log: AccessLog | None,
    gateway_url: str,
    worker: int | None = None,
) -> Apps:
    """Both apps over one store and one config, with every plane, the usage pipeline and the
    retention janitor started (in the running loop). ``gateway_url``: what gateway-run agents
    are told to call back (the data listener). agwd serves the apps on its listeners; the
    in-process tests drive them through ``httpx.ASGITransport`` (see :func:`in_process`)."""
    # MCP session ids any replica with the same key opens (docs/scale-out.md)
    mcp_key = env_session_key() or db.box.session_key
    auth = admin_auth(settings)
    recorder = UsageRecorder(db, spool=open_spool(settings, worker))  # worker: --workers index
    if access_log is not None:
        recorder.add_tap(access_log)
    prometheus = PrometheusMetrics(recorder)
    recorder.add_tap(prometheus)
    tracer = None
    if settings.otlp_endpoint:
        # imported only when asked for: the OpenTelemetry SDK and protobuf take 5 MiB
        from agw.tracing import TraceExporter

        tracer = TraceExporter(settings.otlp_endpoint, settings.trace_content)
        recorder.add_tap(tracer)
    recorder.start()
    directory = SessionDirectory()  # ACP sessions, for LLM and MCP usage attribution
    identity = Identity(directory)  # step 2: virtual keys and JWTs
    limiter = Limiter(db, _limit_backend(settings, db, prometheus))  # step 3: limits and budgets
    llm = LlmPlane(recorder, trace_content=settings.trace_content, limiter=limiter)
    mcp_runtime = McpState(manager, session_key=mcp_key)
    mcp = McpPlane(recorder, mcp_runtime, limiter=limiter)
    acp_runtime = AcpRuntime(manager, directory=directory, gateway_url=lambda: gateway_url)
    acp = AcpPlane(recorder, acp_runtime, limiter=limiter, replica=_replica(settings))
    admin = create_admin_app(
        manager,
        auth,
        llm.catalog,
        llm.health,
        mcp_runtime=mcp_runtime,
        acp_runtime=acp_runtime,
        acp_permissions=acp.permissions,
        recorder=recorder,
        db=db,
        prometheus=prometheus,
        policy=HostPolicy.for_listener(
            settings.admin_addr, settings.admin_hosts, settings.admin_cors_origins
        ),
        identity=identity,
        limiter=limiter,
    )
    janitor = RetentionJanitor(db, settings.metrics_retention_days)
    janitor.start()
    a2a = A2aPlane(recorder, limiter=limiter)  # remote agents behind a2a routes (docs/a2a.md)
    planes: dict[str, Plane] = {"llm": llm, "mcp": mcp, "acp": acp, "a2a": a2a}
    data = create_data_app(
        manager,
        planes,
        max_agent_depth=settings.max_agent_depth,
        directory=directory,
        access_log=access_log,
        policy=HostPolicy.for_listener(
            settings.addr, settings.allowed_hosts, settings.allowed_origins
        ),
        identity=identity,
        limiter=limiter,
    )
    return Apps(admin, data, recorder, mcp_runtime, acp, janitor, identity, limiter, tracer)


@contextlib.asynccontextmanager
async def in_process(settings: Settings, gateway_url: str) -> AsyncIterator[Apps]:
    """The gateway without listeners nor access log: the store opened, both apps composed as
    agwd composes them; all of it closed on exit. The caller serves the apps (runs their
    lifespans) itself: the in-process test tier, tests/support/inproc.py."""
    db, manager = await open_store(settings)
    try:
        apps = compose(settings, db, manager, access_log=None, gateway_url=gateway_url)
        try:
            yield apps
        finally:
            await apps.close()
    finally:
        await db.close()


class _QuietUvicorn(uvicorn.Server):
    """uvicorn without its own signal handling: agwd owns SIGTERM, SIGINT and SIGHUP."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


@dataclass
class Gateway:
    settings: Settings
    db: Store
    manager: ConfigManager
    admin_sock: socket.socket | None
    data_sock: socket.socket
    shutdown: asyncio.Event = field(default_factory=asyncio.Event)
    access_log: AccessLog | None = None
    worker: WorkerSlot | None = None  # agwd --workers N (agw.workers): this process's slot

    @classmethod
    async def open(cls, settings: Settings, worker: WorkerSlot | None = None) -> Gateway:
        """The store opened and the listeners bound, or, in a worker, inherited."""
        db, manager = await open_store(settings)
        access_log: AccessLog | None = None
        try:
            if settings.access_log != OFF:
                try:
                    access_log = AccessLog(
                        settings.access_log, worker=None if worker is None else worker.index
                    )
                except OSError as exc:
                    raise OSError(
                        f"cannot open access log {settings.access_log}: {exc.strerror or exc}"
                    ) from None
            if worker is not None:
                return cls(
                    settings,
                    db,
                    manager,
                    worker.admin_sock,
                    worker.data_sock,
                    access_log=access_log,
                    worker=worker,
                )
            data_sock = bind(settings.addr)
            try:
                admin_sock = None if shares_listener(settings) else bind(settings.admin_addr)
            except OSError:
                data_sock.close()
                raise
        except BaseException:
            if access_log is not None:
                access_log.close()
            await db.close()
            raise
        return cls(settings, db, manager, admin_sock, data_sock, access_log=access_log)

    def reopen_logs(self) -> None:
        """After log rotation (SIGHUP): the access log file starts anew."""
        if self.access_log is not None:
            try:
                self.access_log.reopen()
            except OSError as exc:
                log.error("access_log_reopen_failed", extra={"error": exc.strerror})

    @property
    def data_addr(self) -> str:
        return bound_addr(self.data_sock)

    @property
    def admin_addr(self) -> str:
        return bound_addr(self.admin_sock or self.data_sock)

    def _config(self) -> Config:
        """hypercorn's settings; the listener limits are set by serve_hypercorn."""
        config = Config()
        config.graceful_timeout = self.settings.shutdown_grace_seconds
        config.accesslog = None
        config.errorlog = logging.getLogger("hypercorn.error")
        return config

    async def serve(self, on_ready: Callable[[], None] | None = None) -> None:
        # what agents are told to call back (gateway_origin): the data listener, on loopback
        # when it listens on every interface
        data_url = "http://" + local_addr(self.data_addr)
        try:
            apps = compose(
                self.settings,
                self.db,
                self.manager,
                access_log=self.access_log,
                gateway_url=data_url,
                worker=None if self.worker is None else self.worker.index,
            )
        except BaseException:  # the store's thread would keep the process alive: agwd hung
            if self.access_log is not None:
                self.access_log.close()
            await self.db.close()
            raise
        admin: Any = apps.admin  # Quart's ASGI signature is its own, narrower one
        data = apps.data
        servers: list[tuple[Any, socket.socket]] = []
        if self.worker is not None and not self.worker.serves_admin:
            servers.append((data, self.data_sock))
        elif self.admin_sock is None:
            servers.append((combined_app(admin, data), self.data_sock))
        else:
            servers.append((data, self.data_sock))
            servers.append((admin, self.admin_sock))
        addrs = [bound_addr(s) for _, s in servers]
        tasks = []

        async def drain_on_shutdown() -> None:
            # the standalone MCP streams and the ACP HTTP transport's streams never end by
            # themselves: end them as the servers stop, or they would hold the graceful
            # shutdown for its whole grace period
            await self.shutdown.wait()
            apps.drain()

        drainer = asyncio.create_task(drain_on_shutdown())
        follower = None
        worker = self.worker
        if worker is not None:
            if worker.serves_admin:  # the one config writer tells the other workers
                self.manager.on_swap(lambda _snapshot: worker.generation.bump())
            follower = asyncio.create_task(worker.follow(self.manager, self.shutdown))
        caps = connection_caps(self.settings.max_connections)
        log.info(
            "listener_limits", extra={"max_connections": caps[0], "admin_max_connections": caps[1]}
        )
        for i, (app, sock) in enumerate(servers):
            limits = ListenerLimits.from_settings(self.settings, caps[min(i, 1)])
            if i == 0 and self.settings.data_server == "uvicorn":
                tasks.append(asyncio.create_task(self._uvicorn(app, sock, limits)))
            else:
                served = serve_hypercorn(app, self._config(), sock, limits, self.shutdown.wait)
                tasks.append(asyncio.create_task(served))
        try:
            await self._wait_accepting(addrs, tasks)
            if self.worker is None:
                log.info("agwd_ready", extra={"addr": addrs[0], "admin_addr": addrs[-1]})
            else:  # the supervisor says agwd_ready once every worker is
                self.worker.ready()
            if on_ready is not None:
                on_ready()
            await asyncio.gather(*tasks)
        finally:
            drainer.cancel()
            if follower is not None:
                follower.cancel()
                tasks.append(follower)
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, drainer, return_exceptions=True)
            await apps.close()
            if self.access_log is not None:
                self.access_log.close()
            await self.db.close()

    async def _uvicorn(self, app: Any, sock: socket.socket, limits: ListenerLimits) -> None:
        """The data listener on uvicorn (httptools): what scripts/bench measured fastest for
        the data plane (docs/performance.md). Signals stay with agwd."""
        config = uvicorn.Config(
            app,
            lifespan="on",
            loop="none",
            http=httptools_protocol(limits),  # httptools, with the listener limits
            log_config=None,
            access_log=False,
            proxy_headers=False,  # X-Forwarded-* are not trusted for anything here
            ws="none",  # no route speaks WebSocket: an upgrade is served as plain HTTP
            timeout_keep_alive=limits.keep_alive_timeout_s,  # type: ignore[arg-type]
            timeout_graceful_shutdown=int(self.settings.shutdown_grace_seconds),
        )
        server = _QuietUvicorn(config)

        async def stop_on_shutdown() -> None:
            await self.shutdown.wait()
            server.should_exit = True

        stopper = asyncio.create_task(stop_on_shutdown())
        sweeper = asyncio.create_task(sweep_httptools(server.server_state.connections, limits))
        try:
            await server.serve(sockets=[sock])
        finally:
            stopper.cancel()
            sweeper.cancel()

    async def _wait_accepting(self, addrs: list[str], tasks: list[asyncio.Task[None]]) -> None:
        """Both listeners answer HTTP (bounded: 100 tries, 10 s)."""
        async with httpx.AsyncClient(timeout=1.0, trust_env=False) as client:
            for addr in addrs:
                url = f"http://{local_addr(addr)}/admin/health"
                for _ in range(100):
                    if any(t.done() for t in tasks):
                        for t in tasks:
                            if t.done():
                                t.result()
                    try:
                        await client.get(url, headers={READINESS_HEADER: "1"})
                        break
                    except httpx.TransportError:
                        await asyncio.sleep(0.1)
