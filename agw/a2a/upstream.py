"""The A2A plane's HTTP client to remote agents, and what crosses it in each direction.

One aiohttp session for the plane (made on first use, closed with the plane): kept-alive
connections, no cookie jar (one agent's cookie must not ride on another client's call), no
proxy from the environment, bytes passed as they came (no decompression).

What goes up (:func:`request_headers`) is an allowlist: the A2A headers of the caller
(``Content-Type``, ``Accept``, ``A2A-Version``, ``A2A-Extensions`` and 0.3's
``X-A2A-Extensions``), the service's own credentials (:func:`auth_headers`) and the gateway's
``traceparent``. The caller's ``Authorization``, ``X-API-Key``, cookies and every other header
stay at the gateway. What comes back is the answer's content type and its A2A headers
(:data:`PASSED_BACK`).
"""

from __future__ import annotations

import base64
from typing import Final
from urllib.parse import urlsplit

import aiohttp

from agw.config.a2a import A2aService
from agw.request import Request, traceparent
from agw.version import VERSION

FORWARDED: Final = ("content-type", "accept", "a2a-version", "a2a-extensions", "x-a2a-extensions")
PASSED_BACK: Final = ("a2a-version", "a2a-extensions", "x-a2a-extensions")  # and content-type
CONNECT_TIMEOUT_S: Final = 10.0
_DEFAULT_HEADERS: Final = {"User-Agent": f"agw/{VERSION}", "Accept-Encoding": "identity"}


class Upstream:
    """Owns the plane's aiohttp session."""

    def __init__(self) -> None:
        self._session: aiohttp.ClientSession | None = None

    def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0, enable_cleanup_closed=False),
                auto_decompress=False,
                headers=_DEFAULT_HEADERS,
                trust_env=False,
                cookie_jar=aiohttp.DummyCookieJar(),
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


def auth_headers(service: A2aService) -> dict[str, str]:
    """The service's own credentials (never the caller's)."""
    auth = service.auth
    if auth.type == "bearer":
        return {"authorization": f"Bearer {auth.api_key}"}
    if auth.type == "api_key":
        return {auth.header.lower(): auth.api_key}
    if auth.type == "basic":
        token = base64.b64encode(f"{auth.username}:{auth.password}".encode()).decode()
        return {"authorization": f"Basic {token}"}
    return {}


def request_headers(req: Request, service: A2aService) -> dict[str, str]:
    """The headers of the call made upstream for ``req`` (see the module doc)."""
    headers: dict[str, str] = {n: req.headers[n] for n in FORWARDED if n in req.headers}
    headers["traceparent"] = traceparent(req.trace)
    headers.update(auth_headers(service))
    return headers


def origin_of(url: str) -> tuple[str, str, int | None]:
    """(scheme, host, port) of ``url``, the port defaulted by the scheme; ("", "", None) when
    it is not an http(s) URL."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return "", "", None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or not parts.hostname:
        return "", "", None
    return scheme, parts.hostname.lower(), port or (443 if scheme == "https" else 80)


async def read_limited(resp: aiohttp.ClientResponse, limit: int) -> bytes | None:
    """The whole body of ``resp``, or None as soon as it is known to be over ``limit`` (never
    more is held; the connection is then closed, not reused)."""
    length = resp.content_length
    if length is not None and length > limit:
        resp.close()
        return None
    chunks: list[bytes] = []
    size = 0
    while chunk := await resp.content.readany():
        size += len(chunk)
        if size > limit:
            resp.close()
            return None
        chunks.append(chunk)
    return b"".join(chunks)
