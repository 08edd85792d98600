"""``POST /admin/auth/explain`` and ``agwctl gateway auth explain`` against a real agwd: the
principal a credential is (never the token), each rule's outcome and the decision, with no
request sent upstream."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.support.agwctl import Agwctl
from tests.support.agwd import Agwd, AgwdLauncher
from tests.support.jwt import TokenMinter
from tests.support.mcp import TIME_SERVER

UNREACHABLE = "http://127.0.0.1:9/v1"  # explain never calls a provider


@pytest.fixture(scope="module")
def minter() -> TokenMinter:
    return TokenMinter("ES256")


@pytest.fixture(scope="module")
def gw(module_agwd_factory: AgwdLauncher, minter: TokenMinter) -> Agwd:
    agwd = module_agwd_factory.start()
    jwt_auth = {"jwt_provider_ids": ["corp"]}
    bundle = {
        "apiVersion": "gateway.agw/v1alpha1",
        "kind": "GatewayBundle",
        "providers": [{"id": "oa", "provider_type": "openai", "base_url": UNREACHABLE}],
        "jwtProviders": [minter.provider("corp")],
        "virtualKeys": [{"id": "team", "tag": "beta"}],
        "llmRoutes": [
            {
                "id": "oa",
                "protocol": "openai",
                "match_policy": {"path_prefix": "/oa"},
                "auth_policy": jwt_auth,
                "target_policy": {"provider_id": "oa"},
                "authorization": {
                    "allow": [
                        '"eng" in principal.groups',
                        'llm.model.startsWith("gpt-4o")',
                        'jwt.department == "sales"',
                    ],
                    "deny": ['principal.user == "blocked@example.com"'],
                },
            },
            {
                "id": "keyed",
                "protocol": "openai",
                "match_policy": {"path_prefix": "/keyed"},
                "auth_policy": {"require_virtual_key": True},
                "target_policy": {"provider_id": "oa"},
                "authorization": {"allow": ['"beta" in key.tags']},
            },
            {
                "id": "open",
                "protocol": "openai",
                "match_policy": {"path_prefix": "/open"},
                "target_policy": {"provider_id": "oa"},
            },
        ],
        "mcpServices": [
            {"id": "time", "name": "time", "transport": "stdio", "command": TIME_SERVER}
        ],
        "mcpRoutes": [
            {
                "id": "tools",
                "service_id": "time",
                "match_policy": {"path_prefix": "/tools"},
                "auth_policy": jwt_auth,
                "authorization": {
                    "allow": ['mcp.tool.name == "get_current_time" && mcp.tool.service == "time"']
                },
            }
        ],
    }
    with agwd.client() as c:
        r = c.post("/admin/gateway/apply", json={"bundle": bundle})
        assert r.status_code == 200, r.text
        agwd.env["VK"] = c.get("/admin/virtual_keys/team").json()["key"]
    return agwd


def explain(gw: Agwd, **body: Any) -> dict[str, Any]:
    with gw.client() as c:
        r = c.post("/admin/auth/explain", json=body)
    assert r.status_code == 200, r.text
    data: dict[str, Any] = r.json()
    return data


def outcomes(data: dict[str, Any]) -> dict[str, str]:
    return {r["rule"]: r["result"] for r in data["rules"]}


def test_explain_a_jwt_caller_denied_by_a_rule(gw: Agwd, minter: TokenMinter) -> None:
    token = minter.token("b", email="blocked@example.com", groups=["eng"], org_id="acme")
    data = explain(gw, route_id="oa", token=token, model="gpt-4o")
    assert token not in json.dumps(data) and token.split(".")[2] not in json.dumps(data)
    principal = data["principal"]
    assert (principal["kind"], principal["user"], principal["org"]) == (
        "jwt",
        "blocked@example.com",
        "acme",
    )
    assert principal["groups"] == ["eng"] and principal["provider_id"] == "corp"
    assert data["authentication"] == {"ok": True}
    assert data["variables"] == {"llm": {"model": "gpt-4o", "provider_id": "oa", "stream": False}}
    assert outcomes(data) == {
        "deny[0]": "matched",
        "allow[0]": "matched",
        "allow[1]": "matched",
        "allow[2]": "error",
    }
    errored = next(r for r in data["rules"] if r["rule"] == "allow[2]")
    assert "department" in errored["error"]
    assert errored["expression"] == 'jwt.department == "sales"'
    decision = data["decision"]
    assert (decision["allowed"], decision["rule"], decision["stage"]) == (
        False,
        "deny[0]",
        "authorization",
    )
    assert decision["message"] == 'route "oa": denied by authorization rule deny[0]'


def test_explain_an_allowed_jwt_caller(gw: Agwd, minter: TokenMinter) -> None:
    token = minter.token("a", email="ana@example.com", groups=["ops"])
    data = explain(gw, route_id="oa", token=token, model="gpt-4o-mini")
    assert data["decision"]["allowed"] is True and data["decision"]["rule"] == "allow[1]"
    refused = explain(gw, route_id="oa", token=token, model="o3")
    # allow[2] errors (no department claim) and nothing else allows: denied, naming it
    assert refused["decision"]["allowed"] is False
    assert refused["decision"]["rule"] == "allow[2]" and refused["decision"]["error"]


def test_explain_a_virtual_key_and_a_bad_token(gw: Agwd, minter: TokenMinter) -> None:
    data = explain(gw, route_id="keyed", key=gw.env["VK"])
    assert gw.env["VK"] not in json.dumps(data)
    assert data["principal"]["kind"] == "virtual_key" and data["principal"]["key_id"] == "team"
    assert outcomes(data) == {"allow[0]": "matched"} and data["decision"]["allowed"] is True
    expired = minter.token("x", email="x@example.com", exp_in=-600)
    refused = explain(gw, route_id="oa", token=expired)
    assert refused["authentication"]["ok"] is False
    assert refused["authentication"]["status"] == 401
    assert refused["decision"] == {"allowed": False, "stage": "identity"}
    assert expired not in json.dumps(refused)


def test_explain_an_mcp_tool_and_a_route_without_rules(gw: Agwd, minter: TokenMinter) -> None:
    token = minter.token("t", email="t@example.com")
    data = explain(gw, route_id="tools", token=token, tool="get_current_time")
    assert data["variables"]["mcp"]["tool"] == {"name": "get_current_time", "service": "time"}
    assert data["decision"]["allowed"] is True
    other = explain(gw, route_id="tools", token=token, tool="convert_time")
    assert other["decision"]["allowed"] is False
    # no tool: as the MCP plane holds a session request (initialize), the deny rules only
    session = explain(gw, route_id="tools", token=token)
    assert session["decision"]["allowed"] is True and session["decision"]["deny_rules_only"]
    open_route = explain(gw, route_id="open")
    assert open_route["principal"] == {"kind": "anonymous"}
    assert open_route["rules"] == [] and open_route["decision"]["stage"] == "none"


def test_explain_refuses_what_it_cannot_answer(gw: Agwd) -> None:
    with gw.client() as c:
        r = c.post("/admin/auth/explain", json={"route_id": "nope"})
        assert r.status_code == 404 and "nope" in r.json()["error"]
        r = c.post("/admin/auth/explain", json={"route_id": "oa", "password": "x"})
        assert r.status_code == 400 and "unknown field 'password'" in r.json()["error"]
        r = c.post("/admin/auth/explain", json={"token": "x"})
        assert r.status_code == 400 and "route_id is required" in r.json()["error"]


def test_agwctl_auth_explain(gw: Agwd, minter: TokenMinter, tmp_path: Path) -> None:
    ctl = Agwctl({**gw.env, "COLUMNS": "160"}, tmp_path)
    token = minter.token("b", email="blocked@example.com", groups=["eng"])
    out = ctl("gateway", "auth", "explain", "--route", "oa", "--token", "-", "--model", "gpt-4o",
              stdin=token + "\n")  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "principal: jwt user=blocked@example.com" in out.stdout
    assert "deny[0]" in out.stdout and "matched" in out.stdout
    assert out.stdout.rstrip().endswith("decision:  denied by deny[0]")
    assert token not in out.stdout
    raw = ctl.ok("gateway", "auth", "explain", "--route", "keyed", "--key", gw.env["VK"], "-o",
                 "json")  # fmt: skip
    data = json.loads(raw)
    assert data["decision"]["allowed"] is True and data["principal"]["key_id"] == "team"
    both = ctl("gateway", "auth", "explain", "--route", "oa", "--model", "m", "--tool", "t")
    assert both.returncode == 1 and both.stderr == "agwctl: give --model or --tool, not both\n"
