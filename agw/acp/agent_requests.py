"""The agent's requests to the gateway (ACP's client methods), served for one connection.

Each request is answered in its own task, off the connection's read loop:
``session/request_permission`` goes to :attr:`AgentRequests.permission_handler` (``None`` means
deny: ``cancelled``); whatever it answers is normalised fail-closed (:func:`normalize_permission`:
only ``selected`` with one of the offered option ids survives, anything else becomes
``cancelled``). ``fs/read_text_file`` and ``fs/write_text_file`` are served when the service's
``fs_access`` allows them, for regular files inside ``allowed_roots`` after resolving symlinks,
on the executor the connection was given, within :data:`FS_TIMEOUT_S` (a FIFO, device or socket
is refused without ever blocking: :func:`open_regular`). Everything else (``terminal/*``,
elicitation, extension methods, ``fs/*`` when disabled) gets ``-32601`` at once: never silence.
An agent's ``$/cancel_request`` for one of them cancels it and answers ``-32800``. Beyond
:data:`INBOUND_LIMIT` requests in flight, each new one is refused at once (``-32603``).
"""

from __future__ import annotations

import asyncio
import errno
import json
import logging
import os
import stat
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import Executor
from typing import Any, Protocol, TypeVar

from agw.types import JsonObj

log = logging.getLogger(__name__)

PermissionHandler = Callable[[JsonObj], Awaitable[JsonObj]]

FS_READ_LIMIT = 8 * 1024 * 1024  # an answer must fit in a frame
FS_TIMEOUT_S = 30.0  # an fs/* request's file work; past it the agent gets an error
INBOUND_LIMIT = 64  # an agent's requests being served at once; beyond, -32603 at once
FS_MODES = ("none", "read", "read_write")
_T = TypeVar("_T")

METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603
REQUEST_CANCELLED = -32800
RESOURCE_NOT_FOUND = -32002

CANCELLED: JsonObj = {"outcome": {"outcome": "cancelled"}}


class Channel(Protocol):
    """What the served requests need of their connection: is it alive, and two ways to answer."""

    @property
    def alive(self) -> bool: ...

    async def send_quietly(self, msg: JsonObj) -> None: ...

    def send_now(self, msg: JsonObj) -> None: ...


