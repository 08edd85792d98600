"""JWT callers on the MCP and ACP planes through a real agwd: the official ``mcp`` client in both
eras sending a JWT, the JWT forwarded only to a service that asks for it, an ACP route behind a
JWT refused before any agent starts."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from tests.support.acp import AcpGateway, FakeAgentHandle
from tests.support.agwd import Agwd, AgwdLauncher
from tests.support.jwt import TokenMinter
from tests.support.mcp import sync
from tests.support.mcp_server import McpServerHandle, run_mcp_server


@pytest.fixture(scope="module")
def minter() -> TokenMinter:
    return TokenMinter("ES256")


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, McpServerHandle]]:
    base = tmp_path_factory.mktemp("mcp")
    with (
        run_mcp_server(base, "streamable-http", "fwd", json_response=True) as fwd,
        run_mcp_server(base, "streamable-http", "kept", json_response=True) as kept,
    ):
        yield {"fwd": fwd, "kept": kept}


@pytest.fixture(scope="module")
def agent(tmp_path_factory: pytest.TempPathFactory) -> FakeAgentHandle:
    base = tmp_path_factory.mktemp("acp")
    (base / "state").mkdir()
    (base / "work").mkdir()
    return FakeAgentHandle(state=base / "state", workdir=base / "work")


@pytest.fixture(scope="module")
def gw(
    module_agwd_factory: AgwdLauncher,
    servers: dict[str, McpServerHandle],
    minter: TokenMinter,
    agent: FakeAgentHandle,
) -> Agwd:
    agwd = module_agwd_factory.start()
    jwt_auth = {"jwt_provider_ids": ["corp"]}
    bundle = {
        "apiVersion": "gateway.agw/v1alpha1",
        "kind": "GatewayBundle",
        "jwtProviders": [minter.provider("corp")],
        "mcpServices": [
            servers["fwd"].service_config("fwd", forward_client_token=True),
            servers["kept"].service_config("kept", auth={"type": "bearer", "api_key": "svc-key"}),
        ],
        "mcpRoutes": [
            {"service_id": "fwd", "match_policy": {"path_prefix": "/fwd"}, "auth_policy": jwt_auth},
            {
                "service_id": "kept",
                "match_policy": {"path_prefix": "/kept"},
                "auth_policy": jwt_auth,
            },
        ],
        "acpServices": [agent.service_config("agent")],
        "acpRoutes": [
            {
                "service_id": "agent",
                "match_policy": {"path_prefix": "/acp"},
                "auth_policy": jwt_auth,
            }
        ],
    }
    with agwd.client() as c:
        r = c.post("/admin/gateway/apply", json={"bundle": bundle})
        assert r.status_code == 200, r.text
    return agwd


@contextlib.asynccontextmanager
async def _client(url: str, token: str | None, mode: str) -> AsyncIterator[Client]:
    headers = {"authorization": f"Bearer {token}"} if token else {}
    async with (
        httpx.AsyncClient(headers=headers, timeout=30) as http,
        Client(streamable_http_client(url, http_client=http), mode=mode) as client,  # type: ignore[arg-type]
    ):
        yield client


def _whoami(result: Any) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(result.content[0].text)
    return data


@pytest.mark.parametrize("mode", ["auto", "legacy"])
def test_mcp_client_with_a_jwt_and_forwarding(gw: Agwd, minter: TokenMinter, mode: str) -> None:
    token = minter.token("dana", email="dana@example.com")

    @sync
    async def case() -> None:
        async with _client(f"{gw.data_url}/fwd", token, mode) as client:
            seen = _whoami(await client.call_tool("whoami", {}))
            assert seen["authorization"] == f"Bearer {token}"  # forward_client_token: true
        async with _client(f"{gw.data_url}/kept", token, mode) as client:
            seen = _whoami(await client.call_tool("whoami", {}))
            # the service's own credential, never the caller's JWT
            assert seen["authorization"] == "Bearer svc-key"
            assert token not in json.dumps(seen)

    case()


def test_mcp_without_a_token_is_401_naming_the_resource_metadata(gw: Agwd) -> None:
    r = httpx.post(
        f"{gw.data_url}/kept",
        headers={"accept": "application/json, text/event-stream"},
        json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"},
    )
    assert r.status_code == 401
    challenge = r.headers["www-authenticate"]
    assert challenge.startswith("Bearer ")
    assert f'resource_metadata="{gw.data_url}/.well-known/oauth-protected-resource/kept"' in (
        challenge
    )


def test_acp_route_behind_a_jwt(gw: Agwd, minter: TokenMinter, agent: FakeAgentHandle) -> None:
    acp = AcpGateway(gw, agent)
    body = {"thread_id": "t-jwt", "input": "hello"}
    refused = acp.turn("/acp", body)
    assert refused.status == 401, refused
    assert refused.headers["www-authenticate"].startswith("Bearer")
    expired = acp.turn("/acp", body, authorization=f"Bearer {minter.token(exp_in=-600)}")
    assert expired.status == 401 and "expired" in json.dumps(expired.events[0].data)
    assert not agent.pids()  # refused before any agent started
    done = acp.turn("/acp", body, authorization=f"Bearer {minter.token('erin')}")
    assert done.status == 200, done
    assert "hello" in done.text


def test_two_jwt_users_never_share_an_mcp_session(gw: Agwd, minter: TokenMinter) -> None:
    """Sessions belong to the JWT's subject: another person behind the same route and provider
    cannot use a session id they learned."""
    alice, bob = minter.token("alice"), minter.token("bob")
    accept = {"accept": "application/json, text/event-stream"}
    init = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {
            "protocolVersion": "2025-11-25",
            "capabilities": {},
            "clientInfo": {"name": "t", "version": "1"},
        },
    }
    with httpx.Client(base_url=gw.data_url, timeout=30) as http:
        r = http.post("/kept", json=init, headers={**accept, "authorization": f"Bearer {alice}"})
        assert r.status_code == 200, r.text
        sid = r.headers["mcp-session-id"]
        listing = {"jsonrpc": "2.0", "id": 2, "method": "tools/list"}
        mine = {**accept, "mcp-session-id": sid, "mcp-protocol-version": "2025-11-25"}
        r = http.post("/kept", json=listing, headers={**mine, "authorization": f"Bearer {alice}"})
        assert r.status_code == 200, r.text
        r = http.post("/kept", json=listing, headers={**mine, "authorization": f"Bearer {bob}"})
        assert r.status_code == 404, r.text
        # the same person with a fresh token keeps the session
        again = minter.token("alice", exp_in=900)
        r = http.post("/kept", json=listing, headers={**mine, "authorization": f"Bearer {again}"})
        assert r.status_code == 200, r.text
