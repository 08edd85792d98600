"""The gateway as an agent's only origin, end to end through a real agwd: an ACP service with
``gateway_origin`` gets the gateway's MCP route as its MCP server and the gateway's LLM route as
its LLM endpoint, under one virtual key; the agent's LLM call reaches a fake upstream through
the gateway, and the LLM and MCP usage rows carry the ACP session of the turn."""

from __future__ import annotations

import json
from pathlib import Path

import httpx

from tests.fakes.run import start_fake_upstream
from tests.support.acp import AcpGateway, FakeAgentHandle
from tests.support.agwd import AgwdLauncher, usage_rows
from tests.support.mcp_server import run_mcp_server


def test_agent_llm_and_tool_calls_come_back_through_the_gateway(
    agwd_factory: AgwdLauncher, fake_agent: FakeAgentHandle, tmp_path: Path
) -> None:
    with (
        start_fake_upstream(tmp_path / "llm") as fake,
        run_mcp_server(tmp_path / "mcp", "streamable-http", "alpha") as alpha,
    ):
        agwd = agwd_factory.start()
        with agwd.client() as admin:
            r = admin.post("/admin/virtual_keys", json={"id": "agent-key"})
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
                    fake_agent.service_config(
                        "agent",
                        gateway_origin={"mcp_route_id": "tools", "llm_route_id": "llm",
                                        "virtual_key_id": "agent-key"},
                    )
                ],
                "acpRoutes": [
                    {"id": "agent", "service_id": "agent",
                     "match_policy": {"path_prefix": "/agent"}},
                ],
            }  # fmt: skip
            r = admin.post("/admin/gateway/apply", json={"bundle": bundle})
            assert r.status_code == 200, r.text
        gw = AcpGateway(agwd, fake_agent)

        first = gw.turn("/agent", {"thread_id": "t1", "input": "mcp"})
        assert first.names[-1] == "done", first.events
        session = first.session_id
        (server,) = json.loads(first.text.strip())
        assert server["type"] == "http" and server["name"] == "agw"
        assert server["url"] == f"{agwd.data_url}/tools"
        headers = {h["name"].lower(): h["value"] for h in server["headers"]}
        token = headers["x-agw-acp-session"]
        assert token and token != session and bearer not in token
        # the agent's credential is a session token standing for the key, never the key
        assert headers["authorization"] == f"Bearer {token}"
        assert bearer not in first.text

        second = gw.turn("/agent", {"thread_id": "t1", "input": "llm hello there"})
        assert second.session_id == session  # the same pooled agent
        assert "llm: echo: hello there" in second.text, second.events
        (sent,) = [r for r in fake.requests() if r["path"] == "/v1/chat/completions"]
        assert bearer not in json.dumps(sent)  # the virtual key stays at the gateway
        (llm,) = usage_rows(agwd.db_path, "llm_usage_events", "route_id = 'llm'")
        assert llm["acp_session_id"] == session and llm["virtual_key_id"] == "agent-key"
        assert llm["status_code"] == 200 and llm["usage_source"] == "provider"

        # the agent's MCP client, as it was told to connect: every call is attributed
        with httpx.Client(trust_env=False, timeout=30) as client:
            r = client.post(
                server["url"],
                headers={**headers, "accept": "application/json, text/event-stream"},
                json={"jsonrpc": "2.0", "id": 1, "method": "initialize",
                      "params": {"protocolVersion": "2025-11-25", "capabilities": {},
                                 "clientInfo": {"name": "agent", "version": "1"}}},
            )  # fmt: skip
            assert r.status_code == 200, r.text
        (mcp,) = usage_rows(agwd.db_path, "mcp_usage_events", "route_id = 'tools'")
        assert mcp["acp_session_id"] == session and mcp["virtual_key_id"] == "agent-key"

        # once the agent is gone its credential is refused
        with agwd.client() as admin:
            r = admin.delete("/admin/acp/runtime/threads/agent/t1")
            assert r.status_code == 200 and r.json()["closed"] == 1, r.text
        with httpx.Client(trust_env=False, timeout=30) as client:
            r = client.post(
                f"{agwd.data_url}/llm/v1/chat/completions",
                headers={"authorization": f"Bearer {token}"},
                json={"model": "m", "messages": [{"role": "user", "content": "x"}]},
            )
            assert r.status_code == 401, r.text

        # a request with the key itself and no token is not attributed
        with httpx.Client(trust_env=False, timeout=30) as client:
            r = client.post(
                f"{agwd.data_url}/llm/v1/chat/completions",
                headers={"authorization": f"Bearer {bearer}"},
                json={"model": "m", "messages": [{"role": "user", "content": "x"}]},
            )
            assert r.status_code == 200
        found = usage_rows(
            agwd.db_path, "llm_usage_events", "route_id = 'llm' AND status_code = 200", count=2
        )
        assert sorted(str(r["acp_session_id"]) for r in found) == sorted([session, "None"])
