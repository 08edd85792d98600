"""The dispatcher's own refusals, through a real agwd: ``Host`` and ``Origin`` on the routes a
browser page could use (agw.dataplane.EdgeCheck, docs/security.md "Browsers and DNS
rebinding"), and the bounded trace headers (``X-Agent-Depth``), each answered in the route's
dialect and recorded as a usage row."""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from tests.fakes.run import FakeUpstream, start_fake_upstream
from tests.support.acp import FakeAgentHandle
from tests.support.agwd import Agwd, AgwdLauncher
from tests.support.mcp_server import McpServerHandle, run_mcp_server

INIT = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {
        "protocolVersion": "2025-06-18",
        "capabilities": {},
        "clientInfo": {"name": "t", "version": "1"},
    },
}
CHAT: dict[str, Any] = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
TURN = {"thread_id": "t1", "input": "hi"}
MCP_ACCEPT = {"accept": "application/json, text/event-stream"}


@pytest.fixture(scope="module")
def fake(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeUpstream]:
    with start_fake_upstream(tmp_path_factory.mktemp("fake")) as f:
        yield f


@pytest.fixture(scope="module")
def mcp_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[McpServerHandle]:
    with run_mcp_server(tmp_path_factory.mktemp("mcp"), "streamable-http", "alpha") as server:
        yield server


@pytest.fixture(scope="module")
def gw(
    module_agwd_factory: AgwdLauncher,
    tmp_path_factory: pytest.TempPathFactory,
    fake: FakeUpstream,
    mcp_server: McpServerHandle,
) -> Agwd:
    tmp = tmp_path_factory.mktemp("bundle")
    (tmp / "state").mkdir()
    agent = FakeAgentHandle(state=tmp / "state", workdir=tmp)
    bundle = {
        "apiVersion": "gateway.agw/v1alpha1",
        "kind": "GatewayBundle",
        "providers": [{"id": "fake", "provider_type": "openai", "base_url": f"{fake.url}/v1"}],
        "llmRoutes": [
            {
                "id": "open",
                "protocol": "openai",
                "match_policy": {"path_prefix": "/open"},
                "target_policy": {"provider_id": "fake"},
            },
            {
                "id": "open-an",
                "protocol": "anthropic",
                "match_policy": {"path_prefix": "/an"},
                "target_policy": {"provider_id": "fake"},
            },
            {
                "id": "named",
                "protocol": "openai",
                "match_policy": {"path_prefix": "/open", "host": "llm.internal.example"},
                "target_policy": {"provider_id": "fake"},
            },
            {
                "id": "keyed",
                "protocol": "openai",
                "match_policy": {"path_prefix": "/keyed"},
                "auth_policy": {"require_virtual_key": True},
                "target_policy": {"provider_id": "fake"},
            },
        ],
        "mcpServices": [mcp_server.service_config("alpha")],
        "mcpRoutes": [
            {"id": "tools", "service_id": "alpha", "match_policy": {"path_prefix": "/tools"}},
        ],
        "acpServices": [agent.service_config("agent")],
        "acpRoutes": [
            {"id": "agent", "service_id": "agent", "match_policy": {"path_prefix": "/agent"}},
        ],
    }
    static = tmp / "bundle.yaml"
    static.write_text(json.dumps(bundle))
    agwd = module_agwd_factory.start(
        "--allowed-host",
        "gw.example",
        "--allowed-origin",
        "https://app.example",
        static=static,
    )
    with agwd.client() as admin:
        r = admin.post("/admin/virtual_keys", json={"id": "team"})
        assert r.status_code in (200, 201), r.text
        agwd.env["VK"] = r.json()["key"]
    return agwd


def rows(gw: Agwd, table: str, where: str, count: int = 1) -> list[dict[str, Any]]:
    deadline = time.monotonic() + 10
    found: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        with sqlite3.connect(gw.db_path) as db:
            db.row_factory = sqlite3.Row
            found = [dict(r) for r in db.execute(f"SELECT * FROM {table} WHERE {where}")]
        if len(found) >= count:
            break
        time.sleep(0.05)
    return found


def port_of(gw: Agwd) -> int:
    return int(gw.data_url.rsplit(":", 1)[1])


# Host: a DNS-rebinding page reaches the loopback listener under its own name


