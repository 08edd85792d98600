"""Gateway-wide authorization policies (``authorizationPolicies``): every route of their kinds is
held to them beside its own rules, through the rules engine, the snapshot and a real agwd."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from agw.policy.rules import Decision, compile_rules
from tests.fakes.run import FakeUpstream, start_fake_upstream
from tests.support.agwd import Agwd, AgwdLauncher
from tests.support.jwt import TokenMinter

UPSTREAM_KEY = "sk-upstream-global-0001"


def _vars(user: str, groups: list[str], model: str = "gpt-4o") -> dict[str, Any]:
    return {
        "principal": {"user": user, "org": "", "groups": groups, "key_id": ""},
        "llm": {"model": model, "provider_id": "oa", "stream": False},
    }


def test_policies_join_a_routes_rules() -> None:
    rules = compile_rules(
        ['llm.model.startsWith("gpt")'],
        [],
        [("corp", ['"staff" in principal.groups'], ['principal.user == "mallory"'])],
    )
    # the policy's allow group and the route's both need a match
    assert rules.decide(_vars("a", ["staff"])) == Decision(True, "allow[0]")
    assert rules.decide(_vars("a", ["guest"])) == Decision(False)
    assert rules.decide(_vars("a", ["staff"], "claude")) == Decision(False)
    # the policy's deny wins, and is named as the policy's
    assert rules.decide(_vars("mallory", ["staff"])) == Decision(False, 'policy "corp".deny[0]')
    # a route without rules of its own is held to the policy alone
    only = compile_rules([], [], [("corp", ['"staff" in principal.groups'], [])])
    assert only.decide(_vars("a", ["staff"])) == Decision(True, 'policy "corp".allow[0]')
    assert only.decide(_vars("a", [])) == Decision(False)


@pytest.fixture(scope="module")
def fake(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeUpstream]:
    with start_fake_upstream(tmp_path_factory.mktemp("fake"), "--require-key", UPSTREAM_KEY) as f:
        yield f


@pytest.fixture(scope="module")
def minter() -> TokenMinter:
    return TokenMinter("RS256")


@pytest.fixture(scope="module")
def gw(module_agwd_factory: AgwdLauncher, fake: FakeUpstream, minter: TokenMinter) -> Agwd:
    agwd = module_agwd_factory.start()
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
        "jwtProviders": [minter.provider("corp")],
        "llmRoutes": [
            {
                "id": "oa",
                "protocol": "openai",
                "match_policy": {"path_prefix": "/oa"},
                "auth_policy": {"jwt_provider_ids": ["corp"]},
                "target_policy": {"provider_id": "oa"},
            }
        ],
        "authorizationPolicies": [
            {
                "id": "no-interns",
                "route_kinds": ["llm"],
                "deny": ['"interns" in principal.groups'],
            },
            {"id": "mcp-only", "route_kinds": ["mcp"], "deny": ["true"]},
        ],
    }
    with agwd.client() as c:
        r = c.post("/admin/gateway/apply", json={"bundle": bundle})
        assert r.status_code == 200, r.text
    return agwd


def _chat(gw: Agwd, token: str) -> str:
    with openai.OpenAI(base_url=f"{gw.data_url}/oa/v1", api_key=token, max_retries=0) as c:
        out = c.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}]
        )
    return out.choices[0].message.content or ""


def test_a_gateway_policy_holds_on_a_route_without_rules(gw: Agwd, minter: TokenMinter) -> None:
    assert _chat(gw, minter.token("ann", email="ann@example.com", groups=["eng"]))
    with pytest.raises(openai.PermissionDeniedError) as info:
        _chat(gw, minter.token("ivy", email="ivy@example.com", groups=["interns"]))
    assert 'policy "no-interns".deny[0]' in str(info.value)


def test_policies_are_managed_and_validated_like_any_family(gw: Agwd, minter: TokenMinter) -> None:
    intern = minter.token("ivy", email="ivy@example.com", groups=["interns"])
    with gw.client() as c:
        r = c.post("/admin/authorization_policies", json={"id": "bad", "allow": ["1 + "]})
        assert r.status_code == 400 and "allow[0]" in r.text, r.text
        assert c.post("/admin/authorization_policies/no-interns/disable").status_code == 200
    assert _chat(gw, intern)  # disabled: no longer held
    with gw.client() as c:
        assert c.post("/admin/authorization_policies/no-interns/enable").status_code == 200
        listed = c.get("/admin/authorization_policies").json()
        assert {p["id"] for p in listed["items"]} >= {"no-interns", "mcp-only"}
    r = httpx.post(
        f"{gw.data_url}/oa/v1/chat/completions",
        headers={"authorization": f"Bearer {intern}"},
        json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]},
    )
    assert r.status_code == 403, r.text


def test_remembered_decisions_follow_their_inputs(gw: Agwd, minter: TokenMinter) -> None:
    """An allowed decision is remembered per caller and request (agw/policy/authz.py): the
    same caller asking for another model, and a rule change, are decided afresh."""
    token = minter.token("ann", email="ann@example.com", groups=["eng"])

    def status(model: str) -> int:
        r = httpx.post(
            f"{gw.data_url}/oa/v1/chat/completions",
            headers={"authorization": f"Bearer {token}"},
            json={"model": model, "messages": [{"role": "user", "content": "hi"}]},
        )
        return r.status_code

    policy = {"id": "models", "route_kinds": ["llm"], "allow": ['llm.model == "gpt-4o-mini"']}
    with gw.client() as c:
        assert c.post("/admin/authorization_policies", json=policy).status_code == 201
    try:
        assert [status(m) for m in ("gpt-4o-mini", "o3", "gpt-4o-mini", "o3")] == [
            200,
            403,
            200,
            403,
        ]
        with gw.client() as c:
            changed = {**policy, "allow": ['llm.model == "o3"']}
            assert c.put("/admin/authorization_policies/models", json=changed).status_code == 200
        assert [status(m) for m in ("gpt-4o-mini", "o3")] == [403, 200]
    finally:
        with gw.client() as c:
            c.delete("/admin/authorization_policies/models")
