"""The fake A2A agent (tests/fakes/a2a_agent.py) as a real process, and the official
``a2a-sdk`` client pointed at a gateway route.

    with run_a2a_agent(tmp, token="up-secret") as agent:
        agent.url               # http://127.0.0.1:P (its card at /.well-known/agent-card.json)
        agent.requests()        # every HTTP request it got: {"method", "path", "headers"}

    async with sdk_client(route_url, "JSONRPC", "1.0", key="vk-...") as client:
        async for event in client.send_message(...): ...
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from a2a.client import Client, ClientConfig, ClientFactory
from a2a.client.card_resolver import A2ACardResolver
from a2a.types.a2a_pb2 import Message, Part, Role, SendMessageRequest

SCRIPT = Path(__file__).resolve().parent.parent / "fakes" / "a2a_agent.py"
START_TIMEOUT_S = 20.0
CALL_TIMEOUT_S = 20.0


@dataclass
class A2aAgent:
    proc: subprocess.Popen[bytes]
    log_path: Path
    stdout_path: Path
    stderr_path: Path
    port: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def card_url(self) -> str:
        return f"{self.url}/.well-known/agent-card.json"

    def requests(self) -> list[dict[str, Any]]:
        lines = self.log_path.read_text(encoding="utf-8").splitlines()
        return [json.loads(line) for line in lines if line.strip()]

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace") if self.stderr_path.exists() else ""

    def stop(self) -> None:
        """SIGTERM the group, SIGKILL it after 3 s."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(3)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(5)


@contextlib.contextmanager
def run_a2a_agent(tmp_path: Path, *, token: str | None = None) -> Iterator[A2aAgent]:
    """The fake agent on an ephemeral port (``token``: the bearer it requires), stopped on
    exit."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    n = 0
    while (tmp_path / f"a2a-agent-{n}.log").exists() and n < 1000:
        n += 1
    stem = tmp_path / f"a2a-agent-{n}"
    log_path = stem.with_suffix(".log")
    log_path.touch()
    cmd = [sys.executable, str(SCRIPT), "--port", "0", "--log", str(log_path)]
    if token is not None:
        cmd += ["--require-token", token]
    out_path, err_path = stem.with_suffix(".stdout"), stem.with_suffix(".stderr")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        proc = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=err, env=env, start_new_session=True
        )
    agent = A2aAgent(proc, log_path, out_path, err_path)
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not agent.port:
            for line in out_path.read_text(errors="replace").splitlines():
                if line.startswith("READY "):
                    agent.port = int(line.split()[1])
            if proc.poll() is not None:
                raise RuntimeError(f"fake a2a agent exited: {agent.stderr()[-2000:]}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"fake a2a agent not ready: {agent.stderr()[-2000:]}")
            time.sleep(0.02)
        yield agent
    finally:
        agent.stop()


@contextlib.asynccontextmanager
async def sdk_client(
    route_url: str,
    binding: str,
    version: str,
    *,
    key: str | None = None,
    streaming: bool = True,
) -> AsyncIterator[Client]:
    """The SDK's client for the route's card, held to the one interface of ``binding`` and
    ``version`` (the card offers several; the SDK picks by the card's order otherwise)."""
    headers = {"authorization": f"Bearer {key}"} if key else {}
    async with httpx.AsyncClient(headers=headers, timeout=CALL_TIMEOUT_S) as http:
        card = await A2ACardResolver(http, route_url).get_agent_card()
        chosen = [
            i
            for i in card.supported_interfaces
            if i.protocol_binding == binding and i.protocol_version == version
        ]
        assert chosen, f"the card offers no {binding} {version} interface"
        del card.supported_interfaces[:]
        card.supported_interfaces.extend(chosen)
        config = ClientConfig(
            httpx_client=http, streaming=streaming, supported_protocol_bindings=[binding]
        )
        client = ClientFactory(config).create(card)
        try:
            yield client
        finally:
            await client.close()


def message(text: str, *, context_id: str = "", task_id: str = "") -> SendMessageRequest:
    """A user message of one text part."""
    msg = Message(
        message_id=f"m-{time.monotonic_ns()}",
        role=Role.ROLE_USER,
        parts=[Part(text=text)],
        context_id=context_id,
        task_id=task_id,
    )
    return SendMessageRequest(message=msg)
