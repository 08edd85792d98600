"""Start the fake LLM upstream (``llm_upstream.py``) as a real process for a test.

    from tests.fakes.run import start_fake_upstream

    with start_fake_upstream(tmp_path, "--require-key", "sk-test") as fake:
        client = OpenAI(base_url=f"{fake.url}/v1", api_key="sk-test")
        ...
        assert fake.requests()[-1]["path"] == "/v1/chat/completions"

The process runs in its own process group and the whole group is killed on exit.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

SCRIPT = Path(__file__).resolve().parent / "llm_upstream.py"
START_TIMEOUT_S = 15.0


@dataclass
class FakeUpstream:
    url: str  # http://127.0.0.1:PORT (no /v1)
    log_path: Path
    proc: subprocess.Popen[bytes]
    stdout_path: Path
    stderr_path: Path

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    def requests(self) -> list[dict[str, Any]]:
        """Every logged request so far, oldest first."""
        if not self.log_path.exists():
            return []
        lines = self.log_path.read_text(encoding="utf-8").splitlines()
        return [json.loads(line) for line in lines if line.strip()]

    def clear(self) -> None:
        """Forget the logged requests (truncates the log)."""
        self.log_path.write_text("", encoding="utf-8")

    def configure(self, **knobs: Any) -> dict[str, Any]:
        """Change the process knobs (status, delay_ms, chunk_delay_ms, cut_after, fail_first,
        require_key, error_message, flood_bytes, flood_length, flood_block) while it runs;
        returns the resulting knobs."""
        r = httpx.post(f"{self.url}/_fake/config", json=knobs, timeout=5)
        r.raise_for_status()
        result: dict[str, Any] = r.json()
        return result

    def reset(self) -> None:
        """Zero the request counter that ``fail_first`` counts against."""
        httpx.post(f"{self.url}/_fake/reset", timeout=5).raise_for_status()

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace") if self.stderr_path.exists() else ""

    def stop(self) -> None:
        """Kill the process group (TERM, then KILL after 5 s) and reap the process."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=5)
        else:
            # the leader is gone; anything it left in its group goes too
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGKILL)


@contextlib.contextmanager
def start_fake_upstream(
    tmp_path: Path, *args: str, env: dict[str, str] | None = None
) -> Iterator[FakeUpstream]:
    """Run ``llm_upstream.py --port 0 --log <tmp>/…jsonl *args`` and yield it once it listens.

    ``env`` is added to (and overrides) the current environment, e.g. ``{"FAKE_LLM_STATUS":
    "503"}``. Several fakes may share one ``tmp_path``: each gets its own numbered files.
    """
    tmp_path.mkdir(parents=True, exist_ok=True)
    n = 0
    while (tmp_path / f"fake-upstream-{n}.jsonl").exists() and n < 1000:
        n += 1
    stem = tmp_path / f"fake-upstream-{n}"
    log_path = stem.with_suffix(".jsonl")
    log_path.touch()
    stdout_path, stderr_path = stem.with_suffix(".stdout"), stem.with_suffix(".stderr")
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    cmd = [sys.executable, str(SCRIPT), "--port", "0", "--log", str(log_path), *args]
    with open(stdout_path, "wb") as out, open(stderr_path, "wb") as err:
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
            env=full_env,
            start_new_session=True,
        )
    fake = FakeUpstream("", log_path, proc, stdout_path, stderr_path)
    try:
        fake.url = f"http://127.0.0.1:{_wait_listening(fake)}"
        yield fake
    finally:
        fake.stop()


def _wait_listening(fake: FakeUpstream) -> int:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        for line in fake.stdout_path.read_text(errors="replace").splitlines():
            if line.startswith("LISTENING "):
                return int(line.split()[1])
        if fake.proc.poll() is not None:
            raise RuntimeError(
                f"fake upstream exited with {fake.proc.returncode}: {fake.stderr()[-2000:]}"
            )
        time.sleep(0.02)
    raise RuntimeError(f"fake upstream not listening after {START_TIMEOUT_S} s: {fake.stderr()}")
