"""agw.acp.pool and agw.acp.runtime: the pool of agents (scopes, reuse, rebind, capacity,
reaping, closing, config swaps, process shapes and the single-origin injection), against the
fake SDK agent as real processes."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest

from agw.acp.connection import AcpError, AgentExited
from agw.acp.pool import BUSY, METADATA_KINDS, SCOPE_SEP, Instance, TurnRequest
from agw.acp.runtime import AcpRuntime, apply_overrides
from agw.config import families as f
from agw.config.acp import AcpService
from agw.config.loader import load_bundle_text
from agw.runtime.apply import plan
from agw.runtime.attribution import SessionDirectory
from agw.runtime.manager import ConfigManager
from agw.store.db import Database
from agw.types import JsonObj
from tests.fakes.run import start_fake_upstream
from tests.support.acp import FakeAgentHandle, group_gone, group_members

T = TypeVar("T")
LIMIT_S = 90.0


def run(work: Callable[[], Awaitable[T]]) -> T:
    async def bounded() -> T:
        async with asyncio.timeout(LIMIT_S):
            return await work()

    return asyncio.run(bounded())


class Outcome:
    def __init__(self, instance: Instance, result: Any, updates: list[JsonObj]) -> None:
        self.instance = instance
        self.result = result
        self.updates = updates

    @property
    def text(self) -> str:
        return "".join(
            u["content"]["text"]
            for u in self.updates
            if u["sessionUpdate"] == "agent_message_chunk"
        )

    def json(self) -> Any:
        return json.loads(self.text)


async def turn(
    runtime: AcpRuntime, service: AcpService, text: str, thread: str = "t1", **kw: Any
) -> Outcome:
    """One turn as the plane runs it: acquire, subscribe, prompt, release."""
    overrides = kw.pop("config_overrides", {})
    lease = await runtime.acquire(service, TurnRequest(thread_id=thread, input=text, **kw))
    async with lease:
        instance = lease.instance
        assert instance.active
        if overrides:
            await apply_overrides(instance, overrides)
        updates: list[JsonObj] = []

        async def collect(params: JsonObj) -> None:
            updates.append(params["update"])

        unsubscribe = instance.connection.subscribe(collect)
        try:
            result = await instance.connection.request(
                "session/prompt",
                {"sessionId": instance.session_id, "prompt": [{"type": "text", "text": text}]},
            )
        finally:
            unsubscribe()
    assert not instance.active
    return Outcome(instance, result, updates)


@contextlib.asynccontextmanager
async def pool(fake: FakeAgentHandle, **kw: Any) -> AsyncIterator[AcpRuntime]:
    """A runtime, closed at the end; then no process of the fake may be left in any group."""
    runtime = AcpRuntime(**kw)
    try:
        yield runtime
    finally:
        await runtime.close()
        for pid in fake.pids():
            await group_gone(pid)


async def wait_for(check: Callable[[], bool], timeout: float = 10.0) -> None:  # noqa: ASYNC109
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not check():
        assert loop.time() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


# ------------------------------------------------------------------------------------ scopes


def test_reuse_by_thread_and_new_instance_per_thread(fake_agent: FakeAgentHandle) -> None:
    service = fake_agent.service()

    async def main() -> None:
        async with pool(fake_agent) as runtime:
            first = await turn(runtime, service, "hello")
            assert first.text == "echo: hello "
            inst = first.instance
            assert inst.fresh and inst.alive and inst.session_id.startswith("sess-")
            assert inst.scope == SCOPE_SEP.join(
                ["fake", str(fake_agent.workdir), "t1", "", "", "", "anonymous"]
            )
            second = await turn(runtime, service, "again")
            assert second.instance is inst and not inst.fresh
            assert second.text == "echo: again "
            other = await turn(runtime, service, "other", thread="t2")
            assert other.instance is not inst and other.instance.pid != inst.pid
            assert other.instance.session_id != inst.session_id
            view = runtime.view()
            assert view["in_flight"] == []
            assert {i["thread_id"] for i in view["instances"]} == {"t1", "t2"}
            row = next(i for i in view["instances"] if i["thread_id"] == "t1")
            assert row["session_id"] == inst.session_id and row["pid"] == inst.pid
            assert row["alive"] is True and row["active"] is False
            assert row["last_used"].endswith("Z") and row["idle_ttl"] == 15 * 60 * 10**9
            assert set(row["metadata"]) == {"config_options"}

    run(main)


def test_one_turn_per_scope(fake_agent: FakeAgentHandle) -> None:
    service = fake_agent.service()

    async def main() -> None:
        async with pool(fake_agent) as runtime:
            lease = await runtime.acquire(service, TurnRequest(thread_id="t1", input="x"))
            async with lease:
                assert runtime.inflight() == [
                    {
                        "scope": lease.instance.scope,
                        "service_id": "fake",
                        "cwd": str(fake_agent.workdir),
                        "thread_id": "t1",
                        "session_id": "",
                        "model": "",
                        "route_id": "",
                        "principal": "anonymous",
                    }
                ]
                with pytest.raises(AcpError) as info:
                    await runtime.acquire(service, TurnRequest(thread_id="t1", input="y"))
                assert info.value.message == BUSY and info.value.status == 409
                other = await runtime.acquire(service, TurnRequest(thread_id="t2", input="y"))
                await other.release()
                await other.release()  # twice is fine
            assert runtime.inflight() == []
            again = await runtime.acquire(service, TurnRequest(thread_id="t1", input="z"))
            async with again:
                assert again.instance is lease.instance

    run(main)


def test_rebind_by_session_id_moves_the_instance(fake_agent: FakeAgentHandle) -> None:
    service = fake_agent.service()

    async def main() -> None:
        async with pool(fake_agent) as runtime:
            first = await turn(runtime, service, "turn one")
            sid = first.instance.session_id
            second = await turn(runtime, service, "turn two", session_id=sid)
            assert second.instance is first.instance and not second.instance.fresh
            assert second.instance.scope.split(SCOPE_SEP)[3] == sid
            assert len(runtime.instances()) == 1
            # the thread's session-less scope is free again: a new turn there spawns
            third = await turn(runtime, service, "turn three")
            assert third.instance.pid != first.instance.pid
            assert len(runtime.instances()) == 2
            history = fake_agent.sessions()[sid]["history"]
            assert [h for h in history if h[0] == "user"] == [
                ["user", "turn one"],
                ["user", "turn two"],
            ]

    run(main)


def test_no_rebind_of_an_active_instance(fake_agent: FakeAgentHandle) -> None:
    service = fake_agent.service()

    async def main() -> None:
        async with pool(fake_agent) as runtime:
            first = await turn(runtime, service, "one")
            sid = first.instance.session_id
            held = await runtime.acquire(service, TurnRequest(thread_id="t1", input="x"))
            async with held:
                # busy: the session is loaded into a new process instead of being moved
                other = await turn(runtime, service, "two", session_id=sid)
                assert other.instance is not first.instance
                assert other.instance.session_id == sid and other.instance.fresh

    run(main)


def test_session_load_in_a_new_process(fake_agent: FakeAgentHandle) -> None:
    service = fake_agent.service()

    async def main() -> None:
        async with pool(fake_agent) as runtime:
            first = await turn(runtime, service, "remember me")
            sid, pid = first.instance.session_id, first.instance.pid or 0
            assert await runtime.close_thread("fake", "t1") == 1
            await group_gone(pid)
            again = await turn(runtime, service, "config", session_id=sid)
            assert again.instance.pid != pid and again.instance.session_id == sid
            assert again.instance.fresh
            # replayed history went by before the turn; only the turn's own updates here
            assert again.json() == {"model": "fake-small", "mode": "ask"}
            # a session this runtime never opened is nobody's to continue
            with pytest.raises(AcpError) as info:
                await turn(runtime, service, "x", thread="t9", session_id="sess-unknown")
            assert info.value.message == 'acp session "sess-unknown" not found'
            assert info.value.status == 404
            # one it opened that the agent lost: the agent's error
            assert await runtime.close_thread("fake", "t1") == 1
            (fake_agent.state / f"{sid}.json").unlink()
            with pytest.raises(AcpError, match="session/load failed"):
                await turn(runtime, service, "x", thread="t9", session_id=sid)

    run(main)


def test_session_load_needs_the_capability(fake_agent: FakeAgentHandle) -> None:
    service = fake_agent.service("fake", "--no-load")

    async def main() -> None:
        async with pool(fake_agent) as runtime:
            sid = (await turn(runtime, service, "x")).instance.session_id
            assert await runtime.close_thread("fake", "t1") == 1
            with pytest.raises(AcpError, match="does not support session/load"):
                await turn(runtime, service, "x", session_id=sid)
            assert runtime.instances() == [] and runtime.inflight() == []

    run(main)


def test_fresh_session_replaces_the_instance(fake_agent: FakeAgentHandle) -> None:
    service = fake_agent.service()

    async def main() -> None:
        async with pool(fake_agent) as runtime:
            first = await turn(runtime, service, "one")
            fresh = await turn(runtime, service, "two", fresh_session=True)
            assert fresh.instance is not first.instance and fresh.instance.fresh
            assert fresh.instance.session_id != first.instance.session_id
            await group_gone(first.instance.pid or 0)
            assert runtime.instances() == [fresh.instance]
            # fresh with a session id: a new session, not a load
            sid = fresh.instance.session_id
            newer = await turn(runtime, service, "three", session_id=sid, fresh_session=True)
            assert newer.instance.session_id != sid

    run(main)


def test_capacity(fake_agent: FakeAgentHandle) -> None:
    service = fake_agent.service(max_instances=1)

    async def main() -> None:
        async with pool(fake_agent) as runtime:
            one = await turn(runtime, service, "one")
            # at the cap the least recently used idle instance is closed for the new one...
            two = await turn(runtime, service, "two", thread="t2")
            await group_gone(one.instance.pid or 0)
            assert [i.thread_id for i in runtime.instances()] == ["t2"]
            # ...and its thread's next turn loads its session again on a new agent
            again = await turn(runtime, service, "again")
            assert again.instance.session_id == one.instance.session_id
            assert again.instance.pid != one.instance.pid
            await group_gone(two.instance.pid or 0)
            # only a pool whose every instance is busy refuses
            lease = await runtime.acquire(service, TurnRequest(thread_id="t1", input="x"))
            async with lease:
                with pytest.raises(AcpError) as info:
                    await turn(runtime, service, "three", thread="t3")
            assert info.value.message == (
                'acp instance capacity exceeded: service "fake" reached max_instances 1'
            )

    run(main)


def test_capacity_counts_instances_being_started(fake_agent: FakeAgentHandle) -> None:
    service = fake_agent.service(max_instances=1)

    async def main() -> None:
        async with pool(fake_agent) as runtime:
            results = await asyncio.gather(
                turn(runtime, service, "a", thread="a"),
                turn(runtime, service, "b", thread="b"),
                return_exceptions=True,
            )
            errors = [r for r in results if isinstance(r, AcpError)]
            assert len(errors) == 1 and "capacity exceeded" in errors[0].message
            assert len(runtime.instances()) == 1

    run(main)


def test_cwd_resolution(fake_agent: FakeAgentHandle, tmp_path: Path) -> None:
    root = fake_agent.workdir
    (root / "sub").mkdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    (root / "link").symlink_to(outside)
    service = fake_agent.service(allowed_roots=[str(root)])
    runtime = AcpRuntime()
    assert runtime.resolve_cwd(service, "") == str(root)
    assert runtime.resolve_cwd(service, f"{root}/sub/") == f"{root}/sub"
    for bad in (str(outside), f"{root}/sub/../..", f"{root}/link", "relative/dir"):
        with pytest.raises(AcpError) as info:
            runtime.resolve_cwd(service, bad)
        assert info.value.status == 400

    async def main() -> None:
        async with pool(fake_agent) as rt:
            out = await turn(rt, service, "env", cwd=f"{root}/sub")
            assert out.json()["cwd"] == f"{root}/sub"
            assert out.instance.cwd == f"{root}/sub"
            with pytest.raises(AcpError, match="outside the allowed_roots"):
                await turn(rt, service, "env", cwd=str(outside))

    run(main)


def test_disabled_service_and_missing_command(fake_agent: FakeAgentHandle) -> None:
    async def main() -> None:
        async with pool(fake_agent) as runtime:
            with pytest.raises(AcpError) as info:
                await turn(runtime, fake_agent.service(disabled=True), "x")
            assert info.value.message == 'acp service "fake" is disabled'
            assert info.value.status == 400
            missing = AcpService(
                id="m", name="m", agent_type="command", command="no-such-acp-agent-xyz",
                cwd=str(fake_agent.workdir),
            )  # fmt: skip
            with pytest.raises(AcpError) as info:
                await turn(runtime, missing, "x")
            assert info.value.message == 'acp command "no-such-acp-agent-xyz" not found'
            opencode = AcpService(
                id="oc", name="oc", agent_type="opencode", cwd=str(fake_agent.workdir),
                env={"PATH": str(fake_agent.workdir)},
            )  # fmt: skip
            with pytest.raises(AcpError, match='acp command "opencode" not found'):
                await turn(runtime, opencode, "x")
            assert runtime.inflight() == [] and runtime.instances() == []

    run(main)


# ------------------------------------------------------------------------- start and failure


def test_handshake_timeout_kills_the_agent(fake_agent: FakeAgentHandle) -> None:
    service = fake_agent.service("fake", "--hang-initialize", "--spawn-child")

    async def main() -> None:
        async with pool(fake_agent, handshake_timeout=1.0) as runtime:
            with pytest.raises(AcpError) as info:
                await turn(runtime, service, "x")
            assert info.value.message == 'acp handshake with service "fake" timed out after 1 s'
            assert runtime.instances() == [] and runtime.inflight() == []
            assert len(fake_agent.pids()) == 1
            await group_gone(fake_agent.pids()[0])

    run(main)


def test_exit_on_start_error_carries_stderr(fake_agent: FakeAgentHandle) -> None:
    service = fake_agent.service("fake", "--exit-on-start", "4")

    async def main() -> None:
        async with pool(fake_agent) as runtime:
            with pytest.raises(AgentExited) as info:
                await turn(runtime, service, "x")
            assert info.value.message == "acp process exited: 4: fake agent: exit on start"

    run(main)


def test_crash_mid_turn_then_the_next_turn_works(fake_agent: FakeAgentHandle) -> None:
    service = fake_agent.service("fake", "--spawn-child")

    async def main() -> None:
        async with pool(fake_agent) as runtime:
            first = await turn(runtime, service, "hello")
            inst = first.instance
            pgid = inst.pid or 0
            assert len(group_members(pgid)) == 2
            with pytest.raises(AgentExited) as info:
                await turn(runtime, service, "crash")
            assert "acp process exited: 3: " in info.value.message
            assert "fake agent: crash requested" in info.value.message
            await group_gone(pgid)
            assert runtime.instances() == []  # the lease dropped the dead instance
            again = await turn(runtime, service, "still there?")
            assert again.text == "echo: still there? "
            assert again.instance.pid != pgid
            # the thread keeps its session: the dead instance's session was loaded again
            assert again.instance.session_id == inst.session_id

    run(main)


def test_dead_instances_are_reaped_and_their_sessions_loaded_again(
    fake_agent: FakeAgentHandle,
) -> None:
    service = fake_agent.service()

    async def main() -> None:
        async with pool(fake_agent) as runtime:
            first = await turn(runtime, service, "one")
            second = await turn(runtime, service, "two", thread="t2")
            for inst in (first.instance, second.instance):
                os.killpg(inst.pid or 0, 9)
            await wait_for(lambda: not first.instance.alive and not second.instance.alive)
            assert await runtime.reap() == 2
            assert runtime.instances() == []
            again = await turn(runtime, service, "three")
            assert again.instance.alive and again.instance.session_id == first.instance.session_id
            # a closed thread starts over
            assert await runtime.close_thread("fake", "t2") == 0
            other = await turn(runtime, service, "four", thread="t2")
            assert other.instance.session_id != second.instance.session_id
            # a dead instance still pooled is replaced at its next turn
            os.killpg(other.instance.pid or 0, 9)
            await wait_for(lambda: not other.instance.alive)
            last = await turn(runtime, service, "five", thread="t2")
            assert last.instance is not other.instance
            assert last.instance.session_id == other.instance.session_id

    run(main)


# ---------------------------------------------------------------------------- model, config


def test_default_model_and_service_overrides_applied(fake_agent: FakeAgentHandle) -> None:
    service = fake_agent.service(default_model="fake-large", config_overrides={"mode": "code"})

    async def main() -> None:
        async with pool(fake_agent) as runtime:
            out = await turn(runtime, service, "config")
            assert out.json() == {"model": "fake-large", "mode": "code"}
            assert out.instance.model == "fake-large"
            options = {
                o["id"]: o["currentValue"]
                for o in out.instance.metadata["config_options"]["configOptions"]
            }
            assert options == {"model": "fake-large", "mode": "code"}
            # a request model is part of the scope and applied the same way
            small = await turn(runtime, service, "config", model="fake-small")
            assert small.instance is not out.instance
            assert small.json()["model"] == "fake-small"
            with pytest.raises(AcpError, match='"model" = "fake-huge" rejected'):
                await turn(runtime, service, "x", model="fake-huge")
            bad = fake_agent.service("bad", config_overrides={"nope": "1"})
            with pytest.raises(AcpError) as info:
                await turn(runtime, bad, "x")
            assert info.value.message.startswith('acp config option "nope" = "1" rejected: ')
            assert "unknown config option nope" in info.value.message

    run(main)


def test_per_turn_overrides(fake_agent: FakeAgentHandle) -> None:
    service = fake_agent.service()

    async def main() -> None:
        async with pool(fake_agent) as runtime:
            out = await turn(runtime, service, "config", config_overrides={"mode": "code"})
            assert out.json() == {"model": "fake-small", "mode": "code"}
            with pytest.raises(AcpError, match='"mode" = "zen" rejected'):
                await turn(runtime, service, "config", config_overrides={"mode": "zen"})
            # the instance survives a rejected override
            assert runtime.instances()[0].alive

    run(main)


def test_metadata_cache(fake_agent: FakeAgentHandle) -> None:
    service = fake_agent.service()

    async def main() -> None:
        async with pool(fake_agent) as runtime:
            out = await turn(runtime, service, "meta")
            meta = out.instance.metadata
            assert set(meta) == set(METADATA_KINDS)
            assert meta["available_commands"]["availableCommands"][0]["name"] == "review"
            assert meta["session_info"]["title"] == "fake title"
            assert meta["mode"] == {"sessionUpdate": "current_mode_update", "currentModeId": "code"}
            assert meta["usage"]["used"] == 7
            await turn(runtime, service, "usage")
            assert out.instance.metadata["usage"]["used"] == 42
            view = runtime.view()["instances"][0]["metadata"]
            assert list(view) == list(METADATA_KINDS)

    run(main)


# --------------------------------------------------------------------------------- closing


def test_idle_reaping_skips_active_scopes(fake_agent: FakeAgentHandle) -> None:
    service = fake_agent.service(idle_ttl="200ms")

    async def main() -> None:
        async with pool(fake_agent) as runtime:
            idle = await turn(runtime, service, "one")
            lease = await runtime.acquire(service, TurnRequest(thread_id="busy", input="x"))
            async with lease:
                await asyncio.sleep(0.4)
                # (the janitor, every ttl/2 for so short a ttl, may have reaped it first)
                assert await runtime.reap() in (0, 1)
                assert runtime.instances() == [lease.instance]
                await group_gone(idle.instance.pid or 0)
            assert await runtime.reap() == 0  # just released: not idle yet
            assert runtime.instances() == [lease.instance]
            await asyncio.sleep(0.4)
            assert await runtime.reap() in (0, 1)
            assert runtime.instances() == []

    run(main)


def test_janitor_runs_by_itself(fake_agent: FakeAgentHandle) -> None:
    service = fake_agent.service(idle_ttl="100ms")

    async def main() -> None:
        async with pool(fake_agent, janitor_every=0.2) as runtime:
            out = await turn(runtime, service, "one")
            for _ in range(100):
                if not runtime.instances():
                    break
                await asyncio.sleep(0.05)
            assert runtime.instances() == []
            await group_gone(out.instance.pid or 0)

    run(main)


def test_no_idle_ttl_means_no_reaping(fake_agent: FakeAgentHandle) -> None:
    service = fake_agent.service(idle_ttl=0)

    async def main() -> None:
        async with pool(fake_agent) as runtime:
            await turn(runtime, service, "one")
            assert await runtime.reap(now=1e12) == 0

    run(main)


def test_close_thread_and_service(fake_agent: FakeAgentHandle) -> None:
    svc_a = fake_agent.service("a")
    svc_b = fake_agent.service("b")

    async def main() -> None:
        async with pool(fake_agent) as runtime:
            a1 = await turn(runtime, svc_a, "x", thread="t1")
            sid = a1.instance.session_id
            await turn(runtime, svc_a, "x", thread="t1", model="fake-large")
            await turn(runtime, svc_a, "x", thread="t1", session_id=sid)  # rebind, no spawn
            await turn(runtime, svc_a, "x", thread="t2")
            b1 = await turn(runtime, svc_b, "x", thread="t1")
            pids = [i.pid or 0 for i in runtime.instances() if i.service_id == "a"]
            assert len(pids) == 3
            assert await runtime.close_thread("a", "t1") == 2
            assert await runtime.close_thread("a", "t1") == 0
            assert await runtime.close_service("a") == 1
            for pid in pids:
                await group_gone(pid)
            assert [i.service_id for i in runtime.instances()] == ["b"]
            assert runtime.instances()[0] is b1.instance

    run(main)


def test_close_everything_and_refuse_after(fake_agent: FakeAgentHandle) -> None:
    service = fake_agent.service("fake", "--spawn-child")

    async def main() -> None:
        runtime = AcpRuntime()
        outs = [await turn(runtime, service, "x", thread=t) for t in ("a", "b")]
        assert len(group_members(outs[0].instance.pid or 0)) == 2
        lease = await runtime.acquire(service, TurnRequest(thread_id="c", input="x"))
        pending = asyncio.create_task(
            lease.instance.connection.request(
                "session/prompt",
                {
                    "sessionId": lease.instance.session_id,
                    "prompt": [{"type": "text", "text": "slow 50 0.2"}],
                },
            )
        )
        await asyncio.sleep(0.2)
        await runtime.close()
        with pytest.raises(AcpError):
            await pending
        await lease.release()
        assert len(fake_agent.pids()) == 3
        for pid in fake_agent.pids():
            await group_gone(pid)
        with pytest.raises(AcpError, match="shutting down"):
            await runtime.acquire(service, TurnRequest(thread_id="d", input="x"))
        await runtime.close()  # twice is fine

    run(main)


def test_close_during_a_slow_handshake(fake_agent: FakeAgentHandle) -> None:
    service = fake_agent.service("fake", "--hang-initialize")

    async def main() -> None:
        runtime = AcpRuntime(handshake_timeout=30)
        starting = asyncio.create_task(turn(runtime, service, "x"))
        await wait_for(lambda: len(fake_agent.pids()) == 1)
        await asyncio.sleep(0.3)
        loop = asyncio.get_running_loop()
        began = loop.time()
        await runtime.close()
        with pytest.raises(AcpError):
            await starting
        assert loop.time() - began < 10
        await group_gone(fake_agent.pids()[0])

    run(main)


# ---------------------------------------------------------------------------------- transient


def test_transient_connection(fake_agent: FakeAgentHandle) -> None:
    service = fake_agent.service()

    async def main() -> None:
        async with pool(fake_agent) as runtime:
            out = await turn(runtime, service, "titled session")
            async with runtime.transient(service, "") as conn:
                assert conn.alive and conn.init_result["protocolVersion"] == 1
                listed = await conn.request("session/list", {})
                ids = [s["sessionId"] for s in listed["sessions"]]
                assert out.instance.session_id in ids
                pid = conn.pid or 0
                assert runtime.instances() == [out.instance]  # not pooled
            assert not conn.alive
            await group_gone(pid)
            with pytest.raises(AcpError) as info:
                async with runtime.transient(service, "/elsewhere"):
                    pass
            assert info.value.status == 400

    run(main)


# -------------------------------------------------------------------------------- config swaps


async def apply(manager: ConfigManager, bundle: dict[str, Any]) -> None:
    doc = {"apiVersion": "gateway.agw/v1alpha1", "kind": "GatewayBundle", **bundle}
    parsed = load_bundle_text(json.dumps(doc))
    actions, _ = await manager.change(lambda state: plan(state, parsed, prune=False))
    assert all(a.action != "error" for a in actions), [a.as_json() for a in actions]


@contextlib.asynccontextmanager
async def managed(tmp_path: Path, bundle: dict[str, Any]) -> AsyncIterator[ConfigManager]:
    db = await Database.open(tmp_path / "store" / "config.db")
    try:
        manager = ConfigManager(db)
        await manager.start()
        await apply(manager, bundle)
        yield manager
    finally:
        await db.close()


def test_config_swap_closes_changed_and_deleted_services(
    fake_agent: FakeAgentHandle, tmp_path: Path
) -> None:
    a = fake_agent.service_config("a")
    b = fake_agent.service_config("b")

    async def main() -> None:
        async with (
            managed(tmp_path, {"acpServices": [a, b]}) as manager,
            pool(fake_agent, manager=manager) as runtime,
        ):

            def service(sid: str) -> AcpService:
                svc: AcpService = manager.snapshot.acp_services[sid]
                return svc

            ia = (await turn(runtime, service("a"), "x")).instance
            ib = (await turn(runtime, service("b"), "x")).instance
            # an unrelated change keeps both
            await apply(manager, {"virtualKeys": [{"id": "k1"}]})
            await asyncio.sleep(0.2)
            assert set(runtime.instances()) == {ia, ib} and ia.alive and ib.alive
            # a changed service loses its instances
            await apply(manager, {"acpServices": [a | {"description": "changed"}, b]})
            await wait_for(lambda: ia not in runtime.instances())
            await group_gone(ia.pid or 0)
            assert runtime.instances() == [ib]
            # a disabled one too, and a deleted one
            ia2 = (await turn(runtime, service("a"), "x")).instance
            await apply(manager, {"acpServices": [a | {"disabled": True}, b]})
            await wait_for(lambda: ia2 not in runtime.instances())
            await manager.change(lambda st: (st.delete(f.ACP_SERVICE, "b"), None))
            await wait_for(lambda: runtime.instances() == [])
            await group_gone(ib.pid or 0)

    run(main)


# ------------------------------------------------------------------------------ single origin


def origin_bundle(fake: FakeAgentHandle, *services: dict[str, Any]) -> dict[str, Any]:
    return {
        "providers": [
            {"id": "p", "provider_type": "ollama", "base_url": "http://127.0.0.1:9/v1"}
        ],
        "llmRoutes": [
            {"id": "llm", "protocol": "openai", "match_policy": {"path_prefix": "/"},
             "target_policy": {"provider_id": "p"}},
        ],
        "mcpServices": [{"id": "tools", "name": "tools", "transport": "stdio", "command": "true"}],
        "mcpRoutes": [{"service_id": "tools", "match_policy": {"path_prefix": "/mcp"}}],
        "virtualKeys": [{"id": "agent-key"}],
        "acpServices": list(services),
    }  # fmt: skip


ORIGIN = {"mcp_route_id": "mcp:tools:mcp", "llm_route_id": "llm", "virtual_key_id": "agent-key"}


def test_gateway_origin_injection(fake_agent: FakeAgentHandle, tmp_path: Path) -> None:
    services = [
        fake_agent.service_config("o", gateway_origin=ORIGIN),
        fake_agent.service_config("nohttp", "--no-http-mcp", gateway_origin=ORIGIN),
        fake_agent.service_config("plain"),
    ]

    async def main() -> None:
        with start_fake_upstream(tmp_path / "llm") as llm:
            bundle = origin_bundle(fake_agent, *services)
            async with managed(tmp_path, bundle) as manager:
                directory = SessionDirectory()
                key = manager.snapshot.state.get(f.VIRTUAL_KEY, "agent-key")
                assert key is not None and key.key.startswith("vk-")
                async with pool(
                    fake_agent,
                    manager=manager,
                    gateway_url=lambda: llm.url + "/",
                    directory=directory,
                ) as runtime:
                    svc = manager.snapshot.acp_services
                    out = await turn(runtime, svc["o"], "mcp")
                    inst = out.instance
                    assert inst.token.startswith("acps-")
                    assert out.json() == [
                        {
                            "type": "http",
                            "name": "agw",
                            "url": llm.url + "/mcp",
                            "headers": [
                                {"name": "Authorization", "value": f"Bearer {inst.token}"},
                                {"name": "X-Agw-Acp-Session", "value": inst.token},
                            ],
                        }
                    ]
                    assert directory.lookup(inst.token) == inst.session_id
                    assert directory.lookup(inst.session_id) == inst.session_id
                    # the agent's credential stands for the key while the agent lives
                    assert directory.credential(inst.token) == key.key
                    assert dict(runtime.sessions_by_token) == {inst.token: inst.session_id}

                    env = (await turn(runtime, svc["o"], "env")).json()["env"]
                    assert env == {
                        "OPENAI_BASE_URL": llm.url + "/v1",
                        "OPENAI_API_KEY": inst.token,
                        "ANTHROPIC_BASE_URL": llm.url,
                        "ANTHROPIC_API_KEY": inst.token,
                        "OPENCODE_CONFIG_CONTENT": None,
                        "AGW_ACP_SESSION_TOKEN": inst.token,
                    }

                    answer = await turn(runtime, svc["o"], "llm hi there")
                    assert answer.text == "llm: echo: hi there"
                    sent = llm.requests()[-1]
                    assert sent["path"] == "/v1/chat/completions"
                    assert sent["headers"]["authorization"] == f"Bearer {inst.token}"
                    assert key.key not in json.dumps(sent)  # the agent never holds the key
                    assert sent["headers"]["x-agw-acp-session"] == inst.token
                    assert sent["body"]["model"] == "fake-small"

                    # an agent without mcpCapabilities.http gets no MCP server
                    nohttp = await turn(runtime, svc["nohttp"], "mcp")
                    assert nohttp.json() == []
                    plain = await turn(runtime, svc["plain"], "env OPENAI_BASE_URL")
                    assert plain.json()["env"]["OPENAI_BASE_URL"] == os.environ.get(
                        "OPENAI_BASE_URL"
                    )
                    assert plain.instance.token == ""
                    assert directory.lookup(plain.instance.session_id) == (
                        plain.instance.session_id
                    )

                    assert await runtime.close_service("o") == 1
                    assert directory.lookup(inst.token) is None
                    assert directory.lookup(inst.session_id) is None
                    assert directory.credential(inst.token) is None  # dies with the agent
                    assert inst.token not in runtime.sessions_by_token

    run(main)


def test_gateway_origin_needs_its_pieces(fake_agent: FakeAgentHandle, tmp_path: Path) -> None:
    service = fake_agent.service("o", gateway_origin=ORIGIN)

    async def main() -> None:
        async with pool(fake_agent) as runtime:  # no manager
            with pytest.raises(AcpError, match="gateway_origin needs the gateway config"):
                await turn(runtime, service, "x")
        async with managed(tmp_path, origin_bundle(fake_agent)) as manager:
            async with pool(fake_agent, manager=manager) as runtime:  # no gateway URL
                with pytest.raises(AcpError, match="gateway_origin needs the gateway's data URL"):
                    await turn(runtime, service, "x")
            async with pool(
                fake_agent, manager=manager, gateway_url=lambda: "http://gw"
            ) as runtime:
                other = fake_agent.service(
                    "o", gateway_origin=ORIGIN | {"virtual_key_id": "missing"}
                )
                with pytest.raises(AcpError, match='virtual key "missing" not found'):
                    await turn(runtime, other, "x")
                assert runtime.instances() == [] and runtime.inflight() == []

    run(main)


def agent_script(bin_dir: Path, name: str, fake: FakeAgentHandle) -> None:
    bin_dir.mkdir(exist_ok=True)
    script = bin_dir / name
    args = " ".join(f'"{a}"' for a in fake.argv())
    script.write_text(f'#!/bin/sh\nexec {args} "$@"\n')
    script.chmod(0o755)


def test_opencode_and_codex_process_shapes(fake_agent: FakeAgentHandle, tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    agent_script(bin_dir, "opencode", fake_agent)
    agent_script(bin_dir, "codex-acp", fake_agent)
    env = {"PATH": f"{bin_dir}:{os.environ.get('PATH', '')}"}
    cwd = str(fake_agent.workdir)
    services = [
        {"id": "oc", "name": "oc", "agent_type": "opencode", "cwd": cwd, "env": env,
         "default_model": "fake-large", "gateway_origin": ORIGIN},
        {"id": "cx", "name": "cx", "agent_type": "codex", "cwd": cwd, "env": env,
         "default_model": "fake-large", "gateway_origin": ORIGIN,
         "codex": {"adapter_args": ["--adapter-flag"]}},
        {"id": "cx-plain", "name": "cx-plain", "agent_type": "codex", "cwd": cwd, "env": env},
    ]  # fmt: skip
    prefix = fake_agent.args()

    async def main() -> None:
        async with managed(tmp_path, origin_bundle(fake_agent, *services)) as manager:
            key = manager.snapshot.state.get(f.VIRTUAL_KEY, "agent-key")
            assert key is not None
            async with pool(
                fake_agent, manager=manager, gateway_url=lambda: "http://gw.test:8080"
            ) as rt:
                svc = manager.snapshot.acp_services
                oc = await turn(rt, svc["oc"], "env OPENCODE_CONFIG_CONTENT OPENAI_BASE_URL")
                report = oc.json()
                assert report["argv"] == [*prefix[1:], "acp", "--cwd", cwd]
                assert report["cwd"] == cwd
                assert report["env"]["OPENAI_BASE_URL"] == "http://gw.test:8080/v1"
                config = json.loads(report["env"]["OPENCODE_CONFIG_CONTENT"])
                assert config["model"] == "agw/fake-large"
                assert config["provider"]["agw"] == {
                    "npm": "@ai-sdk/openai-compatible",
                    "name": "agw",
                    "options": {
                        "baseURL": "http://gw.test:8080/v1",
                        "apiKey": oc.instance.token,  # the session credential, not the key
                        "headers": {"X-Agw-Acp-Session": oc.instance.token},
                    },
                    "models": {"fake-large": {"name": "fake-large"}},
                }

                cx = await turn(rt, svc["cx"], "env AGW_ACP_VIRTUAL_KEY")
                report = cx.json()
                token = cx.instance.token
                assert report["env"] == {"AGW_ACP_VIRTUAL_KEY": token}
                assert report["argv"] == [
                    *prefix[1:],
                    "--adapter-flag",
                    "-c", 'model_provider="agw"',
                    "-c", 'model_providers.agw.name="agw"',
                    "-c", 'model_providers.agw.base_url="http://gw.test:8080/v1"',
                    "-c", 'model_providers.agw.env_key="AGW_ACP_VIRTUAL_KEY"',
                    "-c", 'model_providers.agw.wire_api="responses"',
                    "-c", f'model_providers.agw.http_headers={{"X-Agw-Acp-Session"="{token}"}}',
                    "-c", 'model="fake-large"',
                ]  # fmt: skip
                plain = await turn(rt, svc["cx-plain"], "env")
                assert plain.json()["argv"] == prefix[1:]

    run(main)


def test_service_env_reaches_the_agent(fake_agent: FakeAgentHandle) -> None:
    service = fake_agent.service(env={"FAKE_MARKER": "m1", "OPENAI_BASE_URL": "http://own"})

    async def main() -> None:
        async with pool(
            fake_agent, base_env={"PATH": os.environ.get("PATH", ""), "GW_ONLY": "g"}
        ) as rt:
            out = await turn(rt, service, "env FAKE_MARKER OPENAI_BASE_URL GW_ONLY HOME")
            assert out.json()["env"] == {
                "FAKE_MARKER": "m1",
                "OPENAI_BASE_URL": "http://own",
                "GW_ONLY": "g",
                "HOME": None,
            }

    run(main)


def test_instance_of_an_older_service_config_is_replaced(fake_agent: FakeAgentHandle) -> None:
    old = fake_agent.service()
    new = fake_agent.service(description="changed")

    async def main() -> None:
        async with pool(fake_agent) as runtime:
            first = await turn(runtime, old, "one")
            same = await turn(runtime, old, "two")
            assert same.instance is first.instance
            changed = await turn(runtime, new, "three")
            assert changed.instance is not first.instance
            assert changed.instance.session_id == first.instance.session_id
            await group_gone(first.instance.pid or 0)

    run(main)
