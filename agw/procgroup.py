"""Child processes the gateway owns (stdio MCP servers, ACP agents) and the newline-delimited
JSON they speak on stdin/stdout.

Process groups: :func:`start_group` starts each child as the leader of its own process group,
and :func:`stop_group` stops it as a group, so nothing it started outlives it; the last bytes
of its stderr are kept (:func:`keep_tail`) for error messages.

Line framing: one message (or batch) per line, both ways. :func:`read_line` reads one line of at
most :data:`LINE_LIMIT` bytes through a stdout buffer of :data:`READ_BUFFER` (so a reader that
stops reading holds at most twice that unread) and raises :class:`LineTooLong` beyond the limit;
:func:`decode_line` turns a line into the messages it holds; :func:`encode_line` frames one.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
from collections.abc import Mapping, Sequence
from typing import Any

from agw import jsonfast

STDERR_TAIL_BYTES = 8 * 1024
CLOSE_GRACE_S = 2.0
ORPHAN_GRACE_S = 1.0
LINE_LIMIT = 16 * 1024 * 1024  # one line: a message, or a batch of them
READ_BUFFER = 1024 * 1024  # a child's stdout buffer (its reader stops the pipe at twice this)


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


async def start_group(
    argv: Sequence[str], *, env: Mapping[str, str], cwd: str | None = None
) -> asyncio.subprocess.Process:
    """Start ``argv`` with exactly ``env`` as the leader of a new process group, its stdin,
    stdout and stderr piped (stdout buffered for :func:`read_line`). OSError when it cannot."""
    return await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=cwd,
        env=dict(env),
        start_new_session=True,
        limit=READ_BUFFER,
    )


async def kill_orphans(proc: asyncio.subprocess.Process, delay: float = ORPHAN_GRACE_S) -> None:
    """Once the leader exited, SIGKILL its group ``delay`` later: a child it left holding
    stdout open would otherwise keep the reader waiting (its stdout then closes)."""
    await proc.wait()
    await asyncio.sleep(delay)
    killpg(proc.pid, signal.SIGKILL)


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


class LineTooLong(ValueError):
    """A line past its limit: the peer broke the protocol (end the process)."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"a line over the {limit >> 20} MiB limit")
        self.limit = limit


async def read_line(stream: asyncio.StreamReader, limit: int = LINE_LIMIT) -> bytes:
    """One newline-terminated line, its newline included, or what is left before the end of the
    stream; b"" at the end. A line longer than the stream's buffer is assembled here, up to
    ``limit`` bytes: :class:`LineTooLong` beyond (what was read of it is gone)."""
    parts: list[bytes] = []
    size = 0
    while True:
        try:
            chunk = await stream.readuntil(b"\n")
        except asyncio.IncompleteReadError as exc:  # the end, maybe with a partial line
            chunk = exc.partial
            done = True
        except asyncio.LimitOverrunError as exc:  # no newline within the buffer yet
            chunk = await stream.readexactly(exc.consumed)
            done = False
        else:
            done = True
        size += len(chunk)
        if size > limit:
            raise LineTooLong(limit)
        if done:
            if not parts:
                return chunk
            parts.append(chunk)
            return b"".join(parts)
        parts.append(chunk)


def decode_line(line: bytes) -> list[Any]:
    """The messages one line holds: none for a blank line, the items of a batch (a JSON array),
    else the one JSON value. ValueError for a line that is not JSON (noise a process printed)."""
    line = line.strip()
    if not line:
        return []
    msg = jsonfast.loads(line)
    return msg if isinstance(msg, list) else [msg]


def encode_line(msg: Any) -> bytes:
    """One message as a line: compact JSON, UTF-8, newline-terminated."""
    return json.dumps(msg, separators=(",", ":"), ensure_ascii=False).encode() + b"\n"
