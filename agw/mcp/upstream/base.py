"""The interface every upstream MCP transport implements (the factory is :mod:`agw.mcp.upstream`).

An :class:`Upstream` is one MCP client session with one upstream server: it does the handshake
(``initialize`` + ``notifications/initialized``, or ``server/discover`` for a modern-only server),
numbers its own requests (so concurrent calls never share an id), and gives each call's
upstream-side messages (progress, logging, server->client requests) to that call's ``on_message``.
Messages that belong to no call (``list_changed``, logging between calls, a server->client request
with no call in flight) go to the ``listener`` given at construction.

Who owns an upstream (see :mod:`agw.mcp.pool`): a stdio server is one process per service,
shared by every client of the gateway; an HTTP upstream session belongs to one downstream
session, so no client's upstream session state reaches another.
"""

from __future__ import annotations

import asyncio
import base64
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable
from typing import Any

from agw.config.mcp import McpService
from agw.logs import scrub
from agw.mcp.jsonrpc import METHOD_NOT_FOUND, RequestId
from agw.mcp.protocol import CLIENT_CAPABILITIES, CLIENT_INFO, UPSTREAM_PROTOCOL_VERSION
from agw.types import JsonObj

DEFAULT_CALL_TIMEOUT_S = 300.0
HANDSHAKE_TIMEOUT_S = 30.0
# The largest message the gateway reads from an HTTP upstream: a JSON answer's body, or one
# SSE event (docs/mcp.md, "Services: the upstreams"). A stdio line has its own limit
# (agw.mcp.upstream.stdio.LINE_LIMIT).
MESSAGE_LIMIT = 32 * 1024 * 1024

# An upstream message addressed to the client side while a call runs: a notification
# (progress, logging, ...) or a server->client request (sampling, elicitation, roots). The
# callee answers a request later with :meth:`Upstream.reply`, using the message's own id.
OnMessage = Callable[[JsonObj], Awaitable[None]]
Listener = Callable[["Upstream", JsonObj], Awaitable[None]]


_MANY = "\x00many"


class UpstreamError(Exception):
    """The upstream could not be used: unreachable, died, timed out, spoke nonsense. (A JSON-RPC
    error the upstream answered is an :class:`agw.mcp.jsonrpc.RpcError` instead.)"""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        # scrubbed: it reaches data-plane clients, admin views and logs, and aiohttp's errors
        # quote the service's URL with its credentials (``user:pass@``, ``?api_key=``)
        message = scrub(message)
        super().__init__(message)
        self.message = message
        self.status = status  # the upstream's HTTP status, when it answered one


