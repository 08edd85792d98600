"""What every upstream MCP transport does alike, run once per wire against the real fake server
(tests/fakes/mcp_server.py): stdio, streamable HTTP (answers as SSE streams, and as JSON), and
legacy HTTP+SSE. What only one transport does stays in test_upstream_<transport>.py.

One event loop, one fake server and one shared upstream per wire serve the cases (as in the
gateway, where one stdio process serves every client); a case that needs a fresh upstream (a
handshake, no listener, close) makes its own, and the one that crashes the server brings it back.
Wires whose answers cannot carry messages (streamable HTTP answering in JSON) leave out the cases on
messages during a call: those run on ``STREAMING`` only."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

import pytest

from agw.config.mcp import McpService
from agw.mcp.jsonrpc import RpcError
from agw.mcp.upstream import (
    SseUpstream,
    StdioUpstream,
    StreamableHttpUpstream,
    Upstream,
    UpstreamError,
    create_upstream,
)
from agw.mcp.upstream.channel import ChannelUpstream
from agw.types import JsonObj
from tests.support.agwd import free_port
from tests.support.mcp_server import McpServerHandle, run_mcp_server

T = TypeVar("T")
LIMIT_S = 60.0
NAME = "conf"  # the fake's name on the shared servers


@dataclass(frozen=True)
class Wire:
    """One transport as the suite drives it."""

    id: str
    transport: str  # the fake's --transport
    cls: type[Upstream]
    json_response: bool = False  # streamable HTTP: every answer one JSON body, no stream
    # what a call in flight fails with when the server dies ({sid}, {name}: the service's)
    died: str = ""
    # what a call fails with while the server is still down (the same placeholders)
    down: str = ""

    @property
    def http(self) -> bool:
        """The fake logs every HTTP request of this wire."""
        return self.transport != "stdio"

    def unreachable(self) -> McpService:
        """A service nothing answers for."""
        if self.transport == "stdio":
            return McpService(
                id="gone", name="gone", transport="stdio", command="/nonexistent/mcp-server"
            )
        path = "/sse" if self.transport == "sse" else "/mcp"
        url = f"http://127.0.0.1:{free_port()}{path}"
        kind = "sse" if self.transport == "sse" else "streamable_http"
        return McpService(id="gone", name="gone", transport=kind, url=url)


# a pooled connection is reset, a new one refused
HTTP_DIED = r"^mcp service {sid} (connection failed|unreachable)"
WIRES = [
    Wire(
        "stdio",
        "stdio",
        StdioUpstream,
        died=r"^mcp service {sid} exited \(code 3\): fake mcp server {name} crashing on purpose$",
        down=r"restarting in 0\.\ds",
    ),
    Wire("http-sse", "streamable-http", StreamableHttpUpstream, died=HTTP_DIED, down=HTTP_DIED),
    Wire(
        "http-json",
        "streamable-http",
        StreamableHttpUpstream,
        json_response=True,
        died=HTTP_DIED,
        down=HTTP_DIED,
    ),
    Wire("sse", "sse", SseUpstream, died=r"^mcp service {sid} stream closed", down="unreachable"),
]
# Messages during a call (progress, logging, server->client requests) need an answer that can
# carry them: a stream (an answer in JSON carries only the response).
STREAMING = [w for w in WIRES if not w.json_response]
streaming = pytest.mark.parametrize(
    "wire", STREAMING, ids=[w.id for w in STREAMING], indirect=True, scope="module"
)
UNREACHABLE = {
    "stdio": r"^mcp service gone could not start '/nonexistent/mcp-server'",
    "streamable-http": r"^mcp service gone unreachable: ",
    "sse": r"^mcp service gone unreachable: ",
}


@dataclass
class Shared:
    """The wire's shared upstream and what its listener heard."""

    wire: Wire
    server: McpServerHandle
    upstream: Upstream
    heard: list[JsonObj] = field(default_factory=list)


# ------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def loop() -> Iterator[asyncio.Runner]:
    """One event loop for the module: the shared upstreams live across cases."""
    with asyncio.Runner() as runner:
        yield runner


@pytest.fixture(scope="module", params=WIRES, ids=[w.id for w in WIRES])
def wire(request: pytest.FixtureRequest) -> Wire:
    found: Wire = request.param
    return found


