"""Slow tier: the real codex-acp (npm ``@zed-industries/codex-acp``, Zed's ACP adapter around
Codex) run by agw as an ACP agent, with agw as its only origin. A turn goes in over HTTP
(``<route>/turn``, SSE); ``gateway_origin`` points Codex's model provider at agw's ``openai``
LLM route (Responses) and gives its sessions agw's MCP route as the server ``agw``. The fake
upstream answers the first call with a call of the MCP tool ``echo`` (Codex offers MCP tools to
the model as the Responses ``namespace`` ``mcp__agw``); Codex calls it through agw's MCP route on
the fake MCP server, sends the result back, and the turn streams the answer and ends. Checks
every hop, the ACP session on the LLM and MCP usage rows, and that Codex, configured by
``gateway_origin`` alone, reached nothing but loopback (tests/support/egress.py); then that
agwd's stop leaves no codex-acp process behind.

codex-acp is installed with npm into ``.cache/npm-codex-acp`` on first use (about 225 MB: a
native binary); without npm the test is skipped (tests/support/npm.py)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from pathlib import Path

import pytest

from tests.fakes.run import start_fake_upstream
from tests.support.acp import AcpGateway, wait_group_gone
from tests.support.agwd import Agwd, AgwdLauncher, usage_rows
from tests.support.egress import egress_trap
from tests.support.mcp_server import run_mcp_server
from tests.support.npm import npm_tool

pytestmark = pytest.mark.slow

PACKAGE = "@zed-industries/codex-acp@0.16.0"


def stop_with_agents(agwd: Agwd) -> None:
    """Stop agwd as a service manager would (SIGTERM), which stops its agents, and check that
    no process of theirs is left: codex-acp 0.16 does not exit when its stdin closes, so the
    SIGKILL of the test's teardown would leave it running."""
    with agwd.client() as admin:
        groups = [i["pid"] for i in admin.get("/admin/acp/runtime").json()["instances"]]
    assert agwd.stop() == 0, agwd.logs()[-3000:]
    for pgid in groups:  # each agent leads a process group of its own
        try:
            wait_group_gone(pgid)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGKILL)


def test_codex_acp_turn_through_agw_with_llm_and_tool_calls_through_agw(
    agwd_factory: AgwdLauncher, tmp_path: Path
) -> None:
    bin_dir = npm_tool(PACKAGE, "codex-acp", "codex-acp").parent
    codex_home = tmp_path / "codex-home"
    work = tmp_path / "work"
    for d in (codex_home, work):
        d.mkdir()
    fake_env = {"FAKE_LLM_TOOL": "echo", "FAKE_LLM_TOOL_ARGS": '{"message": "from codex"}'}
    with (
        start_fake_upstream(tmp_path / "llm", env=fake_env) as fake,
        run_mcp_server(tmp_path / "mcp", "streamable-http", "alpha") as alpha,
        egress_trap() as trap,
    ):
        agent_env = {
            "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
            "HOME": str(tmp_path),
            "CODEX_HOME": str(codex_home),
            **trap.env(),
        }
        agwd = agwd_factory.start()
        with agwd.client() as admin:
            r = admin.post("/admin/virtual_keys", json={"id": "codex"})
            assert r.status_code in (200, 201), r.text
            bearer = r.json()["key"]
            bundle = {
                "apiVersion": "gateway.agw/v1alpha1",
                "kind": "GatewayBundle",
                "providers": [
                    {"id": "fake", "provider_type": "openai", "base_url": f"{fake.url}/v1"},
                ],
                "llmRoutes": [
                    {"id": "llm", "protocol": "openai", "match_policy": {"path_prefix": "/llm"},
                     "auth_policy": {"require_virtual_key": True},
                     "target_policy": {"provider_id": "fake"}},
                ],
                "mcpServices": [alpha.service_config("alpha")],
                "mcpRoutes": [
                    {"id": "tools", "service_id": "alpha",
                     "match_policy": {"path_prefix": "/tools"},
                     "auth_policy": {"require_virtual_key": True}},
                ],
                "acpServices": [
                    {"id": "cx", "name": "codex", "agent_type": "codex", "cwd": str(work),
                     "env": agent_env, "default_model": "fake-gpt",
                     "permission_mode": "auto_approve",
                     "gateway_origin": {"mcp_route_id": "tools", "llm_route_id": "llm",
                                        "virtual_key_id": "codex"}},
                ],
                "acpRoutes": [
                    {"id": "cx", "service_id": "cx", "match_policy": {"path_prefix": "/cx"}},
                ],
            }  # fmt: skip
            r = admin.post("/admin/gateway/apply", json={"bundle": bundle})
            assert r.status_code == 200, r.text
        try:
            gw = AcpGateway(agwd, None)  # type: ignore[arg-type]  # no fake agent here

            started = time.monotonic()
            turn = gw.turn("/cx", {"thread_id": "t1", "input": "please echo something"})
            elapsed = time.monotonic() - started
            assert turn.status == 200, turn.events
            assert turn.names[-1] == "done", [(e.name, e.data) for e in turn.events]
            session = turn.session_id
            calls = [e.data["data"] for e in turn.events if e.name == "tool_call"]
            assert any(c.get("rawInput", {}).get("server") == "agw" for c in calls), calls
            assert any(c.get("status") == "completed" for c in calls), calls
            # the fake echoes the last user text once the tool result came back
            assert "echo: please echo something" in turn.text, turn.events

            echoed = [e for e in alpha.events("call") if e.get("tool") == "echo"]
            assert len(echoed) == 1 and echoed[0].get("args") == {"message": "from codex"}, echoed
            sent = [r for r in fake.requests() if r["path"] == "/v1/responses"]
            assert len(sent) == 2 and bearer not in json.dumps(sent)
            namespaces = [t["name"] for t in sent[0]["body"]["tools"] if t["type"] == "namespace"]
            assert "mcp__agw" in namespaces, namespaces  # the injected server, named agw
            (called,) = [i for i in sent[1]["body"]["input"] if i.get("type") == "function_call"]
            assert (called["namespace"], called["name"]) == ("mcp__agw", "echo"), called
            assert trap.attempts == [], trap.attempts  # nothing beyond loopback

            db = agwd.db_path
            where = "route_id = 'tools' AND method = 'tools/call'"
            (call,) = usage_rows(db, "mcp_usage_events", where)
            assert call["tool_name"] == "echo" and call["result_status"] == "success"
            assert call["virtual_key_id"] == "codex" and call["acp_session_id"] == session
            llm = usage_rows(db, "llm_usage_events", "route_id = 'llm'", count=2)
            assert len(llm) == 2 and {r["acp_session_id"] for r in llm} == {session}
            assert all(r["api_operation"] == "responses" and r["status_code"] == 200 for r in llm)
            assert llm[0]["tool_call_count"] == 1 and "echo" in (llm[0]["tool_names"] or ""), llm[0]
            (acp,) = usage_rows(db, "acp_usage_events", "operation = 'turn'")
            assert acp["result_status"] == "success" and acp["agent_type"] == "codex"
            # one session id across the three planes: codex-acp's ACP session (Codex's thread id)
            sessions = {acp["session_id"], call["session_id"]} | {r["session_id"] for r in llm}
            assert sessions == {session}
            with agwd.client() as admin:
                r = admin.get(f"/admin/metrics/sessions/{session}")
                assert r.status_code == 200, r.text
                timeline = r.json()
            assert {item["kind"] for item in timeline["items"]} == {"llm", "mcp", "acp"}
            assert elapsed < 60, elapsed
        finally:
            stop_with_agents(agwd)