class Upstream(ABC):
    """One client session with one upstream MCP server."""

    def __init__(self, service: McpService, listener: Listener | None = None) -> None:
        self.service = service
        self.listener = listener
        self.state = "connecting"  # connecting | ready | error | closed
        self.session_id: str | None = None  # the upstream's own session id (HTTP transports)
        self.init_result: JsonObj | None = None  # InitializeResult (or discover result, adapted)
        self.protocol_version: str | None = None
        self.last_error: str | None = None
        self.created_at_ms = 0
        self.last_used_at_ms = 0
        # whom this upstream has served: one tenant (a virtual key, or a keyless session; see
        # DownstreamSession.tenant), or _MANY once a second one (or the admin API) used it,
        # for good (a restarted process included). What it sends that names no request can
        # only be given to a tenant it has served alone.
        self._tenant: str | None = None

    @property
    def transport(self) -> str:
        return self.service.transport

    def admit(self, tenant: str) -> None:
        """``tenant`` (a virtual key or a keyless session) uses this upstream."""
        if self._tenant is None:
            self._tenant = tenant
        elif self._tenant != tenant:
            self._tenant = _MANY

    @property
    def sole_tenant(self) -> str | None:
        """The one tenant served so far, or None (nobody yet, or several)."""
        return None if self._tenant in (None, _MANY) else self._tenant

    def serves_only(self, tenant: str) -> bool:
        return self._tenant == tenant

    @abstractmethod
    async def ensure_ready(self) -> JsonObj:
        """Connect and do the handshake once (concurrent callers share it); the initialize
        result: ``protocolVersion``, ``capabilities``, ``serverInfo``, ``instructions``.
        Raises UpstreamError (or RpcError when the upstream refused the handshake)."""

    @abstractmethod
    async def request(
        self,
        method: str,
        params: JsonObj | None = None,
        *,
        on_message: OnMessage | None = None,
        timeout: float | None = DEFAULT_CALL_TIMEOUT_S,  # noqa: ASYNC109  # per call, set by the caller
    ) -> Any:
        """Send one request (after :meth:`ensure_ready`) and return its ``result``.

        Raises RpcError for a JSON-RPC error answer and UpstreamError for everything else. If
        the awaiting task is cancelled, the upstream gets ``notifications/cancelled`` with the
        upstream-side request id (handshake era; closing the stream in the modern era) and the
        cancellation propagates. An HTTP upstream whose session expired (404) is initialised
        again once, transparently, and the request re-sent."""

    @abstractmethod
    async def notify(self, method: str, params: JsonObj | None = None) -> None:
        """Send one notification."""

    @abstractmethod
    async def reply(
        self, request_id: RequestId, result: Any = None, error: JsonObj | None = None
    ) -> None:
        """Answer a server->client request the upstream sent (by its own id)."""

    @abstractmethod
    async def close(self) -> None:
        """End the session (HTTP DELETE where the upstream has a session; stdio: close stdin,
        then SIGTERM, then SIGKILL to the process group). Idempotent; in-flight calls fail
        with UpstreamError."""

    def describe(self) -> dict[str, Any]:
        """The admin view of this session (reference §5.8 ``sessions``)."""
        sid = self.session_id
        return {
            "service_id": self.service.id,
            "upstream_session_id": (sid[:8] + "****") if sid else None,
            "transport": self.transport,
            "state": self.state,
            "protocol_version": self.protocol_version,
            "last_error": self.last_error,
            "created_at": self.created_at_ms,
            "last_used_at": self.last_used_at_ms,
        }


def auth_headers(service: McpService) -> dict[str, str]:
    """The service's own credentials (never the client's)."""
    auth = service.auth
    if auth.type in ("api_key", "bearer", "oauth2") and auth.api_key:
        return {"authorization": f"Bearer {auth.api_key}"}
    if auth.type == "basic":
        token = base64.b64encode(f"{auth.username}:{auth.password}".encode()).decode()
        return {"authorization": f"Basic {token}"}
    return {}


def initialize_params() -> JsonObj:
    """The ``initialize`` request's params (handshake era)."""
    return {
        "protocolVersion": UPSTREAM_PROTOCOL_VERSION,
        "capabilities": CLIENT_CAPABILITIES,
        "clientInfo": CLIENT_INFO,
    }


async def ready_within(upstream: Upstream, timeout: float | None) -> None:  # noqa: ASYNC109
    """``ensure_ready`` bounded by a call's own timeout (the handshake goes on for others)."""
    try:
        async with asyncio.timeout(timeout):
            await upstream.ensure_ready()
    except TimeoutError:
        raise UpstreamError(
            f"mcp service {upstream.service.id} was not ready within {timeout:g}s"
        ) from None


def error_response(msg_id: RequestId, err: JsonObj) -> JsonObj:
    return {"jsonrpc": "2.0", "id": msg_id, "error": err}


def refusal(msg: JsonObj) -> JsonObj:
    """The answer to a server->client request nobody on the gateway side can take."""
    method = msg.get("method")
    err = {"code": METHOD_NOT_FOUND, "message": f"client does not support {method}"}
    return error_response(msg["id"], err)


def retrieve(task: asyncio.Task[Any]) -> None:
    """A done callback: a task's exception counts as seen (nobody may await it)."""
    if not task.cancelled():
        task.exception()
