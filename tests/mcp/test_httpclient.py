"""The MCP plane's HTTP/1.1 client (agw/mcp/httpclient.py) against real servers on loopback:
small asyncio servers that answer as a test script says, raw bytes on the wire."""

from __future__ import annotations

import asyncio
import base64
import datetime
import functools
import gzip
import ipaddress
import json
import socket
import ssl
import zlib
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest

from agw.mcp.httpclient import (
    BUFFER_HIGH,
    BodyTooLarge,
    Disconnected,
    HttpClient,
    HttpClientError,
    NoAnswer,
    TooManyRedirects,
    Undecodable,
    Unreachable,
)

Reader = asyncio.StreamReader
Writer = asyncio.StreamWriter
Handler = Callable[[Reader, Writer, dict[str, Any]], Awaitable[None]]


def run(case: Callable[[], Coroutine[Any, Any, None]]) -> None:
    asyncio.run(asyncio.wait_for(case(), 30))


async def read_request(reader: Reader) -> tuple[str, dict[str, str], bytes]:
    """One request: its request line, headers (lower-case) and body (Content-Length)."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    return lines[0], headers, body


def answer(body: bytes, status: str = "200 OK", extra: str = "") -> bytes:
    return (
        f"HTTP/1.1 {status}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\n{extra}\r\n"
    ).encode() + body


class Server:
    """A loopback server (TLS with ``tls``); ``handler(reader, writer, state)`` serves each
    connection."""

    def __init__(self, handler: Handler, tls: ssl.SSLContext | None = None) -> None:
        self.handler = handler
        self.tls = tls
        self.state: dict[str, Any] = {"connections": 0, "requests": []}
        self.server: asyncio.Server | None = None

    async def __aenter__(self) -> Server:
        async def serve(reader: Reader, writer: Writer) -> None:
            self.state["connections"] += 1
            try:
                await self.handler(reader, writer, self.state)
            except (asyncio.IncompleteReadError, ConnectionError):
                pass
            finally:
                writer.close()

        self.server = await asyncio.start_server(serve, "127.0.0.1", 0, ssl=self.tls)
        return self

    async def __aexit__(self, *_: object) -> None:
        assert self.server is not None
        self.server.close()

    @property
    def origin(self) -> str:
        assert self.server is not None
        port = self.server.sockets[0].getsockname()[1]
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{port}"

    @property
    def url(self) -> str:
        return f"{self.origin}/mcp?x=1"


async def echo_forever(reader: Reader, writer: Writer, state: dict[str, Any]) -> None:
    while True:
        line, headers, body = await read_request(reader)
        state["requests"].append((line, headers, body))
        writer.write(answer(b'{"echo":' + (body or b"null") + b"}"))
        await writer.drain()


def test_connections_are_kept_alive_and_reused() -> None:
    async def case() -> None:
        async with Server(echo_forever) as srv:
            client = HttpClient(srv.url)
            for i in range(5):
                resp = await client.request("POST", {"content-type": "application/json"}, b"%d" % i)
                assert resp.status == 200 and resp.headers["content-type"] == "application/json"
                assert await resp.read(1000) == b'{"echo":%d}' % i
                resp.release()
            assert srv.state["connections"] == 1
            line, headers, _ = srv.state["requests"][0]
            assert line == "POST /mcp?x=1 HTTP/1.1"
            assert headers["host"] == srv.url.split("/")[2] and headers["content-length"] == "1"
            # concurrent requests each take a connection, then share them again
            answers = await asyncio.gather(*(client.request("GET", {}) for _ in range(3)))
            for resp in answers:
                assert await resp.read() == b'{"echo":null}'
                resp.release()
            assert srv.state["connections"] == 3
            await client.close()

    run(case)


def test_a_connection_closed_while_idle_is_replaced_once() -> None:
    async def one_answer(reader: Reader, writer: Writer, state: dict[str, Any]) -> None:
        await read_request(reader)
        writer.write(answer(b"{}"))  # kept alive, as far as the client knows; then closed

    async def case() -> None:
        async with Server(one_answer) as srv:
            client = HttpClient(srv.url)
            for _ in range(3):
                resp = await client.request("POST", {}, b"{}")
                assert await resp.read() == b"{}"
                resp.release()
                await asyncio.sleep(0.05)  # the server has closed it meanwhile
            assert srv.state["connections"] == 3
            await client.close()

    run(case)


def test_a_server_that_drops_every_request_is_disconnected() -> None:
    async def drop(reader: Reader, writer: Writer, state: dict[str, Any]) -> None:
        await read_request(reader)

    async def case() -> None:
        async with Server(drop) as srv:
            client = HttpClient(srv.url)
            with pytest.raises(NoAnswer):
                await client.request("POST", {}, b"{}")
            # a new connection is never tried again: a tools/call may have run
            assert srv.state["connections"] == 1
            await client.close()

    run(case)


def test_streamed_answers_come_as_they_arrive_and_pause_the_connection() -> None:
    big = b"x" * (BUFFER_HIGH // 4)

    async def stream(reader: Reader, writer: Writer, state: dict[str, Any]) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n")
        writer.write(b"transfer-encoding: chunked\r\n\r\n")
        for i in range(12):
            data = b"data: %d\n\n" % i + big
            writer.write(b"%x\r\n%s\r\n" % (len(data), data))
            await writer.drain()
        state["written"] = True
        writer.write(b"0\r\n\r\n")
        await writer.drain()

    async def case() -> None:
        async with Server(stream) as srv:
            client = HttpClient(srv.url)
            resp = await client.request("GET", {"accept": "text/event-stream"})
            assert resp.headers["transfer-encoding"] == "chunked"
            got = b""
            async for chunk in resp.chunks():
                got += chunk
                if len(got) < 2 * BUFFER_HIGH:
                    await asyncio.sleep(0.05)  # a slow reader: the server is held back
            assert got.count(b"data: ") == 12 and srv.state["written"]
            resp.release()
            await client.close()

    run(case)


def test_an_answer_until_the_connection_ends_and_the_limits() -> None:
    async def until_close(reader: Reader, writer: Writer, state: dict[str, Any]) -> None:
        _, headers, _ = await read_request(reader)
        if headers.get("x-case") == "close":
            writer.write(b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\nall of it")
        elif headers.get("x-case") == "declared":
            writer.write(answer(b"y" * 2000))
        else:
            writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
            for _ in range(10):
                writer.write(b"100\r\n" + b"z" * 256 + b"\r\n")
            writer.write(b"0\r\n\r\n")
        await writer.drain()

    async def case() -> None:
        async with Server(until_close) as srv:
            client = HttpClient(srv.url)
            resp = await client.request("GET", {"x-case": "close"})
            assert await resp.read(100) == b"all of it"
            resp.release()
            resp = await client.request("GET", {"x-case": "declared"})
            with pytest.raises(BodyTooLarge):
                await resp.read(1000)
            resp = await client.request("GET", {"x-case": "counted"})
            with pytest.raises(BodyTooLarge):
                await resp.read(1000)
            resp = await client.request("GET", {"x-case": "declared"})
            assert await resp.read_prefix(100) == b"y" * 100
            resp.release()
            await client.close()

    run(case)


def test_url_credentials_become_basic_auth_and_never_show() -> None:
    async def case() -> None:
        async with Server(echo_forever) as srv:
            url = srv.url.replace("http://", "http://agw:s%40cret@")
            client = HttpClient(url)
            resp = await client.request("POST", {}, b"1")
            await resp.read()
            resp.release()
            resp = await client.request("POST", {"authorization": "Bearer own"}, b"2")
            await resp.read()
            resp.release()
            first, second = (r[1]["authorization"] for r in srv.state["requests"])
            assert first == "Basic " + base64.b64encode(b"agw:s@cret").decode()
            assert second == "Bearer own"
            assert "cret" not in repr(client)
            with pytest.raises(HttpClientError, match="line break"):
                await client.request("POST", {"x-evil": "a\r\nx-injected: 1"}, b"3")
            await client.close()

    run(case)


def test_unreachable_bad_urls_and_close() -> None:
    async def hang(reader: Reader, writer: Writer, state: dict[str, Any]) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nhalf")
        await writer.drain()
        await asyncio.sleep(30)

    async def case() -> None:
        async with Server(hang) as srv:
            port = srv.url.split(":")[2].split("/")[0]
        with pytest.raises(Unreachable, match=r"cannot connect to 127\.0\.0\.1"):
            await HttpClient(f"http://127.0.0.1:{port}/").request("GET", {})
        for bad in ("http://127.0.0.1:99999/", "ftp://127.0.0.1/"):
            with pytest.raises(ValueError):
                HttpClient(bad)
        async with Server(hang) as srv:
            client = HttpClient(srv.url)
            resp = await client.request("GET", {})
            reading = asyncio.ensure_future(resp.read())
            await asyncio.sleep(0.05)
            await client.close()
            with pytest.raises(HttpClientError, match="closed"):
                await reading
            with pytest.raises(HttpClientError, match="closed"):
                await client.request("GET", {})

    run(case)


def test_at_most_limit_connections_the_others_wait() -> None:
    async def slow(reader: Reader, writer: Writer, state: dict[str, Any]) -> None:
        while True:
            await read_request(reader)
            await asyncio.sleep(0.05)
            writer.write(answer(b"{}"))
            await writer.drain()

    async def case() -> None:
        async with Server(slow) as srv:
            client = HttpClient(srv.url, limit=2)

            async def one() -> bytes:
                resp = await client.request("GET", {})
                try:
                    return await resp.read()
                finally:
                    resp.release()

            assert await asyncio.gather(*(one() for _ in range(6))) == [b"{}"] * 6
            assert srv.state["connections"] == 2
            await client.close()

    run(case)


# ------------------------------------------------------------------------------ redirects


async def redirecting(reader: Reader, writer: Writer, state: dict[str, Any]) -> None:
    """``/mcp`` -> 307 ``/mcp/`` -> 308 (absolute) ``/final``; ``/loopN`` -> ``/loopN+1``;
    ``/go?to=URL`` -> 307 URL; ``/moved?s=N`` -> N ``/final``; anything else answers what it
    got."""
    while True:
        line, headers, body = await read_request(reader)
        state["requests"].append((line, headers, body))
        path = line.split()[1]
        if path == "/mcp?x=1":
            writer.write(answer(b"moved", "307 Temporary Redirect", "location: /mcp/\r\n"))
        elif path == "/mcp/":
            where = f"location: {state['origin']}/final?a=b\r\n"
            writer.write(answer(b"", "308 Permanent Redirect", where))
        elif path.startswith("/loop"):
            where = f"location: /loop{int(path[5:]) + 1}\r\n"
            writer.write(answer(b"", "307 Temporary Redirect", where))
        elif path.startswith("/go?to="):
            writer.write(answer(b"", "307 Temporary Redirect", f"location: {path[7:]}\r\n"))
        elif path.startswith("/moved?s="):
            writer.write(answer(b"", f"{path[9:]} Moved", "location: /final\r\n"))
        else:
            writer.write(answer(b'{"at":"%s","body":"%s"}' % (path.encode(), body)))
        await writer.drain()


def test_307_and_308_keep_the_method_and_body_at_most_five_times() -> None:
    async def case() -> None:
        async with Server(redirecting) as srv:
            srv.state["origin"] = srv.origin
            client = HttpClient(srv.url)
            for _ in range(2):
                headers = {"authorization": "Bearer t", "content-type": "application/json"}
                resp = await client.request("POST", headers, b"1")
                assert resp.status == 200
                assert await resp.read() == b'{"at":"/final?a=b","body":"1"}'
                resp.release()
            seen = srv.state["requests"]
            assert [r[0] for r in seen[:3]] == [
                "POST /mcp?x=1 HTTP/1.1",
                "POST /mcp/ HTTP/1.1",
                "POST /final?a=b HTTP/1.1",
            ]
            assert all(r[1]["authorization"] == "Bearer t" and r[2] == b"1" for r in seen)
            assert srv.state["connections"] == 1  # the redirects' bodies were read: kept alive
            srv.state["requests"].clear()
            looping = HttpClient(f"{srv.origin}/loop0")
            with pytest.raises(TooManyRedirects, match="more than 5"):
                await looping.request("POST", {}, b"2")
            assert len(srv.state["requests"]) == 6  # the request and five redirects
            await looping.close()
            await client.close()

    run(case)


def test_301_302_303_are_followed_by_a_get_only() -> None:
    async def case() -> None:
        async with Server(redirecting) as srv:
            for status in (301, 302, 303):
                client = HttpClient(f"{srv.origin}/moved?s={status}")
                resp = await client.request("POST", {}, b"{}")
                assert resp.status == status  # the caller gets the redirect: no silent GET
                assert resp.headers["location"] == "/final"
                resp.release()
                resp = await client.request("GET", {})
                assert resp.status == 200 and await resp.read() == b'{"at":"/final","body":""}'
                resp.release()
                await client.close()
            lines = [r[0].split()[0] for r in srv.state["requests"]]
            assert lines == ["POST", "GET", "GET"] * 3

    run(case)


def test_leaving_the_origin_drops_the_credentials_for_good() -> None:
    async def case() -> None:
        async with Server(redirecting) as home, Server(redirecting) as away:
            # home -> away -> home again, each hop a 307
            there_and_back = f"/go?to={away.origin}/go?to={home.origin}/final"
            url = f"{home.origin}{there_and_back}".replace("http://", "http://agw:pw@")
            client = HttpClient(url)
            headers = {"cookie": "c=1", "proxy-authorization": "p", "mcp-session-id": "s1"}
            resp = await client.request("POST", headers, b"7")
            assert await resp.read() == b'{"at":"/final","body":"7"}'
            resp.release()
            (first, last), (middle,) = home.state["requests"], away.state["requests"]
            assert first[1]["authorization"].startswith("Basic ") and first[1]["cookie"] == "c=1"
            for _, seen, body in (middle, last):
                assert body == b"7" and seen["mcp-session-id"] == "s1"
                assert not {"authorization", "cookie", "proxy-authorization"} & seen.keys()
            assert home.state["connections"] == 1  # the first hop's connection served the last
            await client.close()

    run(case)


def test_a_redirect_to_another_scheme_or_a_bad_url_is_refused() -> None:
    async def bad(reader: Reader, writer: Writer, state: dict[str, Any]) -> None:
        while True:
            line, _, _ = await read_request(reader)
            where = {"/ftp": "ftp://127.0.0.1/x", "/port": "http://127.0.0.1:99999/"}
            loc = where.get(line.split()[1], "")
            writer.write(answer(b"", "307 Temporary Redirect", f"location: {loc}\r\n"))
            await writer.drain()

    async def case() -> None:
        async with Server(bad) as srv:
            for path in ("/ftp", "/port"):
                client = HttpClient(srv.origin + path)
                with pytest.raises(HttpClientError, match="invalid URL"):
                    await client.request("POST", {}, b"{}")
                await client.close()
            client = HttpClient(srv.origin + "/none")  # an empty Location: the 307 itself
            resp = await client.request("POST", {}, b"{}")
            assert resp.status == 307
            resp.release()
            await client.close()

    run(case)


def test_a_starlette_mount_redirects_post_mcp_to_mcp_slash() -> None:
    """What a real MCP server mounted at ``/mcp`` (Starlette, FastAPI) does: ``POST /mcp`` is
    ``307`` to ``/mcp/``; the call still arrives, and through the upstream too."""
    import uvicorn
    from starlette.applications import Starlette
    from starlette.routing import Mount
    from starlette.types import Receive, Scope, Send

    from agw.config.mcp import McpService
    from agw.mcp.upstream.http import StreamableHttpUpstream

    seen: list[tuple[str, str, Any]] = []

    async def mcp(scope: Scope, receive: Receive, send: Send) -> None:
        body = b""
        while True:
            msg = await receive()
            body += msg.get("body", b"")
            if not msg.get("more_body"):
                break
        got = json.loads(body) if body else None
        seen.append((scope["method"], scope["path"], got))
        if scope["method"] != "POST":
            await send({"type": "http.response.start", "status": 405, "headers": []})
            await send({"type": "http.response.body", "body": b""})
            return
        status, out = 202, b""
        if isinstance(got, dict) and "id" in got:
            result = {"protocolVersion": "2025-11-25", "capabilities": {}, "serverInfo": {}}
            answered = {"jsonrpc": "2.0", "id": got["id"], "result": result}
            status, out = 200, json.dumps(answered).encode()
        headers = [(b"content-type", b"application/json")]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": out})

    async def case() -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        config = uvicorn.Config(Starlette(routes=[Mount("/mcp", app=mcp)]), log_level="warning")
        server = uvicorn.Server(config)
        task = asyncio.create_task(server.serve(sockets=[sock]))
        for _ in range(1000):
            if server.started:
                break
            await asyncio.sleep(0.01)
        try:
            client = HttpClient(f"http://127.0.0.1:{port}/mcp")
            resp = await client.request("POST", {"content-type": "application/json"}, b"{}")
            assert resp.status == 202
            resp.release()
            await client.close()
            assert seen == [("POST", "/mcp/", {})]  # Starlette answered the 307 itself
            service = McpService.model_validate(
                {"id": "s", "name": "s", "transport": "streamable_http", "url": client.origin}
            )
            service = service.model_copy(update={"url": f"http://127.0.0.1:{port}/mcp"})
            up = StreamableHttpUpstream(service)
            init = await up.ensure_ready()
            assert init["protocolVersion"] == "2025-11-25"
            await up.close()
            assert [m for m, _, _ in seen[1:3]] == ["POST", "POST"]
        finally:
            server.should_exit = True
            await task

    run(case)


def test_a_301_to_the_upstream_says_what_to_configure() -> None:
    from agw.config.mcp import McpService
    from agw.mcp.upstream import UpstreamError
    from agw.mcp.upstream.http import StreamableHttpUpstream

    async def case() -> None:
        async with Server(redirecting) as srv:
            url = f"{srv.origin}/moved?s=301"
            service = McpService.model_validate(
                {"id": "s", "name": "s", "transport": "streamable_http", "url": url}
            )
            up = StreamableHttpUpstream(service)
            with pytest.raises(UpstreamError, match=r"HTTP 301, a redirect to '/final'"):
                await up.ensure_ready()
            await up.close()

    run(case)


# ------------------------------------------------------------------------------ retries


def test_only_a_reused_connection_is_tried_again_and_only_when_silent() -> None:
    async def stale(reader: Reader, writer: Writer, state: dict[str, Any]) -> None:
        first = state["connections"] == 1
        _, headers, _ = await read_request(reader)
        state["requests"].append(headers["x-case"])
        writer.write(answer(b"{}"))
        await writer.drain()
        if not first:
            await echo_forever(reader, writer, state)
            return
        _, headers, _ = await read_request(reader)  # the second request, on the reused one
        state["requests"].append(headers["x-case"])
        writer.write(
            {"silent": b"", "partial": b"HTTP/1.1 2", "garbage": b"nonsense\r\n"}[headers["x-case"]]
        )
        await writer.drain()

    async def case() -> None:
        for kind in ("silent", "partial", "garbage"):
            async with Server(stale) as srv:
                client = HttpClient(srv.url)
                resp = await client.request("POST", {"x-case": "first"}, b"1")
                await resp.read()
                resp.release()
                if kind == "silent":  # closed before any byte: a stale keep-alive, once more
                    resp = await client.request("POST", {"x-case": kind}, b"2")
                    assert resp.status == 200
                    resp.release()
                    assert srv.state["connections"] == 2
                else:  # the server had begun to answer: the call may have run, never again
                    with pytest.raises(Disconnected) as caught:
                        await client.request("POST", {"x-case": kind}, b"2")
                    assert not isinstance(caught.value, NoAnswer)
                    assert srv.state["connections"] == 1
                await client.close()

    run(case)


# ------------------------------------------------------------------------------ encodings


PAYLOAD = b'{"jsonrpc":"2.0","id":1,"result":{"text":"' + b"abc" * 5000 + b'"}}'


def raw_deflate(data: bytes) -> bytes:
    squeezer = zlib.compressobj(wbits=-15)
    return squeezer.compress(data) + squeezer.flush()


@functools.cache
def encoded_bodies() -> dict[str, bytes]:
    return {
        "gzip": gzip.compress(PAYLOAD),
        "x-gzip": gzip.compress(PAYLOAD),
        "deflate": zlib.compress(PAYLOAD),
        "raw-deflate": raw_deflate(PAYLOAD),
        "br": b"\x1b\x00\x00",
        "broken": b"not gzip at all",
        "cut": gzip.compress(PAYLOAD)[:-12],
        "bomb": gzip.compress(b"\0" * (16 << 20), compresslevel=9),  # 16 MiB in 16 KiB
    }


async def encoded(reader: Reader, writer: Writer, state: dict[str, Any]) -> None:
    bodies = encoded_bodies()
    while True:
        _, headers, _ = await read_request(reader)
        state["requests"].append(headers)
        kind = headers["x-case"]
        coding = {"raw-deflate": "deflate", "broken": "gzip", "cut": "gzip", "bomb": "gzip"}
        extra = f"content-encoding: {coding.get(kind, kind)}\r\n"
        if headers.get("x-chunked"):
            body = bodies[kind]
            writer.write(f"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n{extra}\r\n".encode())
            for at in range(0, len(body), 4096):
                piece = body[at : at + 4096]
                writer.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            writer.write(b"0\r\n\r\n")
        else:
            writer.write(answer(bodies[kind], extra=extra))
        await writer.drain()


def test_gzip_and_deflate_answers_are_decoded_within_the_limit() -> None:
    async def case() -> None:
        async with Server(encoded) as srv:
            client = HttpClient(srv.url)

            async def read(kind: str, limit: int = 1 << 20, chunked: bool = False) -> bytes:
                headers = {"x-case": kind, **({"x-chunked": "1"} if chunked else {})}
                resp = await client.request("GET", headers)
                try:
                    if chunked:
                        pieces = [piece async for piece in resp.chunks()]
                        assert max(map(len, pieces)) <= 256 * 1024
                        return b"".join(pieces)
                    return await resp.read(limit)
                finally:
                    resp.release()

            for kind in ("gzip", "x-gzip", "deflate", "raw-deflate"):
                assert await read(kind) == PAYLOAD
                assert await read(kind, chunked=True) == PAYLOAD
            resp = await client.request("GET", {"x-case": "gzip"})
            assert await resp.read_prefix(10) == PAYLOAD[:10]  # an error's excerpt, decoded
            resp.release()
            with pytest.raises(BodyTooLarge, match="once decoded"):
                await read("bomb", limit=1 << 20)
            assert len(await read("bomb", chunked=True)) == 16 << 20  # a piece at a time
            with pytest.raises(Undecodable, match="'br'"):
                await read("br")
            with pytest.raises(Undecodable, match="invalid gzip"):
                await read("broken")
            with pytest.raises(Undecodable, match="cut short"):
                await read("cut")
            with pytest.raises(Undecodable, match="cut short"):
                await read("cut", chunked=True)
            assert all("accept-encoding" not in h for h in srv.state["requests"])
            await client.close()

    run(case)


# ------------------------------------------------------------------------------ framing


async def framed(reader: Reader, writer: Writer, state: dict[str, Any]) -> None:
    while True:
        _, headers, _ = await read_request(reader)
        kind = headers.get("x-case", "")
        writer.write(
            {
                "204": b"HTTP/1.1 204 No Content\r\n\r\n",
                "close": b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 2\r\n\r\nok",
                "http10": b"HTTP/1.0 200 OK\r\ncontent-length: 2\r\n\r\nok",
                "interim": b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\n"
                b"link: </a>\r\n\r\nHTTP/1.1 200 OK\r\nx-final: 1\r\ncontent-length: 2\r\n\r\nok",
                "twice": answer(b"ok") + answer(b"smuggled"),
                "te": b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
                "midbody": b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nhalf",
                "101": b"HTTP/1.1 101 Switching Protocols\r\nupgrade: x\r\n\r\n",
            }.get(kind, answer(b"ok"))
        )
        await writer.drain()
        if kind == "midbody":
            return  # closed four bytes into ten


def test_framing_decides_what_goes_back_to_the_pool() -> None:
    async def case() -> None:
        loop_errors: list[dict[str, Any]] = []
        asyncio.get_running_loop().set_exception_handler(lambda _, ctx: loop_errors.append(ctx))
        async with Server(framed) as srv:
            client = HttpClient(srv.url)

            async def fetch(kind: str) -> tuple[int, dict[str, str], bytes]:
                resp = await client.request("GET", {"x-case": kind})
                try:
                    return resp.status, resp.headers, await resp.read(100)
                finally:
                    resp.release()

            async def reused_after(kind: str) -> bool:
                before: int = srv.state["connections"]
                await fetch(kind)
                await asyncio.sleep(0.02)  # whatever the server sent on meanwhile has come
                assert await fetch("plain") == (
                    200,
                    {"content-type": "application/json", "content-length": "2"},
                    b"ok",
                )
                return bool(srv.state["connections"] == before)

            await fetch("plain")
            assert await fetch("204") == (204, {}, b"")
            assert await reused_after("204")
            assert not await reused_after("close")  # the server kept it open: not reused
            assert not await reused_after("http10")
            assert not await reused_after("twice")  # an answer nobody asked for
            assert not await reused_after("101")  # never asked for: an answer, then closed
            status, headers, body = await fetch("interim")
            assert (status, body, headers.get("x-final"), "link" in headers) == (
                200,
                b"ok",
                "1",
                False,
            )
            with pytest.raises(Disconnected, match="transfer-encoding"):
                await client.request("GET", {"x-case": "te"})
            resp = await client.request("GET", {"x-case": "midbody"})
            with pytest.raises(Disconnected, match="server disconnected"):
                await resp.read(100)
            resp.release()
            await client.close()
        assert loop_errors == []  # nothing escaped the protocol callbacks

    run(case)


def test_an_endless_head_is_cut_at_the_limit() -> None:
    async def endless(reader: Reader, writer: Writer, state: dict[str, Any]) -> None:
        _, headers, _ = await read_request(reader)
        if headers["x-case"] == "headers":
            writer.write(b"HTTP/1.1 200 OK\r\n")
            line = b"x-pad: " + b"a" * 1000 + b"\r\n"
        else:
            line = b"HTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\n"
        for _ in range(10_000):  # ~10 MB
            writer.write(line)
            await writer.drain()

    async def case() -> None:
        async with Server(endless) as srv:
            client = HttpClient(srv.url)
            for kind in ("headers", "hints"):
                with pytest.raises(Disconnected, match="head over 65536 bytes"):
                    await client.request("GET", {"x-case": kind})
            await client.close()

    run(case)


# ------------------------------------------------------------------------- waits, timeouts


def test_a_silent_server_and_cancelled_callers_leak_nothing() -> None:
    async def silent_once(reader: Reader, writer: Writer, state: dict[str, Any]) -> None:
        while True:
            _, headers, _ = await read_request(reader)
            if headers.get("x-case") == "hang":
                await reader.read()  # until the client gives up on it
                state["hung_up"] = True
                return
            await asyncio.sleep(0.01)
            writer.write(answer(b"{}"))
            await writer.drain()

    async def case() -> None:
        async with Server(silent_once) as srv:
            client = HttpClient(srv.url, limit=1)
            hanging = asyncio.ensure_future(client.request("POST", {"x-case": "hang"}, b"{}"))
            await asyncio.sleep(0.05)
            waiting = asyncio.ensure_future(client.request("POST", {}, b"{}"))
            await asyncio.sleep(0.05)
            waiting.cancel()  # waiting for the one connection: gives up its turn
            with pytest.raises(asyncio.CancelledError):
                await waiting
            with pytest.raises(TimeoutError):  # the caller's timeout
                async with asyncio.timeout(0.1):
                    await hanging
            for _ in range(200):  # its connection was dropped
                if srv.state.get("hung_up"):
                    break
                await asyncio.sleep(0.01)
            assert srv.state.get("hung_up")

            async def one(i: int) -> bytes:
                resp = await client.request("POST", {}, b"{}")
                try:
                    return await resp.read()
                finally:
                    resp.release()

            # many more than the limit, a third of them cancelled while they wait: no deadlock
            calls = [asyncio.ensure_future(one(i)) for i in range(30)]
            await asyncio.sleep(0.02)
            for call in calls[1::3]:
                call.cancel()
            done = await asyncio.gather(*calls, return_exceptions=True)
            assert sum(r == b"{}" for r in done) >= 20
            assert all(r == b"{}" or isinstance(r, asyncio.CancelledError) for r in done)
            assert await one(0) == b"{}"
            assert srv.state["connections"] == 2  # the hung one, then one for all the rest
            await client.close()

    run(case)


# ------------------------------------------------------------------------------ TLS


def issue(tmp: Path, names: list[str]) -> tuple[Path, ssl.SSLContext]:
    """A test CA (its PEM file) and a server context with a certificate it signed for
    ``names`` (host names, or IP addresses)."""
    x509 = pytest.importorskip("cryptography.x509")
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)

    def cert(
        subject: str, key: ec.EllipticCurvePrivateKey, signer: ec.EllipticCurvePrivateKey
    ) -> Any:
        issuer = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "agw test CA")])
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
            .issuer_name(issuer)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(hours=1))
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(signer.public_key()), False
            )
        )
        if key is signer:
            builder = builder.add_extension(x509.BasicConstraints(ca=True, path_length=0), True)
        else:
            alt: list[Any] = [
                x509.IPAddress(ipaddress.ip_address(n)) if n[0].isdigit() else x509.DNSName(n)
                for n in names
            ]
            builder = builder.add_extension(x509.SubjectAlternativeName(alt), False)
        return builder.sign(signer, hashes.SHA256())

    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    pem = serialization.Encoding.PEM
    ca_file, cert_file, key_file = tmp / "ca.pem", tmp / "cert.pem", tmp / "key.pem"
    ca_file.write_bytes(cert("agw test CA", ca_key, ca_key).public_bytes(pem))
    cert_file.write_bytes(cert(names[0], key, ca_key).public_bytes(pem))
    key_file.write_bytes(
        key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert_file, key_file)
    return ca_file, context


def test_https_checks_the_certificate_and_the_host_name_or_address(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "ip").mkdir()
    (tmp_path / "dns").mkdir()
    ca_ip, for_ip = issue(tmp_path / "ip", ["127.0.0.1"])
    ca_dns, for_dns = issue(tmp_path / "dns", ["localhost"])
    sni: list[str | None] = []
    for context in (for_ip, for_dns):
        context.sni_callback = lambda _sock, name, _ctx: sni.append(name)

    async def get(url: str) -> bytes:
        client = HttpClient(url)  # the trust store is read here (SSL_CERT_FILE)
        try:
            resp = await client.request("POST", {}, b"1")
            try:
                return await resp.read()
            finally:
                resp.release()
        finally:
            await client.close()

    async def case() -> None:
        async with (
            Server(echo_forever, tls=for_ip) as by_ip,
            Server(redirecting, tls=for_dns) as by_name,
            Server(echo_forever) as plain,
        ):
            dns_port = by_name.origin.rsplit(":", 1)[1]
            monkeypatch.setenv("SSL_CERT_FILE", str(ca_ip))
            assert await get(by_ip.url) == b'{"echo":1}'
            assert sni == [None]  # an IP address is checked, and sent as no server name
            monkeypatch.setenv("SSL_CERT_FILE", str(ca_dns))
            assert await get(f"https://localhost:{dns_port}/x") == b'{"at":"/x","body":"1"}'
            assert sni[-1] == "localhost"
            with pytest.raises(Unreachable, match="certificate verify failed"):
                await get(f"https://127.0.0.1:{dns_port}/x")  # a name's certificate, not the IP's
            with pytest.raises(HttpClientError, match="from https to http"):
                await get(f"https://localhost:{dns_port}/go?to={plain.url}")
            assert plain.state["connections"] == 0
            monkeypatch.delenv("SSL_CERT_FILE")
            with pytest.raises(Unreachable, match="certificate verify failed"):
                await get(by_ip.url)  # the system's store does not know the test CA

    run(case)


# ------------------------------------------------------------------------------ injection


def test_a_header_or_target_that_could_end_its_line_is_never_sent() -> None:
    async def case() -> None:
        async with Server(echo_forever) as srv:
            client = HttpClient(srv.url)
            for headers in (
                {"mcp-session-id": "s\r\nx-injected: 1"},
                {"traceparent": "00-a\n-b"},
                {"authorization": "Bearer k\rx"},
                {"x-nul": "a\x00b"},
            ):
                with pytest.raises(HttpClientError, match="line break or NUL"):
                    await client.request("POST", headers, b"{}")
            for name in ("x-a b", "x-a:", "x-a\r\nx-b", ""):
                with pytest.raises(HttpClientError, match="not a token"):
                    await client.request("POST", {name: "v"}, b"{}")
            assert srv.state["connections"] == 0  # refused before connecting
            odd = HttpClient(f"{srv.origin}/a b/\u00fc\x7f?q=1 2")
            resp = await odd.request("GET", {})
            resp.release()
            assert srv.state["requests"][0][0] == "GET /a%20b/%C3%BC%7F?q=1%202 HTTP/1.1"
            await odd.close()
            await client.close()
        for bad in ("http:///mcp", "http://a b/mcp", "http://[::1/mcp"):
            with pytest.raises(ValueError):
                HttpClient(bad)

    run(case)


def test_a_service_key_with_a_line_break_fails_the_call_and_sends_nothing() -> None:
    from agw.config.mcp import McpService
    from agw.mcp.upstream import UpstreamError
    from agw.mcp.upstream.http import StreamableHttpUpstream

    async def case() -> None:
        async with Server(echo_forever) as srv:
            service = McpService.model_validate(
                {
                    "id": "s",
                    "name": "s",
                    "transport": "streamable_http",
                    "url": srv.url,
                    "auth": {"type": "bearer", "api_key": "k\r\nx-injected: 1"},
                }
            )
            up = StreamableHttpUpstream(service)
            with pytest.raises(UpstreamError, match="line break"):
                await up.ensure_ready()
            await up.close()
            assert srv.state["connections"] == 0

    run(case)
