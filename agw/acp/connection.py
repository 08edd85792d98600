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
- **inbound requests** (agent -> gateway): served by :mod:`agw.acp.agent_requests`, each in
  its own task (``session/request_permission`` through :attr:`AcpConnection.permission_handler`,
  fail-closed; ``fs/*`` inside ``allowed_roots`` on the executor given to
  :meth:`AcpConnection.spawn`; anything else ``-32601`` at once).

Frames (lines) up to 16 MiB are read by :func:`agw.procgroup.read_line` (through a 1 MiB
reader buffer, so a handler that waits, a turn applying backpressure, leaves at most 2 MiB
unread here and the rest in the agent's pipe); a longer one is a protocol violation and ends the
process. The last 8 KiB of stderr are kept (:attr:`stderr_tail`, :class:`AgentProcess`). When
the process exits, every request in flight fails with :class:`AgentExited` (``acp process
exited: <code>: <stderr tail>``) and what is left of its process group is killed.
:meth:`close` closes stdin, waits 2 s, SIGTERMs the group, waits 2 s, SIGKILLs the group (and
always SIGKILLs the group at the end, so nothing the agent started survives it); it is
idempotent.

Errors: :class:`AcpError` (``message``, ``status``: 502 agent/transport failure, 400 a request
the client can correct) is what the runtime raises; :class:`AgentExited` the process died;
:class:`AgentRpcError` the agent answered a JSON-RPC error (``code``, ``data``).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import signal
from collections.abc import Awaitable, Callable, Mapping, Sequence
from concurrent.futures import Executor
from typing import Any

from agw.acp.agent_requests import FS_MODES, INTERNAL_ERROR, AgentRequests, PermissionHandler
from agw.procgroup import (
    CLOSE_GRACE_S,
    LINE_LIMIT,
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
from agw.version import VERSION

log = logging.getLogger(__name__)

UpdateHandler = Callable[[JsonObj], Awaitable[None]]

PROTOCOL_VERSION = 1
CLIENT_INFO = {"name": "agw", "title": "agw gateway", "version": VERSION}
# an answer sent at once (an agent's request refused) is dropped when this much already waits
# in the agent's stdin: it is not even reading its answers
REFUSAL_BUFFER = 1024 * 1024


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


class AgentProcess:
    """One agent process, leader of its own process group: the last 8 KiB of its stderr, the
    kill of what it leaves in its group once it exits, and the stop of the whole group."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.pid: int | None = proc.pid  # also the process group id
        self._stderr = bytearray()
        self._stderr_task = asyncio.create_task(self._read_stderr())
        # a leader that exited while a child keeps stdout open still ends: its group is killed
        # a second later, which closes stdout
        self._orphans = asyncio.create_task(kill_orphans(proc))

    @property
    def stderr_tail(self) -> str:
        return self._stderr.decode("utf-8", errors="replace")

    def tasks(self) -> list[asyncio.Task[None]]:
        return [self._stderr_task, self._orphans]

    def kill(self) -> None:
        """SIGKILL the whole group."""
        killpg(self.pid, signal.SIGKILL)

    async def _read_stderr(self) -> None:
        stderr = self.proc.stderr
        assert stderr is not None
        while True:
            chunk = await stderr.read(4096)
            if not chunk:
                break
            keep_tail(self._stderr, chunk)

    async def ended(self) -> int | None:
        """stdout closed: the process is ending (or closed stdout on its own: end it). Its exit
        code, once it and its group are gone and its last stderr words are read."""
        proc = self.proc
        if not await exited_within(proc, CLOSE_GRACE_S):
            self.kill()
            await proc.wait()
        self.kill()  # what the agent left in its group
        with contextlib.suppress(BaseException):  # its last stderr words, for the error
            await asyncio.wait_for(asyncio.shield(self._stderr_task), 1.0)
        return proc.returncode

    async def stop(self) -> None:
        """Close stdin, 2 s, SIGTERM the group, 2 s, SIGKILL the group, and SIGKILL whatever it
        left in its group, also once it exited."""
        await stop_group(self.proc, CLOSE_GRACE_S)
        self.kill()


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
        self.process = AgentProcess(proc)
        self.fs_access = fs_access
        self.requests = AgentRequests(
            self,
            label=label,
            fs_access=fs_access,
            allowed_roots=allowed_roots,
            executor=executor,  # the fs/* file work (None: asyncio's default executor)
        )
        self.init_result: JsonObj = {}
        self.agent_capabilities: JsonObj = {}
        self.exit_code: int | None = None
        self.exited = asyncio.Event()
        self._ids = itertools.count(1)
        self._pending: dict[int, tuple[str, asyncio.Future[Any]]] = {}
        self._subscribers: list[UpdateHandler] = []
        self._write_lock = asyncio.Lock()
        self._closing = False
        self._close_task: asyncio.Task[None] | None = None
        self._exit_error: AcpError | None = None
        self._frame_error = ""
        self._reader = asyncio.create_task(self._read_stdout())

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
            proc = await start_group(argv, env=env, cwd=cwd)
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
        return self.process.stderr_tail

    @property
    def permission_handler(self) -> PermissionHandler | None:
        """Who answers the agent's ``session/request_permission`` (None: ``cancelled``)."""
        return self.requests.permission_handler

    @permission_handler.setter
    def permission_handler(self, handler: PermissionHandler | None) -> None:
        self.requests.permission_handler = handler

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
        data = encode_line(msg)
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

    async def _read_stdout(self) -> None:
        stdout = self._proc.stdout
        assert stdout is not None
        while True:
            try:
                line = await read_line(stdout)
            except ValueError:  # over LINE_LIMIT: the protocol is broken, end the agent
                self._frame_error = f"acp agent sent a frame over {LINE_LIMIT // (1 << 20)} MiB"
                log.warning("acp_frame_too_long", extra={"label": self.label, "pid": self.pid})
                self.process.kill()
                break
            if not line:
                break
            try:
                messages = decode_line(line)
            except ValueError:
                noise = line.strip()[:200]
                log.debug("acp_stdout_noise", extra={"label": self.label, "line": noise})
                continue
            for item in messages:
                if isinstance(item, dict):
                    await self._dispatch(item)
        await self._ended()

    async def _dispatch(self, msg: JsonObj) -> None:
        method = msg.get("method")
        if isinstance(method, str):
            params = msg.get("params")
            params = params if isinstance(params, dict) else {}
            if msg.get("id") is not None:
                self.requests.serve(msg["id"], method, params)
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
            self.requests.cancel(params.get("requestId"))
        else:
            log.debug("acp_notification_ignored", extra={"label": self.label, "method": method})

    # --------------------------------------------------------- answers to the agent's requests

    async def send_quietly(self, msg: JsonObj) -> None:
        """Send, and say nothing when the agent is gone (an answer nobody waits for)."""
        with contextlib.suppress(AcpError):
            await self._send(msg)

    def send_now(self, msg: JsonObj) -> None:
        """Write a whole frame to the pipe's buffer now, without a task (frames never
        interleave). Dropped (the agent then waits on its own request) when that buffer already
        holds :data:`REFUSAL_BUFFER`: the agent is not even reading its answers."""
        stdin = self._proc.stdin
        if stdin is None or not self.alive or stdin.is_closing():
            return
        if stdin.transport.get_write_buffer_size() > REFUSAL_BUFFER:
            return
        stdin.write(encode_line(msg))

    # ----------------------------------------------------------------------------- ending

    async def _ended(self) -> None:
        """stdout closed: the process is ending; every request in flight fails."""
        code = await self.process.ended()
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
        self._fail_pending(error)

    def _fail_pending(self, error: AcpError) -> None:
        """Every request in flight fails with ``error``; the connection has ended."""
        for _, future in list(self._pending.values()):
            if not future.done():
                future.set_exception(error)
        self.exited.set()

    # ------------------------------------------------------------------------------- close

    async def close(self) -> None:
        """Close stdin, 2 s, SIGTERM the group, 2 s, SIGKILL the group. Idempotent."""
        if self._close_task is None:
            self._close_task = asyncio.create_task(self._shutdown())
        await asyncio.shield(self._close_task)

    async def _shutdown(self) -> None:
        self._closing = True
        proc = self._proc
        await self.process.stop()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.exited.wait(), CLOSE_GRACE_S + 2)
        tasks = [self._reader, *self.process.tasks(), *self.requests.tasks()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if proc.stdin is not None:
            with contextlib.suppress(Exception):
                proc.stdin.close()
        self.exit_code = proc.returncode
        error = self._dead()
        self._fail_pending(error)
        log.info("acp_agent_stopped", extra={"label": self.label, "pid": self.pid})
