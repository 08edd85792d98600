"""Slow tier: the MCP reference server ``@modelcontextprotocol/server-everything`` (npm, the
TypeScript SDK) behind the gateway, over stdio and streamable HTTP, driven by the official
``mcp`` client: progress notifications of a long-running tool reach the client with its own
token, and a cancelled long call stops at once, reaches the server and is recorded.

The package is installed with npm into ``.cache/npm-everything`` on first use (the npm registry
must be reachable; about 20 s)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from mcp import Client

from tests.support.agwd import Agwd, AgwdLauncher, free_port
from tests.support.mcp import Gateway, start_gateway

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
PACKAGE = "@modelcontextprotocol/server-everything@2026.8.31"
PREFIX = REPO / ".cache" / "npm-everything"
BIN = PREFIX / "node_modules" / ".bin" / "mcp-server-everything"


def install_everything() -> Path:
    if BIN.exists():
        return BIN
    npm = shutil.which("npm")
    if npm is None:
        pytest.fail("npm is needed for the server-everything tier (Node.js 18+)")
    PREFIX.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        [npm, "install", "--no-audit", "--no-fund", "--prefix", str(PREFIX), PACKAGE],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0 and BIN.exists(), done.stderr[-2000:]
    return BIN


@contextlib.contextmanager
def everything_http(binary: Path, log: Path) -> Iterator[str]:
    """server-everything over streamable HTTP (it listens on every interface; only 127.0.0.1
    is ever spoken to)."""
    port = free_port()
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [str(binary), "streamableHttp"],
            env={**os.environ, "PORT": str(port)},
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            assert proc.poll() is None, log.read_text()[-2000:]
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
                break
            time.sleep(0.1)
        else:
            pytest.fail("server-everything did not listen within 30 s")
        yield f"http://127.0.0.1:{port}/mcp"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


@pytest.fixture(scope="module")
def gw(
    module_agwd_factory: AgwdLauncher, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Gateway]:
    binary = install_everything()
    tmp = tmp_path_factory.mktemp("everything")
    with everything_http(binary, tmp / "everything-http.log") as url:
        services: list[dict[str, Any]] = [
            {"id": "evs", "name": "everything (stdio)", "transport": "stdio",
             "command": str(binary), "args": ["stdio"]},
            {"id": "evh", "name": "everything (http)", "transport": "streamable_http",
             "url": url},
        ]  # fmt: skip
        routes: dict[str, tuple[list[str], dict[str, Any]]] = {
            "/ev": (["evs", "evh"], {}),
        }
        agwd: Agwd = start_gateway(module_agwd_factory, tmp, services, routes)
        yield Gateway(agwd, {})


def run(coro: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 90))


@pytest.mark.parametrize("service", ["evs", "evh"])
@pytest.mark.parametrize("mode", ["auto", "legacy"])
def test_progress_of_a_long_running_tool_reaches_the_client(
    gw: Gateway, service: str, mode: str
) -> None:
    async def case() -> None:
        seen: list[tuple[float, float | None, str | None]] = []

        async def on_progress(progress: float, total: float | None, message: str | None) -> None:
            seen.append((progress, total, message))

        async with Client(gw.url("/ev"), mode=mode) as client:
            names = {t.name for t in (await client.list_tools()).tools}
            assert f"{service}_trigger-long-running-operation" in names
            assert f"{service}_echo" in names
            result = await client.call_tool(
                f"{service}_trigger-long-running-operation",
                {"duration": 2, "steps": 4},
                progress_callback=on_progress,
            )
            assert not result.is_error
            text = json.dumps(result.model_dump(mode="json"))
            assert "completed" in text.lower()
        assert [p for p, _, _ in seen] == [1, 2, 3, 4], seen
        assert all(total == 4 for _, total, _ in seen)

    run(case())


@pytest.mark.parametrize("service", ["evs", "evh"])
def test_a_cancelled_long_call_stops_at_once_and_is_recorded(gw: Gateway, service: str) -> None:
    async def case() -> float:
        first = asyncio.Event()

        async def on_progress(progress: float, total: float | None, message: str | None) -> None:
            first.set()

        async with Client(gw.url("/ev"), mode="legacy") as client:
            call = asyncio.ensure_future(
                client.call_tool(
                    f"{service}_trigger-long-running-operation",
                    {"duration": 60, "steps": 60},
                    progress_callback=on_progress,
                )
            )
            await asyncio.wait_for(first.wait(), 20)
            started = time.monotonic()
            call.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await call
            # the session stays usable: the next call is answered at once
            echo = await client.call_tool(f"{service}_echo", {"message": "after"})
            assert "after" in json.dumps(echo.model_dump(mode="json"))
            return time.monotonic() - started

    elapsed = run(case())
    assert elapsed < 10
    rows = gw.rows(
        "method = 'tools/call' AND executed_tool_name = 'trigger-long-running-operation'"
        " AND service_id = ? AND cancelled = 1",
        (service,),
    )
    assert rows, "no cancelled usage row"
    row = rows[-1]
    assert row["result_status"] == "cancelled" and row["success"] == 0
    assert row["latency_ms"] < 20_000
    with httpx.Client(base_url=gw.agwd.admin_url, auth=admin_auth(gw), timeout=10) as admin:
        history = admin.get("/admin/mcp/runtime/history", params={"route_id": "r-ev"}).json()
    assert any(h.get("cancelled") and h["method"] == "tools/call" for h in history["items"]), (
        history
    )
    assert not admin_inflight(gw)


def admin_auth(gw: Gateway) -> tuple[str, str]:
    user, _, password = (gw.agwd.auth or ":").partition(":")
    return user, password


def admin_inflight(gw: Gateway) -> list[Any]:
    with httpx.Client(base_url=gw.agwd.admin_url, auth=admin_auth(gw), timeout=10) as admin:
        items: list[Any] = admin.get("/admin/mcp/runtime/inflight").json()["items"]
    return items