@pytest.fixture(scope="module")
def server(wire: Wire, tmp_path_factory: pytest.TempPathFactory) -> Iterator[McpServerHandle]:
    tmp = tmp_path_factory.mktemp(f"conformance-{wire.id}")
    with run_mcp_server(tmp, wire.transport, NAME, json_response=wire.json_response) as srv:
        yield srv


@pytest.fixture(scope="module")
def shared(wire: Wire, server: McpServerHandle, loop: asyncio.Runner) -> Iterator[Shared]:
    heard: list[JsonObj] = []

    async def listener(up: Upstream, msg: JsonObj) -> None:
        heard.append(msg)

    state = Shared(wire, server, create_upstream(server.service(), listener), heard)
    try:
        yield state
    finally:
        loop.run(state.upstream.close())


def run(loop: asyncio.Runner, work: Coroutine[Any, Any, T]) -> T:
    async def bounded() -> T:
        async with asyncio.timeout(LIMIT_S):
            return await work

    return loop.run(bounded())


# ------------------------------------------------------------------------------ helpers


def text_of(result: Any) -> str:
    return str(result["content"][0]["text"])


async def wait_until(check: Callable[[], bool], timeout: float = 5.0) -> None:  # noqa: ASYNC109
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)


def mark(srv: McpServerHandle) -> int:
    """Where the fake's event log ends now (see :func:`since`)."""
    return len(srv.events())


def since(srv: McpServerHandle, at: int, kind: str) -> list[dict[str, Any]]:
    """The fake's events of ``kind`` logged after :func:`mark` returned ``at``."""
    return [e for e in srv.events()[at:] if e.get("event") == kind]


def posted(srv: McpServerHandle, at: int, method: str) -> list[dict[str, Any]]:
    """The HTTP POSTs (after ``at``) whose JSON-RPC body had ``method``."""
    return [
        e
        for e in since(srv, at, "http")
        if e["method"] == "POST"
        and isinstance(e["body"], dict)
        and e["body"].get("method") == method
    ]


def collector(into: list[JsonObj]) -> Callable[[JsonObj], Awaitable[None]]:
    async def on_message(msg: JsonObj) -> None:
        into.append(msg)

    return on_message


# ------------------------------------------------------------------------------ handshake


def test_handshake_is_done_once_for_concurrent_callers(
    wire: Wire, server: McpServerHandle, loop: asyncio.Runner
) -> None:
    async def main() -> None:
        at = mark(server)
        up = create_upstream(server.service())
        assert type(up) is wire.cls and up.state == "connecting"
        try:
            init, again, tools = await asyncio.gather(
                up.ensure_ready(), up.ensure_ready(), up.request("tools/list")
            )
            assert init is again is up.init_result
            assert init["serverInfo"]["name"] == NAME
            assert init["instructions"] == f"fake server {NAME}"
            assert "tools" in init["capabilities"]
            assert init["protocolVersion"] == up.protocol_version == "2025-11-25"
            assert up.state == "ready" and up.last_error is None
            assert tools["tools"]
            if wire.http:
                assert len(posted(server, at, "initialize")) == 1
                assert len(posted(server, at, "notifications/initialized")) == 1
            view = up.describe()
            assert view["service_id"] == NAME and view["transport"] == up.service.transport
            assert view["state"] == "ready" and view["protocol_version"] == "2025-11-25"
            assert view["last_used_at"] >= view["created_at"] > 0
        finally:
            await up.close()

    run(loop, main())


def test_an_unreachable_server_is_an_upstream_error(wire: Wire, loop: asyncio.Runner) -> None:
    async def main() -> None:
        up = create_upstream(wire.unreachable())
        try:
            started = time.monotonic()
            with pytest.raises(UpstreamError, match=UNREACHABLE[wire.transport]):
                await up.request("tools/list")
            assert time.monotonic() - started < 5
            assert up.state == "error"
            assert up.last_error and re.search(UNREACHABLE[wire.transport], up.last_error)
        finally:
            await up.close()

    run(loop, main())


# ------------------------------------------------------------------------------ requests


