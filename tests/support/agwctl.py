"""Helpers for the agwctl tests: agwctl runs as a real process against a real agwd (the
fixtures are in tests/conftest.py)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent / "agwctl"
BUNDLE = HERE / "gateway.yaml"
BUNDLE_OBJECTS = 12


def run_agwctl(
    *args: str,
    env: Mapping[str, str],
    cwd: Path,
    stdin: str | None = None,
    timeout: float = 60,
) -> subprocess.CompletedProcess[str]:
    """``agwctl ARGS`` as a subprocess; ``cwd`` is a scratch directory (no stray .env files)."""
    return subprocess.run(
        [sys.executable, "-m", "agwctl.main", *args],
        env=dict(env),
        cwd=cwd,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def assert_one_line_error(proc: subprocess.CompletedProcess[str], expected: str) -> None:
    """Exit 1, nothing on stdout, exactly ``agwctl: <expected>`` on stderr."""
    assert proc.returncode == 1, (proc.stdout, proc.stderr)
    assert proc.stdout == ""
    assert proc.stderr == f"agwctl: {expected}\n"
    assert "Traceback" not in proc.stderr


@dataclass
class Agwctl:
    """agwctl bound to one gateway's environment (``AGW_ADMIN_ADDR``, ``AGW_ADMIN_BASIC_AUTH``)."""

    env: Mapping[str, str]
    cwd: Path

    def __call__(
        self, *args: str, stdin: str | None = None, env: Mapping[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        return run_agwctl(*args, env={**self.env, **(env or {})}, cwd=self.cwd, stdin=stdin)

    def ok(self, *args: str) -> str:
        """Run, assert success, return stdout."""
        proc = self(*args)
        assert proc.returncode == 0, (args, proc.stdout, proc.stderr)
        return proc.stdout
