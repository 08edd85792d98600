"""agw.acp.connection: the ACP client over stdio, against the fake SDK agent as a real process."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest

from agw.acp.agent_requests import normalize_permission
from agw.acp.connection import AcpConnection, AcpError, AgentExited, AgentRpcError
from agw.procgroup import LINE_LIMIT
from agw.types import JsonObj
from tests.support.acp import FakeAgentHandle, group_gone, group_members

T = TypeVar("T")
LIMIT_S = 60.0


def run(work: Callable[[], Awaitable[T]]) -> T:
    async def bounded() -> T:
        async with asyncio.timeout(LIMIT_S):
            return await work()

    return asyncio.run(bounded())


class Turn:
    """A connection with a session, collecting the session's updates."""

    def __init__(self, conn: AcpConnection, session_id: str) -> None:
        self.conn = conn
        self.session_id = session_id
        self.updates: list[JsonObj] = []
        conn.subscribe(self.on_update)

    async def on_update(self, params: JsonObj) -> None:
        assert params["sessionId"] == self.session_id
        self.updates.append(params["update"])

    async def prompt(self, text: str) -> Any:
        self.updates.clear()
        return await self.conn.request(
            "session/prompt",
            {"sessionId": self.session_id, "prompt": [{"type": "text", "text": text}]},
        )

    def kinds(self) -> list[str]:
        return [u["sessionUpdate"] for u in self.updates]

    def text(self) -> str:
        return "".join(
            u["content"]["text"]
            for u in self.updates
            if u["sessionUpdate"] == "agent_message_chunk"
        )


async def open_agent(
    fake: FakeAgentHandle,
    *flags: str,
    fs_access: str = "none",
    roots: tuple[str, ...] = (),
) -> AcpConnection:
    conn = await AcpConnection.spawn(
        fake.argv(*flags),
        cwd=str(fake.workdir),
        env=dict(os.environ),
        label="fake",
        fs_access=fs_access,
        allowed_roots=roots or (str(fake.workdir),),
    )
    await conn.initialize(timeout=20)
    return conn


async def open_turn(fake: FakeAgentHandle, *flags: str, **kw: Any) -> Turn:
    conn = await open_agent(fake, *flags, **kw)
    result = await conn.request("session/new", {"cwd": str(fake.workdir), "mcpServers": []})
    return Turn(conn, result["sessionId"])


def test_handshake_prompt_updates_and_close(fake_agent: FakeAgentHandle) -> None:
    async def main() -> None:
        turn = await open_turn(fake_agent)
        conn = turn.conn
        try:
            assert conn.alive and conn.pid is not None
            assert conn.init_result["protocolVersion"] == 1
            assert conn.init_result["agentInfo"]["name"] == "fake-acp-agent"
            assert conn.agent_capabilities["loadSession"] is True
            assert conn.agent_capabilities["mcpCapabilities"]["http"] is True
            result = await turn.prompt("hello there")
            assert result == {"stopReason": "end_turn"}
            assert turn.kinds() == ["agent_message_chunk"] * 3
            assert turn.text() == "echo: hello there "
            # the client capabilities the fake saw: no fs, no terminal
            await turn.prompt("think deeply")
            assert turn.kinds()[0] == "agent_thought_chunk"
            assert turn.updates[0]["content"]["text"] == "deeply"
            result = await turn.prompt("usage")
            assert result["usage"] == {"totalTokens": 10, "inputTokens": 7, "outputTokens": 3}
            assert turn.kinds()[0] == "usage_update"
        finally:
            await conn.close()
        assert not conn.alive
        await group_gone(conn.pid or 0)
        await conn.close()  # idempotent
        with pytest.raises(AcpError, match="closed"):
            await turn.prompt("again")

    run(main)


def test_unsubscribe_stops_updates(fake_agent: FakeAgentHandle) -> None:
    async def main() -> None:
        turn = await open_turn(fake_agent)
        seen: list[JsonObj] = []

        async def listener(params: JsonObj) -> None:
            seen.append(params)

        try:
            unsubscribe = turn.conn.subscribe(listener)
            await turn.prompt("one")
            assert len(seen) == 2
            unsubscribe()
            unsubscribe()  # twice is fine
            await turn.prompt("two")
            assert len(seen) == 2 and turn.text() == "echo: two "
        finally:
            await turn.conn.close()

    run(main)


