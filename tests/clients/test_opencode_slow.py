"""Slow tier: the real opencode (npm ``opencode-ai``) run by agw as an ACP agent, with agw as its
only origin. A turn goes in over HTTP (``<route>/turn``, SSE); opencode's LLM calls go through
agw's LLM route to a fake OpenAI-compatible upstream, which answers with a call of the MCP tool
``echo``; opencode calls it through agw's MCP route on the fake MCP server, sends the result
back, and the turn ends. Checks every hop and the ACP session on the LLM and MCP usage rows.

opencode is installed with npm into ``.cache/npm-opencode`` on first use (about 180 MB); without
npm the test is skipped (tests/support/npm.py)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.fakes.run import start_fake_upstream
from tests.support.acp import AcpGateway
from tests.support.agwd import AgwdLauncher, usage_rows
from tests.support.mcp_server import run_mcp_server
from tests.support.npm import npm_tool

pytestmark = pytest.mark.slow

PACKAGE = "opencode-ai@1.18.33"


def test_opencode_turn_through_agw_with_llm_and_tool_calls_through_agw(
    agwd_factory: AgwdLauncher, tmp_path: Path
) -> None:
    bin_dir = npm_tool(PACKAGE, "opencode", "opencode").parent
    home = tmp_path / "home"
    work = tmp_path / "work"
    for d in (home, work):
        d.mkdir()
    agent_env = {
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "HOME": str(home),
        "XDG_CONFIG_HOME": str(home / ".config"),
        "XDG_DATA_HOME": str(home / ".local/share"),
        "XDG_CACHE_HOME": str(home / ".cache"),
        "XDG_STATE_HOME": str(home / ".local/state"),
        "OPENCODE_DISABLE_AUTOUPDATE": "1",
        "OPENCODE_DISABLE_MODELS_FETCH": "1",
        "OPENCODE_DISABLE_LSP_DOWNLOAD": "1",
        "OPENCODE_DISABLE_DEFAULT_PLUGINS": "1",
        "OPENCODE_CONFIG_CONTENT": json.dumps({"autoupdate": False, "share": "disabled"}),
    }
    fake_env = {"FAKE_LLM_TOOL": "echo", "FAKE_LLM_TOOL_ARGS": '{"message": "from opencode"}'}
    with (
        start_fake_upstream(tmp_path / "llm", env=fake_env) as fake,
        run_mcp_server(tmp_path / "mcp", "streamable-http", "alpha") as alpha,
    ):
        agwd = agwd_factory.start()
        with agwd.client() as admin:
            r = admin.post("/admin/virtual_keys", json={"id": "opencode"})
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
                    {"id": "oc", "name": "opencode", "agent_type": "opencode", "cwd": str(work),
                     "env": agent_env, "default_model": "fake-gpt",  # agw/ added
                     "permission_mode": "auto_approve",
                     "gateway_origin": {"mcp_route_id": "tools", "llm_route_id": "llm",
                                        "virtual_key_id": "opencode"}},
                ],
                "acpRoutes": [
                    {"id": "oc", "service_id": "oc", "match_policy": {"path_prefix": "/oc"}},
                ],
            }  # fmt: skip
            r = admin.post("/admin/gateway/apply", json={"bundle": bundle})
            assert r.status_code == 200, r.text
        gw = AcpGateway(agwd, None)  # type: ignore[arg-type]  # no fake agent here

        turn = gw.turn("/oc", {"thread_id": "t1", "input": "please echo something"})
        assert turn.status == 200, turn.events
        assert turn.names[-1] == "done", [(e.name, e.data) for e in turn.events]
        session = turn.session_id
        tool_events = [e for e in turn.events if e.name == "tool_call"]
        assert any("echo" in json.dumps(e.data) for e in tool_events), turn.names
        assert "echo:" in turn.text, turn.events

        calls = [e for e in alpha.events("call") if e.get("tool") == "echo"]
        assert calls and calls[-1].get("args") == {"message": "from opencode"}, calls
        sent = [r for r in fake.requests() if r["path"] == "/v1/chat/completions"]
        assert len(sent) >= 2 and bearer not in json.dumps(sent)

    db = agwd.db_path
    (call,) = usage_rows(db, "mcp_usage_events", "route_id = 'tools' AND method = 'tools/call'")
    assert call["tool_name"] == "echo" and call["acp_session_id"] == session
    assert call["virtual_key_id"] == "opencode" and call["result_status"] == "success"
    llm = usage_rows(db, "llm_usage_events", "route_id = 'llm'", count=2)
    assert len(llm) >= 2 and {r["acp_session_id"] for r in llm} == {session}
    assert any(r["tool_names"] and "echo" in r["tool_names"] for r in llm)
    (acp,) = usage_rows(db, "acp_usage_events", "operation = 'turn'")
    assert acp["session_id"] == session and acp["result_status"] == "success"
    # one session id across the three planes: opencode's ACP session
    assert call["session_id"] == session and {r["session_id"] for r in llm} == {session}
    with agwd.client() as admin:
        r = admin.get(f"/admin/metrics/sessions/{session}")
        assert r.status_code == 200, r.text
        timeline = r.json()
    assert {item["kind"] for item in timeline["items"]} == {"llm", "mcp", "acp"}
    assert timeline["totals"]["llm"]["request_count"] == len(llm)
    assert timeline["totals"]["mcp"]["tools_call_count"] == 1
