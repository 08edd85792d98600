"""CEL authorization rules on MCP routes (docs/security.md, "On MCP routes"), through a real agwd
with the official ``mcp`` client in both eras (``auto``: the stateless 2026-07-28 era; ``legacy``:
the initialize handshake) and two fake MCP servers behind it (``alpha``, ``beta``: the same tools,
so a multiplexed route presents ``alpha_echo`` and ``beta_echo``).

What is proven: lists are filtered per caller (tools, prompts, resources, templates); a denied
``tools/call`` / ``prompts/get`` / ``resources/read`` is JSON-RPC error -32003 naming the item
and the rule, recorded as a refused usage row; allowed calls work; rules see the upstream's tool
name and ``mcp.tool.service``; rules on the virtual key's tags and on JWT principals; a deny
rule on the caller alone refuses the handshake while an allow rule about tools never does; a
rule that fails to evaluate denies and is logged by name."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
from mcp import Client
from mcp.client.sse import sse_client
from mcp.shared.exceptions import MCPError

from tests.support.agwd import Agwd, AgwdLauncher, usage_rows
from tests.support.jwt import TokenMinter
from tests.support.mcp import BOTH, META, MODERN, post, rpc, sync
from tests.support.mcp_server import McpServerHandle, run_mcp_server

FORBIDDEN = -32003
MODES = ["auto", "legacy"]
FAKE_TOOLS = {"echo", "add", "slow", "fail", "whoami", "log", "ask"}

ROUTES: list[dict[str, Any]] = [
    {   # multiplexed: rules see the upstream's name and the service
        "id": "r-tools", "service_ids": ["alpha", "beta"],
        "match_policy": {"path_prefix": "/tools"},
        "authorization": {"allow": [
            'mcp.method != "tools/call"',
            'mcp.tool.service == "alpha" && mcp.tool.name in ["echo", "add"]',
        ]},
    },
    {   # one service: prompts and resources denied by name / URI
        "id": "r-items", "service_id": "alpha",
        "match_policy": {"path_prefix": "/items"},
        "authorization": {"deny": [
            'mcp.prompt.name == "greet"',
            'mcp.resource.uri == "res://alpha/changelog"',
            'mcp.resource.uri.startsWith("res://alpha/items/")',
        ]},
    },
    {   # the virtual key's tags
        "id": "r-tags", "service_id": "alpha",
        "match_policy": {"path_prefix": "/tags"},
        "auth_policy": {"require_virtual_key": True},
        "authorization": {"allow": ['"eng" in key.tags']},
    },
    {   # a deny rule on the caller alone keeps it out of the route
        "id": "r-blocked", "service_id": "alpha",
        "match_policy": {"path_prefix": "/blocked"},
        "auth_policy": {"require_virtual_key": True},
        "authorization": {"deny": ['key.id == "vk-ops"']},
    },
    {   # JWT principals
        "id": "r-jwt", "service_ids": ["alpha", "beta"],
        "match_policy": {"path_prefix": "/jwt"},
        "auth_policy": {"jwt_provider_ids": ["corp"]},
        "authorization": {
            "allow": [
                '"eng" in principal.groups && mcp.tool.service == "alpha"',
                'principal.user == "root@example.com"',
            ],
            "deny": ['principal.user == "mallory@example.com"'],
        },
    },
    {   # a rule that cannot be evaluated for a caller without the claim
        "id": "r-broken", "service_id": "alpha",
        "match_policy": {"path_prefix": "/broken"},
        "authorization": {"allow": ['jwt.dept == "eng"']},
    },
    {   # no rules: as before
        "id": "r-open", "service_ids": ["alpha", "beta"],
        "match_policy": {"path_prefix": "/open"},
    },
]  # fmt: skip


@pytest.fixture(scope="module")
def minter() -> TokenMinter:
    return TokenMinter("ES256")


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, McpServerHandle]]:
    base = tmp_path_factory.mktemp("mcp-authz")
    with (
        run_mcp_server(base, "streamable-http", "alpha") as alpha,
        run_mcp_server(base, "streamable-http", "beta") as beta,
    ):
        yield {"alpha": alpha, "beta": beta}


class Gw:
    def __init__(self, agwd: Agwd) -> None:
        self.agwd = agwd
        self.keys: dict[str, str] = {}

    def url(self, prefix: str) -> str:
        return self.agwd.data_url + prefix

    def rows(self, where: str, args: tuple[Any, ...] = (), count: int = 1) -> list[dict[str, Any]]:
        return usage_rows(self.agwd.db_path, "mcp_usage_events", where, count, args)


@pytest.fixture(scope="module")
def gw(
    module_agwd_factory: AgwdLauncher,
    servers: dict[str, McpServerHandle],
    minter: TokenMinter,
) -> Gw:
    agwd = module_agwd_factory.start()
    bundle = {
        "apiVersion": "gateway.agw/v1alpha1",
        "kind": "GatewayBundle",
        "jwtProviders": [minter.provider("corp")],
        "mcpServices": [servers["alpha"].service_config(), servers["beta"].service_config()],
        "mcpRoutes": ROUTES,
    }
    gateway = Gw(agwd)
    with agwd.client() as admin:
        r = admin.post("/admin/gateway/apply", json={"bundle": bundle})
        assert r.status_code == 200, r.text
        for name, tag in (("eng", "eng"), ("ops", "ops")):
            r = admin.post("/admin/virtual_keys", json={"id": f"vk-{name}", "tag": tag})
            assert r.status_code in (200, 201), r.text
            gateway.keys[name] = r.json()["key"]
    return gateway


@contextlib.asynccontextmanager
async def connect(url: str, mode: str, token: str | None = None) -> AsyncIterator[Client]:
    """The official client, with ``Authorization: Bearer <token>`` when given."""
    import httpx2
    from mcp.client.streamable_http import streamable_http_client

    headers = {"authorization": f"Bearer {token}"} if token else {}
    async with (
        httpx2.AsyncClient(headers=headers, timeout=30) as http,
        Client(streamable_http_client(url, http_client=http), mode=mode) as client,
    ):
        yield client


async def tool_names(client: Client) -> set[str]:
    return {t.name for t in (await client.list_tools()).tools}


async def refused(call: Any) -> str:
    """The message of the -32003 error ``call`` (an awaitable) is answered with."""
    with pytest.raises(MCPError) as info:
        await call
    assert info.value.error.code == FORBIDDEN, info.value.error
    return info.value.error.message


async def connect_refused(url: str, mode: str, token: str) -> MCPError:
    """The MCPError that connecting is refused with (the ``auto`` client tries
    ``server/discover``, then ``initialize``, and raises from its task group)."""
    try:
        async with connect(url, mode, token) as client:
            await client.list_tools()
    except MCPError as exc:
        return exc
    except BaseExceptionGroup as group:
        found, _ = group.split(MCPError)
        while isinstance(found, BaseExceptionGroup):
            found = found.exceptions[0]  # type: ignore[assignment]
        assert isinstance(found, MCPError), group
        return found
    raise AssertionError("connected")


def text(result: Any) -> str:
    return str(result.content[0].text)


# --------------------------------------------------------------------------- tools, services


@pytest.mark.parametrize("mode", MODES)
def test_tools_are_filtered_by_upstream_name_and_service(gw: Gw, mode: str) -> None:
    @sync
    async def case() -> None:
        async with connect(gw.url("/tools"), mode) as client:
            # beta's echo and add are the same upstream names: tool.service tells them apart
            assert await tool_names(client) == {"alpha_echo", "alpha_add"}
            assert text(await client.call_tool("alpha_echo", {"message": "hi"})) == "hi"
            result = await client.call_tool("alpha_add", {"a": 2, "b": 40})
            assert result.structured_content == {"result": 42}
            message = await refused(client.call_tool("beta_echo", {"message": "no"}))
            assert message == (
                'tool "beta_echo" is forbidden '
                '(route "r-tools": no authorization rule allows this request)'
            )
            await refused(client.call_tool("alpha_whoami", {}))
            # rules about tools leave prompts and resources alone (mcp.method != "tools/call")
            prompts = {p.name for p in (await client.list_prompts()).prompts}
            assert prompts == {"alpha_greet", "beta_greet"}
            got = await client.get_prompt("beta_greet", {"name": "bo"})
            assert got.messages[0].content.text == "Hello, bo!"  # type: ignore[union-attr]
            assert len((await client.list_resources()).resources) == 4
        # an unknown tool is still unknown, not forbidden
        async with connect(gw.url("/tools"), mode) as client:
            with pytest.raises(MCPError) as info:
                await client.call_tool("alpha_nonexistent", {})
            assert info.value.error.code == -32602

    case()


def test_a_denied_call_is_a_refused_usage_row(gw: Gw) -> None:
    @sync
    async def case() -> None:
        async with connect(gw.url("/tools"), "legacy") as client:
            await refused(client.call_tool("beta_add", {"a": 1, "b": 2}))
            await client.call_tool("alpha_add", {"a": 1, "b": 2})

    case()
    denied = gw.rows("route_id = 'r-tools' AND tool_name = 'beta_add'")[-1]
    assert denied["success"] == 0 and denied["error_type"] == "forbidden"
    assert denied["policy_action"] == "deny" and denied["method"] == "tools/call"
    assert denied["service_id"] == "beta" and denied["executed_tool_name"] is None
    allowed = gw.rows("route_id = 'r-tools' AND tool_name = 'alpha_add'")[-1]
    assert allowed["success"] == 1 and allowed["policy_action"] == "allow"
    assert allowed["executed_tool_name"] == "add"
    # the access log counts it as the gateway's policy, not the upstream's failure
    lines: list[dict[str, Any]] = []
    deadline = time.monotonic() + 10
    while not lines and time.monotonic() < deadline:
        time.sleep(0.05)
        lines = [e for e in gw.agwd.log_events() if e.get("tool") == "beta_add"]
    assert lines and lines[-1]["error_type"] == "forbidden"
    assert lines[-1]["error_class"] == "policy"


def test_a_route_without_rules_is_unchanged(gw: Gw) -> None:
    @sync
    async def case() -> None:
        async with connect(gw.url("/open"), "auto") as client:
            names = await tool_names(client)
            assert {f"{s}_{t}" for s in ("alpha", "beta") for t in FAKE_TOOLS} <= names
            await client.call_tool("beta_echo", {"message": "x"})

    case()
    row = gw.rows("route_id = 'r-open' AND tool_name = 'beta_echo'")[-1]
    assert row["success"] == 1 and row["policy_action"] is None


# -------------------------------------------------------------------- prompts and resources


@pytest.mark.parametrize("mode", MODES)
def test_prompts_resources_and_templates_are_filtered(gw: Gw, mode: str) -> None:
    @sync
    async def case() -> None:
        async with connect(gw.url("/items"), mode) as client:
            assert (await client.list_prompts()).prompts == []
            uris = [str(r.uri) for r in (await client.list_resources()).resources]
            assert uris == ["res://alpha/readme"]
            assert (await client.list_resource_templates()).resource_templates == []
            assert await tool_names(client) >= FAKE_TOOLS
            read = await client.read_resource("res://alpha/readme")
            assert read.contents[0].text == "readme of alpha"  # type: ignore[union-attr]
            message = await refused(client.read_resource("res://alpha/changelog"))
            assert message.startswith('resource "res://alpha/changelog" is forbidden')
            assert "deny[1]" in message
            await refused(client.read_resource("res://alpha/items/7"))
            message = await refused(client.get_prompt("greet", {"name": "x"}))
            assert message == (
                'prompt "greet" is forbidden '
                '(route "r-items": denied by authorization rule deny[0])'
            )

    case()
    row = gw.rows("route_id = 'r-items' AND resource_uri = 'res://alpha/changelog'")[-1]
    assert row["error_type"] == "forbidden" and row["policy_action"] == "deny"
    row = gw.rows("route_id = 'r-items' AND prompt_name = 'greet'")[-1]
    assert row["error_type"] == "forbidden" and row["success"] == 0


def test_completion_of_a_denied_prompt_is_denied(gw: Gw) -> None:
    with httpx.Client(base_url=gw.agwd.data_url, timeout=30) as http:
        params = {
            "ref": {"type": "ref/prompt", "name": "greet"},
            "argument": {"name": "name", "value": "b"},
            "_meta": META,
        }
        r = post(
            http,
            "/items",
            rpc("completion/complete", params),
            version=MODERN,
            headers={"mcp-method": "completion/complete"},
        )
    assert r.status_code == 200, r.text
    assert r.json()["error"]["code"] == FORBIDDEN


def test_the_legacy_sse_transport_is_held_to_the_same_rules(gw: Gw) -> None:
    @sync
    async def case() -> None:
        async with Client(sse_client(gw.url("/tools/sse"))) as client:
            assert await tool_names(client) == {"alpha_echo", "alpha_add"}
            await refused(client.call_tool("beta_echo", {"message": "no"}))

    case()


def test_a_batch_answers_each_request_on_its_own(gw: Gw) -> None:
    with httpx.Client(base_url=gw.agwd.data_url, timeout=30) as http:
        init = {"protocolVersion": "2025-03-26", "capabilities": {},
                "clientInfo": {"name": "raw", "version": "1"}}  # fmt: skip
        r = post(http, "/tools", rpc("initialize", init))
        assert r.status_code == 200, r.text
        sid = r.headers["mcp-session-id"]
        batch = [
            rpc("tools/call", {"name": "alpha_echo", "arguments": {"message": "a"}}, 1),
            rpc("tools/call", {"name": "beta_echo", "arguments": {"message": "b"}}, 2),
        ]
        r = post(http, "/tools", batch, session=sid, version="2025-03-26", accept=BOTH)
    assert r.status_code == 200, r.text
    answers = {a["id"]: a for a in r.json()}
    assert answers[1]["result"]["content"][0]["text"] == "a"
    assert answers[2]["error"]["code"] == FORBIDDEN


# ------------------------------------------------------------------------------- who calls


@pytest.mark.parametrize("mode", MODES)
def test_a_rule_on_the_keys_tags(gw: Gw, mode: str) -> None:
    @sync
    async def case() -> None:
        async with connect(gw.url("/tags"), mode, gw.keys["eng"]) as client:
            assert await tool_names(client) >= FAKE_TOOLS
            assert text(await client.call_tool("echo", {"message": "eng"})) == "eng"
        # an allow rule does not hold the handshake: ops connects, sees and uses nothing
        async with connect(gw.url("/tags"), mode, gw.keys["ops"]) as client:
            assert await tool_names(client) == set()
            assert (await client.list_prompts()).prompts == []
            assert (await client.list_resources()).resources == []
            await refused(client.call_tool("echo", {"message": "ops"}))

    case()
    row = gw.rows("route_id = 'r-tags' AND virtual_key_id = 'vk-ops' AND tool_name = 'echo'")[-1]
    assert row["error_type"] == "forbidden"


@pytest.mark.parametrize("mode", MODES)
def test_a_deny_rule_on_the_caller_refuses_the_handshake(gw: Gw, mode: str) -> None:
    @sync
    async def case() -> None:
        async with connect(gw.url("/blocked"), mode, gw.keys["eng"]) as client:
            assert text(await client.call_tool("echo", {"message": "in"})) == "in"
        error = (await connect_refused(gw.url("/blocked"), mode, gw.keys["ops"])).error
        assert error.code == FORBIDDEN
        assert error.message == (
            'initialize is forbidden (route "r-blocked": denied by authorization rule deny[0])'
        )

    case()
    method = "server/discover" if mode == "auto" else "initialize"
    row = gw.rows("route_id = 'r-blocked' AND virtual_key_id = 'vk-ops' AND method = ?", (method,))
    assert row[-1]["error_type"] == "forbidden" and row[-1]["policy_action"] == "deny"


@pytest.mark.parametrize("mode", MODES)
def test_jwt_principals(gw: Gw, minter: TokenMinter, mode: str) -> None:
    dana = minter.token("dana", email="dana@example.com", groups=["eng"])
    root = minter.token("root", email="root@example.com", groups=[])
    sam = minter.token("sam", email="sam@example.com", groups=["sales"])
    mallory = minter.token("mallory", email="mallory@example.com", groups=["eng"])
    alpha = {f"alpha_{t}" for t in FAKE_TOOLS}

    @sync
    async def case() -> None:
        async with connect(gw.url("/jwt"), mode, dana) as client:
            names = await tool_names(client)
            assert alpha <= names and not any(n.startswith("beta_") for n in names)
            assert (await client.list_prompts()).prompts == []  # tool.service is "" for prompts
            assert text(await client.call_tool("alpha_echo", {"message": "d"})) == "d"
            await refused(client.call_tool("beta_echo", {"message": "d"}))
        async with connect(gw.url("/jwt"), mode, root) as client:
            assert {n for n in await tool_names(client) if n.startswith("beta_")}
            assert text(await client.call_tool("beta_echo", {"message": "r"})) == "r"
        async with connect(gw.url("/jwt"), mode, sam) as client:
            assert await tool_names(client) == set()
        error = (await connect_refused(gw.url("/jwt"), mode, mallory)).error
        assert error.code == FORBIDDEN

    case()
    row = gw.rows("route_id = 'r-jwt' AND user_id = ? AND tool_name = 'beta_echo'",
                  ("dana@example.com",))[-1]  # fmt: skip
    assert row["error_type"] == "forbidden" and row["policy_action"] == "deny"


# ---------------------------------------------------------------------------------- errors


def test_a_rule_that_cannot_be_evaluated_denies_and_is_logged(gw: Gw) -> None:
    @sync
    async def case() -> None:
        async with connect(gw.url("/broken"), "auto") as client:
            assert await tool_names(client) == set()
            message = await refused(client.call_tool("echo", {"message": "x"}))
            assert message == (
                'tool "echo" is forbidden '
                '(route "r-broken": authorization rule allow[0] could not be evaluated)'
            )

    case()
    events = [e for e in gw.agwd.log_events() if e.get("event") == "authorization_rule_failed"]
    assert any(e.get("route_id") == "r-broken" and e.get("rule") == "allow[0]" for e in events)
    assert all("Bearer" not in json.dumps(e) for e in events)
