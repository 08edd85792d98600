"""The npm tools of the slow tier (tests/clients: Claude Code, opencode, the Codex CLI,
codex-acp) and the npm libraries of test fakes (tests/fakes/oidc: oidc-provider), installed with
npm into ``.cache/npm-<name>`` of the repository on first use (the npm registry must be
reachable then).
A test that needs one is skipped, with the reason, where npm or Node.js is not installed; a
failed install fails it."""

from __future__ import annotations

import fcntl
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
INSTALL_TIMEOUT_S = 600


def npm_tool(package: str, name: str, binary: str) -> Path:
    """The path of ``binary`` from ``package`` (``name@version``), installed into
    ``.cache/npm-<name>`` unless it is there already."""
    prefix = REPO / ".cache" / f"npm-{name}"
    return _installed(package, prefix, prefix / "node_modules" / ".bin" / binary)


def npm_package(package: str, name: str, module: str) -> Path:
    """The directory of the node module ``module`` from ``package`` (``name@version``), for a
    script that imports it (a library, no binary), installed into ``.cache/npm-<name>``."""
    prefix = REPO / ".cache" / f"npm-{name}"
    return _installed(package, prefix, prefix / "node_modules" / module / "package.json").parent


def _installed(package: str, prefix: Path, path: Path) -> Path:
    if path.exists():
        return path
    npm = shutil.which("npm")
    if npm is None or shutil.which("node") is None:
        pytest.skip(f"{package} is installed with npm: needs npm and node (Node.js 18+) on PATH")
    prefix.mkdir(parents=True, exist_ok=True)
    # one install at a time: the suite's workers (pytest-xdist) may want the same tool at once
    with (prefix.parent / f"{prefix.name}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if path.exists():
            return path
        return _install(npm, package, prefix, path)


def _install(npm: str, package: str, prefix: Path, path: Path) -> Path:
    done = subprocess.run(
        [npm, "install", "--no-audit", "--no-fund", "--prefix", str(prefix), package],
        capture_output=True,
        text=True,
        timeout=INSTALL_TIMEOUT_S,
        check=False,
    )
    assert done.returncode == 0 and path.exists(), f"npm install {package}: {done.stderr[-2000:]}"
    return path