def test_lists_reads_and_prompts(shared: Shared, loop: asyncio.Runner) -> None:
    up = shared.upstream

    async def main() -> None:
        tools = [t["name"] for t in (await up.request("tools/list"))["tools"]]
        assert {"echo", "add", "slow", "fail", "whoami", "crash"} <= set(tools)
        uris = [r["uri"] for r in (await up.request("resources/list"))["resources"]]
        assert f"res://{NAME}/readme" in uris
        templates = await up.request("resources/templates/list")
        assert templates["resourceTemplates"][0]["uriTemplate"] == f"res://{NAME}/items/{{item}}"
        read = await up.request("resources/read", {"uri": f"res://{NAME}/items/9"})
        assert read["contents"][0]["text"] == f"item 9 of {NAME}"
        read = await up.request("resources/read", {"uri": f"res://{NAME}/changelog"})
        assert read["contents"][0]["text"] == f"changelog of {NAME}"
        prompt = await up.request("prompts/get", {"name": "greet", "arguments": {"name": "Al"}})
        assert prompt["messages"][0]["content"]["text"] == "Hello, Al!"
        assert await up.request("ping") == {}

    run(loop, main())


def test_tool_results_and_errors(shared: Shared, loop: asyncio.Runner) -> None:
    up = shared.upstream

    async def main() -> None:
        echo = await up.request("tools/call", {"name": "echo", "arguments": {"message": "héllo"}})
        assert text_of(echo) == "héllo" and echo.get("isError") is not True
        added = await up.request("tools/call", {"name": "add", "arguments": {"a": 2, "b": 3}})
        assert added["structuredContent"]["result"] == 5
        failed = await up.request("tools/call", {"name": "fail", "arguments": {"message": "no"}})
        assert failed["isError"] is True and "no" in text_of(failed)
        with pytest.raises(RpcError) as err:
            await up.request("no/such/method")
        assert err.value.code == -32601
        # an answered error leaves the session usable
        assert (
            text_of(
                await up.request("tools/call", {"name": "echo", "arguments": {"message": "on"}})
            )
            == "on"
        )

    run(loop, main())


def test_twenty_concurrent_calls_each_get_their_own_answer(
    shared: Shared, loop: asyncio.Runner
) -> None:
    up, srv = shared.upstream, shared.server

    async def main() -> None:
        await up.ensure_ready()
        at = mark(srv)
        results = await asyncio.gather(
            *(
                up.request("tools/call", {"name": "add", "arguments": {"a": i, "b": 1000}})
                for i in range(20)
            )
        )
        assert [r["structuredContent"]["result"] for r in results] == [i + 1000 for i in range(20)]
        assert len({e["request_id"] for e in since(srv, at, "call")}) == 20  # 20 upstream ids

    run(loop, main())


# ------------------------------------------------------------------------------ messages


@streaming
def test_progress_reaches_each_caller_with_its_own_token(
    shared: Shared, loop: asyncio.Runner
) -> None:
    """Several callers may pick the same token (several clients share a stdio process)."""
    up, srv = shared.upstream, shared.server

    def slow(seconds: float, steps: int, token: str | int) -> JsonObj:
        args = {"seconds": seconds, "steps": steps}
        return {"name": "slow", "arguments": args, "_meta": {"progressToken": token}}

    async def main() -> None:
        await up.ensure_ready()
        at = mark(srv)
        seen: dict[str, list[JsonObj]] = {"a": [], "b": [], "c": []}
        a, b, c = await asyncio.gather(
            up.request("tools/call", slow(0.3, 3, "tok"), on_message=collector(seen["a"])),
            up.request("tools/call", slow(0.2, 2, "tok"), on_message=collector(seen["b"])),
            up.request("tools/call", slow(0.2, 2, 7), on_message=collector(seen["c"])),
        )
        assert text_of(a) == "slept 0.3s in 3 steps"
        assert text_of(b) == text_of(c) == "slept 0.2s in 2 steps"
        for key, steps, token in (("a", 3, "tok"), ("b", 2, "tok"), ("c", 2, 7)):
            msgs = seen[key]
            assert [m["method"] for m in msgs] == ["notifications/progress"] * steps
            assert [m["params"]["progress"] for m in msgs] == list(range(1, steps + 1))
            assert {m["params"]["progressToken"] for m in msgs} == {token}
            assert {m["params"]["total"] for m in msgs} == {steps}
        if shared.wire.http and shared.wire.transport != "sse":  # one POST per call
            calls = posted(srv, at, "tools/call")
            tokens = [e["body"]["params"]["_meta"]["progressToken"] for e in calls]
            assert sorted(map(str, tokens)) == ["7", "tok", "tok"]  # passed through unchanged

    run(loop, main())


