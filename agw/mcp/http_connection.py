"""One kept-alive connection of :mod:`agw.mcp.httpclient` and the answers read on it, and the
client's error tree (drawn in the httpclient module docstring).

A :class:`Connection` parses what arrives (httptools) into the :class:`Response` of the request
in flight: status and headers, interim ``1xx`` answers skipped, the head bounded by
``HEAD_LIMIT``, a second answer nobody asked for refused; the response's body is taken whole, by
its start or as it comes, gzip and deflate decoded within the reader's limit. The connection
knows its pool only as a :class:`Pool` (told when the connection ends or is free again).
"""

from __future__ import annotations

import asyncio
import zlib
from collections import deque
from collections.abc import AsyncIterator
from typing import Protocol

import httptools

BUFFER_HIGH = 1 << 20  # bytes of an answer waiting to be read before the connection pauses
HEAD_LIMIT = 64 * 1024  # bytes of an answer's status line and headers (1xx ones included)
INFLATE_PIECE = 256 * 1024  # a streamed gzip/deflate answer is decoded this much at a time


class HttpClientError(Exception):
    """The exchange failed below HTTP (no answer, or not a whole one)."""


class Unreachable(HttpClientError):
    """No connection could be made."""


class Disconnected(HttpClientError):
    """The connection ended (or broke the protocol) before the answer was complete."""


class NoAnswer(Disconnected):
    """The connection ended before the first byte of an answer."""


class BodyTooLarge(HttpClientError):
    """The answer is longer than the reader's limit."""


class Undecodable(HttpClientError):
    """The answer is in a content coding this client does not decode, or a broken one."""


class TooManyRedirects(HttpClientError):
    """More redirects in a row than ``agw.mcp.httpclient.MAX_REDIRECTS``."""


class Pool(Protocol):
    """What a :class:`Connection` tells the pool it belongs to."""

    def forget(self, connection: Connection) -> None:
        """The connection ended (or is being closed): no longer open, nor idle."""

    def reuse(self, connection: Connection) -> None:
        """The connection's answer was read whole and the server keeps it: idle again."""


class Connection(asyncio.Protocol):
    """One kept-alive connection: feeds what arrives to the answer being read on it."""

    def __init__(self, pool: Pool) -> None:
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.response: Response | None = None
        self.lost = False
        self.paused = False
        self.interim = False  # parsing a 1xx answer, which the final one follows

    # ------------------------------------------------------------------------------ asyncio

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # a stream transport

    def data_received(self, data: bytes) -> None:
        response = self.response
        if response is None:  # nothing asked: the server talks out of turn
            self.abort()
            return
        response._heard = True
        try:
            self.parser.feed_data(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade) as exc:  # 101: no more
            response._fail(Disconnected(f"invalid HTTP answer: {exc!r}"))
            self.abort()
            return
        if response.status == 0:  # still in the head
            response._head_size += len(data)
            if response._head_size > HEAD_LIMIT:
                response._fail(Disconnected(f"answer head over {HEAD_LIMIT} bytes"))
                self.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.pool.forget(self)
        response = self.response
        if response is not None and not response.complete:
            if response._until_close and response._error is None:
                response._done(keep=False)  # an answer delimited by the connection's end
            elif response._heard:
                response._fail(Disconnected("server disconnected"))
            else:
                response._fail(NoAnswer("server disconnected before answering"))

    def pause_writing(self) -> None:  # a request body larger than the socket buffer
        pass

    def resume_writing(self) -> None:
        pass

    # ---------------------------------------------------------------------------- httptools

    def on_message_begin(self) -> None:
        response = self.response
        if response is not None and response.complete:  # a second answer to one request
            raise Disconnected("an answer nobody asked for")

    def on_header(self, name: bytes, value: bytes) -> None:
        response = self.response
        assert response is not None
        key = name.decode("latin-1").lower()
        text = value.decode("latin-1")
        headers = response.headers
        headers[key] = f"{headers[key]}, {text}" if key in headers else text

    def on_headers_complete(self) -> None:
        response = self.response
        assert response is not None
        status = self.parser.get_status_code()
        headers = response.headers
        if status < 200 and status != 101:  # 100 Continue, 103 Early Hints: the answer follows
            self.interim = True
            headers.clear()
            return
        coding = headers.get("transfer-encoding")
        if coding is not None and coding.strip().lower() != "chunked":
            error = Disconnected(f"answer in transfer-encoding {coding[:40]!r}")
            response._fail(error)
            raise error  # parsing stops; the connection is dropped
        coding = headers.get("content-encoding")
        if coding is not None:
            response._set_coding(coding)
        response.status = status
        response._until_close = (
            "content-length" not in headers
            and "transfer-encoding" not in headers
            and status not in (101, 204, 304)
        )
        if not response.started.done():
            response.started.set_result(None)

    def on_body(self, body: bytes) -> None:
        response = self.response
        assert response is not None
        response._feed(body)
        if (
            response._streaming
            and response._size > BUFFER_HIGH
            and not self.paused
            and self.transport is not None
        ):
            self.paused = True
            self.transport.pause_reading()

    def on_message_complete(self) -> None:
        if self.interim:
            self.interim = False
            return
        response = self.response
        assert response is not None
        response._done(keep=self.parser.should_keep_alive() and response.status != 101)

    # -------------------------------------------------------------------------------- ours

    def drained(self) -> None:
        """The reader took what was buffered: read on."""
        if self.paused and self.transport is not None and not self.lost:
            self.paused = False
            self.transport.resume_reading()

    def reuse(self) -> None:
        self.pool.reuse(self)

    def drop(self, error: HttpClientError) -> None:
        """Fail the answer being read with ``error`` and close."""
        if self.response is not None:
            self.response._fail(error)
        self.abort()

    def abort(self) -> None:
        self.lost = True  # at once: connection_lost comes a turn of the loop later
        self.pool.forget(self)
        if self.transport is not None:
            self.transport.abort()


