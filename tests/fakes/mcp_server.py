"""A fake MCP server (the official ``mcp`` 2.x ``MCPServer``) run as a real process for tests.

    python -m tests.fakes.mcp_server --transport stdio [--name NAME] [--page-size N] [--log F]
    python -m tests.fakes.mcp_server --transport streamable-http --port 0 [--json-response]
    python -m tests.fakes.mcp_server --transport sse --port 0

HTTP transports listen on 127.0.0.1 and print ``READY <port>`` on stdout once they accept
connections (streamable HTTP at ``/mcp``, legacy SSE at ``/sse`` + ``/messages/``). stdio speaks
newline-delimited JSON-RPC on stdin/stdout. The server is dual-era (``initialize`` and
``server/discover``).

Tools:

- ``echo {message}`` -> the message; ``add {a, b}`` -> a + b (integers)
- ``slow {seconds, steps}`` -> one ``notifications/progress`` per step with the caller's progress
  token (``progress`` 1..steps, ``total`` steps), sleeping ``seconds / steps`` between, then
  ``"slept <seconds>s in <steps> steps"``. A cancellation (``notifications/cancelled``) is logged.
- ``fail {message}`` -> a tool error (``isError: true``, the message as text)
- ``whoami`` -> the HTTP headers this request carried (JSON: ``authorization``,
  ``mcp_session_id``, ``mcp_protocol_version``, ``headers`` = all of them, lower-case); stdio: all
  null / empty
- ``log {message}`` -> one ``notifications/message`` (level info, data = message) during the call,
  then ``"logged"``
- ``ask {question}`` -> an ``elicitation/create`` request to the client during the call; returns
  ``"answer: <text>"`` (accepted, field ``text``) or ``"action: <decline|cancel>"``
- ``change_tools`` -> adds a tool ``extra_<n>`` (echoes) and sends
  ``notifications/tools/list_changed`` on the standalone channel (stdio: stdout; HTTP: the GET
  stream), then ``"added extra_<n>"``
- ``crash`` -> writes ``fake mcp server <name> crashing on purpose`` to stderr and exits with
  code 3 at once (any transport)
- ``chatter {count, message, background, interval}`` -> ``count`` ``notifications/message``
  (level info, data = message), ``interval`` seconds apart; during the call, or with
  ``background: true`` from a task that goes on after the call returned ``"chattering"``
- ``misbehave {kind, mib}`` -> a broken answer of ``mib`` MiB: ``kind`` ``json`` (HTTP: a JSON
  body that never ends within ``mib``), ``event`` (HTTP: an SSE stream of one ``data:`` line
  without a line end), ``line`` (stdio: ``mib`` MiB on stdout without a newline; then the call
  hangs)

Resources ``res://<name>/readme`` and ``res://<name>/changelog``, template
``res://<name>/items/{item}``, prompt ``greet {name}``.

Options: ``--page-size N`` paginates ``tools/list``, ``resources/list``,
``resources/templates/list`` and ``prompts/list`` (cursor = the decimal offset). ``--log F``
appends one JSON line per event: ``{"event": "call", "tool", "args", "request_id"}``,
``{"event": "cancelled", "tool", "request_id"}``, and for HTTP transports ``{"event": "http",
"method", "path", "headers", "body"}`` for every HTTP request (headers lower-case, body parsed
JSON or null). ``--require-key K``: HTTP requests without ``Authorization: Bearer K`` get 401.
``--modern-only``: an ``initialize`` POST gets HTTP 400 with a JSON-RPC error (a server of the
2026-07-28 era that never does the handshake). ``--start-delay S``: sleep S seconds before serving
anything (a server slow to start).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import sys
import time
import warnings
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import anyio
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp_types import (
    ListPromptsResult,
    ListResourcesResult,
    ListResourceTemplatesResult,
    ListToolsResult,
    PaginatedRequestParams,
    ToolListChangedNotification,
)
from pydantic import BaseModel

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
Asgi = Callable[[Scope, Receive, Send], Awaitable[None]]

warnings.filterwarnings("ignore", category=DeprecationWarning)
WIRE_FD = 1  # stdio: a duplicate of the protocol's stdout (see main)


class EventLog:
    """Appends one JSON object per line to a file (or nowhere)."""

    def __init__(self, path: str | None) -> None:
        self.path = path

    def write(self, **event: Any) -> None:
        if not self.path:
            return
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(event, default=str) + "\n")


class Answer(BaseModel):
    text: str


def build_server(name: str, page_size: int, events: EventLog) -> MCPServer:
    server = MCPServer(name, instructions=f"fake server {name}", version="1.0.0", log_level="ERROR")
    extra: list[str] = []

    def called(ctx: Context, tool: str, **args: Any) -> None:
        events.write(event="call", tool=tool, args=args, request_id=ctx.request_id)

    @server.tool()
    def echo(message: str, ctx: Context) -> str:
        """Return the message unchanged."""
        called(ctx, "echo", message=message)
        return message

    @server.tool()
    def add(a: int, b: int, ctx: Context) -> int:
        """Add two integers."""
        called(ctx, "add", a=a, b=b)
        return a + b

    @server.tool()
    async def slow(ctx: Context, seconds: float = 1.0, steps: int = 5) -> str:
        """Sleep, reporting progress once per step."""
        called(ctx, "slow", seconds=seconds, steps=steps)
        steps = max(1, steps)
        try:
            for i in range(steps):
                await anyio.sleep(seconds / steps)
                await ctx.report_progress(i + 1, steps, f"step {i + 1}/{steps}")
        except anyio.get_cancelled_exc_class():
            events.write(event="cancelled", tool="slow", request_id=ctx.request_id)
            print(f"cancelled request {ctx.request_id}", file=sys.stderr, flush=True)
            raise
        return f"slept {seconds}s in {steps} steps"

    @server.tool()
    def fail(message: str, ctx: Context) -> str:
        """Fail with a tool error."""
        called(ctx, "fail", message=message)
        raise ToolError(message)

    @server.tool()
    def whoami(ctx: Context) -> dict[str, Any]:
        """The HTTP headers this call arrived with."""
        called(ctx, "whoami")
        headers = {k.lower(): v for k, v in (ctx.headers or {}).items()}
        return {
            "authorization": headers.get("authorization"),
            "mcp_session_id": headers.get("mcp-session-id"),
            "mcp_protocol_version": headers.get("mcp-protocol-version"),
            "headers": headers,
        }

    @server.tool()
    async def log(message: str, ctx: Context) -> str:
        """Send one logging notification during the call."""
        called(ctx, "log", message=message)
        await ctx.info(message)
        return "logged"

    @server.tool()
    async def ask(question: str, ctx: Context) -> str:
        """Ask the client (elicitation) and return its answer."""
        called(ctx, "ask", question=question)
        answer = await ctx.elicit(question, Answer)
        if answer.action == "accept":
            return f"answer: {answer.data.text}"
        return f"action: {answer.action}"

    @server.tool()
    async def change_tools(ctx: Context) -> str:
        """Add a tool and tell the client its tool list changed."""
        called(ctx, "change_tools")
        tool_name = f"extra_{len(extra) + 1}"
        extra.append(tool_name)

        def extra_tool(message: str) -> str:
            return message

        server.add_tool(extra_tool, name=tool_name, description="added by change_tools")
        await ctx.request_context.session.send_notification(ToolListChangedNotification())
        return f"added {tool_name}"

    @server.tool()
    def crash(ctx: Context) -> str:
        """Exit the server process at once."""
        called(ctx, "crash")
        print(f"fake mcp server {name} crashing on purpose", file=sys.stderr, flush=True)
        os._exit(3)

    chatters: set[asyncio.Task[None]] = set()

    @server.tool()
    async def chatter(
        ctx: Context,
        count: int = 10,
        message: str = "chatter",
        background: bool = False,
        interval: float = 0.0,
    ) -> str:
        """Send ``count`` logging notifications, now or after returning."""
        called(ctx, "chatter", count=count, message=message, background=background)
        session = ctx.request_context.session

        related = None if background else ctx.request_id  # HTTP: on the call's own stream

        async def emit() -> None:
            for _ in range(count):
                await session.send_log_message(
                    level="info", data=message, logger="chatter", related_request_id=related
                )
                if interval:
                    await asyncio.sleep(interval)

        if not background:
            await emit()
            return "chattered"
        task = asyncio.get_running_loop().create_task(emit())
        chatters.add(task)
        task.add_done_callback(chatters.discard)
        return "chattering"

    @server.tool()
    async def misbehave(ctx: Context, kind: str = "line", mib: int = 40) -> str:
        """stdio ``line``: write ``mib`` MiB without a newline (HTTP kinds: see wrap_http)."""
        called(ctx, "misbehave", kind=kind, mib=mib)
        left = mib << 20
        while left > 0:
            try:
                left -= os.write(WIRE_FD, b"x" * min(left, 1 << 16))
            except BlockingIOError:  # stdout is non-blocking under the stdio transport
                await anyio.sleep(0.001)
        await anyio.sleep(3600)
        return "unreachable"

    @server.resource(f"res://{name}/readme", mime_type="text/plain")
    def readme() -> str:
        return f"readme of {name}"

    @server.resource(f"res://{name}/changelog", mime_type="text/plain")
    def changelog() -> str:
        return f"changelog of {name}"

    @server.resource(f"res://{name}/items/{{item}}", mime_type="text/plain")
    def item(item: str) -> str:
        return f"item {item} of {name}"

    @server.prompt()
    def greet(name: str) -> str:
        """Greet someone."""
        return f"Hello, {name}!"

    if page_size > 0:
        paginate(server, page_size)
    return server


def _window(cursor: str | None, total: int, size: int) -> tuple[int, int, str | None]:
    try:
        start = int(cursor) if cursor else 0
    except ValueError:
        start = -1
    if start < 0 or start > total:
        from mcp.shared.exceptions import MCPError

        raise MCPError(code=-32602, message=f"invalid cursor {cursor!r}")
    end = min(total, start + size)
    return start, end, (str(end) if end < total else None)


def paginate(server: MCPServer, size: int) -> None:
    """Replace the four list handlers with paginated ones (MCPServer lists everything at once)."""
    low = server._lowlevel_server

    async def tools(ctx: Any, params: PaginatedRequestParams) -> ListToolsResult:
        items = await server.list_tools()
        a, b, nxt = _window(params.cursor, len(items), size)
        return ListToolsResult(tools=items[a:b], next_cursor=nxt)

    async def resources(ctx: Any, params: PaginatedRequestParams) -> ListResourcesResult:
        items = await server.list_resources()
        a, b, nxt = _window(params.cursor, len(items), size)
        return ListResourcesResult(resources=items[a:b], next_cursor=nxt)

    async def templates(ctx: Any, params: PaginatedRequestParams) -> ListResourceTemplatesResult:
        items = await server.list_resource_templates()
        a, b, nxt = _window(params.cursor, len(items), size)
        return ListResourceTemplatesResult(resource_templates=items[a:b], next_cursor=nxt)

    async def prompts(ctx: Any, params: PaginatedRequestParams) -> ListPromptsResult:
        items = await server.list_prompts()
        a, b, nxt = _window(params.cursor, len(items), size)
        return ListPromptsResult(prompts=items[a:b], next_cursor=nxt)

    low.add_request_handler("tools/list", PaginatedRequestParams, tools)
    low.add_request_handler("resources/list", PaginatedRequestParams, resources)
    low.add_request_handler("resources/templates/list", PaginatedRequestParams, templates)
    low.add_request_handler("prompts/list", PaginatedRequestParams, prompts)


def wrap_http(app: Asgi, log: EventLog, require_key: str | None, modern_only: bool) -> Asgi:
    """Log every HTTP request; enforce ``--require-key`` and ``--modern-only``."""

    async def wrapped(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        chunks: list[bytes] = []
        if scope["method"] == "POST":
            while True:
                msg = await receive()
                chunks.append(msg.get("body", b""))
                if not msg.get("more_body"):
                    break
        raw = b"".join(chunks)
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None
        log.write(
            event="http", method=scope["method"], path=scope["path"], headers=headers, body=body
        )
        if require_key is not None and headers.get("authorization") != f"Bearer {require_key}":
            await _respond(send, 401, {"error": "missing or wrong key"})
            return
        if modern_only and isinstance(body, dict) and body.get("method") == "initialize":
            err = {"code": -32601, "message": "initialize is not supported (2026-07-28 only)"}
            await _respond(send, 400, {"jsonrpc": "2.0", "id": body.get("id"), "error": err})
            return
        if (
            isinstance(body, dict)
            and body.get("method") == "tools/call"
            and (body.get("params") or {}).get("name") == "misbehave"
        ):
            await _misbehave(send, body)
            return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed and scope["method"] == "POST":
                replayed = True
                return {"type": "http.request", "body": raw, "more_body": False}
            return await receive()

        await app(scope, replay, send)

    return wrapped


async def _misbehave(send: Send, body: dict[str, Any]) -> None:
    """``misbehave`` over HTTP: ``json``, a JSON answer ``mib`` MiB long that never closes its
    string; ``event``, an SSE stream of one ``data:`` line ``mib`` MiB long, no line end."""
    args = (body.get("params") or {}).get("arguments") or {}
    kind, mib = args.get("kind", "json"), int(args.get("mib", 40))
    sse = kind == "event"
    ctype = b"text/event-stream" if sse else b"application/json"
    await send(
        {"type": "http.response.start", "status": 200, "headers": [(b"content-type", ctype)]}
    )
    head = b"data: " if sse else b'{"jsonrpc": "2.0", "id": %d, "result": "' % body.get("id", 0)
    await send({"type": "http.response.body", "body": head, "more_body": True})
    block = b"x" * (1 << 20)
    try:
        for _ in range(mib):
            await send({"type": "http.response.body", "body": block, "more_body": True})
    except OSError:
        return  # the client hung up (as it should)
    await send({"type": "http.response.body", "body": b""})


async def _respond(send: Send, status: int, obj: Any) -> None:
    data = json.dumps(obj).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json")],
        }
    )
    await send({"type": "http.response.body", "body": data})


async def serve_http(app: Asgi, port: int) -> None:
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    config = uvicorn.Config(app, log_level="warning", lifespan="on", timeout_graceful_shutdown=1)
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    for _ in range(1000):
        if server.started or task.done():
            break
        await asyncio.sleep(0.01)
    if task.done():
        await task
        return
    print(f"READY {sock.getsockname()[1]}", flush=True)
    await task


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0] if __doc__ else None)
    parser.add_argument("--transport", choices=["stdio", "streamable-http", "sse"], default="stdio")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--name", default="fake")
    parser.add_argument("--json-response", action="store_true")
    parser.add_argument("--page-size", type=int, default=0)
    parser.add_argument("--log", default=None)
    parser.add_argument("--require-key", default=None)
    parser.add_argument("--modern-only", action="store_true")
    parser.add_argument("--start-delay", type=float, default=0.0)
    args = parser.parse_args(argv)
    if args.start_delay > 0:  # a server slow to start: nothing is read or served before
        time.sleep(args.start_delay)
    log = EventLog(args.log)
    server = build_server(args.name, args.page_size, log)
    if args.transport == "stdio":
        global WIRE_FD
        WIRE_FD = os.dup(1)  # the transport moves stdout aside; misbehave writes the wire itself
        server.run("stdio")
        return
    if args.transport == "sse":
        app: Asgi = server.sse_app(host="127.0.0.1")
    else:
        app = server.streamable_http_app(json_response=args.json_response, host="127.0.0.1")
    asyncio.run(serve_http(wrap_http(app, log, args.require_key, args.modern_only), args.port))


if __name__ == "__main__":
    main()
