"""agwctl gateway acp-service sessions|transcript and acp-runtime, against a real agwd whose ACP
services run the fake ACP agent (``tests/fakes/acp_agent.py``, built on the official ACP SDK).

Turns go through the data plane (``POST <route>/turn``, SSE) so that there are pooled agents,
stored sessions and pending permissions for the commands to show.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.acp import FakeAgentHandle, wait_group_gone
from tests.support.agwctl import Agwctl, assert_one_line_error

REPO = Path(__file__).resolve().parents[2]


def bundle_json(fake: FakeAgentHandle) -> str:
    roots = [str(fake.workdir.parent)]
    services = [
        fake.service_config("fake", allowed_roots=roots),
        fake.service_config("paged", "--page-size", "1", allowed_roots=roots),
        fake.service_config("asks", allowed_roots=roots, permission_mode="interactive"),
    ]
    routes = [
        {"id": sid, "service_id": sid, "match_policy": {"path_prefix": f"/{sid}"}}
        for sid in ("fake", "asks")
    ]
    bundle = {
        "apiVersion": "gateway.agw/v1alpha1",
        "kind": "GatewayBundle",
        "acpServices": services,
        "acpRoutes": routes,
    }
    return json.dumps(bundle, indent=1)  # JSON is YAML


@pytest.fixture(scope="module")
def fake(tmp_path_factory: pytest.TempPathFactory) -> FakeAgentHandle:
    base = tmp_path_factory.mktemp("acp")
    for sub in ("state", "work/a", "work/b"):
        (base / sub).mkdir(parents=True)
    return FakeAgentHandle(state=base / "state", workdir=base / "work" / "a")


@pytest.fixture(scope="module")
def ctl(
    module_agwd: Any, fake: FakeAgentHandle, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Agwctl]:
    cwd = tmp_path_factory.mktemp("cwd")
    path = cwd / "acp.yaml"
    path.write_text(bundle_json(fake))
    ctl = Agwctl(module_agwd.env, cwd)
    ctl.ok("gateway", "apply", "-f", str(path))
    yield ctl


class Turn:
    """One ``POST <route>/turn``, its SSE events read one by one (each read bounded)."""

    def __init__(self, url: str, body: dict[str, Any]) -> None:
        self.client = httpx.Client(timeout=30, trust_env=False)
        self._stream = self.client.stream("POST", url, json=body)
        response = self._stream.__enter__()
        assert response.status_code == 200
        self._lines = response.iter_lines()
        self.events: list[tuple[str, dict[str, Any]]] = []

    def next(self) -> tuple[str, dict[str, Any]] | None:
        name = ""
        for line in self._lines:
            if line.startswith("event:"):
                name = line[6:].strip()
            elif line.startswith("data:") and name:
                self.events.append((name, json.loads(line[5:])))
                return self.events[-1]
        return None

    def until(self, name: str) -> dict[str, Any]:
        for _ in range(500):
            event = self.next()
            if event is None:
                break
            if event[0] == name:
                return event[1]
        raise AssertionError(f"no {name!r} event in {self.events}")

    def rest(self) -> list[tuple[str, dict[str, Any]]]:
        for _ in range(500):
            if self.next() is None:
                return self.events
        raise AssertionError(f"the turn did not end: {self.events}")

    def text(self) -> str:
        return "".join(p.get("text", "") for n, p in self.events if n == "delta")

    def close(self) -> None:
        with contextlib.suppress(httpx.HTTPError):
            self._stream.__exit__(None, None, None)
        self.client.close()


def run_turn(agwd: Any, route: str, text: str, thread: str, **extra: Any) -> Turn:
    turn = Turn(f"{agwd.data_url}/{route}/turn", {"thread_id": thread, "input": text, **extra})
    try:
        turn.rest()
    finally:
        turn.close()
    assert turn.events[0][0] == "session" and turn.events[-1][0] == "done", turn.events
    return turn


def rows(text: str) -> list[list[str]]:
    return [line.split() for line in text.splitlines()]


def test_sessions_table_json_and_cwd(ctl: Agwctl, module_agwd: Any, fake: FakeAgentHandle) -> None:
    first = run_turn(module_agwd, "fake", "hello", "t-sessions").events[0][1]["session_id"]
    other_cwd = str(fake.workdir.parent / "b")
    other = run_turn(module_agwd, "fake", "elsewhere", "t-b", cwd=other_cwd).events[0][1]
    out = ctl.ok("gateway", "acp-service", "sessions", "fake")
    table = rows(out)
    assert table[0] == ["SESSION-ID", "CWD", "TITLE", "UPDATED-AT"]
    mine = [r for r in table[1:] if r[0] == first]
    assert mine and mine[0][1:3] == [str(fake.workdir), "hello"], out
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT[\d:.]+Z", mine[0][3]), mine
    assert all(r[1] == str(fake.workdir) for r in table[1:])
    assert not any(line != line.rstrip() for line in out.splitlines())

    data = json.loads(ctl.ok("gateway", "acp-service", "sessions", "fake", "-o", "json"))
    assert first in {s["session_id"] for s in data["sessions"]}
    in_b = json.loads(
        ctl.ok("gateway", "acp-service", "sessions", "fake", "--cwd", other_cwd, "-o", "json")
    )
    assert [s["session_id"] for s in in_b["sessions"]] == [other["session_id"]]


def test_sessions_pages_with_cursor(ctl: Agwctl, module_agwd: Any) -> None:
    # the paged service has no route: its sessions come from the other services' turns
    for i in range(3):
        run_turn(module_agwd, "fake", f"page {i}", f"t-page-{i}")
    proc = ctl("gateway", "acp-service", "sessions", "paged")
    assert proc.returncode == 0, proc.stderr
    match = re.fullmatch(r"more: --cursor (\S+)\n", proc.stderr)
    assert match, proc.stderr
    page = json.loads(
        ctl.ok(
            "gateway", "acp-service", "sessions", "paged", "--cursor", match.group(1), "-o", "json"
        )
    )
    assert len(page["sessions"]) <= 1 and "next_cursor" in page


def test_transcript_prints_the_messages(ctl: Agwctl, module_agwd: Any) -> None:
    session_id = run_turn(module_agwd, "fake", "think hard", "t-transcript").events[0][1][
        "session_id"
    ]
    out = ctl.ok("gateway", "acp-service", "transcript", "fake", session_id)
    assert out.startswith("{\n  ")
    assert json.loads(out) == {
        "session_id": session_id,
        "messages": [
            {"role": "user", "text": "think hard"},
            {"role": "reasoning", "text": "hard"},
            {"role": "assistant", "text": "echo: think hard"},
        ],
    }


def test_service_errors_are_one_line(ctl: Agwctl, fake: FakeAgentHandle) -> None:
    assert_one_line_error(
        ctl("gateway", "acp-service", "sessions", "nope"),
        "GET /admin/acp/services/nope/sessions: 404 acp service not found",
    )
    proc = ctl("gateway", "acp-service", "sessions", "fake", "--cwd", "/")
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr.startswith("agwctl: GET /admin/acp/services/fake/sessions: 400 cwd")
    assert proc.stderr.count("\n") == 1


def test_runtime_get_inflight_and_close_thread(ctl: Agwctl, module_agwd: Any) -> None:
    session_id = run_turn(module_agwd, "fake", "hello", "t-runtime").events[0][1]["session_id"]
    out = ctl.ok("gateway", "acp-runtime", "get")
    blocks = out.split("\n\n")
    assert len(blocks) == 3, out
    assert rows(blocks[0])[0] == ["SCOPE"]
    assert rows(blocks[1])[0] == ["SCOPE", "SESSION-ID", "ALIVE", "ACTIVE", "LAST-USED"]
    assert rows(blocks[2])[0] == ["REQUEST-ID", "SERVICE-ID", "SESSION-ID", "CREATED-AT"]
    mine = [r for r in rows(blocks[1])[1:] if r[1] == session_id]
    assert len(mine) == 1, out
    assert mine[0][0].startswith("fake|") and "|t-runtime|" in mine[0][0]
    assert mine[0][2:4] == ["yes", "no"]

    view = json.loads(ctl.ok("gateway", "acp-runtime", "get", "-o", "json"))
    assert {"in_flight", "instances", "pending_permissions"} <= set(view)
    [instance] = [i for i in view["instances"] if i["session_id"] == session_id]
    assert rows(ctl.ok("gateway", "acp-runtime", "inflight"))[0] == ["SCOPE"]
    assert json.loads(ctl.ok("gateway", "acp-runtime", "inflight", "-o", "json")) == {
        "items": view["in_flight"]
    }

    closed = ctl.ok("gateway", "acp-runtime", "close-thread", "fake", "t-runtime")
    assert json.loads(closed) == {"closed": 1}
    wait_group_gone(instance["pid"])
    assert json.loads(ctl.ok("gateway", "acp-runtime", "close-thread", "fake", "t-runtime")) == {
        "closed": 0
    }
    assert_one_line_error(
        ctl("gateway", "acp-runtime", "close-thread", "nope", "t1"),
        "DELETE /admin/acp/runtime/threads/nope/t1: 404 acp service not found",
    )


def test_permission_round_trip(ctl: Agwctl, module_agwd: Any) -> None:
    turn = Turn(f"{module_agwd.data_url}/asks/turn", {"thread_id": "t-perm", "input": "tool"})
    try:
        asked = turn.until("permission")
        request_id = asked["request_id"]
        table = rows(ctl.ok("gateway", "acp-runtime", "permissions"))
        assert table[0] == ["REQUEST-ID", "SERVICE-ID", "SESSION-ID", "CREATED-AT"]
        assert [request_id, "asks", asked["session_id"]] in [r[:3] for r in table[1:]]
        listed = json.loads(ctl.ok("gateway", "acp-runtime", "permissions", "-o", "json"))
        [entry] = [p for p in listed["items"] if p["request_id"] == request_id]
        assert [o["optionId"] for o in entry["data"]["options"]] == ["ok", "no"]

        out = ctl.ok(
            "gateway",
            "acp-runtime",
            "resolve-permission",
            request_id,
            "--outcome",
            "selected",
            "--option-id",
            "ok",
        )
        assert json.loads(out) == {"status": "resolved"}
        turn.rest()
    finally:
        turn.close()
    assert turn.events[-1] == ("done", {"stop_reason": "end_turn"}), turn.events
    assert 'permission={"optionId":"ok","outcome":"selected"}' in turn.text()
    assert_one_line_error(
        ctl("gateway", "acp-runtime", "resolve-permission", request_id, "--outcome", "cancelled"),
        f"POST /admin/acp/runtime/permissions/{request_id}: 404 "
        "permission request not found (already answered or expired)",
    )


def test_resolve_permission_usage_errors(ctl: Agwctl) -> None:
    assert_one_line_error(
        ctl("gateway", "acp-runtime", "resolve-permission", "perm-1", "--outcome", "selected"),
        "--option-id is required with --outcome selected",
    )
    proc = ctl("gateway", "acp-runtime", "resolve-permission", "perm-1", "--outcome", "maybe")
    assert proc.returncode == 2 and "maybe" in proc.stderr
    proc = ctl("gateway", "acp-runtime", "resolve-permission", "perm-1")
    assert proc.returncode == 2 and "--outcome" in proc.stderr


def test_quickstart_bundle_is_valid(ctl: Agwctl) -> None:
    text = (REPO / "docs" / "quickstart-acp.md").read_text()
    blocks = re.findall(r"```yaml\n(.*?)```", text, re.S)
    assert blocks, "docs/quickstart-acp.md has no yaml block"
    path = ctl.cwd / "quickstart-acp.yaml"
    path.write_text(blocks[0])
    assert ctl.ok("gateway", "validate", "-f", str(path)) == f"gateway bundle is valid: {path}\n"
    data = json.loads(ctl.ok("gateway", "validate", "-f", str(path), "-o", "json"))
    assert data["counts"]["acp_services"] >= 1 and data["counts"]["acp_routes"] >= 1
