"""The stdio upstream: one process per service, shared by every client of the gateway.

:class:`StdioUpstream` starts the process on first use (``ensure_ready``), speaks
newline-delimited JSON on stdin/stdout (framed by :mod:`agw.procgroup`: one line at most 16 MiB,
past it the process is killed and its calls fail naming the limit), keeps the last 8 KiB of
stderr, and when the process exits fails every call in flight at once; the next call restarts it
after a backoff (0.5 s doubling to 30 s, reset once a process ran 60 s). ``close()`` closes
stdin, then SIGTERMs and SIGKILLs the process group. Message routing is
:class:`agw.mcp.upstream.channel.ChannelUpstream`'s.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from typing import Any

from agw.config.mcp import McpService
from agw.mcp.upstream.base import Listener, UpstreamError
from agw.mcp.upstream.channel import ChannelUpstream
from agw.procgroup import (
    CLOSE_GRACE_S,
    LINE_LIMIT,
    STDERR_TAIL_BYTES,
    LineTooLong,
    decode_line,
    encode_line,
    exited_within,
    keep_tail,
    kill_orphans,
    killpg,
    read_line,
    start_group,
    stop_group,
)
from agw.types import JsonObj

log = logging.getLogger(__name__)

BACKOFF_FIRST_S = 0.5
BACKOFF_MAX_S = 30.0
HEALTHY_AFTER_S = 60.0


class StdioUpstream(ChannelUpstream):
    """One stdio MCP server process (see the module docstring)."""

    def __init__(self, service: McpService, listener: Listener | None = None) -> None:
        super().__init__(service, listener)
        self._proc: asyncio.subprocess.Process | None = None
        self._readers: list[asyncio.Task[None]] = []
        self._stderr = bytearray()
        self._started_at = 0.0
        self._backoff = 0.0
        self._retry_at = 0.0
        self._exit_reason = ""
        self._killed_for = ""  # why the gateway killed the running process, if it did
        self.restarts = 0  # processes started after the first
        self.exit_code: int | None = None

    @property
    def pid(self) -> int | None:
        proc = self._proc
        return proc.pid if proc is not None and proc.returncode is None else None

    @property
    def stderr_tail(self) -> str:
        """The last 8 KiB the process wrote on stderr."""
        return self._stderr.decode("utf-8", errors="replace")

    def describe(self) -> dict[str, Any]:
        out = super().describe()
        out |= {"pid": self.pid, "restarts": self.restarts, "exit_code": self.exit_code}
        return out

    # ------------------------------------------------------------------------------ channel

    async def _open(self) -> None:
        sid = self.service.id
        wait = self._retry_at - time.monotonic()
        if wait > 0:
            raise UpstreamError(f"{self._exit_reason}; restarting in {wait:.1f}s")
        if self._proc is not None:
            self.restarts += 1
            await self._reap(self._proc)
        argv = [self.service.command, *self.service.args]
        try:
            proc = await start_group(argv, env={**os.environ, **self.service.env})
        except OSError as exc:
            reason = f"mcp service {sid} could not start {self.service.command!r}: {exc}"
            self._schedule_retry(reason, ran=0.0)
            raise UpstreamError(reason) from None
        self._proc = proc
        self._started_at = time.monotonic()
        if self._stderr:  # the crash reason stays readable after the restart
            self._stderr += f"\n--- restarted ({self.restarts}) ---\n".encode()
            del self._stderr[: max(0, len(self._stderr) - STDERR_TAIL_BYTES)]
        self.exit_code = None
        self._killed_for = ""
        self._connected = True
        self._readers = [
            asyncio.create_task(self._read_stdout(proc)),
            asyncio.create_task(self._read_stderr(proc)),
            asyncio.create_task(kill_orphans(proc)),
        ]
        log.info("mcp_stdio_started", extra={"service_id": sid, "pid": proc.pid})

    async def _send(self, msg: JsonObj) -> None:
        proc = self._proc
        if proc is None or proc.stdin is None or not self._connected:
            raise UpstreamError(
                self._exit_reason or f"mcp service {self.service.id} is not running"
            )
        try:
            proc.stdin.write(encode_line(msg))
            await proc.stdin.drain()
        except (ConnectionError, RuntimeError) as exc:
            reason = await self._exit_reason_of(proc)
            raise UpstreamError(
                reason or f"mcp service {self.service.id} is not running: {exc}"
            ) from None

    async def _exit_reason_of(self, proc: asyncio.subprocess.Process) -> str:
        """Why ``proc`` went away, once its stdout reader has seen it exit: a write to a process
        that just exited can fail before the reader reports the exit (code and stderr)."""
        reader = self._readers[0] if self._readers else None
        if proc is not self._proc or reader is None or reader is asyncio.current_task():
            return ""
        await asyncio.wait({reader}, timeout=CLOSE_GRACE_S + 2)
        ended = reader.done() and not reader.cancelled()
        return self._exit_reason if ended and not self._closed else ""

    async def _abort(self, reason: str) -> None:
        proc = self._proc
        if proc is None:
            return
        alive = proc.returncode is None
        await self._stop_readers()
        if alive:  # (a reaped leader's pid may belong to someone else by now)
            killpg(proc.pid, signal.SIGKILL)
        await self._reap(proc)
        if alive:  # a failed handshake of a live process counts as a failure too
            self._schedule_retry(reason, ran=time.monotonic() - self._started_at)

    async def _shutdown(self) -> None:
        proc = self._proc
        if proc is None:
            return
        await stop_group(proc, CLOSE_GRACE_S)
        await self._stop_readers()
        await self._reap(proc)
        log.info("mcp_stdio_stopped", extra={"service_id": self.service.id, "pid": proc.pid})

    # ------------------------------------------------------------------------------ process

    async def _read_stdout(self, proc: asyncio.subprocess.Process) -> None:
        assert proc.stdout is not None
        while True:
            try:
                line = await read_line(proc.stdout, LINE_LIMIT)
            except LineTooLong as exc:  # the protocol is broken: end the process
                log.warning("mcp_stdio_line_too_long", extra={"service_id": self.service.id})
                self._killed_for = f"sent {exc}"
                killpg(proc.pid, signal.SIGKILL)
                break
            if not line:
                break
            try:
                messages = decode_line(line)
            except ValueError:
                log.debug(
                    "mcp_stdio_noise",
                    extra={"service_id": self.service.id, "line": line.strip()[:200]},
                )
                continue
            for item in messages:
                await self._receive(item)
        # stdout closed: the process is ending (or closed stdout on its own: then end it)
        if not await exited_within(proc, CLOSE_GRACE_S):
            killpg(proc.pid, signal.SIGKILL)
            await proc.wait()
        with contextlib.suppress(BaseException):  # its last stderr words, for the error
            await asyncio.wait_for(asyncio.shield(self._readers[1]), 1.0)
        self._exited(proc)

    async def _read_stderr(self, proc: asyncio.subprocess.Process) -> None:
        assert proc.stderr is not None
        partial = b""
        while True:
            chunk = await proc.stderr.read(4096)
            if not chunk:
                break
            keep_tail(self._stderr, chunk)
            *lines, partial = (partial + chunk).split(b"\n")
            partial = partial[-STDERR_TAIL_BYTES:]
            for raw in lines:
                if raw.strip():
                    log.debug(
                        "mcp_stdio_stderr",
                        extra={"service_id": self.service.id, "line": raw.decode(errors="replace")},
                    )

    def _exited(self, proc: asyncio.subprocess.Process) -> None:
        if proc is not self._proc or self._closed:
            return
        code = proc.returncode
        self.exit_code = code
        last = ""
        for raw in reversed(self.stderr_tail.splitlines()):
            if raw.strip():
                last = raw.strip()[:300]
                break
        reason = f"mcp service {self.service.id} exited (code {code})" + (
            f": {last}" if last else ""
        )
        if self._killed_for:
            reason = f"mcp service {self.service.id} {self._killed_for} and was stopped"
        log.warning(
            "mcp_stdio_exited", extra={"service_id": self.service.id, "pid": proc.pid, "code": code}
        )
        self._schedule_retry(reason, ran=time.monotonic() - self._started_at)
        self._lost(reason)

    def _schedule_retry(self, reason: str, *, ran: float) -> None:
        if self._backoff == 0.0 or ran >= HEALTHY_AFTER_S:
            self._backoff = BACKOFF_FIRST_S
        else:
            self._backoff = min(self._backoff * 2, BACKOFF_MAX_S)
        self._retry_at = time.monotonic() + self._backoff
        self._exit_reason = reason

    async def _stop_readers(self) -> None:
        current = asyncio.current_task()
        readers = [t for t in self._readers if t is not current]
        for task in readers:
            task.cancel()
        await asyncio.gather(*readers, return_exceptions=True)

    async def _reap(self, proc: asyncio.subprocess.Process) -> None:
        if proc.stdin is not None:
            with contextlib.suppress(Exception):
                proc.stdin.close()
        if not await exited_within(proc, CLOSE_GRACE_S):
            killpg(proc.pid, signal.SIGKILL)
            await proc.wait()