class Response:
    """An answer: its status and headers (names lower-case; repeated ones joined with ", "),
    and its body as it arrives (decoded when it came in gzip or deflate)."""

    __slots__ = (
        "_coding",
        "_error",
        "_head_size",
        "_heard",
        "_inflater",
        "_keep",
        "_parts",
        "_released",
        "_size",
        "_streaming",
        "_until_close",
        "_waiter",
        "complete",
        "connection",
        "headers",
        "started",
        "status",
    )

    def __init__(self, connection: Connection) -> None:
        self.connection = connection
        self.status = 0
        self.headers: dict[str, str] = {}
        self.started: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.complete = False
        self._parts: deque[bytes] = deque()
        self._size = 0
        self._waiter: asyncio.Future[None] | None = None
        self._error: HttpClientError | None = None
        self._keep = False
        self._released = False
        self._until_close = False
        self._streaming = False  # read by chunks(): the connection pauses when they pile up
        self._heard = False  # a byte of the answer arrived
        self._head_size = 0
        self._coding: str | None = None  # a content coding other than identity
        self._inflater: zlib._Decompress | None = None

    @property
    def content_length(self) -> int | None:
        raw = self.headers.get("content-length")
        return int(raw) if raw is not None and raw.isascii() and raw.isdigit() else None

    # what the connection tells it

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _feed(self, data: bytes) -> None:
        self._parts.append(data)
        self._size += len(data)
        self._wake()

    def _done(self, keep: bool) -> None:
        self.complete = True
        self._keep = keep
        self._wake()

    def _fail(self, exc: HttpClientError) -> None:
        if self.complete or self._error is not None:
            return  # the first reason stands
        self._error = exc
        if not self.started.done():
            self.started.set_exception(exc)
            self.started.exception()  # seen: whoever awaits it gets it raised
        self._wake()

    def _set_coding(self, value: str) -> None:
        coding = value.strip().lower()
        if coding not in ("", "identity"):
            self._coding = "gzip" if coding == "x-gzip" else coding

    async def _more(self) -> None:
        if self._error is not None:
            raise self._error
        self._waiter = asyncio.get_running_loop().create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None
        if self._error is not None:
            raise self._error

    def _take(self) -> bytes:
        data = b"".join(self._parts) if len(self._parts) != 1 else self._parts[0]
        self._parts.clear()
        self._size = 0
        self.connection.drained()
        return data

    def _inflate(self, data: bytes, room: int) -> bytes:
        """``data`` of a gzip or deflate body decoded, at most ``room`` bytes of it (0: all);
        what is left waits in the inflater's ``unconsumed_tail``."""
        inflater = self._inflater
        if inflater is None:
            if self._coding == "gzip":
                wbits = 31
            elif self._coding == "deflate":  # zlib-wrapped, as the RFC says, or raw as some send
                wrapped = (
                    len(data) > 1 and data[0] & 0x0F == 8 and (data[0] << 8 | data[1]) % 31 == 0
                )
                wbits = 15 if wrapped else -15
            else:
                raise Undecodable(f"answer in content-encoding {self._coding!r}")
            inflater = self._inflater = zlib.decompressobj(wbits)
        try:
            return inflater.decompress(data, room)
        except zlib.error as exc:
            raise Undecodable(f"invalid {self._coding} answer: {exc}") from None

    def _cut_short(self) -> bool:
        return self._inflater is not None and not self._inflater.eof

    # what the reader asks

    async def read(self, limit: int | None = None) -> bytes:
        """The whole body; :class:`BodyTooLarge` as soon as it is known to be over ``limit``
        (a declared length at once, a compressed one once decoded past it), and the connection
        is then dropped."""
        if limit is not None:
            length = self.content_length
            if length is not None and length > limit:
                self.close()
                raise BodyTooLarge(f"answer of {length} bytes")
        while not self.complete:
            if limit is not None and self._size > limit:
                self.close()
                raise BodyTooLarge(f"answer over {limit} bytes")
            await self._more()
        if limit is not None and self._size > limit:
            self.close()
            raise BodyTooLarge(f"answer over {limit} bytes")
        data = self._take()
        return data if self._coding is None else self._decoded(data, limit)

    def _decoded(self, data: bytes, limit: int | None) -> bytes:
        out = self._inflate(data, 0 if limit is None else limit + 1)
        if limit is not None and len(out) > limit:
            self.close()
            raise BodyTooLarge(f"answer over {limit} bytes once decoded")
        if data and self._cut_short():
            raise Undecodable(f"{self._coding} answer cut short")
        return out

    async def read_prefix(self, n: int) -> bytes:
        """At most ``n`` bytes from the start of the body (an error answer's excerpt)."""
        while not self.complete and self._size < n:
            await self._more()
        data = self._take()
        if self._coding is None:
            return data[:n]
        try:
            return self._inflate(data, max(n, 1))
        except Undecodable:
            return data[:n]  # an excerpt: the bytes as they came

    async def chunks(self) -> AsyncIterator[bytes]:
        """The body as it arrives (a compressed one decoded ``INFLATE_PIECE`` at a time)."""
        self._streaming = True
        while True:
            if self._parts:
                data = self._take()
                if self._coding is None:
                    yield data
                    continue
                while True:
                    out = self._inflate(data, INFLATE_PIECE)
                    if out:
                        yield out
                    data = self._inflater.unconsumed_tail if self._inflater is not None else b""
                    if not data and len(out) < INFLATE_PIECE:
                        break
                continue
            if self.complete:
                if self._cut_short():
                    raise Undecodable(f"{self._coding} answer cut short")
                return
            await self._more()

    async def discard(self, limit: int) -> None:
        """Read and drop a body of at most ``limit`` bytes so that the connection can serve
        again; a larger, unbounded or undecodable one closes it."""
        try:
            if self._until_close:
                raise BodyTooLarge("until the connection ends")
            await self.read(limit)
        except (BodyTooLarge, Undecodable):
            self.close()
            return
        except BaseException:
            self.close()
            raise
        self.release()

    def release(self) -> None:
        """Done with the answer: its connection goes back to the pool when the answer was read
        whole and the server keeps the connection alive; otherwise it is closed. Idempotent."""
        if self._released:
            return
        self._released = True
        connection = self.connection
        connection.response = None
        if self.complete and self._keep and not self._parts and not connection.lost:
            connection.reuse()
        else:
            connection.abort()

    def close(self) -> None:
        """Drop the connection now (a stream's reader cancels it this way)."""
        self._keep = False
        self._fail(Disconnected("answer closed"))
        self.release()