@streaming
def test_a_notification_during_a_call_reaches_its_on_message(
    shared: Shared, loop: asyncio.Runner
) -> None:
    up = shared.upstream

    async def main() -> None:
        own: list[JsonObj] = []
        logged = await up.request(
            "tools/call", {"name": "log", "arguments": {"message": "hello"}},
            on_message=collector(own),
        )  # fmt: skip
        assert text_of(logged) == "logged"
        assert [(m["method"], m["params"]["data"]) for m in own] == [
            ("notifications/message", "hello")
        ]

    run(loop, main())


def test_list_changed_goes_to_the_listener(shared: Shared, loop: asyncio.Runner) -> None:
    """It belongs to no call: the listener gets it, even while a call with on_message runs."""
    up, srv = shared.upstream, shared.server

    async def main() -> None:
        await up.ensure_ready()
        if shared.wire.transport == "streamable-http":  # it travels on the GET stream
            sid = up.session_id

            def get_open() -> bool:
                return any(
                    e["method"] == "GET" and e["headers"].get("mcp-session-id") == sid
                    for e in srv.events("http")
                )

            await wait_until(get_open)
            await asyncio.sleep(0.2)  # let the server attach the stream
        shared.heard.clear()
        own: list[JsonObj] = []
        changed = await up.request(
            "tools/call", {"name": "change_tools", "arguments": {}}, on_message=collector(own)
        )
        added = text_of(changed).removeprefix("added ")
        await wait_until(lambda: bool(shared.heard))
        assert shared.heard == [{"jsonrpc": "2.0", "method": "notifications/tools/list_changed"}]
        assert own == []
        tools = [t["name"] for t in (await up.request("tools/list"))["tools"]]
        assert added in tools

    run(loop, main())


@streaming
def test_a_server_request_is_answered_through_reply(shared: Shared, loop: asyncio.Runner) -> None:
    up = shared.upstream

    async def main() -> None:
        asked: list[JsonObj] = []

        def answering(answer: JsonObj) -> Callable[[JsonObj], Awaitable[None]]:
            async def on_message(msg: JsonObj) -> None:
                asked.append(msg)
                await up.reply(msg["id"], answer)

            return on_message

        accept = {"action": "accept", "content": {"text": "42"}}
        got = await up.request(
            "tools/call", {"name": "ask", "arguments": {"question": "what is it?"}},
            on_message=answering(accept),
        )  # fmt: skip
        assert text_of(got) == "answer: 42"
        assert [m["method"] for m in asked] == ["elicitation/create"]
        assert asked[0]["params"]["message"] == "what is it?"
        got = await up.request(
            "tools/call", {"name": "ask", "arguments": {"question": "?"}},
            on_message=answering({"action": "decline"}),
        )  # fmt: skip
        assert text_of(got) == "action: decline"

    run(loop, main())


@streaming
def test_a_server_request_nobody_takes_is_refused(
    server: McpServerHandle, loop: asyncio.Runner
) -> None:
    """No on_message and no listener: the upstream gets -32601 at once."""

    async def main() -> None:
        up = create_upstream(server.service())
        try:
            with pytest.raises(RpcError, match="client does not support elicitation/create"):
                await up.request(
                    "tools/call", {"name": "ask", "arguments": {"question": "again?"}}, timeout=10
                )
        finally:
            await up.close()

    run(loop, main())


# ------------------------------------------------------------------------------ cancellation


def test_cancelling_a_call_cancels_it_upstream(shared: Shared, loop: asyncio.Runner) -> None:
    up, srv = shared.upstream, shared.server

    async def main() -> None:
        await up.ensure_ready()
        at = mark(srv)
        task = asyncio.create_task(
            up.request("tools/call", {"name": "slow", "arguments": {"seconds": 20}})
        )
        await wait_until(lambda: bool(since(srv, at, "call")))
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await wait_until(lambda: bool(since(srv, at, "cancelled")))
        call_id = since(srv, at, "call")[0]["request_id"]
        assert since(srv, at, "cancelled")[0]["request_id"] == call_id
        if srv.transport != "stdio":  # (the fake logs no stdio traffic)
            notice = posted(srv, at, "notifications/cancelled")[0]
            assert str(notice["body"]["params"]["requestId"]) == call_id
            if isinstance(up, StreamableHttpUpstream):
                assert notice["headers"]["mcp-session-id"] == up.session_id
        if isinstance(up, StdioUpstream):
            await wait_until(lambda: f"cancelled request {call_id}" in up.stderr_tail)
        echo = await up.request("tools/call", {"name": "echo", "arguments": {"message": "x"}})
        assert text_of(echo) == "x"  # still usable

    run(loop, main())


