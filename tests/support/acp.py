"""The fake ACP agent as a handle (tests/fakes/acp_agent.py) and process-group helpers."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from agw.config.acp import AcpService
from tests.support.agwd import Agwd, AgwdLauncher, usage_rows

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


WAIT_S = 10.0


HTTP_TIMEOUT = httpx.Timeout(30.0, connect=5.0)


@dataclass
class SseEvent:
    name: str
    data: dict[str, Any]


def read_events(response: httpx.Response) -> Iterator[SseEvent]:
    """The SSE events of a streaming response, as they arrive."""
    name, data = "", list[str]()
    for line in response.iter_lines():
        if line == "":
            if name or data:
                yield SseEvent(name or "message", json.loads("\n".join(data)) if data else {})
            name, data = "", []
        elif line.startswith("event:"):
            name = line[6:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].lstrip())


@dataclass
class TurnResult:
    status: int
    headers: httpx.Headers
    events: list[SseEvent]

    @property
    def names(self) -> list[str]:
        return [e.name for e in self.events]

    @property
    def text(self) -> str:
        return "".join(e.data.get("text", "") for e in self.events if e.name == "delta")

    @property
    def session_id(self) -> str:
        for e in self.events:
            if e.name == "session":
                return str(e.data["session_id"])
        raise AssertionError(f"no session event in {self.names}")

    def first(self, name: str) -> SseEvent:
        for e in self.events:
            if e.name == name:
                return e
        raise AssertionError(f"no {name} event in {self.names}")


@dataclass
class AcpGateway:
    agwd: Agwd
    agent: FakeAgentHandle

    def url(self, path: str) -> str:
        return self.agwd.data_url + path

    def client(self) -> httpx.Client:
        return httpx.Client(timeout=HTTP_TIMEOUT, trust_env=False)

    def turn(self, prefix: str, body: dict[str, Any] | bytes, **headers: str) -> TurnResult:
        """One whole turn (or its pre-stream refusal: ``events`` empty, JSON in ``.error``)."""
        with self.client() as client, self.open_turn(client, prefix, body, **headers) as r:
            if r.headers.get("content-type", "").startswith("text/event-stream"):
                return TurnResult(r.status_code, r.headers, list(read_events(r)))
            r.read()
            return TurnResult(r.status_code, r.headers, [SseEvent("http", r.json())])

    @contextlib.contextmanager
    def open_turn(
        self, client: httpx.Client, prefix: str, body: dict[str, Any] | bytes, **headers: str
    ) -> Iterator[httpx.Response]:
        content = body if isinstance(body, bytes) else json.dumps(body).encode()
        with client.stream(
            "POST",
            self.url(prefix + "/turn"),
            content=content,
            headers={"content-type": "application/json", **headers},
        ) as r:
            yield r

    def rows(
        self, where: str, args: tuple[Any, ...] = (), *, count: int = 1
    ) -> list[dict[str, Any]]:
        """``acp_usage_events`` rows matching ``where``, waiting (bounded) for ``count``."""
        return usage_rows(self.agwd.db_path, "acp_usage_events", where, count, args)

    def row(self, where: str, args: tuple[Any, ...] = ()) -> dict[str, Any]:
        rows = self.rows(where, args)
        assert len(rows) == 1, rows
        return rows[0]


def start_acp_gateway(
    factory: AgwdLauncher,
    tmp: Path,
    agent: FakeAgentHandle,
    services: list[dict[str, Any]],
    routes: list[dict[str, Any]],
    env: dict[str, str] | None = None,
) -> AcpGateway:
    """agwd with a static bundle of ``acpServices`` and ``acpRoutes`` (routes as ``{"prefix":
    ..., "service_id": ..., **extra}``)."""
    route_list = []
    for route in routes:
        extra = {k: v for k, v in route.items() if k != "prefix"}
        route_list.append({"match_policy": {"path_prefix": route["prefix"]}, **extra})
    bundle = {
        "apiVersion": "gateway.agw/v1alpha1",
        "kind": "GatewayBundle",
        "acpServices": services,
        "acpRoutes": route_list,
    }
    path = tmp / "bundle.yaml"
    path.write_text(json.dumps(bundle, indent=1))  # JSON is YAML
    return AcpGateway(factory.start(static=path, env=env), agent)


def make_agent(tmp: Path) -> FakeAgentHandle:
    state, work = tmp / "fake-acp-state", tmp / "work"
    state.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    return FakeAgentHandle(state=state, workdir=work)


def agent_pids(agent: FakeAgentHandle) -> list[int]:
    """Live fake agent processes of this handle (found by their ``--state`` argument)."""
    needle = str(agent.state).encode()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as fh:
                argv = fh.read().split(b"\0")
            with open(f"/proc/{entry}/stat") as fh:
                state = fh.read().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z" and needle in argv and any(a.endswith(b"acp_agent.py") for a in argv):
            found.append(int(entry))
    return sorted(found)


def wait_pids(agent: FakeAgentHandle, count: int, timeout: float = WAIT_S) -> list[int]:
    deadline = time.monotonic() + timeout
    pids = agent_pids(agent)
    while len(pids) != count and time.monotonic() < deadline:
        time.sleep(0.05)
        pids = agent_pids(agent)
    assert len(pids) == count, pids
    return pids


class SdkClient:
    """An ACP client (the official SDK's) that answers permission requests with ``ok``."""

    def __init__(self) -> None:
        self.updates: list[Any] = []
        self.asked: list[Any] = []

    async def session_update(self, session_id: str, update: Any, **kw: Any) -> None:
        self.updates.append(update)

    async def request_permission(
        self, options: Any, session_id: str, tool_call: Any, **kw: Any
    ) -> Any:
        from acp.schema import AllowedOutcome, RequestPermissionResponse

        self.asked.append((session_id, [o.option_id for o in options]))
        return RequestPermissionResponse(outcome=AllowedOutcome(outcome="selected", option_id="ok"))

    def text(self) -> str:
        out = ""
        for update in self.updates:
            if getattr(update, "session_update", "") == "agent_message_chunk":
                out += getattr(update.content, "text", "")
        return out
