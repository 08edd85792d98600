"""A private PostgreSQL 15 server for the tests that stop and start one (tests/test_pg_restart.py).

The shared test server (tests/support/engines.py) serves every other test, so no test may
restart it. :class:`PgServer` makes one of its own: ``initdb`` into a new directory under
``/tmp``, then ``pg_ctl start`` on a free loopback port, its socket in that directory::

    with PgServer() as pg:
        pg.url               # postgresql://postgres@127.0.0.1:P/postgres
        pg.stop("fast")      # or "immediate": no checkpoint, crash recovery at the next start
        pg.start()           # the same data directory and port

PostgreSQL refuses to run as root, so as root (how the tests run here and on CI) every command
runs as the ``postgres`` system user through ``runuser``, and the directory is given to that
user; as ``postgres`` they run directly. Skipped, with the reason, when the binaries
(:data:`PG_BIN`, or ``AGW_TEST_PG_BIN``), the user or ``runuser`` are missing, or when the tests
run as anyone else. The server runs with ``fsync=off``: a stop (even ``immediate``) kills
processes, never the machine, so what was written survives in the page cache, and the tests
do not wait on the disk. Every wait is bounded; at the end the server is stopped
(``immediate``), killed if it is still there, and its directory removed.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Literal

import pytest

from tests.support.agwd import free_port

PG_BIN = Path(os.environ.get("AGW_TEST_PG_BIN", "/usr/lib/postgresql/15/bin"))
PG_USER = "postgres"
COMMAND_TIMEOUT_S = 60.0
"""The most any one command (``initdb``, a start, a stop) may take."""
StopMode = Literal["smart", "fast", "immediate"]


def unavailable() -> str | None:
    """Why no private server can be run here, or None."""
    for tool in ("initdb", "pg_ctl", "postgres"):
        if not (PG_BIN / tool).is_file():
            return f"no PostgreSQL binaries: {PG_BIN / tool} is missing (set AGW_TEST_PG_BIN)"
    try:
        user = pwd.getpwnam(PG_USER)
    except KeyError:
        return f"no {PG_USER!r} user to run a private PostgreSQL server as"
    if os.geteuid() == 0:
        if shutil.which("runuser") is None:
            return f"runuser is missing: cannot run PostgreSQL as {PG_USER!r} from root"
    elif os.geteuid() != user.pw_uid:
        return f"a private PostgreSQL server needs root or the {PG_USER!r} user"
    return None


class PgServer:
    """One private PostgreSQL server (see the module docstring)."""

    def __init__(self) -> None:
        reason = unavailable()
        if reason is not None:
            pytest.skip(reason)
        self.user = pwd.getpwnam(PG_USER)
        self.port = free_port()
        self.base = Path("")
        self.data = Path("")

    @property
    def url(self) -> str:
        return f"postgresql://{PG_USER}@127.0.0.1:{self.port}/postgres"

    @property
    def log_path(self) -> Path:
        return self.base / "server.log"

    def logs(self) -> str:
        with contextlib.suppress(OSError):
            return self.log_path.read_text(errors="replace")
        return ""

    def __enter__(self) -> PgServer:
        # mkdtemp's directory is 0700: given to the server's user, who alone needs it
        self.base = Path(tempfile.mkdtemp(prefix="agw-pg-", dir="/tmp"))
        self.data = self.base / "data"
        try:
            os.chown(self.base, self.user.pw_uid, self.user.pw_gid)
            initdb = ("-D", str(self.data), "-A", "trust", "-U", PG_USER, "--no-sync")
            self._run("initdb", *initdb, "-E", "UTF8")
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def start(self) -> None:
        """Start the server on its data directory and port; returns once it accepts
        connections (after crash recovery, following an ``immediate`` stop)."""
        options = (
            f"-p {self.port} -k {self.base} -c listen_addresses=127.0.0.1 -c fsync=off "
            "-c max_connections=50"
        )
        wait = ("-w", "-t", str(int(COMMAND_TIMEOUT_S)))
        self._run(
            "pg_ctl", "-D", str(self.data), "-l", str(self.log_path), "-o", options, *wait, "start"
        )

    def stop(self, mode: StopMode = "fast") -> None:
        """Stop the server: ``fast`` ends every session (clients see their connection
        terminated) and checkpoints; ``immediate`` kills every process at once, as a crash
        would. Returns once it is gone."""
        wait = ("-w", "-t", str(int(COMMAND_TIMEOUT_S)))
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, *wait, "stop")

    def pid(self) -> int | None:
        """The postmaster's pid while it runs, else None: the pid its ``postmaster.pid``
        names, when that process is this server's (a file left by a crash may name another)."""
        with contextlib.suppress(OSError, ValueError, IndexError):
            pid = int((self.data / "postmaster.pid").read_text().split()[0])
            if str(self.data).encode() in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0"):
                return pid
        return None

    def close(self) -> None:
        """Stop the server whatever its state (killed when a stop fails) and remove its
        directory."""
        if self.data.name and self.pid() is not None:
            with contextlib.suppress(subprocess.SubprocessError, RuntimeError):
                self.stop("immediate")
            pid = self.pid()
            if pid is not None:  # still there: the postmaster and its children
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
                time.sleep(0.5)
        if self.base.name:
            shutil.rmtree(self.base, ignore_errors=True)

    def _run(self, tool: str, *args: str) -> None:
        cmd = [str(PG_BIN / tool), *args]
        if os.geteuid() == 0:
            cmd = ["runuser", "-u", PG_USER, "--", *cmd]
        done = subprocess.run(
            cmd,
            cwd=self.base,  # the server's user may not enter the tests' own directory
            capture_output=True,
            text=True,
            timeout=COMMAND_TIMEOUT_S,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(
                f"{tool} {' '.join(args)} failed ({done.returncode}):\n{done.stdout}"
                f"{done.stderr}\n{self.logs()[-2000:]}"
            )