def test_unserved_client_methods_get_method_not_found(fake_agent: FakeAgentHandle) -> None:
    async def main() -> None:
        turn = await open_turn(fake_agent)
        try:
            await turn.prompt("term")
            assert turn.text().startswith("terminal error: -32601 ")
            await turn.prompt(f"fsread {fake_agent.workdir}/x.txt")  # fs_access none
            assert turn.text().startswith("fs error: -32601 ")
            await turn.prompt(f"fswrite {fake_agent.workdir}/x.txt hi")
            assert turn.text().startswith("fs error: -32601 ")
            assert not (fake_agent.workdir / "x.txt").exists()
        finally:
            await turn.conn.close()

    run(main)


def test_permission_outcomes_are_fail_closed(fake_agent: FakeAgentHandle) -> None:
    async def main() -> None:
        turn = await open_turn(fake_agent)
        conn = turn.conn
        asked: list[JsonObj] = []
        try:
            await turn.prompt("tool")  # no handler: deny
            assert turn.text() == 'permission={"outcome":"cancelled"}'
            assert turn.kinds() == ["tool_call", "tool_call_update", "agent_message_chunk"]
            assert turn.updates[1]["status"] == "failed"

            async def allow(params: JsonObj) -> JsonObj:
                asked.append(params)
                return {"outcome": {"outcome": "selected", "optionId": "ok"}}

            conn.permission_handler = allow
            await turn.prompt("tool")
            assert turn.text() == 'permission={"optionId":"ok","outcome":"selected"}'
            assert turn.updates[1]["status"] == "completed"
            assert asked[0]["sessionId"] == turn.session_id
            assert [o["optionId"] for o in asked[0]["options"]] == ["ok", "no"]
            assert asked[0]["toolCall"]["toolCallId"] == "t1"

            async def bogus(params: JsonObj) -> JsonObj:
                return {"outcome": {"outcome": "selected", "optionId": "not-offered"}}

            conn.permission_handler = bogus
            await turn.prompt("tool")
            assert turn.text() == 'permission={"outcome":"cancelled"}'

            async def broken(params: JsonObj) -> JsonObj:
                raise RuntimeError("boom")

            conn.permission_handler = broken
            await turn.prompt("tool")
            assert turn.text() == 'permission={"outcome":"cancelled"}'

            async def slow_reject(params: JsonObj) -> JsonObj:
                await asyncio.sleep(0.2)  # answered off the read loop: updates still flow
                return {"outcome": {"outcome": "selected", "optionId": "no"}}

            conn.permission_handler = slow_reject
            await turn.prompt("tool")
            assert turn.text() == 'permission={"optionId":"no","outcome":"selected"}'
        finally:
            await conn.close()

    run(main)


def test_normalize_permission() -> None:
    params = {"options": [{"optionId": "a"}, {"optionId": "b"}]}
    cancelled = {"outcome": {"outcome": "cancelled"}}
    assert normalize_permission({"outcome": {"outcome": "selected", "optionId": "b"}}, params) == {
        "outcome": {"outcome": "selected", "optionId": "b"}
    }
    for answer in (
        None,
        {},
        {"outcome": "selected"},
        {"outcome": {"outcome": "selected"}},
        {"outcome": {"outcome": "selected", "optionId": "c"}},
        {"outcome": {"outcome": "allowed", "optionId": "a"}},
        {"outcome": {"outcome": "cancelled", "optionId": "a"}},
    ):
        assert normalize_permission(answer, params) == cancelled
    assert normalize_permission({"outcome": {"outcome": "selected", "optionId": "a"}}, {}) == (
        cancelled
    )


