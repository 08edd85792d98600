"""The in-process tier: agw's admin app and data-plane app, composed as agwd composes them
(``agw.server.in_process``) over a real SQLite file under the test's tmp_path, and driven through
``httpx.ASGITransport``: no process to start, no listener, milliseconds per gateway.

Each gateway runs on an event loop of its own, in a thread (an anyio blocking portal), so that a
module-scoped gateway outlives a test and its aiosqlite connection, usage writer and janitor keep
one loop. Sync tests use plain ``httpx.Client`` objects (``gateway.client()``,
``gateway.data_client()``) whose transport hands every request to an ``httpx.ASGITransport`` on
that loop; async code runs on the same loop with ``gateway.call(fn, ...)`` and there uses
``httpx.AsyncClient(transport=gateway.admin_transport)``. Both apps have run their ASGI lifespan
(startup before the first request, shutdown at ``stop()``), as under agwd's servers.

Fake upstreams stay real servers on 127.0.0.1 (tests/fakes). What the in-process tier does not
have, and tests/support/agwd.py keeps: the listeners (head limits, keep-alive, raw bytes,
``Connection: close``), flags and environment parsing, signals, the JSON log on stderr, the
generated password file, the CLIs. Nothing listens at ``data_url``: agents a gateway runs cannot
call it back. Environment variables given to ``start`` (static config ``${VAR}``) are set in this
process until the launcher closes.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar, cast

import anyio
import httpx
import pytest
from anyio.from_thread import BlockingPortal, start_blocking_portal

from agw.server import Apps, in_process
from agw.settings import Settings
from agw.types import ASGIApp, Message
from agw.usage.accesslog import OFF
from tests.support.agwd import ADMIN_PASSWORD, ADMIN_USER

T = TypeVar("T")
# what the apps are told they listen on (Host, the admin API's trusted names): nothing binds
ADMIN_ADDR = "127.0.0.1:8019"
DATA_ADDR = "127.0.0.1:8080"
REQUEST_TIMEOUT_S = 60.0  # one request, app included: a hung handler fails the test


# ------------------------------------------------------------------------------ ASGI lifespan


@contextlib.asynccontextmanager
async def lifespan(app: ASGIApp) -> AsyncIterator[None]:
    """Run ``app``'s ASGI lifespan around the block, as a server does: startup before, shutdown
    after; an app that fails either (or returns without answering) raises here."""
    inbox: asyncio.Queue[Message] = asyncio.Queue()
    outbox: asyncio.Queue[Message] = asyncio.Queue()
    scope = {"type": "lifespan", "asgi": {"version": "3.0", "spec_version": "2.0"}, "state": {}}

    async def run() -> None:
        await app(scope, inbox.get, outbox.put)

    task = asyncio.create_task(run())

    async def step(kind: str) -> None:
        await inbox.put({"type": f"lifespan.{kind}"})
        reply = asyncio.create_task(outbox.get())
        await asyncio.wait({reply, task}, return_when=asyncio.FIRST_COMPLETED)
        if not reply.done():
            reply.cancel()
            task.result()  # the app's own exception, if it raised one
            raise RuntimeError(f"the app returned during lifespan {kind}")
        message = reply.result()
        if message["type"] != f"lifespan.{kind}.complete":
            raise RuntimeError(f"lifespan {kind} failed: {message.get('message', message)}")

    try:
        await step("startup")
        try:
            yield
        finally:
            await step("shutdown")
        await task
    finally:
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


@contextlib.asynccontextmanager
async def serving(settings: Settings, gateway_url: str) -> AsyncIterator[Apps]:
    """The composed gateway with both apps' lifespans running."""
    async with (
        in_process(settings, gateway_url) as apps,
        lifespan(admin_asgi(apps)),
        lifespan(apps.data),
    ):
        yield apps


def admin_asgi(apps: Apps) -> ASGIApp:
    # Quart's ASGI signature is its own, narrower one; it is an ASGI app all the same
    return cast(ASGIApp, apps.admin)


# ------------------------------------------------------------------------- sync httpx bridge


class PortalTransport(httpx.BaseTransport):
    """A sync httpx transport for an ASGI app served on a portal's loop: each request is sent
    there through ``asgi`` (an ``httpx.ASGITransport``), its body read whole."""

    def __init__(self, portal: BlockingPortal, asgi: httpx.ASGITransport) -> None:
        self._portal = portal
        self._asgi = asgi

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        body = request.read()  # on the caller's thread: a sync body cannot cross to the loop
        return self._portal.call(self._send, request, body)

    async def _send(self, request: httpx.Request, body: bytes) -> httpx.Response:
        # stream= keeps the headers exactly as sent (Transfer-Encoding included)
        forwarded = httpx.Request(
            request.method,
            request.url,
            headers=request.headers,
            stream=httpx.ByteStream(body),
            extensions=request.extensions,
        )
        with anyio.fail_after(REQUEST_TIMEOUT_S):
            response = await self._asgi.handle_async_request(forwarded)
            content = await response.aread()
        return httpx.Response(
            response.status_code,
            headers=response.headers,
            stream=httpx.ByteStream(content),
            extensions=response.extensions,
        )


