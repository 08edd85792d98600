"""``agwd --workers N``: N processes serving one data listener (docs/scale-out.md).

The parent, the supervisor, serves nothing itself: agwd's entry point has it open the store
once (created and migrated, so that no two workers migrate at once) and bind both listeners;
it then forks the workers and watches them. Every worker inherits the bound data socket and
accepts on it: the kernel hands each new connection to one of the processes waiting on the one
queue. Worker 0 also serves the admin API on the inherited admin socket and is the only process
that writes configuration. Pre-bound rather than ``SO_REUSEPORT``: the port (port 0 too) is
bound once and kept across a worker's restart, and connections waiting to be accepted are not
lost with a dying worker (``SO_REUSEPORT`` gives each process its own queue, closed with it).

Config: after each swap worker 0 bumps a counter in memory shared by all workers (an anonymous
shared mapping made before the first fork, :class:`Generation`); the others read it every
:data:`WATCH_INTERVAL_S` and reload their config from the store when it moved
(:meth:`agw.runtime.manager.ConfigManager.refresh`). SIGHUP goes to every worker: each one
re-reads the static config and reopens its access log itself.

Usage rows: each worker's recorder writes its own rows into the store (SQLite in WAL mode,
writers queue on its busy timeout; measured in docs/scale-out.md).

A worker that exits after it was ready is started again after :data:`RESTART_DELAY_S` with the
same index (a new worker 0 serves the admin API again). A worker that exits before it was ready
(a start that would fail again) stops agwd, which exits 1. SIGTERM and SIGINT are passed on to
the workers, which drain; the supervisor waits for them (bounded, then SIGKILL) and exits.
A worker whose supervisor is gone stops by itself within :data:`WATCH_INTERVAL_S`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import mmap
import os
import select
import signal
import socket
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from agw.errors import AgwError

if TYPE_CHECKING:
    from agw.runtime.manager import ConfigManager

log = logging.getLogger(__name__)

MAX_WORKERS = 64
WATCH_INTERVAL_S = 0.25
RESTART_DELAY_S = 1.0
KILL_AFTER_S = 10.0  # past the workers' own shutdown grace period
_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


class Generation:
    """A counter shared by the processes forked after it was made; worker 0 alone bumps it."""

    def __init__(self) -> None:
        self._map = mmap.mmap(-1, 8)

    @property
    def value(self) -> int:
        return int(struct.unpack_from("Q", self._map, 0)[0])

    def bump(self) -> None:
        struct.pack_into("Q", self._map, 0, self.value + 1)


@dataclass
class WorkerSlot:
    """What one worker process is given: its index, the inherited sockets, the shared config
    generation and the pipe on which it says it is ready."""

    index: int
    data_sock: socket.socket
    admin_sock: socket.socket | None  # worker 0's alone
    generation: Generation
    ready_fd: int
    seen: int = 0  # the generation of the config this worker loaded

    @property
    def serves_admin(self) -> bool:
        return self.index == 0

    def ready(self) -> None:
        os.write(self.ready_fd, bytes([self.index]))

    async def follow(self, manager: ConfigManager, shutdown: asyncio.Event) -> None:
        """Until shutdown: reload the config when worker 0 changed it (the other workers),
        and stop when the supervisor is gone (every worker)."""
        parent = os.getppid()
        while not shutdown.is_set():
            await asyncio.sleep(WATCH_INTERVAL_S)
            if os.getppid() != parent:
                log.error("worker_orphaned", extra={"worker": self.index})
                shutdown.set()
                return
            now = self.generation.value
            if self.serves_admin or now == self.seen:
                continue
            self.seen = now
            try:
                await manager.refresh()
            except AgwError as exc:
                log.error("config_refresh_failed", extra={"error": exc.message})
            except Exception:  # the store's own errors: try again at the next change
                log.exception("config_refresh_failed")


class Supervisor:
    """Forks ``count`` workers, each running ``serve(slot)`` (its exit code), and keeps them
    running until SIGTERM or SIGINT; ``notify`` gets systemd's messages."""

    def __init__(
        self,
        count: int,
        data_sock: socket.socket,
        admin_sock: socket.socket,
        serve: Callable[[WorkerSlot], int],
        notify: Callable[[str], None],
        grace_s: float,
    ) -> None:
        self.count = count
        self.data_sock = data_sock
        self.admin_sock = admin_sock
        self.serve = serve
        self.notify = notify
        self.grace_s = grace_s
        self.generation = Generation()
        self.children: dict[int, int] = {}  # pid -> worker index
        self.up: set[int] = set()  # indexes whose current process said it is ready
        self.restarts: dict[int, float] = {}  # index -> when to start it again
        self.announced = False
        self.kill_at: float | None = None  # set once stopping
        self.exit_code = 0
        self.ready_r, self.ready_w = os.pipe()
        self.wake_r, self.wake_w = os.pipe()
        self.signals: list[int] = []

    def run(self) -> int:
        os.set_blocking(self.wake_w, False)
        os.set_blocking(self.ready_r, False)
        os.set_blocking(self.wake_r, False)
        for sig in _SIGNALS:
            signal.signal(sig, self._on_signal)
        for index in range(self.count):
            self._spawn(index)
        while self.children or (self.restarts and self.kill_at is None):
            select.select([self.ready_r, self.wake_r], [], [], WATCH_INTERVAL_S)
            self._read_ready()
            with contextlib.suppress(BlockingIOError):
                os.read(self.wake_r, 512)
            while self.signals:
                self._handle(self.signals.pop(0))
            self._reap()
            self._restart_due()
            if self.kill_at is not None and time.monotonic() > self.kill_at:
                for pid in self.children:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
        for fd in (self.ready_r, self.ready_w, self.wake_r, self.wake_w):
            os.close(fd)
        return self.exit_code

    def _on_signal(self, signum: int, _frame: object) -> None:
        self.signals.append(signum)
        with contextlib.suppress(OSError):
            os.write(self.wake_w, b"s")

    def _handle(self, signum: int) -> None:
        if signum == signal.SIGHUP:
            self.notify("RELOADING=1")
            self._send_all(signal.SIGHUP)
            self.notify("READY=1")
        else:
            self.stop(signal.Signals(signum).name)

    def stop(self, reason: str) -> None:
        if self.kill_at is not None:
            return
        log.info("agwd_stopping", extra={"signal": reason})
        self.notify("STOPPING=1")
        self.kill_at = time.monotonic() + self.grace_s + KILL_AFTER_S
        self.restarts.clear()
        self._send_all(signal.SIGTERM)

    def _send_all(self, signum: int) -> None:
        for pid in self.children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)

    def _spawn(self, index: int) -> None:
        self.up.discard(index)
        pid = os.fork()
        if pid == 0:
            os._exit(self._child(index))
        self.children[pid] = index
        log.info("worker_started", extra={"worker": index, "pid": pid})

    def _child(self, index: int) -> int:
        """In the forked worker: the supervisor's signal handling and pipes undone, then
        serve. Never returns to the supervisor's loop (the caller exits)."""
        try:
            for sig in _SIGNALS:
                signal.signal(sig, signal.SIG_DFL)
            for fd in (self.ready_r, self.wake_r, self.wake_w):
                os.close(fd)
            os.environ.pop("NOTIFY_SOCKET", None)  # systemd hears the supervisor only
            admin = self.admin_sock if index == 0 else None
            if admin is None:
                self.admin_sock.close()
            slot = WorkerSlot(index, self.data_sock, admin, self.generation, self.ready_w)
            return self.serve(slot)
        except BaseException:
            log.exception("worker_crashed", extra={"worker": index})
            return 1
        finally:
            logging.shutdown()

    def _read_ready(self) -> None:
        try:
            data = os.read(self.ready_r, 512)
        except BlockingIOError:
            return
        for index in data:
            self.up.add(index)
            log.info("worker_ready", extra={"worker": index})
        if not self.announced and len(self.up) == self.count and self.kill_at is None:
            self.announced = True
            log.info(
                "agwd_ready",
                extra={
                    "addr": _addr(self.data_sock),
                    "admin_addr": _addr(self.admin_sock),
                    "workers": self.count,
                },
            )
            self.notify(f"READY=1\nMAINPID={os.getpid()}")

    def _reap(self) -> None:
        while self.children:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                self.children.clear()
                return
            if pid == 0:
                return
            index = self.children.pop(pid, None)
            if index is None:
                continue
            code = os.waitstatus_to_exitcode(status)
            if self.kill_at is not None:
                log.info("worker_stopped", extra={"worker": index, "pid": pid, "code": code})
            elif index not in self.up:
                log.error("worker_failed_to_start", extra={"worker": index, "code": code})
                self.exit_code = 1
                self.stop("worker_failed_to_start")
            else:
                log.error("worker_exited", extra={"worker": index, "pid": pid, "code": code})
                self.restarts[index] = time.monotonic() + RESTART_DELAY_S
            self.up.discard(index)

    def _restart_due(self) -> None:
        now = time.monotonic()
        for index, at in list(self.restarts.items()):
            if at <= now and self.kill_at is None:
                del self.restarts[index]
                self._spawn(index)


def _addr(sock: socket.socket) -> str:
    """As agw.server.bound_addr writes it (this module must not import the server)."""
    host, port = sock.getsockname()[:2]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
