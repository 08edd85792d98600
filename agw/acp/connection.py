"""An ACP client over one agent process's stdio: JSON-RPC 2.0, newline-delimited, both ways.

:meth:`AcpConnection.spawn` starts the agent in its own process group (``start_new_session``)
and :meth:`AcpConnection.initialize` does the ``initialize`` handshake (protocol version 1, the
``fs`` client capabilities the service enables, never ``terminal``). Then:

- **outbound** (gateway -> agent): :meth:`request` numbers its requests 1, 2, ... and waits for
  the answer (an optional timeout; ``session/prompt`` has none); :meth:`notify` sends a
  notification (``session/cancel``). Request id spaces are per direction: the agent's own
  requests may reuse the same numbers, and are kept apart.
- **inbound notifications**: every ``session/update`` is handed, in order, to each handler
  registered with :meth:`subscribe`, awaited by the read loop, so a handler must be quick (put
  the update in a queue) and never wait for this connection's answers.
- **inbound requests** (agent -> gateway), each answered in its own task, off the read loop:
  ``session/request_permission`` goes to :attr:`permission_handler` (``None`` means deny:
  ``cancelled``); whatever it answers is normalised fail-closed (only ``selected`` with one of
  the offered option ids survives, anything else becomes ``cancelled``). ``fs/read_text_file``
  and ``fs/write_text_file`` are served when the service's ``fs_access`` allows them, for
  regular files inside ``allowed_roots`` after resolving symlinks, on the executor given to
  :meth:`AcpConnection.spawn`, within :data:`FS_TIMEOUT_S` (a FIFO, device or socket is
  refused without ever blocking: :func:`_open_regular`). Everything else (``terminal/*``,
  elicitation, extension methods, ``fs/*`` when disabled) gets ``-32601`` at once: never
  silence. An agent's ``$/cancel_request`` for one of them cancels it and answers ``-32800``.

Frames up to 16 MiB are read (through a 1 MiB reader buffer, so a handler that waits, a turn
applying backpressure, leaves at most 2 MiB unread here and the rest in the agent's pipe); a
longer one is a protocol violation and ends the process. The
last 8 KiB of stderr are kept (:attr:`stderr_tail`). When the process exits, every request in
flight fails with :class:`AgentExited` (``acp process exited: <code>: <stderr tail>``) and what
is left of its process group is killed. :meth:`close` closes stdin, waits 2 s, SIGTERMs the
group, waits 2 s, SIGKILLs the group (and always SIGKILLs the group at the end, so nothing the
agent started survives it); it is idempotent.

Errors: :class:`AcpError` (``message``, ``status``: 502 agent/transport failure, 400 a request
the client can correct) is what the runtime raises; :class:`AgentExited` the process died;
:class:`AgentRpcError` the agent answered a JSON-RPC error (``code``, ``data``).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import itertools
import json
import logging
import os
import signal
import stat
from collections.abc import Awaitable, Callable, Mapping, Sequence
from concurrent.futures import Executor
from typing import Any, TypeVar

from agw import jsonfast
from agw.procgroup import (
    CLOSE_GRACE_S,
    exited_within,
    keep_tail,
    killpg,
    stop_group,
)
from agw.types import JsonObj
from agw.version import VERSION

log = logging.getLogger(__name__)

PermissionHandler = Callable[[JsonObj], Awaitable[JsonObj]]
UpdateHandler = Callable[[JsonObj], Awaitable[None]]

PROTOCOL_VERSION = 1
CLIENT_INFO = {"name": "agw", "title": "agw gateway", "version": VERSION}
LINE_LIMIT = 16 * 1024 * 1024
READ_BUFFER = 1024 * 1024  # the stdout reader's buffer (it stops reading the pipe at twice this)
FS_READ_LIMIT = 8 * 1024 * 1024  # an answer must fit in a frame
FS_TIMEOUT_S = 30.0  # an fs/* request's file work; past it the agent gets an error
INBOUND_LIMIT = 64  # an agent's requests being served at once; beyond, -32603 at once...
REFUSAL_BUFFER = 1024 * 1024  # ...unless this much already waits in its stdin (not reading)
_T = TypeVar("_T")

METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603
REQUEST_CANCELLED = -32800
RESOURCE_NOT_FOUND = -32002

CANCELLED: JsonObj = {"outcome": {"outcome": "cancelled"}}
FS_MODES = ("none", "read", "read_write")


class AcpError(Exception):
    """A runtime failure, shown to clients as an SSE ``error`` event or a 502 (``status`` 400:
    a request the client can correct, such as a cwd outside ``allowed_roots``)."""

    def __init__(self, message: str, *, status: int = 502) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


class AgentExited(AcpError):
    """The agent process died: ``acp process exited: <code>: <stderr tail>``."""

    def __init__(self, message: str, *, code: int | None = None) -> None:
        super().__init__(message)
        self.code = code


class AgentRpcError(AcpError):
    """The agent answered a request with a JSON-RPC error."""

    def __init__(self, method: str, code: int, message: str, data: Any = None) -> None:
        detail = message
        if data is not None:
            extra = data.get("message") if isinstance(data, dict) else None
            extra = extra if isinstance(extra, str) else json.dumps(data, default=str)
            detail = f"{message}: {extra[:300]}"
        super().__init__(f"acp {method} failed: {detail} (code {code})")
        self.method = method
        self.code = code
        self.rpc_message = message
        self.data = data


class _RpcFailure(Exception):
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


def _open_regular(path: str, flags: int) -> int:
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


def _read_at_most(fd: int, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while size < limit:
        chunk = os.read(fd, min(1 << 20, limit - size))
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


class AcpConnection:
    """One agent process and the ACP client session over its stdio (module docstring)."""

    def __init__(
        self,
        proc: asyncio.subprocess.Process,
        *,
        label: str = "acp",
        fs_access: str = "none",
        allowed_roots: Sequence[str] = (),
        executor: Executor | None = None,
    ) -> None:
        if fs_access not in FS_MODES:
            raise ValueError(f"fs_access must be one of {FS_MODES}")
        self._proc = proc
        self.label = label  # for logs and errors: usually the service id
        self.pid: int | None = proc.pid  # also the process group id
        self.fs_access = fs_access
        self.allowed_roots = tuple(allowed_roots)
        self._executor = executor  # the fs/* file work (None: asyncio's default executor)
        self.permission_handler: PermissionHandler | None = None
        self.init_result: JsonObj = {}
        self.agent_capabilities: JsonObj = {}
        self.exit_code: int | None = None
        self.exited = asyncio.Event()
        self._ids = itertools.count(1)
        self._pending: dict[int, tuple[str, asyncio.Future[Any]]] = {}
        self._inbound: dict[str, asyncio.Task[None]] = {}
        self._cancelled_inbound: set[asyncio.Task[None]] = set()
        self.refused_requests = 0  # the agent's requests refused over INBOUND_LIMIT
        self._senders: set[asyncio.Task[None]] = set()
        self._subscribers: list[UpdateHandler] = []
        self._stderr = bytearray()
        self._write_lock = asyncio.Lock()
        self._closing = False
        self._close_task: asyncio.Task[None] | None = None
        self._exit_error: AcpError | None = None
        self._frame_error = ""
        self._stderr_task = asyncio.create_task(self._read_stderr())
        self._reader = asyncio.create_task(self._read_stdout())
        self._watcher = asyncio.create_task(self._watch_exit())

    # ------------------------------------------------------------------------------ opening

    @classmethod
    async def spawn(
        cls,
        argv: Sequence[str],
        *,
        cwd: str,
        env: Mapping[str, str],
        label: str = "acp",
        fs_access: str = "none",
        allowed_roots: Sequence[str] = (),
        executor: Executor | None = None,
    ) -> AcpConnection:
        """Start ``argv`` in ``cwd`` with exactly ``env``, in a new process group; the agent's
        ``fs/*`` file work runs on ``executor`` (give one of the caller's own, bounded)."""
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                cwd=cwd,
                env=dict(env),
                start_new_session=True,
                limit=READ_BUFFER,
            )
        except OSError as exc:
            raise AcpError(f"acp command {argv[0]!r} could not start: {exc}") from None
        log.info("acp_agent_started", extra={"label": label, "pid": proc.pid, "cwd": cwd})
        return cls(
            proc,
            label=label,
            fs_access=fs_access,
            allowed_roots=allowed_roots,
            executor=executor,
        )

    def client_capabilities(self) -> JsonObj:
        return {
            "fs": {
                "readTextFile": self.fs_access in ("read", "read_write"),
                "writeTextFile": self.fs_access == "read_write",
            },
            "terminal": False,
        }

    async def initialize(self, *, timeout: float | None = None) -> JsonObj:  # noqa: ASYNC109
        """The ``initialize`` handshake; sets :attr:`init_result` and
        :attr:`agent_capabilities`."""
        params = {
            "protocolVersion": PROTOCOL_VERSION,
            "clientCapabilities": self.client_capabilities(),
            "clientInfo": CLIENT_INFO,
        }
        result = await self.request("initialize", params, timeout=timeout)
        if not isinstance(result, dict):
            raise AcpError(f"acp initialize answered {result!r}"[:300])
        version = result.get("protocolVersion")
        if isinstance(version, int) and version != PROTOCOL_VERSION:
            raise AcpError(
                f"acp agent speaks protocol version {version}; the gateway speaks "
                f"{PROTOCOL_VERSION}"
            )
        caps = result.get("agentCapabilities")
        self.init_result = result
        self.agent_capabilities = caps if isinstance(caps, dict) else {}
        return result

    # ------------------------------------------------------------------------------- state

    @property
    def alive(self) -> bool:
        return (
            self._proc.returncode is None
            and not self.exited.is_set()
            and not self._closing
            and not self._reader.done()
        )

    @property
    def stderr_tail(self) -> str:
        """The last 8 KiB the agent wrote on stderr."""
        return self._stderr.decode("utf-8", errors="replace")

    def describe(self) -> JsonObj:
        return {
            "pid": self.pid,
            "alive": self.alive,
            "exit_code": self.exit_code,
            "stderr_tail": self.stderr_tail,
        }

    def subscribe(self, handler: UpdateHandler) -> Callable[[], None]:
        """Receive every ``session/update`` params object; returns the unsubscribe."""
        self._subscribers.append(handler)

        def unsubscribe() -> None:
            with contextlib.suppress(ValueError):
                self._subscribers.remove(handler)

        return unsubscribe

    def _dead(self) -> AcpError:
        if self._exit_error is not None:
            return self._exit_error
        if self._closing:
            return AcpError(f"acp connection to {self.label} is closed")
        return AcpError(f"acp agent {self.label} is not running")

    # ---------------------------------------------------------------------------- outbound

    async def request(
        self,
        method: str,
        params: JsonObj,
        *,
        timeout: float | None = None,  # noqa: ASYNC109
    ) -> Any:
        """Send a request and wait for its result. Raises :class:`AgentRpcError` (the agent
        answered an error), :class:`AgentExited`, or :class:`AcpError` (timeout, closed)."""
        if not self.alive:
            raise self._dead()
        rid = next(self._ids)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[rid] = (method, future)
        try:
            await self._send({"jsonrpc": "2.0", "id": rid, "method": method, "params": params})
            if timeout is None:
                return await future
            try:
                async with asyncio.timeout(timeout):
                    return await future
            except TimeoutError:
                raise AcpError(
                    f"acp {method} to {self.label} timed out after {timeout:g} s"
                ) from None
        finally:
            self._pending.pop(rid, None)

    async def notify(self, method: str, params: JsonObj) -> None:
        if not self.alive:
            raise self._dead()
        await self._send({"jsonrpc": "2.0", "method": method, "params": params})

    async def _send(self, msg: JsonObj) -> None:
        stdin = self._proc.stdin
        data = json.dumps(msg, separators=(",", ":"), ensure_ascii=False).encode() + b"\n"
        try:
            if stdin is None:
                raise ConnectionResetError("no stdin")
            async with self._write_lock:
                stdin.write(data)
                await stdin.drain()
        except (ConnectionError, RuntimeError):
            # the process is going away: give its exit a moment, to report why
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.exited.wait(), CLOSE_GRACE_S + 1)
            raise self._dead() from None

    # ----------------------------------------------------------------------------- inbound

    async def _read_frame(self, stdout: asyncio.StreamReader) -> bytes:
        """One newline-terminated frame (b"" at the end of the stream). The reader's own buffer
        is :data:`READ_BUFFER`, so a read loop that waits (a turn applying backpressure) holds
        at most twice that unread; a frame up to :data:`LINE_LIMIT` is assembled here.
        ValueError beyond it."""
        parts: list[bytes] = []
        size = 0
        while True:
            try:
                chunk = await stdout.readuntil(b"\n")
            except asyncio.IncompleteReadError as exc:  # the end, maybe with a partial frame
                chunk = exc.partial
                done = True
            except asyncio.LimitOverrunError as exc:  # no newline within the buffer yet
                chunk = await stdout.readexactly(exc.consumed)
                done = False
            else:
                done = True
            size += len(chunk)
            if size > LINE_LIMIT:
                raise ValueError("frame too long")
            parts.append(chunk)
            if done:
                return b"".join(parts)

    async def _read_stdout(self) -> None:
        stdout = self._proc.stdout
        assert stdout is not None
        while True:
            try:
                line = await self._read_frame(stdout)
            except ValueError:  # over LINE_LIMIT: the protocol is broken, end the agent
                self._frame_error = f"acp agent sent a frame over {LINE_LIMIT // (1 << 20)} MiB"
                log.warning("acp_frame_too_long", extra={"label": self.label, "pid": self.pid})
                self._killpg(signal.SIGKILL)
                break
            if not line:
                break
            line = line.strip()
            if not line:
                continue
            try:
                msg = jsonfast.loads(line)
            except ValueError:
                log.debug("acp_stdout_noise", extra={"label": self.label, "line": line[:200]})
                continue
            for item in msg if isinstance(msg, list) else [msg]:
                if isinstance(item, dict):
                    await self._dispatch(item)
        await self._ended()

    async def _dispatch(self, msg: JsonObj) -> None:
        method = msg.get("method")
        if isinstance(method, str):
            params = msg.get("params")
            params = params if isinstance(params, dict) else {}
            if msg.get("id") is not None:
                self._serve(msg["id"], method, params)
            else:
                await self._notification(method, params)
            return
        rid = msg.get("id")
        if isinstance(rid, str) and rid.isdigit():
            rid = int(rid)
        held = self._pending.get(rid) if isinstance(rid, int) else None
        if held is None:
            return  # a late answer to a request that timed out or was abandoned
        req_method, future = held
        if future.done():
            return
        if "error" in msg:
            err = msg["error"] if isinstance(msg["error"], dict) else {}
            code = err.get("code")
            text = err.get("message")
            future.set_exception(
                AgentRpcError(
                    req_method,
                    code if isinstance(code, int) else INTERNAL_ERROR,
                    text if isinstance(text, str) else "agent error",
                    err.get("data"),
                )
            )
        else:
            future.set_result(msg.get("result"))

    async def _notification(self, method: str, params: JsonObj) -> None:
        if method == "session/update":
            for handler in list(self._subscribers):
                try:
                    await handler(params)
                except Exception:
                    log.exception("acp_update_handler_failed", extra={"label": self.label})
        elif method == "$/cancel_request":
            key = json.dumps(params.get("requestId"))
            task = self._inbound.get(key)
            if task is not None and not task.done():
                self._cancelled_inbound.add(task)
                task.cancel()
        else:
            log.debug("acp_notification_ignored", extra={"label": self.label, "method": method})

    def _serve(self, rid: Any, method: str, params: JsonObj) -> None:
        work: Callable[[JsonObj], Awaitable[Any]] | None = None
        if method == "session/request_permission":
            work = self._permission
        elif method == "fs/read_text_file" and self.fs_access in ("read", "read_write"):
            work = self._fs_read
        elif method == "fs/write_text_file" and self.fs_access == "read_write":
            work = self._fs_write
        if len(self._inbound) >= INBOUND_LIMIT:  # an agent flooding requests: refused at once
            self.refused_requests += 1
            if self.refused_requests % 1000 == 1:
                log.warning(
                    "acp_agent_requests_over_limit",
                    extra={"label": self.label, "refused": self.refused_requests},
                )
            message = f"too many requests in flight (at most {INBOUND_LIMIT})"
            self._refuse(rid, message)
            return
        key = json.dumps(rid)
        task = asyncio.create_task(self._answer(rid, method, params, work))
        self._inbound[key] = task
        task.add_done_callback(lambda done: self._served(key, rid, done))

    def _served(self, key: str, rid: Any, task: asyncio.Task[None]) -> None:
        """An agent's request was answered, or cancelled: by the agent (``$/cancel_request``,
        answered -32800 here, even when it was cancelled before it began) or by the close."""
        if self._inbound.get(key) is task:
            del self._inbound[key]
        if task in self._cancelled_inbound:
            self._cancelled_inbound.discard(task)
            if task.cancelled() and self.alive:
                reply = {
                    "jsonrpc": "2.0",
                    "id": rid,
                    "error": {"code": REQUEST_CANCELLED, "message": "request cancelled"},
                }
                sender = asyncio.create_task(self._send_quietly(reply))
                self._senders.add(sender)
                sender.add_done_callback(self._senders.discard)

    def _refuse(self, rid: Any, message: str) -> None:
        """Answer an agent's request with an error now, without a task: a whole frame written to
        the pipe's buffer (frames never interleave). Dropped (the agent then waits on its own
        request) when that buffer already holds :data:`REFUSAL_BUFFER`: the agent is not even
        reading its answers."""
        stdin = self._proc.stdin
        if stdin is None or not self.alive or stdin.is_closing():
            return
        if stdin.transport.get_write_buffer_size() > REFUSAL_BUFFER:
            return
        reply = {"jsonrpc": "2.0", "id": rid, "error": {"code": INTERNAL_ERROR, "message": message}}
        stdin.write(json.dumps(reply, separators=(",", ":"), ensure_ascii=False).encode() + b"\n")

    async def _send_quietly(self, msg: JsonObj) -> None:
        with contextlib.suppress(AcpError):
            await self._send(msg)

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
            except _RpcFailure as exc:
                reply["error"] = {"code": exc.code, "message": exc.message}
            except Exception:
                log.exception("acp_request_failed", extra={"label": self.label, "method": method})
                reply["error"] = {"code": INTERNAL_ERROR, "message": "internal error"}
        if self.alive:
            await self._send_quietly(reply)

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

    def _fs_path(self, params: JsonObj) -> str:
        path = params.get("path")
        if not isinstance(path, str) or not os.path.isabs(path):
            raise _RpcFailure(INVALID_PARAMS, "path must be an absolute path")
        real = within_roots(path, self.allowed_roots)
        if real is None:
            raise _RpcFailure(INVALID_PARAMS, f"path {path} is outside the allowed roots")
        return real

    async def _io(self, work: Callable[[], _T]) -> _T:
        """File work off the loop, on the connection's executor, within :data:`FS_TIMEOUT_S`."""
        loop = asyncio.get_running_loop()
        try:
            return await asyncio.wait_for(loop.run_in_executor(self._executor, work), FS_TIMEOUT_S)
        except TimeoutError:
            raise _RpcFailure(
                INTERNAL_ERROR, f"file operation timed out after {FS_TIMEOUT_S:g} s"
            ) from None

    async def _fs_read(self, params: JsonObj) -> JsonObj:
        line, limit = params.get("line"), params.get("limit")

        def read() -> str:
            path = self._fs_path(params)
            try:
                fd = _open_regular(path, os.O_RDONLY)
                try:
                    data = _read_at_most(fd, FS_READ_LIMIT + 1)
                finally:
                    os.close(fd)
            except FileNotFoundError:
                raise _RpcFailure(RESOURCE_NOT_FOUND, f"file not found: {path}") from None
            except OSError as exc:
                raise _RpcFailure(INVALID_PARAMS, f"cannot read {path}: {exc.strerror}") from None
            if len(data) > FS_READ_LIMIT:
                raise _RpcFailure(INVALID_PARAMS, "file is larger than 8 MiB")
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
            raise _RpcFailure(INVALID_PARAMS, "content must be a string")

        def write() -> None:
            path = self._fs_path(params)
            try:
                fd = _open_regular(path, os.O_WRONLY | os.O_CREAT)
                try:
                    os.ftruncate(fd, 0)
                    data = memoryview(content.encode("utf-8"))
                    while data:
                        data = data[os.write(fd, data) :]
                finally:
                    os.close(fd)
            except OSError as exc:
                raise _RpcFailure(INVALID_PARAMS, f"cannot write {path}: {exc.strerror}") from None

        await self._io(write)

    # ----------------------------------------------------------------------------- process

    async def _read_stderr(self) -> None:
        stderr = self._proc.stderr
        assert stderr is not None
        while True:
            chunk = await stderr.read(4096)
            if not chunk:
                break
            keep_tail(self._stderr, chunk)

    async def _watch_exit(self) -> None:
        """A leader that exited while a child keeps stdout open still ends: its group is
        killed a second later, which closes stdout."""
        await self._proc.wait()
        await asyncio.sleep(1.0)
        self._killpg(signal.SIGKILL)

    async def _ended(self) -> None:
        """stdout closed: the process is ending (or closed stdout on its own: end it)."""
        proc = self._proc
        if not await exited_within(self._proc, CLOSE_GRACE_S):
            self._killpg(signal.SIGKILL)
            await proc.wait()
        self._killpg(signal.SIGKILL)  # what the agent left in its group
        with contextlib.suppress(BaseException):  # its last stderr words, for the error
            await asyncio.wait_for(asyncio.shield(self._stderr_task), 1.0)
        code = proc.returncode
        self.exit_code = code
        if self._closing:
            error = AcpError(f"acp connection to {self.label} is closed")
        else:
            tail = self.stderr_tail.strip()
            text = self._frame_error or f"acp process exited: {code}"
            if self._frame_error:
                text += f" (exit {code})"
            error = AgentExited(f"{text}: {tail}" if tail else text, code=code)
            log.warning(
                "acp_agent_exited", extra={"label": self.label, "pid": self.pid, "code": code}
            )
        self._exit_error = error
        for _, future in list(self._pending.values()):
            if not future.done():
                future.set_exception(error)
        self.exited.set()

    def _killpg(self, sig: signal.Signals) -> None:
        killpg(self.pid, sig)

    # ------------------------------------------------------------------------------- close

    async def close(self) -> None:
        """Close stdin, 2 s, SIGTERM the group, 2 s, SIGKILL the group. Idempotent."""
        if self._close_task is None:
            self._close_task = asyncio.create_task(self._shutdown())
        await asyncio.shield(self._close_task)

    async def _shutdown(self) -> None:
        self._closing = True
        proc = self._proc
        await stop_group(proc, CLOSE_GRACE_S)
        self._killpg(signal.SIGKILL)  # whatever it left in its group, also once it exited
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.exited.wait(), CLOSE_GRACE_S + 2)
        tasks = [
            self._reader,
            self._stderr_task,
            self._watcher,
            *self._inbound.values(),
            *self._senders,
        ]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if proc.stdin is not None:
            with contextlib.suppress(Exception):
                proc.stdin.close()
        self.exit_code = proc.returncode
        error = self._dead()
        for _, future in list(self._pending.values()):
            if not future.done():
                future.set_exception(error)
        self.exited.set()
        log.info("acp_agent_stopped", extra={"label": self.label, "pid": self.pid})
