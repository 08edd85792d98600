"""docs/reference/cli.md is generated from --help and must be current (scripts/gen-cli-docs)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_cli_reference_is_current() -> None:
    proc = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "gen-cli-docs"), "--check"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr + "\nrun scripts/gen-cli-docs and commit the result"


def test_cli_reference_covers_every_agwctl_command() -> None:
    text = (REPO / "docs" / "reference" / "cli.md").read_text()
    for command in (
        "agwctl gateway apply",
        "agwctl gateway export",
        "agwctl gateway validate",
        "agwctl gateway provider list",
        "agwctl gateway credential list",
        "agwctl gateway model managed get",
        "agwctl gateway cliauth authenticators list",
    ):
        assert f"\n## {command}\n" in text
