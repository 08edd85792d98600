"""A small round-robin HTTP reverse proxy for the scale-out tests: each request goes to the next
backend in turn (no stickiness), its answer streamed back as it arrives (SSE included).

It runs as a real aiohttp server on 127.0.0.1 in a thread with its own event loop::

    with Balancer([agwd1.data_url, agwd2.data_url]) as lb:
        lb.url               # http://127.0.0.1:P
        lb.hits              # backend url -> requests forwarded to it
        lb.backends[1] = x   # a replaced backend (a restarted replica) takes its turn

A backend that cannot be reached answers 502 (the next request goes to the next one), unless
the balancer was made with ``skip_dead=True``: then a request whose connection is refused goes to
the next backend in turn (it never reached the dead one, so sending it again is safe), and only
one that no backend accepts answers 502. A backend that dies with the request in flight still
answers 502. Hop-by-hop headers are not forwarded; everything else is, both ways.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
from collections import Counter
from types import TracebackType

import aiohttp
from aiohttp import web

HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "host",
        "content-length",
    }
)
START_TIMEOUT_S = 10.0


class Balancer:
    """Round-robin reverse proxy (see the module docstring)."""

    def __init__(self, backends: list[str], *, skip_dead: bool = False) -> None:
        self.backends = [b.rstrip("/") for b in backends]
        self.skip_dead = skip_dead
        self.hits: Counter[str] = Counter()
        self.url = ""
        self._turn = itertools.count()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._runner: web.AppRunner | None = None
        self._http: aiohttp.ClientSession | None = None

    def __enter__(self) -> Balancer:
        self._thread.start()
        future = asyncio.run_coroutine_threadsafe(self._start(), self._loop)
        self.url = future.result(START_TIMEOUT_S)
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        if not self._thread.is_alive():
            return
        future = asyncio.run_coroutine_threadsafe(self._stop(), self._loop)
        future.result(START_TIMEOUT_S)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(START_TIMEOUT_S)
        self._loop.close()

    async def _start(self) -> str:
        self._http = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=5), auto_decompress=False
        )
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._forward)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=2.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        host, port = self._runner.addresses[0][:2]
        return f"http://{host}:{port}"

    async def _stop(self) -> None:
        # the backend connections first: a stream being forwarded (an idle SSE stream) ends
        # with them, instead of holding the server's shutdown
        if self._http is not None:
            await self._http.close()
        if self._runner is not None:
            await self._runner.cleanup()
        rest = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in rest:  # handlers still writing to a client that is gone
            task.cancel()
        await asyncio.gather(*rest, return_exceptions=True)

    async def _forward(self, request: web.Request) -> web.StreamResponse:
        assert self._http is not None
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP}
        body = await request.read()
        tries = len(self.backends) if self.skip_dead else 1
        turn = next(self._turn)
        for attempt in range(tries):
            backend = self.backends[(turn + attempt) % len(self.backends)]
            self.hits[backend] += 1
            try:
                upstream = await self._http.request(
                    request.method,
                    backend + request.path_qs,
                    headers=headers,
                    data=body or None,
                    allow_redirects=False,
                )
                break
            except aiohttp.ClientConnectorError as exc:
                if attempt + 1 == tries:
                    return web.Response(status=502, text=f"balancer: {backend} unreachable: {exc}")
            except aiohttp.ClientError as exc:
                return web.Response(status=502, text=f"balancer: {backend} unreachable: {exc}")
        async with upstream:
            answer = web.StreamResponse(status=upstream.status)
            for name, value in upstream.headers.items():
                if name.lower() not in HOP_BY_HOP:
                    answer.headers.add(name, value)
            await answer.prepare(request)
            try:
                async for chunk in upstream.content.iter_any():
                    await answer.write(chunk)
            except (aiohttp.ClientError, ConnectionResetError):
                return answer  # a backend or client that went away ends the stream
            await answer.write_eof()
        return answer