def test_openai_sdk_with_a_rebinding_host_is_refused(gw: Agwd, fake: FakeUpstream) -> None:
    fake.clear()
    host = f"rebind.example:{port_of(gw)}"
    client = openai.OpenAI(
        base_url=f"{gw.data_url}/open/v1",
        api_key="unused",
        max_retries=0,
        default_headers={"Host": host, "Origin": f"http://{host}"},
    )
    with pytest.raises(openai.APIStatusError) as caught:
        client.chat.completions.create(**CHAT)
    assert caught.value.status_code == 421
    body: Any = caught.value.body
    assert "not served here" in body["message"]
    assert fake.requests() == []
    row = rows(gw, "llm_usage_events", "route_id = 'open' AND status_code = 421")
    assert row and row[0]["error_type"] == "host_not_allowed"


@pytest.mark.parametrize(
    "host", ["127.0.0.1:{port}", "localhost:{port}", "gw.example", "GW.EXAMPLE.:{port}", ""]
)
def test_trusted_hosts_are_served(gw: Agwd, host: str) -> None:
    headers = {"host": host.format(port=port_of(gw))} if host else {}
    with httpx.Client(trust_env=False, timeout=10) as http:
        r = http.post(f"{gw.data_url}/open/v1/chat/completions", json=CHAT, headers=headers)
    assert r.status_code == 200, r.text


def test_a_route_with_a_match_host_trusts_that_host(gw: Agwd) -> None:
    """``llm.internal.example`` is not listed, but the ``named`` route matches it."""
    with httpx.Client(trust_env=False, timeout=10) as http:
        headers = {"host": "llm.internal.example", "origin": "http://llm.internal.example"}
        r = http.post(f"{gw.data_url}/open/v1/chat/completions", json=CHAT, headers=headers)
    assert r.status_code == 200, r.text
    assert rows(gw, "llm_usage_events", "route_id = 'named' AND status_code = 200")


# Origin: a page on another site posting without a preflight


@pytest.mark.parametrize(
    "origin",
    [
        "https://evil.example",
        "null",
        "http://localhost:3000",  # another local site (a dev server's page)
        "http://127.0.0.1",  # port 80: not this listener's origin
        "https://app.example.evil.example",
        "http://gw.example:1",
        "not a url",
    ],
)
def test_cross_site_text_plain_post_to_an_open_llm_route_is_403(
    gw: Agwd, fake: FakeUpstream, origin: str
) -> None:
    fake.clear()
    with httpx.Client(trust_env=False, timeout=10) as http:
        r = http.post(
            f"{gw.data_url}/open/v1/chat/completions",
            content=json.dumps(CHAT),
            headers={"content-type": "text/plain", "origin": origin},
        )
    assert r.status_code == 403, r.text
    assert r.json()["error"]["type"] == "permission_error"
    assert "Origin" in r.json()["error"]["message"]
    assert fake.requests() == []