def test_fs_read_and_write_confined_to_roots(fake_agent: FakeAgentHandle, tmp_path: Path) -> None:
    work = fake_agent.workdir
    (work / "notes.txt").write_text("one\ntwo\nthree\n")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("secret")
    (work / "escape").symlink_to(outside)

    async def main() -> None:
        turn = await open_turn(fake_agent, fs_access="read")
        try:
            await turn.prompt(f"fsread {work}/notes.txt")
            assert turn.text() == "one\ntwo\nthree\n"
            await turn.prompt(f"fsread {outside}/secret.txt")
            assert turn.text().startswith("fs error: -32602 ")
            await turn.prompt(f"fsread {work}/escape/secret.txt")  # a symlink out of the root
            assert turn.text().startswith("fs error: -32602 ")
            await turn.prompt(f"fsread {work}/missing.txt")
            assert turn.text().startswith("fs error: -32002 ")
            await turn.prompt("fsread relative.txt")
            assert turn.text().startswith("fs error: -32602 ")
            await turn.prompt(f"fswrite {work}/new.txt hello")  # read only
            assert turn.text().startswith("fs error: -32601 ")
        finally:
            await turn.conn.close()
        assert not (work / "new.txt").exists()

        turn = await open_turn(fake_agent, fs_access="read_write")
        try:
            await turn.prompt(f"fswrite {work}/new.txt hello world")
            assert turn.text() == "written"
            assert (work / "new.txt").read_text() == "hello world"
            await turn.prompt(f"fswrite {work}/escape/planted.txt x")
            assert turn.text().startswith("fs error: -32602 ")
        finally:
            await turn.conn.close()
        assert not (outside / "planted.txt").exists()

    run(main)


def test_fs_capabilities_follow_fs_access(fake_agent: FakeAgentHandle) -> None:
    async def main() -> None:
        for mode, read, write in (
            ("none", False, False),
            ("read", True, False),
            ("read_write", True, True),
        ):
            conn = await AcpConnection.spawn(
                fake_agent.argv(), cwd=str(fake_agent.workdir), env=dict(os.environ), fs_access=mode
            )
            try:
                caps = conn.client_capabilities()
                assert caps == {
                    "fs": {"readTextFile": read, "writeTextFile": write},
                    "terminal": False,
                }
            finally:
                await conn.close()
        with pytest.raises(ValueError):
            AcpConnection(None, fs_access="all")  # type: ignore[arg-type]

    run(main)


def test_crash_mid_turn_fails_the_request_with_stderr_and_kills_the_group(
    fake_agent: FakeAgentHandle,
) -> None:
    async def main() -> None:
        turn = await open_turn(fake_agent, "--spawn-child")
        conn = turn.conn
        pgid = conn.pid or 0
        try:
            assert len(group_members(pgid)) == 2  # the agent and its child
            with pytest.raises(AgentExited) as info:
                await turn.prompt("crash")
            assert info.value.message.startswith("acp process exited: 3: ")
            assert "fake agent: crash requested" in info.value.message
            assert info.value.code == 3
            assert turn.text() == "crashing "  # the chunk before the crash arrived
            assert not conn.alive and conn.exit_code == 3
            await group_gone(pgid)  # the child did not survive its leader
            with pytest.raises(AgentExited, match="acp process exited: 3"):
                await turn.prompt("again")
        finally:
            await conn.close()

    run(main)


def test_exit_on_start_reports_code_and_stderr(fake_agent: FakeAgentHandle) -> None:
    async def main() -> None:
        conn = await AcpConnection.spawn(
            fake_agent.argv("--exit-on-start", "5"), cwd=str(fake_agent.workdir), env=os.environ
        )
        try:
            with pytest.raises(AgentExited) as info:
                await conn.initialize(timeout=20)
            assert info.value.message == "acp process exited: 5: fake agent: exit on start"
        finally:
            await conn.close()

    run(main)


def test_spawn_failure_is_an_acp_error(tmp_path: Path) -> None:
    async def main() -> None:
        with pytest.raises(AcpError, match="could not start"):
            await AcpConnection.spawn([str(tmp_path / "nope")], cwd=str(tmp_path), env={})

    run(main)


