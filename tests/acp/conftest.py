"""The fake ACP agent (``tests/fakes/acp_agent.py``, built on the official ACP SDK) for tests.

How to use (any test under tests/acp gets the fixture; elsewhere build :class:`FakeAgentHandle`
with a state directory yourself)::

    def test_x(fake_agent: FakeAgentHandle) -> None:
        fake_agent.command            # sys.executable
        fake_agent.args("--no-load")  # [".../fakes/acp_agent.py", "--state", DIR, "--no-load"]
        fake_agent.argv("--no-list")  # command + args, to spawn it yourself (e.g. an SDK client)
        fake_agent.workdir            # tmp_path/"work" (exists): the default service cwd
        fake_agent.service_config("fake", "--no-load", permission_mode="interactive")
            # a bundle ``acpServices`` entry: agent_type command, command, args, cwd, name;
            # keyword overrides win (e.g. max_instances=1, idle_ttl="1s", gateway_origin={...})
        fake_agent.service("fake", ...)  # the same as an AcpService
        fake_agent.sessions()         # the fake's stored sessions (JSON dicts, by session id)
        fake_agent.pids()             # the pid of every fake process started so far

The fake's prompt commands (``echo`` by default, ``think``, ``plan``, ``tool``, ``mcp``, ``env``,
``config``, ``llm``, ``crash``, ``slow N [S]``, ``usage``, ``meta``, ``tail``, ``fsread``,
``fswrite``, ``term``, ``big N``, ``flood N [SIZE]``, ``asks N``, ``stderr``) and flags
(``--no-load``, ``--no-list``, ``--no-http-mcp``, ``--page-size N``, ``--hang-initialize``,
``--exit-on-start CODE``, ``--spawn-child``) are listed in its module docstring. Sessions
persist in the handle's state directory, so a second process of the fake can ``session/load`` /
``session/list`` them.

No-orphan checks: ``fake_agent.pids()`` names every fake process started so far;
:func:`group_members` lists the live processes of a process group (every agent the gateway
spawns leads its own group, so ``pgid == pid``); :func:`wait_group_gone` waits (bounded) until
none is left and fails otherwise; ``await group_gone(pgid)`` is the same for async tests.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from agw.config.services import AcpService

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


@pytest.fixture
def fake_agent(tmp_path: Path) -> FakeAgentHandle:
    state = tmp_path / "fake-acp-state"
    work = tmp_path / "work"
    state.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    return FakeAgentHandle(state=state, workdir=work)


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