class RpcFailure(Exception):
    """How a handler of an agent's request says it fails (sent back as a JSON-RPC error)."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def normalize_permission(answer: Any, params: JsonObj) -> JsonObj:
    """Fail-closed: ``selected`` with one of the offered option ids, else ``cancelled``."""
    outcome = answer.get("outcome") if isinstance(answer, dict) else None
    if not isinstance(outcome, dict) or outcome.get("outcome") != "selected":
        return CANCELLED
    option_id = outcome.get("optionId")
    offered = {o.get("optionId") for o in params.get("options") or [] if isinstance(o, dict)} - {
        None
    }
    if not isinstance(option_id, str) or option_id not in offered:
        return CANCELLED
    return {"outcome": {"outcome": "selected", "optionId": option_id}}


def within_roots(path: str, roots: Sequence[str]) -> str | None:
    """``path`` with symlinks resolved when it lies inside one of ``roots`` (also resolved),
    else None."""
    real = os.path.realpath(path)
    for root in roots:
        base = os.path.realpath(root)
        if real == base or real.startswith(base.rstrip("/") + "/"):
            return real
    return None


def open_regular(path: str, flags: int) -> int:
    """A descriptor of ``path`` when it is a regular file, opened without ever blocking: a FIFO,
    a device or a socket is refused (OSError EINVAL) before it is opened, and checked again on
    the descriptor (``O_NONBLOCK``: a FIFO swapped in meanwhile does not wait for a writer;
    ``O_NOFOLLOW``: ``path`` is already resolved, a symlink swapped in is refused). The
    descriptor stays non-blocking: a "regular" file that would block (``/proc/kmsg``) fails
    with EAGAIN instead."""
    try:
        before = os.stat(path)
    except FileNotFoundError:
        if not flags & os.O_CREAT:
            raise
    else:
        if not stat.S_ISREG(before.st_mode):
            raise OSError(errno.EINVAL, "not a regular file")
    fd = os.open(path, flags | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_NOCTTY | os.O_CLOEXEC, 0o666)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "not a regular file")
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_at_most(fd: int, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while size < limit:
        chunk = os.read(fd, min(1 << 20, limit - size))
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


class AgentRequests:
    """The agent's requests of one connection, in flight (module docstring)."""

    def __init__(
        self,
        channel: Channel,
        *,
        label: str,
        fs_access: str,
        allowed_roots: Sequence[str],
        executor: Executor | None,
    ) -> None:
        self._channel = channel
        self.label = label
        self.fs_access = fs_access
        self.allowed_roots = tuple(allowed_roots)
        self._executor = executor  # the fs/* file work (None: asyncio's default executor)
        self.permission_handler: PermissionHandler | None = None
        self._inbound: dict[str, asyncio.Task[None]] = {}
        self._cancelled: set[asyncio.Task[None]] = set()
        self._senders: set[asyncio.Task[None]] = set()
        self.refused = 0  # the agent's requests refused over INBOUND_LIMIT

    def tasks(self) -> list[asyncio.Task[None]]:
        """Every task still serving or answering (the connection cancels them on close)."""
        return [*self._inbound.values(), *self._senders]

    def serve(self, rid: Any, method: str, params: JsonObj) -> None:
        work: Callable[[JsonObj], Awaitable[Any]] | None = None
        if method == "session/request_permission":
            work = self._permission
        elif method == "fs/read_text_file" and self.fs_access in ("read", "read_write"):
            work = self._fs_read
        elif method == "fs/write_text_file" and self.fs_access == "read_write":
            work = self._fs_write
        if len(self._inbound) >= INBOUND_LIMIT:  # an agent flooding requests: refused at once
            self.refused += 1
            if self.refused % 1000 == 1:
                log.warning(
                    "acp_agent_requests_over_limit",
                    extra={"label": self.label, "refused": self.refused},
                )
            message = f"too many requests in flight (at most {INBOUND_LIMIT})"
            self._channel.send_now(
                {"jsonrpc": "2.0", "id": rid, "error": {"code": INTERNAL_ERROR, "message": message}}
            )
            return
        key = json.dumps(rid)
        task = asyncio.create_task(self._answer(rid, method, params, work))
        self._inbound[key] = task
        task.add_done_callback(lambda done: self._served(key, rid, done))

    def cancel(self, request_id: Any) -> None:
        """The agent's ``$/cancel_request`` for one of its requests."""
        task = self._inbound.get(json.dumps(request_id))
        if task is not None and not task.done():
            self._cancelled.add(task)
            task.cancel()

    def _served(self, key: str, rid: Any, task: asyncio.Task[None]) -> None:
        """An agent's request was answered, or cancelled: by the agent (``$/cancel_request``,
        answered -32800 here, even when it was cancelled before it began) or by the close."""
        if self._inbound.get(key) is task:
            del self._inbound[key]
        if task in self._cancelled:
            self._cancelled.discard(task)
            if task.cancelled() and self._channel.alive:
                reply = {
                    "jsonrpc": "2.0",
                    "id": rid,
                    "error": {"code": REQUEST_CANCELLED, "message": "request cancelled"},
                }
                sender = asyncio.create_task(self._channel.send_quietly(reply))
                self._senders.add(sender)
                sender.add_done_callback(self._senders.discard)

    async def _answer(
        self,
        rid: Any,
        method: str,
        params: JsonObj,
        work: Callable[[JsonObj], Awaitable[Any]] | None,
    ) -> None:
        reply: JsonObj = {"jsonrpc": "2.0", "id": rid}
        if work is None:
            reply["error"] = {"code": METHOD_NOT_FOUND, "message": f"method not found: {method}"}
        else:
            try:
                reply["result"] = await work(params)
            except RpcFailure as exc:
                reply["error"] = {"code": exc.code, "message": exc.message}
            except Exception:
                log.exception("acp_request_failed", extra={"label": self.label, "method": method})
                reply["error"] = {"code": INTERNAL_ERROR, "message": "internal error"}
        if self._channel.alive:
            await self._channel.send_quietly(reply)

    async def _permission(self, params: JsonObj) -> JsonObj:
        handler = self.permission_handler
        if handler is None:
            return CANCELLED
        try:
            answer = await handler(params)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("acp_permission_handler_failed", extra={"label": self.label})
            return CANCELLED
        return normalize_permission(answer, params)

    # ------------------------------------------------------------------------------- files

    def _fs_path(self, params: JsonObj) -> str:
        path = params.get("path")
        if not isinstance(path, str) or not os.path.isabs(path):
            raise RpcFailure(INVALID_PARAMS, "path must be an absolute path")
        real = within_roots(path, self.allowed_roots)
        if real is None:
            raise RpcFailure(INVALID_PARAMS, f"path {path} is outside the allowed roots")
        return real

    async def _io(self, work: Callable[[], _T]) -> _T:
        """File work off the loop, on the connection's executor, within :data:`FS_TIMEOUT_S`."""
        loop = asyncio.get_running_loop()
        try:
            return await asyncio.wait_for(loop.run_in_executor(self._executor, work), FS_TIMEOUT_S)
        except TimeoutError:
            raise RpcFailure(
                INTERNAL_ERROR, f"file operation timed out after {FS_TIMEOUT_S:g} s"
            ) from None

    async def _fs_read(self, params: JsonObj) -> JsonObj:
        line, limit = params.get("line"), params.get("limit")

        def read() -> str:
            path = self._fs_path(params)
            try:
                fd = open_regular(path, os.O_RDONLY)
                try:
                    data = read_at_most(fd, FS_READ_LIMIT + 1)
                finally:
                    os.close(fd)
            except FileNotFoundError:
                raise RpcFailure(RESOURCE_NOT_FOUND, f"file not found: {path}") from None
            except OSError as exc:
                raise RpcFailure(INVALID_PARAMS, f"cannot read {path}: {exc.strerror}") from None
            if len(data) > FS_READ_LIMIT:
                raise RpcFailure(INVALID_PARAMS, "file is larger than 8 MiB")
            text = data.decode("utf-8", errors="replace")
            if isinstance(line, int) or isinstance(limit, int):
                lines = text.splitlines(keepends=True)
                start = max(line - 1, 0) if isinstance(line, int) else 0
                end = start + limit if isinstance(limit, int) and limit >= 0 else None
                text = "".join(lines[start:end])
            return text

        return {"content": await self._io(read)}

    async def _fs_write(self, params: JsonObj) -> None:
        content = params.get("content")
        if not isinstance(content, str):
            raise RpcFailure(INVALID_PARAMS, "content must be a string")

        def write() -> None:
            path = self._fs_path(params)
            try:
                fd = open_regular(path, os.O_WRONLY | os.O_CREAT)
                try:
                    os.ftruncate(fd, 0)
                    data = memoryview(content.encode("utf-8"))
                    while data:
                        data = data[os.write(fd, data) :]
                finally:
                    os.close(fd)
            except OSError as exc:
                raise RpcFailure(INVALID_PARAMS, f"cannot write {path}: {exc.strerror}") from None

        await self._io(write)