def test_request_timeout_and_close_of_a_hung_agent(fake_agent: FakeAgentHandle) -> None:
    async def main() -> None:
        conn = await AcpConnection.spawn(
            fake_agent.argv("--hang-initialize", "--spawn-child"),
            cwd=str(fake_agent.workdir),
            env=os.environ,
        )
        pgid = conn.pid or 0
        try:
            with pytest.raises(AcpError, match=r"acp initialize to acp timed out after 0\.5 s"):
                await conn.initialize(timeout=0.5)
            assert conn.alive  # a timeout alone does not end the agent
        finally:
            await conn.close()
        await group_gone(pgid)

    run(main)


def test_close_while_a_request_is_in_flight(fake_agent: FakeAgentHandle) -> None:
    async def main() -> None:
        turn = await open_turn(fake_agent)
        pending = asyncio.create_task(turn.prompt("slow 20 0.5"))
        await asyncio.sleep(0.3)
        await asyncio.gather(turn.conn.close(), turn.conn.close())
        with pytest.raises(AcpError):
            await pending
        await group_gone(turn.conn.pid or 0)

    run(main)


def test_session_cancel_notification(fake_agent: FakeAgentHandle) -> None:
    async def main() -> None:
        turn = await open_turn(fake_agent)
        try:
            pending = asyncio.create_task(turn.prompt("slow 40 0.1"))
            for _ in range(100):
                if turn.updates:
                    break
                await asyncio.sleep(0.02)
            await turn.conn.notify("session/cancel", {"sessionId": turn.session_id})
            result = await pending
            assert result["stopReason"] == "cancelled"
            assert 1 <= len(turn.updates) < 40
        finally:
            await turn.conn.close()

    run(main)


def test_agent_errors_are_rpc_errors(fake_agent: FakeAgentHandle) -> None:
    async def main() -> None:
        turn = await open_turn(fake_agent)
        try:
            with pytest.raises(AgentRpcError) as info:
                await turn.conn.request(
                    "session/set_config_option",
                    {"sessionId": turn.session_id, "configId": "nope", "value": "x"},
                )
            assert info.value.code == -32602
            assert "unknown config option nope" in info.value.message
            with pytest.raises(AgentRpcError) as info:
                await turn.conn.request("no/such/method", {})
            assert info.value.code == -32601
            ok = await turn.conn.request(
                "session/set_config_option",
                {"sessionId": turn.session_id, "configId": "model", "value": "fake-large"},
            )
            assert any(o["currentValue"] == "fake-large" for o in ok["configOptions"])
        finally:
            await turn.conn.close()

    run(main)


def test_frames_up_to_16_mib(fake_agent: FakeAgentHandle) -> None:
    async def main() -> None:
        turn = await open_turn(fake_agent)
        try:
            size = LINE_LIMIT - 4096  # the whole frame (JSON around the text) stays in 16 MiB
            await turn.prompt(f"big {size}")
            assert len(turn.text()) == size
            turn.updates.clear()
            with pytest.raises(AgentExited, match="frame over 16 MiB"):
                await turn.prompt(f"big {LINE_LIMIT + 1024}")
            await group_gone(turn.conn.pid or 0)
        finally:
            await turn.conn.close()

    run(main)


def test_stdout_noise_is_skipped(tmp_path: Path) -> None:
    script = tmp_path / "noisy.py"
    script.write_text(
        "import sys, json\n"
        "print('not json', flush=True)\n"
        "line = sys.stdin.readline()\n"
        "msg = json.loads(line)\n"
        "print('[]', flush=True)\n"
        "print(json.dumps({'jsonrpc': '2.0', 'id': msg['id'], 'result': "
        "{'protocolVersion': 1, 'agentCapabilities': {}}}), flush=True)\n"
        "sys.stdin.readline()\n"
    )

    async def main() -> None:
        conn = await AcpConnection.spawn(
            [sys.executable, str(script)], cwd=str(tmp_path), env=os.environ
        )
        try:
            result = await conn.initialize(timeout=20)
            assert result["protocolVersion"] == 1 and conn.agent_capabilities == {}
        finally:
            await conn.close()

    run(main)


