"""Per-user attribution end to end: two people in two organizations call a real agwd with JWTs
minted by a test identity provider (inline ``jwks``), through the openai SDK and a raw MCP
client; their usage rows, the metrics API, ``agwctl gateway metrics`` and the access log all
name who called (the user and org claims), and none of them holds the token.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.fakes.run import FakeUpstream, start_fake_upstream
from tests.support.agwctl import Agwctl
from tests.support.agwd import Agwd, AgwdLauncher, usage_rows
from tests.support.jwt import TokenMinter
from tests.support.mcp import TIME_SERVER, initialize, post, rpc

UPSTREAM_KEY = "sk-upstream-attr-0001"
ANA = ("ana@example.com", "acme")
BO = ("bo@example.com", "globex")


@pytest.fixture(scope="module")
def fake(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeUpstream]:
    with start_fake_upstream(tmp_path_factory.mktemp("fake"), "--require-key", UPSTREAM_KEY) as f:
        yield f


@pytest.fixture(scope="module")
def minter() -> TokenMinter:
    return TokenMinter("ES256")


@pytest.fixture(scope="module")
def access_log(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("log") / "access.log"


@pytest.fixture(scope="module")
def gw(
    module_agwd_factory: AgwdLauncher, fake: FakeUpstream, minter: TokenMinter, access_log: Path
) -> Agwd:
    agwd = module_agwd_factory.start("--access-log", str(access_log))
    jwt_auth = {"jwt_provider_ids": ["corp"]}
    bundle = {
        "apiVersion": "gateway.agw/v1alpha1",
        "kind": "GatewayBundle",
        "providers": [
            {
                "id": "oa",
                "provider_type": "openai",
                "base_url": f"{fake.url}/v1",
                "api_key": UPSTREAM_KEY,
            }
        ],
        "jwtProviders": [minter.provider("corp")],  # user: email, org: org_id
        "llmRoutes": [
            {
                "id": "chat",
                "protocol": "openai",
                "match_policy": {"path_prefix": "/chat"},
                "auth_policy": jwt_auth,
                "target_policy": {"provider_id": "oa"},
            },
            {
                "id": "scoped",
                "protocol": "openai",
                "match_policy": {"path_prefix": "/scoped"},
                "auth_policy": {**jwt_auth, "required_scopes": ["llm"]},
                "target_policy": {"provider_id": "oa"},
            },
            {
                "id": "keyed",
                "protocol": "openai",
                "match_policy": {"path_prefix": "/keyed"},
                "auth_policy": {"require_virtual_key": True},
                "target_policy": {"provider_id": "oa"},
            },
        ],
        "mcpServices": [
            {"id": "time", "name": "time", "transport": "stdio", "command": TIME_SERVER}
        ],
        "mcpRoutes": [
            {
                "id": "tools",
                "match_policy": {"path_prefix": "/tools"},
                "auth_policy": jwt_auth,
                "service_id": "time",
            }
        ],
        "virtualKeys": [{"id": "team"}],
    }
    with agwd.client() as c:
        r = c.post("/admin/gateway/apply", json={"bundle": bundle})
        assert r.status_code == 200, r.text
        agwd.env["VK"] = c.get("/admin/virtual_keys/team").json()["key"]
    return agwd


@pytest.fixture(scope="module")
def tokens(minter: TokenMinter) -> dict[str, str]:
    return {
        user: minter.token(user.split("@")[0], email=user, org_id=org, groups=["eng"])
        for user, org in (ANA, BO)
    }


@pytest.fixture(scope="module")
def calls(gw: Agwd, tokens: dict[str, str]) -> dict[str, int]:
    """The traffic every test reads: ana chats twice and lists MCP tools, bo chats once, a
    virtual key chats once. Returns the LLM requests per user (None: the key)."""

    def chat(route: str, key: str) -> None:
        client = openai.OpenAI(base_url=f"{gw.data_url}/{route}/v1", api_key=key, max_retries=0)
        out = client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}]
        )
        assert out.choices[0].message.content

    chat("chat", tokens[ANA[0]])
    chat("chat", tokens[ANA[0]])
    chat("chat", tokens[BO[0]])
    chat("keyed", gw.env["VK"])
    bearer = {"authorization": f"Bearer {tokens[ANA[0]]}"}
    with httpx.Client(base_url=gw.data_url, timeout=30) as http:
        sid, _ = initialize(http, "/tools", headers=bearer)
        r = post(http, "/tools", rpc("tools/list", msg_id=2), session=sid,
                 version="2025-11-25", headers=bearer)  # fmt: skip
        assert r.status_code == 200 and "tools" in r.json()["result"], r.text
    return {ANA[0]: 2, BO[0]: 1}


def no_token(text: str, tokens: dict[str, str]) -> None:
    for token in tokens.values():
        assert token not in text
        assert token.split(".")[2] not in text  # not even its signature


def test_usage_rows_name_the_user_and_org(
    gw: Agwd, calls: dict[str, int], tokens: dict[str, str]
) -> None:
    llm = usage_rows(gw.db_path, "llm_usage_events", "status_code = 200", count=4)
    assert len(llm) == 4
    got = [(r["route_id"], r["user_id"], r["org_id"], r["virtual_key_id"]) for r in llm]
    assert got == [
        ("chat", *ANA, None),
        ("chat", *ANA, None),
        ("chat", *BO, None),
        ("keyed", None, None, "team"),
    ]
    mcp = usage_rows(gw.db_path, "mcp_usage_events", "method = 'tools/list'")
    assert [(r["user_id"], r["org_id"]) for r in mcp] == [ANA]
    initialized = usage_rows(gw.db_path, "mcp_usage_events", "method = 'initialize'")
    assert [(r["user_id"], r["org_id"]) for r in initialized] == [ANA]
    no_token(json.dumps([*llm, *mcp, *initialized]), tokens)


def test_a_refused_token_is_recorded_without_a_user(gw: Agwd, minter: TokenMinter) -> None:
    expired = minter.token("eve", email="eve@example.com", org_id="evil", exp_in=-3600)
    client = openai.OpenAI(base_url=f"{gw.data_url}/chat/v1", api_key=expired, max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}]
        )
    (row,) = usage_rows(gw.db_path, "llm_usage_events", "status_code = 401")
    assert (row["user_id"], row["org_id"]) == (None, None)  # an unverified claim names no one


def test_a_verified_caller_refused_later_is_recorded_with_their_user(
    gw: Agwd, minter: TokenMinter
) -> None:
    """A missing scope is refused after the token was verified: the denial counts for its user."""
    token = minter.token("cy", email="cy@example.com", org_id="initech", scope="read")
    client = openai.OpenAI(base_url=f"{gw.data_url}/scoped/v1", api_key=token, max_retries=0)
    with pytest.raises(openai.PermissionDeniedError):
        client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}]
        )
    (row,) = usage_rows(gw.db_path, "llm_usage_events", "route_id = 'scoped'")
    assert (row["status_code"], row["error_type"]) == (403, "insufficient_scope")
    assert (row["user_id"], row["org_id"]) == ("cy@example.com", "initech")


def _get(gw: Agwd, path: str, **params: str) -> dict[str, Any]:
    with gw.client() as c:
        r = c.get(path, params=params)
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


def test_the_metrics_api_breaks_down_by_user_and_filters_by_org(
    gw: Agwd, calls: dict[str, int]
) -> None:
    usage_rows(gw.db_path, "llm_usage_events", "route_id = 'keyed'")  # written
    body = _get(gw, "/admin/metrics/llm/breakdown", group_by="user_id", route_id="chat",
                success="true")  # fmt: skip
    assert body["group_by"] == "user_id"
    requests = {i["group_value"]: i["request_count"] for i in body["items"]}
    assert requests == {ANA[0]: 2, BO[0]: 1}
    tokens_of = {i["group_value"]: i["total_tokens"] for i in body["items"]}
    assert all(t > 0 for t in tokens_of.values())

    body = _get(gw, "/admin/metrics/llm/breakdown", group_by="route_id", org_id="globex")
    assert [(i["group_value"], i["request_count"]) for i in body["items"]] == [("chat", 1)]
    body = _get(gw, "/admin/metrics/llm/events", org_id="acme", success="true")
    assert [i["user_id"] for i in body["items"]] == [ANA[0], ANA[0]]

    body = _get(gw, "/admin/metrics/interactions/summary", group_by="user_id", org_id="acme")
    (item,) = body["items"]
    assert item["group_value"] == ANA[0] and item["request_count"] >= 4  # 2 LLM, 2+ MCP
    body = _get(gw, "/admin/metrics/mcp/breakdown", group_by="org_id", method="tools/list")
    assert [(i["group_value"], i["request_count"]) for i in body["items"]] == [("acme", 1)]


def test_agwctl_shows_spend_per_person(
    gw: Agwd, calls: dict[str, int], tmp_path_factory: pytest.TempPathFactory
) -> None:
    usage_rows(gw.db_path, "llm_usage_events", "route_id = 'keyed'")
    ctl = Agwctl({**gw.env, "COLUMNS": "120"}, tmp_path_factory.mktemp("cwd"))
    out = ctl.ok("gateway", "metrics", "breakdown", "--group-by", "user", "--filter",
                 "route_id=chat", "--success", "--order-by", "request_count")  # fmt: skip
    lines = out.strip().splitlines()
    assert lines[0].split()[:2] == ["USER-ID", "REQUEST-COUNT"]
    rows = {line.split()[0]: line.split() for line in lines[1:]}
    assert set(rows) == {ANA[0], BO[0]}
    assert (rows[ANA[0]][1], rows[BO[0]][1]) == ("2", "1")
    out = ctl.ok("gateway", "metrics", "breakdown", "--group-by", "user", "--org", "globex")
    assert [line.split()[0] for line in out.strip().splitlines()[1:]] == [BO[0]]


def test_the_access_log_names_the_user_never_the_token(
    gw: Agwd, calls: dict[str, int], access_log: Path, tokens: dict[str, str]
) -> None:
    deadline = time.monotonic() + 10
    lines: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        text = access_log.read_text() if access_log.exists() else ""
        lines = [json.loads(line) for line in text.splitlines() if line.strip()]
        if sum(1 for line in lines if line.get("route_id") in ("chat", "keyed")) >= 4:
            break
        time.sleep(0.05)
    chats = [line for line in lines if line.get("route_id") == "chat" and line["status"] == 200]
    assert [(line["user_id"], line["org_id"]) for line in chats] == [ANA, ANA, BO]
    (keyed,) = [line for line in lines if line.get("route_id") == "keyed"]
    assert keyed["virtual_key_id"] == "team" and "user_id" not in keyed
    listed = [line for line in lines if line.get("operation") == "tools/list"]
    assert [line["user_id"] for line in listed] == [ANA[0]]
    no_token(access_log.read_text(), tokens)
    no_token(gw.log_path.read_text(errors="replace"), tokens)
