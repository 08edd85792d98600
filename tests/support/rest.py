"""The fake REST API (``tests/fakes/rest_app.py``) as a real process on loopback.

with run_rest_app(tmp_path) as rest:
    rest.url            # http://127.0.0.1:P
    rest.spec_url       # http://127.0.0.1:P/openapi.json
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

SCRIPT = Path(__file__).resolve().parent.parent / "fakes" / "rest_app.py"
START_TIMEOUT_S = 15.0


@dataclass
class RestApp:
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def spec_url(self) -> str:
        return f"{self.url}/openapi.json"


@contextlib.contextmanager
def run_rest_app(tmp: Path) -> Iterator[RestApp]:
    """Start the app (its own process group), yield it once it listens, kill the group after."""
    tmp.mkdir(parents=True, exist_ok=True)
    out_path, err_path = tmp / "rest-app.stdout", tmp / "rest-app.stderr"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        proc = subprocess.Popen(
            [sys.executable, str(SCRIPT), "--port", "0"],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
            env=env,
            start_new_session=True,
        )
    try:
        yield RestApp(_wait_ready(proc, out_path, err_path))
    finally:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(5)


def _wait_ready(proc: subprocess.Popen[bytes], out: Path, err: Path) -> int:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        for line in out.read_text(errors="replace").splitlines():
            if line.startswith("READY "):
                return int(line.split()[1])
        if proc.poll() is not None:
            raise RuntimeError(f"rest app exited: {err.read_text(errors='replace')[-2000:]}")
        time.sleep(0.02)
    raise RuntimeError(f"rest app not ready after {START_TIMEOUT_S} s")