def test_other_protocol_version_is_refused(tmp_path: Path) -> None:
    script = tmp_path / "v2.py"
    script.write_text(
        "import sys, json\n"
        "msg = json.loads(sys.stdin.readline())\n"
        "print(json.dumps({'jsonrpc': '2.0', 'id': msg['id'], 'result': "
        "{'protocolVersion': 2}}), flush=True)\n"
        "sys.stdin.readline()\n"
    )

    async def main() -> None:
        conn = await AcpConnection.spawn(
            [sys.executable, str(script)], cwd=str(tmp_path), env=os.environ
        )
        try:
            with pytest.raises(AcpError, match="protocol version 2"):
                await conn.initialize(timeout=20)
        finally:
            await conn.close()

    run(main)


def test_sigterm_ignoring_agent_is_killed(tmp_path: Path) -> None:
    script = tmp_path / "stubborn.py"
    script.write_text(
        "import signal, time\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "print('ready', flush=True)\n"
        "while True:\n"
        "    time.sleep(1)\n"
    )

    async def main() -> None:
        conn = await AcpConnection.spawn(
            [sys.executable, str(script)], cwd=str(tmp_path), env=os.environ
        )
        pgid = conn.pid or 0
        await asyncio.sleep(0.3)
        assert conn.alive
        loop = asyncio.get_running_loop()
        started = loop.time()
        await conn.close()
        assert 3.5 < loop.time() - started < 8  # stdin closed 2 s, SIGTERM 2 s, SIGKILL
        await group_gone(pgid)

    run(main)


RAW_AGENT = """
import json, sys

def send(msg):
    print(json.dumps(msg), flush=True)

def read():
    return json.loads(sys.stdin.readline())

def report(what):
    send({"jsonrpc": "2.0", "method": "session/update",
          "params": {"sessionId": "s", "update": {"sessionUpdate": "report", "data": what}}})

init = read()
send({"jsonrpc": "2.0", "id": init["id"], "result": {"protocolVersion": 1}})
new = read()  # our session/new: before answering it, ask with the very same id
send({"jsonrpc": "2.0", "id": new["id"], "method": "terminal/create",
      "params": {"sessionId": "s", "command": "ls"}})
report(read())
send({"jsonrpc": "2.0", "id": new["id"], "method": "session/request_permission",
      "params": {"sessionId": "s", "toolCall": {"toolCallId": "t"},
                 "options": [{"optionId": "ok", "name": "Allow", "kind": "allow_once"}]}})
send({"jsonrpc": "2.0", "method": "$/cancel_request", "params": {"requestId": new["id"]}})
report(read())
send({"jsonrpc": "2.0", "id": new["id"], "result": {"sessionId": "s"}})
sys.stdin.readline()
"""


def test_id_spaces_per_direction_and_cancel_request(tmp_path: Path) -> None:
    script = tmp_path / "raw_agent.py"
    script.write_text(RAW_AGENT)

    async def main() -> None:
        conn = await AcpConnection.spawn(
            [sys.executable, str(script)], cwd=str(tmp_path), env=os.environ
        )
        reports: list[Any] = []

        async def on_update(params: JsonObj) -> None:
            reports.append(params["update"]["data"])

        async def never(params: JsonObj) -> JsonObj:
            await asyncio.Event().wait()
            raise AssertionError("not reached")

        conn.subscribe(on_update)
        conn.permission_handler = never
        try:
            await conn.initialize(timeout=20)
            result = await conn.request("session/new", {"cwd": str(tmp_path), "mcpServers": []})
            assert result == {"sessionId": "s"}  # not confused with the agent's own id 2
            assert reports == [
                {
                    "jsonrpc": "2.0",
                    "id": 2,
                    "error": {"code": -32601, "message": "method not found: terminal/create"},
                },
                {
                    "jsonrpc": "2.0",
                    "id": 2,
                    "error": {"code": -32800, "message": "request cancelled"},
                },
            ]
        finally:
            await conn.close()

    run(main)
