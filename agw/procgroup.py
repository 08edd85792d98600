"""Child processes the gateway owns (stdio MCP servers, ACP agents): each leads its own process
group and is stopped as a group, so nothing it started outlives it; the last bytes of its
stderr are kept for error messages."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal

STDERR_TAIL_BYTES = 8 * 1024
CLOSE_GRACE_S = 2.0


def killpg(pid: int | None, sig: signal.Signals) -> None:
    """Signal the process group ``pid`` leads (``start_new_session=True``); gone is fine."""
    if pid is None:
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


async def exited_within(proc: asyncio.subprocess.Process, timeout: float) -> bool:  # noqa: ASYNC109
    try:
        await asyncio.wait_for(proc.wait(), timeout)
    except TimeoutError:
        return False
    return True


async def stop_group(proc: asyncio.subprocess.Process, grace: float = CLOSE_GRACE_S) -> None:
    """Close stdin, wait ``grace``, SIGTERM the group, wait ``grace``, SIGKILL the group; then
    SIGKILL whatever the process left in its group. Nothing to do once it has exited (a reaped
    leader's pid may belong to someone else by now)."""
    if proc.returncode is not None:
        return
    if proc.stdin is not None:
        with contextlib.suppress(Exception):
            proc.stdin.close()
    if not await exited_within(proc, grace):
        killpg(proc.pid, signal.SIGTERM)
        if not await exited_within(proc, grace):
            killpg(proc.pid, signal.SIGKILL)
            await proc.wait()
    killpg(proc.pid, signal.SIGKILL)


def keep_tail(buffer: bytearray, chunk: bytes, limit: int = STDERR_TAIL_BYTES) -> None:
    """Append ``chunk``, keeping only the last ``limit`` bytes."""
    buffer += chunk
    if len(buffer) > limit:
        del buffer[: len(buffer) - limit]