def test_a_call_past_its_timeout_fails_and_is_cancelled_upstream(
    shared: Shared, loop: asyncio.Runner
) -> None:
    up, srv = shared.upstream, shared.server

    async def main() -> None:
        await up.ensure_ready()
        at = mark(srv)
        started = time.monotonic()
        with pytest.raises(UpstreamError, match=r"did not answer tools/call within 0\.3s"):
            await up.request(
                "tools/call", {"name": "slow", "arguments": {"seconds": 20}}, timeout=0.3
            )
        assert time.monotonic() - started < 3
        await wait_until(lambda: bool(since(srv, at, "cancelled")))

    run(loop, main())


# ------------------------------------------------------------------------------ death, close


def test_server_death_fails_calls_in_flight_at_once_then_recovers(
    shared: Shared, loop: asyncio.Runner
) -> None:
    """The fake's ``crash`` tool ends its process (stdio: the upstream's own child, restarted
    after a backoff; HTTP: the server, started again on the same port by the test)."""
    wire, up, srv = shared.wire, shared.upstream, shared.server
    died = wire.died.format(sid=NAME, name=NAME)
    down = wire.down.format(sid=NAME, name=NAME)

    async def main() -> None:
        await up.ensure_ready()
        at = mark(srv)
        restarts = up.restarts if isinstance(up, StdioUpstream) else 0
        first_pid = up.pid if isinstance(up, StdioUpstream) else None
        first_endpoint = up.endpoint if isinstance(up, SseUpstream) else None
        slow = [
            asyncio.create_task(
                up.request("tools/call", {"name": "slow", "arguments": {"seconds": 30}})
            )
            for _ in range(2)
        ]
        await wait_until(lambda: len(since(srv, at, "call")) == 2)
        started = time.monotonic()
        with pytest.raises(UpstreamError, match=died):
            await up.request("tools/call", {"name": "crash", "arguments": {}})
        for call in slow:
            with pytest.raises(UpstreamError, match=died):
                await call
        assert time.monotonic() - started < 5
        if isinstance(up, ChannelUpstream):
            assert up.state == "error" and up.last_error and re.search(died, up.last_error)
        if isinstance(up, StdioUpstream):
            assert up.exit_code == 3
        # while it is down, a call fails at once
        with pytest.raises(UpstreamError, match=down):
            await up.request("tools/list")
        assert time.monotonic() - started < 5
        if wire.transport == "stdio":
            await asyncio.sleep(0.6)  # the restart backoff
        else:
            await asyncio.to_thread(srv.restart)  # reaped, then the same port again
        tools = await up.request("tools/list")
        assert tools["tools"] and up.state == "ready"
        if isinstance(up, StdioUpstream):
            assert up.restarts == restarts + 1 and up.pid is not None and up.pid != first_pid
        if isinstance(up, SseUpstream):
            assert up.endpoint != first_endpoint  # a new GET, a new endpoint

    try:
        run(loop, main())
    finally:
        if srv.proc is not None and srv.proc.poll() is not None:  # left dead by a failure
            srv.restart()


def test_close_fails_calls_in_flight_and_ends_the_upstream(
    server: McpServerHandle, loop: asyncio.Runner
) -> None:
    async def main() -> None:
        at = mark(server)
        up = create_upstream(server.service())
        await up.ensure_ready()
        slow = asyncio.create_task(
            up.request("tools/call", {"name": "slow", "arguments": {"seconds": 30}})
        )
        await wait_until(lambda: bool(since(server, at, "call")))
        started = time.monotonic()
        await up.close()
        assert time.monotonic() - started < 5
        with pytest.raises(UpstreamError):
            await slow
        assert up.state == "closed"
        await up.close()  # idempotent
        with pytest.raises(UpstreamError, match="closed"):
            await up.request("tools/list")
        with pytest.raises(UpstreamError, match="closed"):
            await up.ensure_ready()

    run(loop, main())
