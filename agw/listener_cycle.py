"""uvicorn's request cycle taking the ``agw.head`` extension (agw/head.py): the lines an app
rendered and checked once go into the answer's head as they are.

Both pieces follow uvicorn 0.55 (pinned in pyproject.toml), line for line where they copy it:
:func:`headers_complete` is its ``HttpToolsProtocol.on_headers_complete`` making a
:class:`HeadCycle` (and saying so in the scope's ``extensions``) instead of a
``RequestResponseCycle``, and :class:`HeadCycle` is that cycle, whose ``send`` writes a start
message's ``agw.head`` bytes after the fields it checked. Made as uvicorn makes its own (not
re-classed afterwards: an object whose class changes loses CPython's fast attribute paths).
tests/test_head.py fails on a uvicorn whose copied functions differ from these.
"""

from __future__ import annotations

import asyncio
import urllib.parse
from collections.abc import Coroutine
from typing import Any

import httptools
from uvicorn.protocols.http.flow_control import service_unavailable
from uvicorn.protocols.http.httptools_impl import (
    HEADER_RE,
    HEADER_VALUE_RE,
    STATUS_LINE,
    HttpToolsProtocol,
    RequestResponseCycle,
)
from uvicorn.protocols.utils import get_client_addr, get_path_with_query_string

from agw.head import EXTENSION

_send = RequestResponseCycle.send


class HeadCycle(RequestResponseCycle):
    def send(self, message: Any) -> Coroutine[Any, Any, None]:
        # the coroutine to await, not awaited here: a body adds no frame to uvicorn's send
        if self.response_started or message["type"] != "http.response.start":
            return _send(self, message)
        return self._start(message)

    async def _start(self, message: Any) -> None:
        if self.flow.write_paused and not self.disconnected:
            await self.flow.drain()
        if self.disconnected:
            return
        # uvicorn 0.55's start of an answer, with the rendered lines before the head's end
        self.response_started = True
        self.waiting_for_100_continue = False

        status_code = message["status"]
        headers = self.default_headers + list(message.get("headers", []))

        if self.access_log:
            self.access_logger.info(
                '%s - "%s %s HTTP/%s" %d',
                get_client_addr(self.scope),
                self.scope["method"],
                get_path_with_query_string(self.scope),
                self.scope["http_version"],
                status_code,
            )

        content = [STATUS_LINE[status_code]]
        has_connection_close = False
        for name, value in headers:
            if HEADER_RE.search(name):
                raise RuntimeError("Invalid HTTP header name.")
            if HEADER_VALUE_RE.search(value):
                raise RuntimeError("Invalid HTTP header value.")
            name = name.lower()
            if name == b"content-length" and self.chunked_encoding is None:
                self.expected_content_length = int(value.decode())
                self.chunked_encoding = False
            elif name == b"transfer-encoding" and value.lower() == b"chunked":
                self.expected_content_length = 0
                self.chunked_encoding = True
            elif name == b"connection":
                connection = [token.lower().strip() for token in value.split(b",")]
                if b"close" in connection:
                    self.keep_alive = False
                    has_connection_close = True
            content.extend([name, b": ", value, b"\r\n"])
        rendered = message.get(EXTENSION)
        if rendered:
            content.append(rendered)

        if not self.keep_alive and not has_connection_close:
            content.append(b"connection: close\r\n")
        if (
            self.chunked_encoding is None
            and self.scope["method"] != "HEAD"
            and status_code not in (204, 304)
        ):
            # neither content-length nor transfer-encoding given
            self.chunked_encoding = True
            content.append(b"transfer-encoding: chunked\r\n")
        content.append(b"\r\n")
        self.transport.write(b"".join(content))


def headers_complete(protocol: HttpToolsProtocol) -> None:
    """uvicorn 0.55's ``on_headers_complete`` of ``protocol``, with a :class:`HeadCycle`."""
    p = protocol
    http_version = p.parser.get_http_version()
    method = p.parser.get_method()
    p.scope["method"] = method.decode("ascii")
    if http_version != "1.1":
        p.scope["http_version"] = http_version
    if p.parser.should_upgrade() and p._should_upgrade():
        return
    parsed_url = httptools.parse_url(p.url)
    raw_path = parsed_url.path
    path = raw_path.decode("ascii")
    if "%" in path:
        path = urllib.parse.unquote(path)
    p.scope["path"] = p.root_path + path
    p.scope["raw_path"] = p.root_path.encode("ascii") + raw_path
    p.scope["query_string"] = parsed_url.query or b""
    p.scope["extensions"] = {EXTENSION: {}}

    if p.limit_concurrency is not None and (
        len(p.connections) >= p.limit_concurrency or len(p.tasks) >= p.limit_concurrency
    ):
        app = service_unavailable
        p.logger.warning("Exceeded concurrency limit.")
    else:
        app = p.app

    existing_cycle = p.cycle
    p.cycle = HeadCycle(
        scope=p.scope,
        transport=p.transport,
        flow=p.flow,
        logger=p.logger,
        access_logger=p.access_logger,
        access_log=p.access_log,
        default_headers=p.server_state.default_headers,
        message_event=asyncio.Event(),
        expect_100_continue=p.expect_100_continue,
        keep_alive=http_version != "1.0" and p.parser.should_keep_alive(),
        on_response=p.on_response_complete,
    )
    if existing_cycle is None or existing_cycle.response_complete:
        p._start_asgi_task(p.cycle, app)  # the standard case: start it
    else:  # pipelined requests are queued
        p.flow.pause_reading()
        p.pipeline.appendleft((p.cycle, app))
