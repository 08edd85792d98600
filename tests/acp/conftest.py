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
none is left and fails otherwise; ``await group_gone(pgid)`` is the same for async tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.acp import (
    FakeAgentHandle,
)


@pytest.fixture
def fake_agent(tmp_path: Path) -> FakeAgentHandle:
    state = tmp_path / "fake-acp-state"
    work = tmp_path / "work"
    state.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    return FakeAgentHandle(state=state, workdir=work)
