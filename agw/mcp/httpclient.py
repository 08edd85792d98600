"""The MCP plane's HTTP/1.1 client to its upstream servers: kept-alive connections on asyncio
and httptools, and nothing else.

An MCP upstream call is one small POST answered with JSON (or an SSE stream) on a connection to
one origin, again and again: what a general client does besides (cookies, proxies, tracing
hooks, per-request timer objects) is CPU on every call and none of it is needed here. One
:class:`HttpClient` serves one upstream URL:

- connections are kept alive and reused, most recently used first, at most ``limit`` at once
  (more requests wait for one); one the server closed while idle is dropped. A request sent on a
  *reused* connection that ends before any byte of an answer (a stale keep-alive) is sent again
  once, on a new connection; one sent on a new connection never is (a ``tools/call`` is not
  idempotent);
- redirects: ``307`` and ``308`` are followed for every method, the method and body kept, at
  most ``MAX_REDIRECTS`` hops (then :class:`TooManyRedirects`). ``301``/``302``/``303`` are
  followed for a ``GET`` only; a ``POST`` or ``DELETE`` gets them as its answer (aiohttp turned
  such a POST into a body-less GET, which an MCP server cannot take as the call). Leaving the
  configured origin drops ``Authorization``, ``Cookie`` and ``Proxy-Authorization`` for the rest
  of the chain; a redirect from ``https`` to ``http``, or to another scheme, is refused;
  credentials in a redirect's URL are not used. Another origin is served by its own small pool
  (the last ``MAX_ORIGINS``);
- no ``Accept-Encoding`` is sent; an answer in ``gzip`` or ``deflate`` anyway is decoded within
  the reader's limit (a decompression bomb is :class:`BodyTooLarge`), any other content or
  transfer coding is :class:`Undecodable` / :class:`Disconnected`, never read as it is;
- ``https`` with the system's trust store, the host (name or IP address) checked; credentials in
  the URL (``user:pass@``) are sent as ``Authorization: Basic`` unless the request has its own;
- a header name that is not a token, or a value with CR, LF or NUL, is refused before anything
  is sent; a request target's spaces, controls and non-ASCII are percent-encoded;
- an answer's head (interim ``1xx`` answers included) is at most ``HEAD_LIMIT`` bytes; its body
  is read whole (:meth:`Response.read`, bounded), by its first bytes
  (:meth:`Response.read_prefix`), or as it comes (:meth:`Response.chunks`, for SSE), with the
  connection's reading paused while more than ``BUFFER_HIGH`` bytes wait to be taken (the
  answer side is :mod:`agw.mcp.http_connection`);
- :meth:`Response.close` drops the connection (how a stream is cancelled); an answer read whole
  and kept alive by the server goes back to the pool on :meth:`Response.release`; an answer the
  server did not ask for is never kept for the next request;
- timeouts are the caller's (``asyncio.timeout`` around the call; a cancelled call drops its
  connection and its place in the queue), except connecting (``connect_timeout``).

Errors are :class:`HttpClientError`: :class:`Unreachable` (no connection), :class:`Disconnected`
(the connection ended before the answer did; :class:`NoAnswer` when before its first byte),
:class:`BodyTooLarge`, :class:`Undecodable`, :class:`TooManyRedirects`, and ``closed`` when the
client was closed meanwhile. No message carries the URL's credentials.
"""

from __future__ import annotations

import asyncio
import base64
import re
import ssl
from collections import deque
from collections.abc import Coroutine, Mapping
from typing import Any
from urllib.parse import quote, unquote, urljoin, urlsplit

from agw.mcp.http_connection import (
    BUFFER_HIGH,
    BodyTooLarge,
    Connection,
    Disconnected,
    HttpClientError,
    NoAnswer,
    Response,
    TooManyRedirects,
    Undecodable,
    Unreachable,
)

__all__ = [
    "BUFFER_HIGH",
    "BodyTooLarge",
    "Disconnected",
    "HttpClient",
    "HttpClientError",
    "NoAnswer",
    "Response",
    "TooManyRedirects",
    "Undecodable",
    "Unreachable",
]

DEFAULT_LIMIT = 100  # connections at once, as aiohttp's default connector
MAX_REDIRECTS = 5
MAX_ORIGINS = 4  # other origins a redirect led to, each with its own pool
REDIRECT_BODY_LIMIT = 64 * 1024  # a redirect's body is read and dropped up to this, else closed

_REDIRECTS = frozenset((301, 302, 303, 307, 308))
_CREDENTIALS = frozenset(("authorization", "cookie", "proxy-authorization"))
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_BAD_VALUE = re.compile(r"[\r\n\x00]")
_HOST = re.compile(r"[A-Za-z0-9._~:%-]+")
_UNSAFE_TARGET = re.compile(r"[^\x21-\x7e]+")


