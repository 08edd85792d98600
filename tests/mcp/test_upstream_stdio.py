"""agw.mcp.stdio: StdioUpstream against real processes (the fake MCPServer, mcp-server-time)."""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest

from agw.config.mcp import McpService
from agw.mcp.jsonrpc import RpcError
from agw.mcp.stdio import StdioUpstream
from agw.mcp.upstream import Upstream, UpstreamError, create_upstream
from agw.procgroup import STDERR_TAIL_BYTES
from agw.types import JsonObj
from tests.support.mcp_server import McpServerHandle, StartMcpServer

T = TypeVar("T")
TIME_SERVER = Path(sys.executable).parent / "mcp-server-time"
LIMIT_S = 60.0


def run(work: Callable[[], Awaitable[T]]) -> T:
    async def bounded() -> T:
        async with asyncio.timeout(LIMIT_S):
            return await work()

    return asyncio.run(bounded())


def stdio_service(command: str, *args: str, sid: str = "svc") -> McpService:
    return McpService(id=sid, name=sid, transport="stdio", command=command, args=list(args))


def fake(start_mcp_server: StartMcpServer, name: str = "fake") -> McpServerHandle:
    return start_mcp_server("stdio", name)


def text_of(result: Any) -> str:
    return str(result["content"][0]["text"])


async def wait_until(check: Callable[[], bool], timeout: float = 5.0) -> None:  # noqa: ASYNC109
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)


