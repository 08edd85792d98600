"""The fake MCP server (tests/fakes/mcp_server.py) run as a real process on loopback."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from agw.config.mcp import McpService

SCRIPT = Path(__file__).resolve().parent.parent / "fakes" / "mcp_server.py"


START_TIMEOUT_S = 20.0


TRANSPORTS = {"stdio": "stdio", "streamable-http": "streamable_http", "sse": "sse"}


@dataclass
class McpServerHandle:
    transport: str  # stdio | streamable-http | sse
    name: str
    command: str
    args: list[str]
    log_path: Path
    stdout_path: Path
    stderr_path: Path
    port: int = 0
    proc: subprocess.Popen[bytes] | None = None
    restarts: int = field(default=0)

    @property
    def url(self) -> str:
        if self.transport == "stdio":
            return ""
        path = "/sse" if self.transport == "sse" else "/mcp"
        return f"http://127.0.0.1:{self.port}{path}"

    def service_config(self, service_id: str | None = None, **overrides: Any) -> dict[str, Any]:
        """A bundle ``mcpServices`` entry for this server (``overrides`` win)."""
        sid = service_id or self.name
        out: dict[str, Any] = {"id": sid, "name": sid, "transport": TRANSPORTS[self.transport]}
        if self.transport == "stdio":
            out |= {"command": self.command, "args": list(self.args)}
        else:
            out["url"] = self.url
        return out | overrides

    def service(self, service_id: str | None = None, **overrides: Any) -> McpService:
        return McpService.model_validate(self.service_config(service_id, **overrides))

    def events(self, kind: str | None = None) -> list[dict[str, Any]]:
        """The fake's event log, oldest first (``kind``: only ``call|cancelled|http``)."""
        if not self.log_path.exists():
            return []
        out = [json.loads(line) for line in self.log_path.read_text().splitlines() if line]
        return [e for e in out if kind is None or e.get("event") == kind]

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace") if self.stderr_path.exists() else ""

    def start(self) -> None:
        """Start the HTTP server (on ``self.port``, 0 = any) and wait for ``READY``."""
        if self.transport == "stdio":
            return
        cmd = [self.command, *self.args, "--port", str(self.port)]
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        with open(self.stdout_path, "wb") as out, open(self.stderr_path, "ab") as err:
            self.proc = subprocess.Popen(
                cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=err, env=env,
                start_new_session=True,
            )  # fmt: skip
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            for line in self.stdout_path.read_text(errors="replace").splitlines():
                if line.startswith("READY "):
                    self.port = int(line.split()[1])
                    return
            if self.proc.poll() is not None:
                raise RuntimeError(f"fake mcp server exited: {self.stderr()[-2000:]}")
            time.sleep(0.02)
        self.kill()
        raise RuntimeError(f"fake mcp server not ready after {START_TIMEOUT_S}s: {self.stderr()}")

    def kill(self) -> None:
        """SIGKILL the process group now (the server vanishes without a goodbye)."""
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(5)

    def stop(self) -> None:
        """SIGTERM the group, SIGKILL it after 3 s."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(3)
        self.kill()

    def restart(self) -> None:
        """Kill the server and start a fresh one on the same port (its sessions are gone)."""
        self.kill()
        self.restarts += 1
        self.start()


class StartMcpServer(Protocol):
    def __call__(
        self,
        transport: str,
        name: str = "fake",
        *,
        json_response: bool = False,
        page_size: int = 0,
        require_key: str | None = None,
        modern_only: bool = False,
        port: int = 0,
    ) -> McpServerHandle: ...


@contextlib.contextmanager
def run_mcp_server(
    tmp_path: Path,
    transport: str,
    name: str = "fake",
    *,
    json_response: bool = False,
    page_size: int = 0,
    require_key: str | None = None,
    modern_only: bool = False,
    port: int = 0,
) -> Iterator[McpServerHandle]:
    """The same as the fixture, as a context manager (the server is stopped on exit)."""
    if transport not in TRANSPORTS:
        raise ValueError(f"transport must be one of {sorted(TRANSPORTS)}")
    tmp_path.mkdir(parents=True, exist_ok=True)
    n = 0
    while (tmp_path / f"mcp-{name}-{n}.log").exists() and n < 1000:
        n += 1
    stem = tmp_path / f"mcp-{name}-{n}"
    log_path = stem.with_suffix(".log")
    log_path.touch()
    args = [str(SCRIPT), "--transport", transport, "--name", name, "--log", str(log_path)]
    if json_response:
        args.append("--json-response")
    if page_size:
        args += ["--page-size", str(page_size)]
    if require_key is not None:
        args += ["--require-key", require_key]
    if modern_only:
        args.append("--modern-only")
    handle = McpServerHandle(
        transport=transport,
        name=name,
        command=sys.executable,
        args=args,
        log_path=log_path,
        stdout_path=stem.with_suffix(".stdout"),
        stderr_path=stem.with_suffix(".stderr"),
        port=port,
    )
    try:
        handle.start()
        yield handle
    finally:
        handle.stop()