def _basic(user: str, password: str) -> str:
    token = base64.b64encode(f"{unquote(user)}:{unquote(password)}".encode()).decode()
    return f"Basic {token}"


def _parse(url: str) -> tuple[str, str, int, str]:
    """The scheme, host (ASCII), port and request target of an http(s) URL; ValueError if it
    is none."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise ValueError(f"not an http(s) URL: scheme {parts.scheme!r}")
    host = parts.hostname or ""
    if not host.isascii():
        host = host.encode("idna").decode("ascii")  # UnicodeError is a ValueError
    if not _HOST.fullmatch(host):
        raise ValueError(f"not a host: {host[:80]!r}")
    port = parts.port or (443 if parts.scheme == "https" else 80)  # ValueError if bad
    target = parts.path or "/"
    if parts.query:
        target = f"{target}?{parts.query}"
    return parts.scheme, host, port, _UNSAFE_TARGET.sub(lambda m: quote(m[0], safe=""), target)


class HttpClient:
    """Kept-alive HTTP/1.1 connections to one URL (see the module docstring)."""

    def __init__(
        self, url: str, *, connect_timeout: float = 10.0, limit: int = DEFAULT_LIMIT
    ) -> None:
        self.scheme, self.host, self.port, self.target = _parse(url)
        default = 443 if self.scheme == "https" else 80
        host = f"[{self.host}]" if ":" in self.host else self.host
        self.host_header = host if self.port == default else f"{host}:{self.port}"
        self.origin = f"{self.scheme}://{self.host_header}"
        parts = urlsplit(url)
        self.authorization = (
            _basic(parts.username or "", parts.password or "")
            if parts.username is not None
            else None
        )
        self.connect_timeout = connect_timeout
        self.limit = max(1, limit)
        self.closed = False
        self._ssl: ssl.SSLContext | None = (
            ssl.create_default_context() if self.scheme == "https" else None
        )
        self._idle: list[Connection] = []
        self._open: set[Connection] = set()
        self._connecting = 0
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._others: dict[tuple[str, str, int], HttpClient] = {}  # origins redirected to
        self._names: set[str] = set()  # header names found to be tokens

    # ------------------------------------------------------------------------- connections

    def forget(self, connection: Connection) -> None:
        if connection in self._open:
            self._open.discard(connection)
            self._wake_waiter()  # a place for another connection
        if connection in self._idle:
            self._idle.remove(connection)

    def reuse(self, connection: Connection) -> None:
        if self.closed:
            connection.abort()
            return
        self._idle.append(connection)
        self._wake_waiter()

    def _wake_waiter(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    def _idle_one(self) -> Connection | None:
        """The most recently used idle connection still open, if any."""
        while self._idle:
            connection = self._idle.pop()
            transport = connection.transport
            if not connection.lost and transport is not None and not transport.is_closing():
                return connection
        return None

    async def _connection(self, fresh: bool) -> tuple[Connection, bool]:
        """An idle connection (True: reused), unless ``fresh``, or a new one within the
        limit (an idle one is closed to make room for a fresh one)."""
        while True:
            if self.closed:
                raise HttpClientError("client closed")
            connection = None if fresh else self._idle_one()
            if connection is not None:
                return connection, True
            if len(self._open) + self._connecting < self.limit:
                return await self._connect(), False
            if self._idle:  # fresh, at the limit
                self._idle[0].abort()
                continue
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            except BaseException:
                if waiter.cancelled():
                    self._waiters.remove(waiter)
                elif waiter.done():
                    self._wake_waiter()  # woken, then cancelled: pass the turn on
                raise

    async def _connect(self) -> Connection:
        loop = asyncio.get_running_loop()
        self._connecting += 1
        try:
            async with asyncio.timeout(self.connect_timeout):
                _, connection = await loop.create_connection(
                    lambda: Connection(self),
                    self.host,
                    self.port,
                    ssl=self._ssl,
                    server_hostname=self.host if self._ssl is not None else None,
                )
        except TimeoutError:
            raise Unreachable(
                f"cannot connect to {self.host_header}: timed out after {self.connect_timeout:g}s"
            ) from None
        except OSError as exc:
            raise Unreachable(f"cannot connect to {self.host_header}: {exc}") from None
        finally:
            self._connecting -= 1
            self._wake_waiter()
        if self.closed:
            connection.abort()
            raise HttpClientError("client closed")
        self._open.add(connection)
        return connection

    def _elsewhere(self, scheme: str, host: str, port: int, url: str) -> HttpClient:
        """The client of the origin a redirect leads to (this one for its own)."""
        if self.closed:
            raise HttpClientError("client closed")
        key = (scheme, host, port)
        if key == (self.scheme, self.host, self.port):
            return self
        other = self._others.pop(key, None)
        if other is None:
            other = HttpClient(url, connect_timeout=self.connect_timeout, limit=self.limit)
            if len(self._others) >= MAX_ORIGINS:  # the least recently redirected to goes
                self._others.pop(next(iter(self._others)))._retire()
        self._others[key] = other
        return other

    def _retire(self) -> None:
        """No new requests; idle connections closed, answers being read finish."""
        self.closed = True
        for connection in list(self._idle):
            connection.abort()
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_result(None)
        self._waiters.clear()

    # ----------------------------------------------------------------------------- requests

    def _head(
        self, method: str, target: str, headers: Mapping[str, str], body: bytes | None
    ) -> bytes:
        lines = [f"{method} {target} HTTP/1.1\r\nhost: {self.host_header}\r\n"]
        names = self._names
        for name, value in headers.items():
            if not value.isprintable() and _BAD_VALUE.search(value):  # (a C scan first)
                raise HttpClientError(f"header {name[:40]!r} has a line break or NUL")
            if name not in names:
                if not _TOKEN.fullmatch(name):
                    raise HttpClientError(f"header name {name[:40]!r} is not a token")
                if len(names) < 64:
                    names.add(name)
            lines.append(f"{name}: {value}\r\n")
        if body is not None:
            lines.append(f"content-length: {len(body)}\r\n")
        lines.append("\r\n")
        return "".join(lines).encode()

    def request(
        self,
        method: str,
        headers: Mapping[str, str],
        body: bytes | None = None,
        target: str | None = None,
    ) -> Coroutine[Any, Any, Response]:
        """Send one request (``headers`` lower-case, without ``host`` and ``content-length``),
        following redirects; its answer once the status and headers are in, the body unread:
        read it, then :meth:`Response.release` it (or :meth:`Response.close`). A header that
        could end the line early is refused (:class:`HttpClientError`), never sent. ``target``:
        the path and query to ask for on the client's origin, in place of its URL's own. (A
        plain function returning the exchange's coroutine: one coroutine frame less per call.)"""
        if self.authorization is not None and "authorization" not in headers:
            headers = {**headers, "authorization": self.authorization}
        if target is None:
            target = self.target
        else:
            target = _UNSAFE_TARGET.sub(lambda m: quote(m[0], safe=""), target)
        return self._exchange(method, target, headers, body, True)

    async def _exchange(
        self,
        method: str,
        target: str,
        headers: Mapping[str, str],
        body: bytes | None,
        follow: bool,
    ) -> Response:
        data = self._head(method, target, headers, body)
        if body:
            data += body
        for attempt in range(2):
            found = None if attempt or self.closed else self._idle_one()  # no frame: most calls
            if found is not None:
                connection, reused = found, True
            else:
                connection, reused = await self._connection(fresh=attempt > 0)
            response = Response(connection)
            connection.response = response
            assert connection.transport is not None
            connection.transport.write(data)
            try:
                await response.started
            except NoAnswer:
                response.release()
                if reused and not attempt:
                    continue  # a kept-alive connection the server had closed: once more
                raise
            except BaseException:
                response.close()
                raise
            if follow and response.status in _REDIRECTS:
                return await self._follow(response, method, target, headers, body)
            return response
        raise AssertionError("unreachable")

    async def _follow(
        self,
        response: Response,
        method: str,
        target: str,
        headers: Mapping[str, str],
        body: bytes | None,
    ) -> Response:
        """Follow the redirect ``response`` (to ``target``) is (see the module docstring)."""
        client = self
        for _ in range(MAX_REDIRECTS):
            location = response.headers.get("location")
            if not location or (response.status < 307 and method != "GET"):
                return response  # not followed: the caller reads the 3xx
            try:
                url = urljoin(f"{client.origin}{target}", location)
                scheme, host, port, target = _parse(url)
                if client.scheme == "https" and scheme != "https":
                    raise HttpClientError("redirected from https to http: refused")
                client = self._elsewhere(scheme, host, port, url)
                await response.discard(REDIRECT_BODY_LIMIT)
            except ValueError as exc:
                response.close()
                raise HttpClientError(f"redirected to an invalid URL: {exc}") from None
            except BaseException:
                response.close()
                raise
            if client is not self and not _CREDENTIALS.isdisjoint(headers):
                headers = {k: v for k, v in headers.items() if k not in _CREDENTIALS}
            response = await client._exchange(method, target, headers, body, False)
            if response.status not in _REDIRECTS:
                return response
        response.close()
        raise TooManyRedirects(f"more than {MAX_REDIRECTS} redirects")

    async def close(self) -> None:
        """Drop every connection; answers being read fail with ``client closed``."""
        self.closed = True
        for connection in list(self._open):
            connection.drop(HttpClientError("client closed"))
        self._open.clear()
        self._idle.clear()
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_result(None)
        self._waiters.clear()
        others = list(self._others.values())
        self._others.clear()
        for other in others:
            await other.close()

    def __repr__(self) -> str:  # never the URL's credentials
        return f"HttpClient({self.host_header}{self.target})"
