"""The legacy HTTP+SSE upstream (protocol 2024-11-05 transport, aiohttp).

GET ``service.url`` (``Accept: text/event-stream``) opens the stream; its first ``endpoint`` event
names the URL (usually relative, resolved against ``service.url``, and it must stay on the same
origin) where every client message is POSTed (2xx expected). Without an ``endpoint`` event within
10 s, ``service.post_url`` is used. Every server message arrives as ``event: message`` on the
stream and is matched by id (see :class:`agw.mcp.upstream.channel.ChannelUpstream` for the
routing). When the stream drops, every call in flight fails with :class:`UpstreamError` at once,
the state is ``error``, and the next call reconnects (a new GET, a new endpoint, a new handshake).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from typing import Any
from urllib.parse import parse_qs, urljoin, urlsplit

import aiohttp

from agw.config.mcp import McpService
from agw.mcp.upstream.base import MESSAGE_LIMIT, Listener, UpstreamError, auth_headers
from agw.mcp.upstream.channel import ChannelUpstream
from agw.request import current_client_token, current_trace, traceparent
from agw.sse import SseError, SseEvent, SseParser
from agw.types import JsonObj

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 10.0
ENDPOINT_TIMEOUT_S = 10.0
EXCERPT_CHARS = 300


def _origin(url: str) -> tuple[str, str]:
    parts = urlsplit(url)
    return parts.scheme.lower(), parts.netloc.lower()


class SseUpstream(ChannelUpstream):
    """One legacy SSE session with an upstream MCP server."""

    def __init__(self, service: McpService, listener: Listener | None = None) -> None:
        super().__init__(service, listener)
        self.endpoint: str | None = None
        self._http: aiohttp.ClientSession | None = None
        self._stream: aiohttp.ClientResponse | None = None
        self._reader: asyncio.Task[None] | None = None
        self._endpoint_found: asyncio.Future[str] | None = None

    async def _open(self) -> None:
        sid = self.service.id
        await self._teardown()
        timeout = aiohttp.ClientTimeout(
            total=None, connect=CONNECT_TIMEOUT_S, sock_connect=CONNECT_TIMEOUT_S
        )
        http = self._http = aiohttp.ClientSession(timeout=timeout)
        headers = {"accept": "text/event-stream", **auth_headers(self.service)}
        try:
            resp = await http.get(self.service.url, headers=headers)
        except aiohttp.ClientConnectorError as exc:
            raise UpstreamError(f"mcp service {sid} unreachable: {exc}") from None
        except aiohttp.ClientError as exc:
            raise UpstreamError(f"mcp service {sid} connection failed: {exc!r}") from None
        ctype = resp.headers.get("content-type", "").split(";")[0].strip().lower()
        if resp.status != 200 or ctype != "text/event-stream":
            data = b""
            with contextlib.suppress(aiohttp.ClientError):
                data = await resp.content.read(4096)
            resp.release()
            text = data.decode(errors="replace").strip()[:EXCERPT_CHARS]
            raise UpstreamError(
                f"mcp service {sid} answered the SSE GET with HTTP {resp.status} ({ctype}): {text}",
                status=resp.status,
            )
        self._stream = resp
        found = self._endpoint_found = asyncio.get_running_loop().create_future()
        self._connected = True
        self._reader = asyncio.create_task(self._read(resp, found))
        try:
            async with asyncio.timeout(ENDPOINT_TIMEOUT_S):
                self.endpoint = await asyncio.shield(found)
        except TimeoutError:
            log.warning("mcp_sse_no_endpoint", extra={"service_id": sid})
            self.endpoint = self.service.post_url
        if not self.endpoint:
            raise UpstreamError(f"mcp service {sid} named no endpoint to POST to")
        query = parse_qs(urlsplit(self.endpoint).query)
        found_id = query.get("session_id") or query.get("sessionId")
        self.session_id = found_id[0] if found_id else None

    async def _send(self, msg: JsonObj) -> None:
        sid = self.service.id
        http, endpoint = self._http, self.endpoint
        if not self._connected or http is None or endpoint is None:
            raise UpstreamError(f"mcp service {sid} is not connected")
        headers = {"content-type": "application/json", **auth_headers(self.service)}
        trace = current_trace.get()
        if trace is not None:  # the data-plane request this message is sent for
            headers["traceparent"] = traceparent(trace)
        if self.service.forward_client_token:  # the caller's own JWT, when it asked for that
            token = current_client_token.get()
            if token:
                headers["authorization"] = f"Bearer {token}"
        body = json.dumps(msg, separators=(",", ":"), ensure_ascii=False).encode()
        try:
            async with http.post(endpoint, data=body, headers=headers) as resp:
                if not 200 <= resp.status < 300:
                    data = await resp.content.read(4096)
                    text = data.decode(errors="replace").strip()[:EXCERPT_CHARS]
                    raise UpstreamError(
                        f"mcp service {sid} answered HTTP {resp.status}: {text}",
                        status=resp.status,
                    )
        except aiohttp.ClientConnectorError as exc:
            raise UpstreamError(f"mcp service {sid} unreachable: {exc}") from None
        except aiohttp.ClientError as exc:
            raise UpstreamError(f"mcp service {sid} connection failed: {exc!r}") from None

    async def _abort(self, reason: str) -> None:
        await self._teardown()

    async def _shutdown(self) -> None:
        await self._teardown()

    async def _teardown(self) -> None:
        self._connected = False
        self.endpoint = None
        reader, self._reader = self._reader, None
        if reader is not None and reader is not asyncio.current_task():
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)
        stream, self._stream = self._stream, None
        if stream is not None:
            stream.close()
        http, self._http = self._http, None
        if http is not None:
            await http.close()

    async def _read(self, resp: aiohttp.ClientResponse, found: asyncio.Future[str]) -> None:
        current_trace.set(None)  # what arrives here (and its answers) is no request's
        parser = SseParser(MESSAGE_LIMIT)
        reason = "the server ended the stream"
        try:
            async for chunk in resp.content.iter_any():
                for event in parser.feed(chunk):
                    await self._event(event, found)
            for event in parser.close():
                await self._event(event, found)
        except aiohttp.ClientError:
            reason = "the connection was lost"
        except SseError as exc:
            reason = str(exc)
        except UpstreamError as exc:
            reason = exc.message
        message = f"mcp service {self.service.id} stream closed: {reason}"
        log.warning("mcp_sse_stream_closed", extra={"service_id": self.service.id})
        if not found.done():
            found.set_exception(UpstreamError(message))
            found.exception()
        resp.close()
        if resp is self._stream:
            self._lost(message)

    async def _event(self, event: SseEvent, found: asyncio.Future[str]) -> None:
        if event.event == "endpoint":
            if found.done():
                return
            endpoint = urljoin(self.service.url, event.data.strip())
            if _origin(endpoint) != _origin(self.service.url):
                raise UpstreamError(f"endpoint {endpoint!r} is not on the origin of the SSE URL")
            found.set_result(endpoint)
            return
        if event.event != "message" or not event.data.strip():
            return
        try:
            msg: Any = json.loads(event.data)
        except ValueError:
            log.info("mcp_event_dropped", extra={"service_id": self.service.id})
            return
        for item in msg if isinstance(msg, list) else [msg]:
            await self._receive(item)