def test_anthropic_dialect_and_allowed_origins(gw: Agwd) -> None:
    with httpx.Client(trust_env=False, timeout=10) as http:
        r = http.post(
            f"{gw.data_url}/an/v1/messages",
            json={"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]},
            headers={"origin": "https://evil.example"},
        )
        assert r.status_code == 403
        assert r.json()["type"] == "error" and r.json()["error"]["type"] == "permission_error"
        own = {"origin": gw.data_url}  # the page was served by this listener itself
        listed = {"origin": "https://app.example"}
        for headers in (own, listed):
            r = http.post(f"{gw.data_url}/open/v1/chat/completions", json=CHAT, headers=headers)
            assert r.status_code == 200, (headers, r.text)


def test_a_keyed_llm_route_is_not_origin_checked(gw: Agwd) -> None:
    """A page cannot hold the key: a browser app calling with its own key still works."""
    with httpx.Client(trust_env=False, timeout=10) as http:
        r = http.post(
            f"{gw.data_url}/keyed/v1/chat/completions",
            json=CHAT,
            headers={"origin": "https://evil.example", "authorization": f"Bearer {gw.env['VK']}"},
        )
    assert r.status_code == 200, r.text


def test_mcp_route_refuses_rebinding_and_foreign_origins(gw: Agwd) -> None:
    host = f"rebind.example:{port_of(gw)}"
    with httpx.Client(trust_env=False, timeout=10) as http:
        url = f"{gw.data_url}/tools/mcp"
        r = http.post(url, json=INIT, headers={**MCP_ACCEPT, "host": host})
        assert r.status_code == 421
        assert r.json()["error"]["code"] == -32600
        r = http.post(url, json=INIT, headers={**MCP_ACCEPT, "origin": "http://localhost:5173"})
        assert r.status_code == 403 and r.json()["error"]["code"] == -32600
        r = http.post(url, json=INIT, headers={**MCP_ACCEPT, "origin": gw.data_url})
        assert r.status_code == 200, r.text
    assert rows(gw, "mcp_usage_events", "route_id = 'tools' AND error_type = 'host_not_allowed'")


def test_acp_route_refuses_rebinding_and_foreign_origins(gw: Agwd) -> None:
    host = f"rebind.example:{port_of(gw)}"
    with httpx.Client(trust_env=False, timeout=10) as http:
        url = f"{gw.data_url}/agent/turn"
        r = http.post(url, json=TURN, headers={"host": host})
        assert r.status_code == 421 and "not served here" in r.json()["error"]
        r = http.post(url, json=TURN, headers={"origin": "https://evil.example"})
        assert r.status_code == 403 and "Origin" in r.json()["error"]
    assert rows(gw, "acp_usage_events", "route_id = 'agent' AND error_type = 'origin_not_allowed'")


# X-Agent-Depth: a client-supplied number, bounded before it reaches a row


@pytest.mark.parametrize("depth", ["9" * 5000, "1001", "-1", "\u00b2", "18446744073709551616"])
def test_an_unbounded_agent_depth_is_a_400_on_every_route_kind(gw: Agwd, depth: str) -> None:
    with httpx.Client(trust_env=False, timeout=10) as http:
        # latin-1: the superscript two goes on the wire as one byte, as a client could send it
        headers = {b"x-agent-depth": depth.encode("latin-1")}
        calls: list[tuple[str, str, dict[str, Any], dict[str, str]]] = [
            ("open", f"{gw.data_url}/open/v1/chat/completions", CHAT, {}),
            ("keyed", f"{gw.data_url}/keyed/v1/chat/completions", CHAT, {}),  # before the key
            ("tools", f"{gw.data_url}/tools/mcp", INIT, MCP_ACCEPT),
            ("agent", f"{gw.data_url}/agent/turn", TURN, {}),
        ]
        for route, url, body, extra in calls:
            extra_headers = {k.encode(): v.encode() for k, v in extra.items()}
            r = http.post(url, json=body, headers={**headers, **extra_headers})
            assert r.status_code == 400, (route, r.text)
            assert "X-Agent-Depth" in r.text, route
        # the usage rows of the refusals land (a huge depth no longer breaks the batch insert)
        r = http.post(f"{gw.data_url}/open/v1/chat/completions", json=CHAT)
        assert r.status_code == 200
    for table, route in (
        ("llm_usage_events", "open"),
        ("mcp_usage_events", "tools"),
        ("acp_usage_events", "agent"),
    ):
        found = rows(gw, table, f"route_id = '{route}' AND error_type = 'invalid_header'")
        assert found and all(row["agent_depth"] == 0 for row in found), table


def test_a_repeated_header_is_read_as_its_values_joined(gw: Agwd) -> None:
    """Two ``X-Agent-Depth`` fields are one value, "1, 2" (RFC 9110's joining), not the last
    one: a number neither field alone would make, so refused; one field is taken."""
    with httpx.Client(trust_env=False, timeout=10) as http:
        url = f"{gw.data_url}/open/v1/chat/completions"
        r = http.post(url, json=CHAT, headers=[("x-agent-depth", "1"), ("x-agent-depth", "2")])
        assert r.status_code == 400 and "X-Agent-Depth" in r.text
        r = http.post(url, json=CHAT, headers=[("x-agent-depth", "2"), ("x-other", "x")])
        assert r.status_code == 200 and r.headers["x-agent-depth"] == "3"


def test_a_bounded_agent_depth_is_echoed(gw: Agwd) -> None:
    with httpx.Client(trust_env=False, timeout=10) as http:
        r = http.post(
            f"{gw.data_url}/open/v1/chat/completions",
            json=CHAT,
            headers={"x-agent-depth": "1000", "tracestate": "a=" + "b" * 600},
        )
    assert r.status_code == 200
    assert r.headers["x-agent-depth"] == "1001"
    assert "tracestate" not in r.headers  # over W3C's 512 characters: dropped