# ------------------------------------------------------------------------------- the gateway


@dataclass
class InprocGateway:
    """One in-process gateway: both apps, its store file, clients for each app."""

    portal: BlockingPortal
    settings: Settings
    apps: Apps
    workdir: Path
    auth: str | None  # user:password the admin client sends; None: no credentials
    admin_url: str = f"http://{ADMIN_ADDR}"
    data_url: str = f"http://{DATA_ADDR}"
    _stack: contextlib.ExitStack = field(default_factory=contextlib.ExitStack)

    @property
    def db_path(self) -> Path:
        return self.settings.config_store

    @property
    def store(self) -> Path | str:
        """The store: its file, or its PostgreSQL URL."""
        return self.settings.store_url or self.settings.config_store

    @property
    def admin_transport(self) -> httpx.ASGITransport:
        """For ``httpx.AsyncClient`` on this gateway's loop (inside ``call``)."""
        return httpx.ASGITransport(app=admin_asgi(self.apps))

    @property
    def data_transport(self) -> httpx.ASGITransport:
        return httpx.ASGITransport(app=self.apps.data)

    def client(self, *, auth: bool = True) -> httpx.Client:
        """A sync client of the admin app, with the admin credentials unless ``auth=False``."""
        basic = None
        if auth and self.auth:
            user, _, password = self.auth.partition(":")
            basic = (user, password)
        transport = PortalTransport(self.portal, self.admin_transport)
        return httpx.Client(base_url=self.admin_url, auth=basic, transport=transport)

    def data_client(self, **kwargs: Any) -> httpx.Client:
        """A sync client of the data-plane app (``kwargs`` go to ``httpx.Client``)."""
        transport = PortalTransport(self.portal, self.data_transport)
        return httpx.Client(base_url=self.data_url, transport=transport, **kwargs)

    def call(self, fn: Callable[..., Awaitable[T]], *args: object) -> T:
        """Run ``fn(*args)`` on this gateway's loop and return its result."""
        return self.portal.call(fn, *args)

    def stop(self) -> None:
        """Shut down as agwd does (lifespans, then services, then the store); idempotent."""
        self._stack.close()


class InprocLauncher:
    """Starts in-process gateways under ``base``; ``close`` stops those still running."""

    def __init__(self, base: Path, admin_hash: str) -> None:
        self.base = base
        self.admin_hash = admin_hash
        self.started: list[InprocGateway] = []
        self.count = 0
        self._env = pytest.MonkeyPatch()

    def start(
        self,
        *,
        auth: bool = True,
        db_path: Path | None = None,
        static: Path | None = None,
        env: dict[str, str] | None = None,
        **settings: Any,
    ) -> InprocGateway:
        """A gateway on a new store (or on ``db_path``); ``auth=False`` serves the admin API
        without authentication (``--admin-insecure``); ``settings`` are other
        :class:`agw.settings.Settings` fields (``provider_types``, ``admin_cors_origins``...)."""
        self.count += 1
        workdir = self.base / f"inproc{self.count}"
        workdir.mkdir(parents=True, exist_ok=True)
        for name, value in (env or {}).items():
            self._env.setenv(name, value)
        config = Settings(
            addr=DATA_ADDR,
            admin_addr=ADMIN_ADDR,
            admin_basic_auth_hash=self.admin_hash if auth else "",
            admin_insecure=not auth,
            config_store=db_path or workdir / "data" / "configstore.db",
            static_config=static,
            access_log=OFF,
            **settings,
        )
        with contextlib.ExitStack() as stack:
            portal = stack.enter_context(start_blocking_portal())
            apps = stack.enter_context(
                portal.wrap_async_context_manager(serving(config, f"http://{DATA_ADDR}"))
            )
            gateway = InprocGateway(
                portal, config, apps, workdir, f"{ADMIN_USER}:{ADMIN_PASSWORD}" if auth else None
            )
            gateway._stack.push(stack.pop_all())
        self.started.append(gateway)
        return gateway

    def close(self) -> None:
        try:
            for gateway in reversed(self.started):
                gateway.stop()
        finally:
            self._env.undo()
