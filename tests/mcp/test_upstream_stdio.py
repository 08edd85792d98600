"""agw.mcp.upstream.stdio: StdioUpstream against real processes (MCPServer, mcp-server-time)."""

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
from agw.mcp.upstream import UpstreamError, create_upstream
from agw.mcp.upstream.stdio import StdioUpstream
from agw.procgroup import STDERR_TAIL_BYTES
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


def test_a_line_over_the_limit_stops_the_process(start_mcp_server: StartMcpServer) -> None:
    """The line framing of agw.procgroup: a line past 16 MiB is a broken protocol."""
    srv = fake(start_mcp_server, "noisy")

    async def main() -> None:
        up = StdioUpstream(srv.service())
        try:
            await up.ensure_ready()
            started = time.monotonic()
            with pytest.raises(UpstreamError) as err:
                await up.request(
                    "tools/call", {"name": "misbehave", "arguments": {"kind": "line", "mib": 17}}
                )
            assert err.value.message == (
                "mcp service noisy sent a line over the 16 MiB limit and was stopped"
            )
            assert time.monotonic() - started < 10
            assert up.state == "error" and up.pid is None
        finally:
            await up.close()

    run(main)