def gone(pid: int) -> bool:
    """True when ``pid`` no longer runs (reaped, or a zombie waiting for init)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def test_handshake_list_and_call_with_mcp_server_time() -> None:
    assert TIME_SERVER.exists()

    async def main() -> None:
        up = create_upstream(stdio_service(str(TIME_SERVER), sid="time"))
        assert isinstance(up, StdioUpstream)
        try:
            init = await up.ensure_ready()
            assert init["serverInfo"]["name"] == "mcp-time"
            assert up.state == "ready" and up.protocol_version == "2025-11-25"
            assert up.init_result is init and up.pid is not None
            tools = await up.request("tools/list")
            assert "get_current_time" in [t["name"] for t in tools["tools"]]
            result = await up.request(
                "tools/call", {"name": "get_current_time", "arguments": {"timezone": "UTC"}}
            )
            assert result["isError"] is False
            assert result["structuredContent"]["timezone"] == "UTC"
            view = up.describe()
            assert view["transport"] == "stdio" and view["state"] == "ready"
            assert view["last_used_at"] >= view["created_at"] > 0
        finally:
            await up.close()
        assert up.state == "closed" and up.pid is None

    run(main)


def test_lists_resources_prompts_and_errors(start_mcp_server: StartMcpServer) -> None:
    srv = fake(start_mcp_server, "beta")

    async def main() -> None:
        up = StdioUpstream(srv.service())
        try:
            init = await up.ensure_ready()
            assert init["serverInfo"]["name"] == "beta"
            assert init["instructions"] == "fake server beta"
            tools = [t["name"] for t in (await up.request("tools/list"))["tools"]]
            assert {"echo", "add", "slow", "fail", "whoami", "crash"} <= set(tools)
            resources = await up.request("resources/list")
            uris = [r["uri"] for r in resources["resources"]]
            assert "res://beta/readme" in uris
            templates = await up.request("resources/templates/list")
            assert templates["resourceTemplates"][0]["uriTemplate"] == "res://beta/items/{item}"
            read = await up.request("resources/read", {"uri": "res://beta/items/9"})
            assert read["contents"][0]["text"] == "item 9 of beta"
            prompt = await up.request("prompts/get", {"name": "greet", "arguments": {"name": "Al"}})
            assert prompt["messages"][0]["content"]["text"] == "Hello, Al!"
            failed = await up.request(
                "tools/call", {"name": "fail", "arguments": {"message": "no"}}
            )
            assert failed["isError"] is True and "no" in text_of(failed)
            with pytest.raises(RpcError) as err:
                await up.request("no/such/method")
            assert err.value.code == -32601
            assert await up.request("ping") == {}
        finally:
            await up.close()

    run(main)


def test_twenty_concurrent_calls_each_get_their_own_answer(
    start_mcp_server: StartMcpServer,
) -> None:
    srv = fake(start_mcp_server)

    async def main() -> None:
        up = StdioUpstream(srv.service())
        try:
            calls = [
                up.request("tools/call", {"name": "add", "arguments": {"a": i, "b": 1000}})
                for i in range(20)
            ]
            results = await asyncio.gather(*calls)
            assert [r["structuredContent"]["result"] for r in results] == [
                i + 1000 for i in range(20)
            ]
            # one process, one handshake, 20 distinct upstream ids
            calls_seen = srv.events("call")
            assert len({e["request_id"] for e in calls_seen}) == 20
        finally:
            await up.close()

    run(main)


def test_progress_goes_to_the_callers_on_message_with_its_own_token(
    start_mcp_server: StartMcpServer,
) -> None:
    srv = fake(start_mcp_server)

    async def main() -> None:
        up = StdioUpstream(srv.service())
        seen: dict[str, list[JsonObj]] = {"a": [], "b": []}

        def collector(key: str) -> Callable[[JsonObj], Awaitable[None]]:
            async def on_message(msg: JsonObj) -> None:
                seen[key].append(msg)

            return on_message

        try:
            # both callers picked the same progress token: each must still get only its own
            params = {"name": "slow", "arguments": {"seconds": 0.3, "steps": 3}}
            a, b = await asyncio.gather(
                up.request(
                    "tools/call",
                    {**params, "_meta": {"progressToken": "tok"}},
                    on_message=collector("a"),
                ),
                up.request(
                    "tools/call",
                    {"name": "slow", "arguments": {"seconds": 0.2, "steps": 2}}
                    | {"_meta": {"progressToken": "tok"}},
                    on_message=collector("b"),
                ),
            )
            assert text_of(a) == "slept 0.3s in 3 steps"
            assert text_of(b) == "slept 0.2s in 2 steps"
            for key, steps in (("a", 3), ("b", 2)):
                msgs = seen[key]
                assert [m["method"] for m in msgs] == ["notifications/progress"] * steps
                assert [m["params"]["progress"] for m in msgs] == list(range(1, steps + 1))
                assert {m["params"]["progressToken"] for m in msgs} == {"tok"}
                assert {m["params"]["total"] for m in msgs} == {steps}
        finally:
            await up.close()

    run(main)


def test_cancel_reaches_the_upstream_with_its_request_id(
    start_mcp_server: StartMcpServer,
) -> None:
    srv = fake(start_mcp_server)

    async def main() -> None:
        up = StdioUpstream(srv.service())
        try:
            await up.ensure_ready()
            task = asyncio.create_task(
                up.request("tools/call", {"name": "slow", "arguments": {"seconds": 20}})
            )
            await wait_until(lambda: bool(srv.events("call")))
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            await wait_until(lambda: bool(srv.events("cancelled")))
            call_id = srv.events("call")[0]["request_id"]
            assert srv.events("cancelled")[0]["request_id"] == call_id
            await wait_until(lambda: f"cancelled request {call_id}" in up.stderr_tail)
            echo = await up.request("tools/call", {"name": "echo", "arguments": {"message": "x"}})
            assert text_of(echo) == "x"  # still usable
        finally:
            await up.close()

    run(main)


def test_timeout_fails_the_call_and_cancels_it_upstream(
    start_mcp_server: StartMcpServer,
) -> None:
    srv = fake(start_mcp_server)

    async def main() -> None:
        up = StdioUpstream(srv.service())
        try:
            await up.ensure_ready()
            started = time.monotonic()
            with pytest.raises(UpstreamError, match=r"did not answer tools/call within 0\.3s"):
                await up.request(
                    "tools/call", {"name": "slow", "arguments": {"seconds": 20}}, timeout=0.3
                )
            assert time.monotonic() - started < 3
            await wait_until(lambda: bool(srv.events("cancelled")))
        finally:
            await up.close()

    run(main)


def test_crash_mid_call_fails_fast_then_restarts_after_backoff(
    start_mcp_server: StartMcpServer,
) -> None:
    srv = fake(start_mcp_server, "crashy")

    async def main() -> None:
        up = StdioUpstream(srv.service())
        try:
            await up.ensure_ready()
            first_pid = up.pid
            slow = asyncio.create_task(
                up.request("tools/call", {"name": "slow", "arguments": {"seconds": 30}})
            )
            await wait_until(lambda: bool(srv.events("call")))
            started = time.monotonic()
            with pytest.raises(UpstreamError) as crash_err:
                await up.request("tools/call", {"name": "crash", "arguments": {}})
            with pytest.raises(UpstreamError) as slow_err:
                await slow
            assert time.monotonic() - started < 5
            expected = (
                "mcp service crashy exited (code 3): fake mcp server crashy crashing on purpose"
            )
            assert crash_err.value.message == expected
            assert slow_err.value.message == expected
            assert up.state == "error" and up.last_error == expected and up.exit_code == 3
            # during the backoff a call fails at once, saying when it retries
            with pytest.raises(UpstreamError, match=r"restarting in 0\.\ds"):
                await up.request("tools/list")
            await asyncio.sleep(0.6)
            tools = await up.request("tools/list")
            assert tools["tools"]
            assert up.state == "ready" and up.restarts == 1
            assert up.pid is not None and up.pid != first_pid
        finally:
            await up.close()

    run(main)


def test_backoff_doubles_while_the_process_keeps_dying(tmp_path: Path) -> None:
    script = tmp_path / "dies.py"
    script.write_text(
        "import sys\nsys.stderr.write('x' * 20000 + '\\nlast words\\n')\nsys.exit(5)\n"
    )

    async def main() -> None:
        up = StdioUpstream(stdio_service(sys.executable, str(script)))
        try:
            with pytest.raises(UpstreamError) as err:
                await up.ensure_ready()
            assert err.value.message == "mcp service svc exited (code 5): last words"
            tail = up.stderr_tail
            assert len(tail.encode()) <= STDERR_TAIL_BYTES and tail.endswith("last words\n")
            with pytest.raises(UpstreamError, match=r"restarting in 0\.\ds"):
                await up.ensure_ready()
            await asyncio.sleep(0.55)
            with pytest.raises(UpstreamError, match="exited"):
                await up.ensure_ready()
            with pytest.raises(UpstreamError, match=r"restarting in 0\.[6-9]s|restarting in 1\.0s"):
                await up.ensure_ready()
            assert up.restarts == 1
        finally:
            await up.close()

    run(main)


def test_a_command_that_cannot_start() -> None:
    async def main() -> None:
        up = StdioUpstream(stdio_service("/nonexistent/mcp-server"))
        try:
            with pytest.raises(UpstreamError, match="could not start '/nonexistent/mcp-server'"):
                await up.request("tools/list")
            assert up.state == "error"
        finally:
            await up.close()

    run(main)


def test_env_reaches_the_process(tmp_path: Path) -> None:
    script = tmp_path / "env.py"
    script.write_text(
        "import os, sys\n"
        "sys.stderr.write('FOO=' + os.environ.get('FOO', '') + '\\n')\n"
        "sys.exit(2)\n"
    )

    async def main() -> None:
        service = McpService(
            id="envy", name="envy", transport="stdio", command=sys.executable,
            args=[str(script)], env={"FOO": "bar"},
        )  # fmt: skip
        up = StdioUpstream(service)
        try:
            with pytest.raises(UpstreamError, match="exited \\(code 2\\): FOO=bar"):
                await up.ensure_ready()
        finally:
            await up.close()

    run(main)


def test_close_kills_the_whole_process_group(
    tmp_path: Path, start_mcp_server: StartMcpServer
) -> None:
    srv = fake(start_mcp_server)
    pidfile = tmp_path / "child.pid"
    # a grandchild in the server's process group that would outlive its parent
    shell = f'sleep 300 & echo $! > {pidfile}; exec "$0" "$@"'
    service = stdio_service("/bin/sh", "-c", shell, srv.command, *srv.args)

    async def main() -> int:
        up = StdioUpstream(service)
        await up.ensure_ready()
        pid = up.pid
        assert pid is not None and os.getpgid(pid) == pid  # its own group
        child = int(pidfile.read_text())
        assert os.getpgid(child) == pid
        started = time.monotonic()
        await up.close()
        assert time.monotonic() - started < 5
        await up.close()  # idempotent
        await wait_until(lambda: gone(child) and gone(pid))
        with pytest.raises(UpstreamError, match="closed"):
            await up.request("tools/list")
        return child

    run(main)


def test_close_fails_calls_in_flight(start_mcp_server: StartMcpServer) -> None:
    srv = fake(start_mcp_server)

    async def main() -> None:
        up = StdioUpstream(srv.service())
        await up.ensure_ready()
        slow = asyncio.create_task(
            up.request("tools/call", {"name": "slow", "arguments": {"seconds": 30}})
        )
        await wait_until(lambda: bool(srv.events("call")))
        await up.close()
        with pytest.raises(UpstreamError, match="closed"):
            await slow

    run(main)


def test_server_messages_reach_on_message_or_the_listener(
    start_mcp_server: StartMcpServer,
) -> None:
    srv = fake(start_mcp_server)

    async def main() -> None:
        heard: list[JsonObj] = []

        async def listener(up: Upstream, msg: JsonObj) -> None:
            heard.append(msg)

        up = StdioUpstream(srv.service(), listener)
        try:
            own: list[JsonObj] = []

            async def on_message(msg: JsonObj) -> None:
                own.append(msg)

            # a logging notification during the only call in flight: that call's
            logged = await up.request(
                "tools/call", {"name": "log", "arguments": {"message": "hello"}},
                on_message=on_message,
            )  # fmt: skip
            assert text_of(logged) == "logged"
            assert [m["method"] for m in own] == ["notifications/message"]
            assert own[0]["params"]["data"] == "hello"
            # list_changed belongs to no call: the listener, even while the call runs
            own.clear()
            changed = await up.request(
                "tools/call", {"name": "change_tools", "arguments": {}}, on_message=on_message
            )
            assert text_of(changed) == "added extra_1"
            await wait_until(lambda: bool(heard))
            assert heard == [{"jsonrpc": "2.0", "method": "notifications/tools/list_changed"}]
            assert own == []
            tools = [t["name"] for t in (await up.request("tools/list"))["tools"]]
            assert "extra_1" in tools
        finally:
            await up.close()

    run(main)


def test_server_request_answered_through_reply(start_mcp_server: StartMcpServer) -> None:
    srv = fake(start_mcp_server)

    async def main() -> None:
        up = StdioUpstream(srv.service())
        try:

            async def answer(msg: JsonObj) -> None:
                assert msg["method"] == "elicitation/create"
                assert msg["params"]["message"] == "what is it?"
                reply = {"action": "accept", "content": {"text": "42"}}
                await up.reply(msg["id"], reply)

            asked = await up.request(
                "tools/call", {"name": "ask", "arguments": {"question": "what is it?"}},
                on_message=answer,
            )  # fmt: skip
            assert text_of(asked) == "answer: 42"
            # nobody to ask (no on_message, no listener): the upstream gets -32601 at once
            with pytest.raises(RpcError, match="client does not support elicitation/create"):
                await up.request(
                    "tools/call", {"name": "ask", "arguments": {"question": "again?"}}, timeout=10
                )
        finally:
            await up.close()

    run(main)


def test_noise_on_stdout_is_skipped(start_mcp_server: StartMcpServer) -> None:
    srv = fake(start_mcp_server)
    shell = 'echo "starting up (not JSON)"; echo "[1, 2"; exec "$0" "$@"'
    service = stdio_service("/bin/sh", "-c", shell, srv.command, *srv.args)

    async def main() -> None:
        up = StdioUpstream(service)
        try:
            result = await up.request(
                "tools/call", {"name": "echo", "arguments": {"message": "ok"}}
            )
            assert text_of(result) == "ok"
        finally:
            await up.close()

    run(main)
