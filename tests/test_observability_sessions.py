"""One agent session id across LLM, MCP and ACP, end to end through a real agwd.

Real traffic with the official clients: the openai SDK carrying each agent session header, the
mcp client carrying a header or ``params._meta["agent-session-id"]``, and an ACP turn of a
gateway-run fake agent whose own LLM and MCP calls come back through the gateway. Then the same
id is found on the usage rows, in the session timeline (``/admin/metrics/sessions/{id}``) and in
the access log, which holds no key.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from pathlib import Path
from typing import Any, cast

import httpx
import openai
import pytest
from mcp import Client
from mcp.types import RequestParamsMeta
from prometheus_client.parser import text_string_to_metric_families

from tests.fakes.run import start_fake_upstream
from tests.support.acp import AcpGateway, FakeAgentHandle
from tests.support.agwd import AgwdLauncher, usage_rows
from tests.support.mcp_server import run_mcp_server

HEADERS = ("agent-session-id", "goose-session-id", "x-claude-code-session-id", "x-session-id",
           "session-id")  # fmt: skip


def read_log(path: Path, count: int, where: Any = lambda line: True) -> list[dict[str, Any]]:
    """The access-log lines matching ``where``, once there are ``count`` (bounded: 10 s)."""
    deadline = time.monotonic() + 10
    found: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        text = path.read_text() if path.exists() else ""
        found = [json.loads(line) for line in text.splitlines() if line.strip()]
        found = [line for line in found if where(line)]
        if len(found) >= count:
            return found
        time.sleep(0.05)
    raise AssertionError(f"{len(found)} access-log lines, wanted {count}: {found}")


@pytest.fixture
def fake_agent_handle(tmp_path: Path) -> FakeAgentHandle:
    state, work = tmp_path / "fake-acp-state", tmp_path / "work"
    state.mkdir()
    work.mkdir()
    return FakeAgentHandle(state=state, workdir=work)


def test_one_session_id_across_llm_mcp_and_acp(
    agwd_factory: AgwdLauncher, fake_agent_handle: FakeAgentHandle, tmp_path: Path
) -> None:
    access = tmp_path / "access.log"
    with (
        start_fake_upstream(tmp_path / "llm") as fake,
        run_mcp_server(tmp_path / "mcp", "streamable-http", "alpha") as alpha,
    ):
        agwd = agwd_factory.start("--access-log", str(access))
        with agwd.client() as admin:
            r = admin.post("/admin/virtual_keys", json={"id": "k"})
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
                    fake_agent_handle.service_config(
                        "agent",
                        gateway_origin={"mcp_route_id": "tools", "llm_route_id": "llm",
                                        "virtual_key_id": "k"},
                    )
                ],
                "acpRoutes": [
                    {"id": "agent", "service_id": "agent",
                     "match_policy": {"path_prefix": "/agent"}},
                ],
            }  # fmt: skip
            r = admin.post("/admin/gateway/apply", json={"bundle": bundle})
            assert r.status_code == 200, r.text

        # -- LLM: each agent's session header, through the openai SDK
        for header in HEADERS:
            client = openai.OpenAI(
                base_url=f"{agwd.data_url}/llm/v1",
                api_key=bearer,
                max_retries=0,
                timeout=20,
                default_headers={header: f"s-{header}"},
            )
            answer = client.chat.completions.create(
                model="m", messages=[{"role": "user", "content": "hi"}]
            )
            assert answer.choices[0].message.content
        # the first header of the list wins when several are sent
        client = openai.OpenAI(
            base_url=f"{agwd.data_url}/llm/v1", api_key=bearer, max_retries=0, timeout=20,
            default_headers={"session-id": "codex-id", "agent-session-id": "winner"},
        )  # fmt: skip
        client.chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}])
        # a stream: its row and line carry the session, its line the time to first token
        chunks = list(
            client.chat.completions.create(
                model="m", messages=[{"role": "user", "content": "stream"}], stream=True
            )
        )
        assert chunks
        rows = usage_rows(agwd.db_path, "llm_usage_events", "route_id = 'llm'", count=7)
        assert sorted(r["session_id"] for r in rows) == sorted(
            [f"s-{h}" for h in HEADERS] + ["winner", "winner"]
        )

        # -- MCP: a session header, and params._meta["agent-session-id"], with the mcp client
        async def mcp_calls() -> None:
            import httpx2
            from mcp.client.streamable_http import streamable_http_client

            auth = {"Authorization": f"Bearer {bearer}"}
            async with (
                httpx2.AsyncClient(headers={**auth, "x-session-id": "s-mcp-h"}, timeout=30) as h,
                Client(streamable_http_client(f"{agwd.data_url}/tools", http_client=h)) as mcp,
            ):
                await mcp.call_tool("echo", {"message": "by header"})
            async with (
                httpx2.AsyncClient(headers=auth, timeout=30) as h,
                Client(streamable_http_client(f"{agwd.data_url}/tools", http_client=h)) as mcp,
            ):
                await mcp.call_tool(
                    "echo",
                    {"message": "by meta"},
                    meta=cast(RequestParamsMeta, {"agent-session-id": "s-mcp-meta"}),
                )

        asyncio.run(mcp_calls())
        calls = usage_rows(
            agwd.db_path, "mcp_usage_events", "route_id = 'tools' AND method = 'tools/call'", 2
        )
        assert sorted(r["session_id"] for r in calls) == ["s-mcp-h", "s-mcp-meta"]

        # -- ACP: a gateway-run agent; its own LLM and MCP calls carry its ACP session
        gw = AcpGateway(agwd, fake_agent_handle)
        first = gw.turn("/agent", {"thread_id": "t1", "input": "mcp"})
        assert first.names[-1] == "done", first.events
        session = first.session_id
        (server,) = json.loads(first.text.strip())
        agent_headers = {h["name"].lower(): h["value"] for h in server["headers"]}
        second = gw.turn("/agent", {"thread_id": "t1", "input": "llm hello"})
        assert second.session_id == session and "llm: echo: hello" in second.text
        with httpx.Client(trust_env=False, timeout=30) as http:
            r = http.post(
                server["url"],
                headers={**agent_headers, "accept": "application/json, text/event-stream",
                         "x-session-id": "ignored-for-agents"},
                json={"jsonrpc": "2.0", "id": 1, "method": "initialize",
                      "params": {"protocolVersion": "2025-11-25", "capabilities": {},
                                 "clientInfo": {"name": "agent", "version": "1"}}},
            )  # fmt: skip
            assert r.status_code == 200, r.text
        (llm,) = usage_rows(agwd.db_path, "llm_usage_events", f"session_id = '{session}'")
        assert llm["acp_session_id"] == session
        (mcp,) = usage_rows(agwd.db_path, "mcp_usage_events", f"session_id = '{session}'")
        assert mcp["method"] == "initialize" and mcp["acp_session_id"] == session
        turns = usage_rows(agwd.db_path, "acp_usage_events", f"session_id = '{session}'", 2)
        assert {t["operation"] for t in turns} == {"turn"}

        # -- the session timeline: the turns, the agent's LLM call and its MCP call, in order
        with agwd.client() as admin:
            r = admin.get(f"/admin/metrics/sessions/{session}")
            assert r.status_code == 200, r.text
            timeline = r.json()
            assert timeline["session_id"] == session
            kinds = [item["kind"] for item in timeline["items"]]
            assert sorted(kinds) == ["acp", "acp", "llm", "mcp"], timeline
            ats = [item["at"] for item in timeline["items"]]
            assert ats == sorted(ats)
            assert timeline["totals"]["llm"]["request_count"] == 1
            assert timeline["totals"]["llm"]["total_tokens"] == llm["total_tokens"]
            assert timeline["totals"]["acp"]["turn_count"] == 2
            assert timeline["totals"]["mcp"]["request_count"] == 1
            r = admin.get("/admin/metrics/sessions/s-x-session-id")
            assert r.status_code == 200 and len(r.json()["items"]) == 1, r.text
            r = admin.get("/admin/metrics/sessions/nobody")
            assert r.status_code == 404, r.text

        # -- the access log: the same ids, every kind, and never the key
        lines = read_log(access, 4, lambda line: line.get("session_id") == session)
        assert sorted(line["kind"] for line in lines) == ["acp", "acp", "llm", "mcp"]
        (llm_line,) = [line for line in lines if line["kind"] == "llm"]
        assert llm_line["route_id"] == "llm" and llm_line["upstream"] == "fake"
        assert llm_line["method"] == "POST" and llm_line["path"] == "/llm/v1/chat/completions"
        assert llm_line["status"] == 200 and llm_line["error_class"] == "none"
        assert llm_line["tokens_in"] == llm["input_tokens"]
        assert llm_line["tokens_out"] == llm["output_tokens"]
        assert llm_line["trace_id"] == llm["trace_id"] and llm_line["virtual_key_id"] == "k"
        assert 0 <= llm_line["overhead_ms"] <= llm_line["latency_ms"] + 1
        header_lines = read_log(access, 1, lambda line: line.get("session_id") == "s-mcp-meta")
        assert header_lines[0]["tool"] == "echo" and header_lines[0]["upstream"] == "alpha"
        assert 0 <= header_lines[0]["overhead_ms"] <= header_lines[0]["latency_ms"] + 1
        text = access.read_text()
        assert bearer not in text and agent_headers["x-agw-acp-session"] not in text
        assert "hello" not in text  # no prompt, no completion

        # an unknown route and a refused key get their lines too
        with httpx.Client(trust_env=False, timeout=10) as http:
            assert http.get(f"{agwd.data_url}/nowhere").status_code == 404
            wrong = {"authorization": "Bearer vk-wrong-key-0123456789abcdef"}
            url = f"{agwd.data_url}/llm/v1/chat/completions"
            r = http.post(url, json={"model": "m"}, headers=wrong)
            assert r.status_code == 401
        (streamed,) = read_log(access, 1, lambda line: "ttft_ms" in line)
        assert streamed["session_id"] == "winner"
        assert 0 < streamed["ttft_ms"] <= streamed["latency_ms"] + 1
        (miss,) = read_log(access, 1, lambda line: line.get("path") == "/nowhere")
        assert miss["status"] == 404 and miss["error_class"] == "client"
        refused = read_log(access, 1, lambda line: line.get("status") == 401)
        assert refused[0]["error_class"] == "policy"
        assert "vk-wrong-key" not in access.read_text()

        # the Prometheus scrape agrees with the traffic
        with agwd.client() as admin:
            r = admin.get("/admin/metrics/prometheus")
            assert r.status_code == 200, r.text
            assert r.headers["content-type"].startswith("text/plain; version=0.0.4")
        samples = {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(r.text)
            for s in family.samples
        }
        assert samples[("agentgateway_usage_requests_total", (("kind", "llm"),))] == 9
        assert samples[("agentgateway_usage_requests_total", (("kind", "acp"),))] == 2
        tools = (("result", "success"), ("route_id", "tools"), ("service_id", "alpha"),
                 ("tool", "echo"))  # fmt: skip
        assert samples[("agw_mcp_tool_calls_total", tools)] == 2
        ttft = (("model", "m"), ("provider_id", "fake"), ("route_id", "llm"))
        assert samples[("agw_llm_time_to_first_token_seconds_count", ttft)] == 1
        assert samples[("agw_requests_total", (("error_class", "policy"), ("kind", "llm"),
                                               ("route_id", "llm")))] == 1  # fmt: skip
        assert session not in r.text and "winner" not in r.text  # no session ids as labels

        # SIGHUP after rotation: the next lines go to a new file
        rotated = access.with_suffix(".1")
        access.rename(rotated)
        os.kill(agwd.proc.pid, signal.SIGHUP)
        deadline = time.monotonic() + 10
        while not access.exists() and time.monotonic() < deadline:  # reopened by the signal
            time.sleep(0.05)
        with httpx.Client(trust_env=False, timeout=10) as http:
            http.get(f"{agwd.data_url}/after-rotation")
        assert read_log(access, 1, lambda line: line.get("path") == "/after-rotation")
        assert "/after-rotation" not in rotated.read_text()
