"""The fake ACP agent as a handle (tests/fakes/acp_agent.py) and process-group helpers."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agw.config.acp import AcpService

AGENT_SCRIPT = Path(__file__).resolve().parent.parent / "fakes" / "acp_agent.py"


@dataclass
class FakeAgentHandle:
    state: Path  # where the fake keeps its sessions
    workdir: Path  # the default cwd of services built here

    @property
    def command(self) -> str:
        return sys.executable

    def args(self, *flags: str) -> list[str]:
        return [str(AGENT_SCRIPT), "--state", str(self.state), *flags]

    def argv(self, *flags: str) -> list[str]:
        return [self.command, *self.args(*flags)]

    def service_config(
        self, service_id: str = "fake", *flags: str, **overrides: Any
    ) -> dict[str, Any]:
        """A bundle ``acpServices`` entry running the fake (``overrides`` win)."""
        out: dict[str, Any] = {
            "id": service_id,
            "name": service_id,
            "agent_type": "command",
            "command": self.command,
            "args": self.args(*flags),
            "cwd": str(self.workdir),
        }
        return out | overrides

    def service(self, service_id: str = "fake", *flags: str, **overrides: Any) -> AcpService:
        return AcpService.model_validate(self.service_config(service_id, *flags, **overrides))

    def pids(self) -> list[int]:
        """The pid of every process of the fake started with this state directory."""
        folder = self.state / "pids"
        return sorted(int(p.name) for p in folder.iterdir()) if folder.exists() else []

    def sessions(self) -> dict[str, dict[str, Any]]:
        out = {}
        for path in sorted(self.state.glob("*.json")):
            try:
                data = json.loads(path.read_text())
            except (OSError, ValueError):
                continue
            out[data["sessionId"]] = data
        return out


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes whose process group is ``pgid``."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError, IndexError):
            continue
        state, group = fields[0], int(fields[2])
        if group == pgid and state != "Z":
            found.append(int(entry))
    return found


def wait_group_gone(pgid: int, timeout: float = 10.0) -> None:
    """Wait until no live process is left in group ``pgid``; fail with the survivors."""
    deadline = time.monotonic() + timeout
    left = group_members(pgid)
    while left and time.monotonic() < deadline:
        time.sleep(0.05)
        left = group_members(pgid)
    assert not left, f"processes left in group {pgid}: {left}"


async def group_gone(pgid: int, timeout: float = 10.0) -> None:  # noqa: ASYNC109
    """:func:`wait_group_gone` for async tests (polls without blocking the loop)."""
    deadline = time.monotonic() + timeout
    left = group_members(pgid)
    while left and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
        left = group_members(pgid)
    assert not left, f"processes left in group {pgid}: {left}"
