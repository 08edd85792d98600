"""Pooled upstream connections: one aiohttp session per provider, rebuilt when its network
settings change, with connect/read/total timeouts from the provider's ``network`` block."""

from __future__ import annotations

import asyncio
import functools
import logging
from dataclasses import dataclass

import aiohttp

from agw.config.llm import NetworkConfig, Provider
from agw.version import VERSION

log = logging.getLogger(__name__)
CONNECT_TIMEOUT_S = 10.0

# What agwd holds of one upstream answer (docs/llm.md#limits). A streamed answer is never held
# whole: its single SSE event is capped by agw.sse.EVENT_LIMIT instead.
RESPONSE_LIMIT = 64 * 1024 * 1024  # a non-streamed answer: more is a 502 naming the limit
ERROR_BODY_LIMIT = 1024 * 1024  # an upstream error answer: more is replaced by agw's own error


class BodyTooLarge(Exception):
    """An upstream answer over the limit it was read with; what arrived was dropped."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"upstream answer larger than {limit_text(limit)}")
        self.limit = limit


def limit_text(limit: int) -> str:
    """``64 MiB``, ``1 MiB``, ``1000 bytes``: a limit as the docs and error messages say it."""
    if limit % (1024 * 1024) == 0:
        return f"{limit // (1024 * 1024)} MiB"
    if limit % 1024 == 0:
        return f"{limit // 1024} KiB"
    return f"{limit} bytes"


async def read_capped(resp: aiohttp.ClientResponse, limit: int) -> bytes:
    """The whole body of ``resp``, or :class:`BodyTooLarge` as soon as it is known to be over
    ``limit``: at once from ``Content-Length``, else once ``limit`` bytes have come (never
    more is held). The connection of a refused answer is closed, not reused."""
    length = resp.content_length
    if length is not None and length <= limit:
        return await resp.read()  # the common case: one comparison more than resp.read()
    if length is None:
        chunks: list[bytes] = []
        size = 0
        content = resp.content
        while chunk := await content.readany():
            size += len(chunk)
            if size > limit:
                break
            chunks.append(chunk)
        else:
            return b"".join(chunks)
    resp.close()
    raise BodyTooLarge(limit)


# Sent on every upstream request unless the request sets its own (Claude Code's user agent):
# - identity, because the gateway reads every answer (usage, tool names, translation) and passes
#   it on as it came: a compressed answer would be neither readable nor labelled for the client
#   (aiohttp asks for gzip by default, and real providers honour that);
# - a user agent naming the gateway, instead of aiohttp's. Both as session defaults, which also
#   spares aiohttp its per-request "skip auto headers" copy.
DEFAULT_HEADERS = {"User-Agent": f"agw/{VERSION}", "Accept-Encoding": "identity"}


@dataclass(frozen=True)
class _Entry:
    network: NetworkConfig
    session: aiohttp.ClientSession


class UpstreamPool:
    def __init__(self) -> None:
        self._sessions: dict[str, _Entry] = {}
        self._retired: list[aiohttp.ClientSession] = []
        self._tasks: set[asyncio.Task[None]] = set()

    def session(self, provider: Provider) -> aiohttp.ClientSession:
        entry = self._sessions.get(provider.id)
        if (
            entry is not None
            and (entry.network is provider.network or entry.network == provider.network)
            and not entry.session.closed
        ):
            return entry.session
        if entry is not None:
            self._retire(entry.session)
        net = provider.network
        connector = aiohttp.TCPConnector(
            limit=0,  # concurrency is not capped here; the pool keeps idle connections
            limit_per_host=0,
            keepalive_timeout=float(net.idle_keep_alive_timeout_seconds or 90),
            enable_cleanup_closed=False,
        )
        session = aiohttp.ClientSession(
            connector=connector,
            auto_decompress=False,  # bytes pass through as the upstream sent them
            headers=DEFAULT_HEADERS,
            trust_env=False,
            # One session serves every client: a cookie one upstream answer sets must not ride
            # along on another client's request (and no jar is also less work per request).
            cookie_jar=aiohttp.DummyCookieJar(),
        )
        self._sessions[provider.id] = _Entry(net, session)
        return session

    @staticmethod
    def timeout(provider: Provider, *, stream: bool) -> aiohttp.ClientTimeout:
        return _timeout(float(provider.network.request_timeout_seconds or 120), stream)

    def _retire(self, session: aiohttp.ClientSession) -> None:
        """Close a replaced session after in-flight requests had time to finish."""

        async def close_later() -> None:
            await asyncio.sleep(300)
            await session.close()

        task = asyncio.get_running_loop().create_task(close_later())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        self._retired.append(session)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        sessions = [e.session for e in self._sessions.values()] + self._retired
        await asyncio.gather(*(s.close() for s in sessions), return_exceptions=True)
        self._sessions.clear()
        self._retired.clear()


@functools.lru_cache(maxsize=64)
def _timeout(seconds: float, stream: bool) -> aiohttp.ClientTimeout:
    """ClientTimeout is immutable: one per (timeout, stream) instead of one per request."""
    return aiohttp.ClientTimeout(
        total=None if stream else seconds,
        connect=min(CONNECT_TIMEOUT_S, seconds),
        sock_read=seconds,
    )
