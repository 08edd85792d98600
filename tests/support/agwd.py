"""Real agwd processes on ephemeral loopback ports with temp SQLite stores, for the tests.

Every process runs in its own process group and is killed as a group at teardown.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import httpx

REPO = Path(__file__).resolve().parent.parent.parent
ADMIN_USER = "admin"
ADMIN_PASSWORD = "test-password"
START_TIMEOUT_S = 20.0


def base_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AGW_", "NOTIFY_SOCKET"))}
    env["PYTHONUNBUFFERED"] = "1"
    return env


@dataclass
class Agwd:
    proc: subprocess.Popen[bytes]
    workdir: Path
    db_path: Path
    log_path: Path
    auth: str | None
    admin_url: str = ""
    data_url: str = ""
    env: dict[str, str] = field(default_factory=dict)

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace")

    def log_events(self) -> list[dict[str, Any]]:
        out = []
        for line in self.logs().splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
        return out

    def client(self, *, auth: bool = True) -> httpx.Client:
        basic = None
        if auth and self.auth:
            user, _, password = self.auth.partition(":")
            basic = (user, password)
        return httpx.Client(base_url=self.admin_url, auth=basic, timeout=30, trust_env=False)

    def wait_ready(self, timeout: float = START_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for event in self.log_events():
                if event.get("event") == "agwd_ready":
                    self.data_url = "http://" + event["addr"]
                    self.admin_url = "http://" + event["admin_addr"]
                    self.env = {
                        **base_env(),
                        "AGW_ADMIN_ADDR": self.admin_url,
                        **({"AGW_ADMIN_BASIC_AUTH": self.auth} if self.auth else {}),
                    }
                    return
            if self.proc.poll() is not None:
                raise RuntimeError(f"agwd exited with {self.proc.returncode}:\n{self.logs()}")
            time.sleep(0.05)
        raise RuntimeError(f"agwd not ready after {timeout}s:\n{self.logs()}")

    def stop(self, timeout: float = 15) -> int:
        """SIGTERM and wait; returns the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.proc.wait(5)

    def kill(self) -> None:
        """SIGKILL the whole process group."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(5)


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class AgwdLauncher:
    def __init__(self, base: Path, admin_hash: str) -> None:
        self.base = base
        self.admin_hash = admin_hash
        self.started: list[Agwd] = []
        self.count = 0

    def start(
        self,
        *args: str,
        auth: bool | Literal["generated"] = True,
        db_path: Path | None = None,
        static: Path | None = None,
        env: dict[str, str] | None = None,
        wait: bool = True,
        same_listener: bool = False,
        store_url: str = "",
    ) -> Agwd:
        """Start agwd; ``args`` are extra flags. Returns once both listeners answer.
        ``auth=False`` serves the admin API without authentication (``--admin-insecure``)
        unless ``args`` or ``env`` give another admin auth; ``"generated"`` gives neither, so
        agwd uses (and first writes) the password file beside the store. ``store_url``: a
        PostgreSQL store in place of the file (``env`` then gives its key)."""
        self.count += 1
        workdir = self.base / f"agwd{self.count}"
        workdir.mkdir(parents=True, exist_ok=True)
        db = db_path or workdir / "data" / "configstore.db"
        log_path = workdir / "agwd.log"
        cmd = [sys.executable, "-m", "agwd.main", "--config-store", store_url or str(db)]
        if same_listener:
            port = free_port()
            cmd += ["--addr", f"127.0.0.1:{port}", "--admin-addr", f"127.0.0.1:{port}"]
        else:
            cmd += ["--addr", "127.0.0.1:0", "--admin-addr", "127.0.0.1:0"]
        if auth is True:
            cmd += ["--admin-basic-auth-hash", self.admin_hash]
        elif (
            auth is False
            and not {"--admin-basic-auth-hash", "--admin-insecure", "--admin-password-file"}
            & {a.partition("=")[0] for a in args}
            and not {"AGW_ADMIN_BASIC_AUTH_HASH", "AGW_ADMIN_PASSWORD_FILE"} & set(env or {})
        ):
            cmd += ["--admin-insecure"]  # else agwd would generate a password
        if static is not None:
            cmd += ["--static-config", str(static)]
        cmd += list(args)
        with log_path.open("wb") as log:
            proc = subprocess.Popen(
                cmd,
                cwd=workdir,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**base_env(), **(env or {})},
                start_new_session=True,
            )
        agwd = Agwd(
            proc, workdir, db, log_path, f"{ADMIN_USER}:{ADMIN_PASSWORD}" if auth is True else None
        )
        self.started.append(agwd)
        if wait:
            agwd.wait_ready()
        return agwd

    def close(self) -> None:
        for agwd in self.started:
            agwd.kill()


def run_cli(
    *args: str, env: dict[str, str], cwd: Path | None = None, timeout: float = 60, module: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def usage_rows(
    db: Path, table: str, where: str, count: int = 1, args: tuple[Any, ...] = ()
) -> list[dict[str, Any]]:
    """Rows of a usage table matching ``where`` (``args`` bound), oldest first, waiting (at
    most 10 s) until ``count`` are there: the recorder writes off the request path."""
    deadline = time.monotonic() + 10
    found: list[dict[str, Any]] = []
    sql = f"SELECT * FROM {table} WHERE {where} ORDER BY started_at"
    while time.monotonic() < deadline:
        with contextlib.closing(sqlite3.connect(db)) as conn:
            conn.row_factory = sqlite3.Row
            found = [dict(r) for r in conn.execute(sql, args)]
        if len(found) >= count:
            break
        time.sleep(0.05)
    return found
