"""Authorization rules (CEL) enforced by a real agwd: on the LLM plane (403 in the caller's
dialect through the official ``openai`` and ``anthropic`` SDKs, before any upstream call, with a
usage row), on the ACP plane (403 before any agent starts), a rule that fails to evaluate
(denied, logged with the route and rule, never the token), virtual-key tags, anonymous callers,
and rules that do not compile (admin API and bundle apply, with their path)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import anthropic
import httpx
import openai
import pytest

from tests.fakes.run import FakeUpstream, start_fake_upstream
from tests.support.acp import AcpGateway, FakeAgentHandle, make_agent
from tests.support.agwd import Agwd, AgwdLauncher, usage_rows
from tests.support.jwt import TokenMinter

UPSTREAM_KEY = "sk-upstream-policy-0001"
ISSUE_RULES = {  # the example of issue 14
    "allow": ['"eng" in principal.groups', 'llm.model.startsWith("gpt-4o")'],
    "deny": ['principal.user == "blocked@example.com"'],
}
JWT = {"jwt_provider_ids": ["corp"]}
KEYED = {"require_virtual_key": True}
PROMPT = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def fake(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeUpstream]:
    with start_fake_upstream(tmp_path_factory.mktemp("fake"), "--require-key", UPSTREAM_KEY) as f:
        yield f


@pytest.fixture(scope="module")
def minter() -> TokenMinter:
    return TokenMinter("ES256")


@pytest.fixture(scope="module")
def agent(tmp_path_factory: pytest.TempPathFactory) -> FakeAgentHandle:
    return make_agent(tmp_path_factory.mktemp("acp"))


def llm_route(rid: str, protocol: str, provider: str, auth: dict[str, Any], **authz: Any) -> Any:
    return {
        "id": rid,
        "protocol": protocol,
        "match_policy": {"path_prefix": f"/{rid}"},
        "auth_policy": auth,
        "target_policy": {"provider_id": provider},
        "authorization": authz,
    }


@pytest.fixture(scope="module")
def gw(
    module_agwd_factory: AgwdLauncher,
    fake: FakeUpstream,
    minter: TokenMinter,
    agent: FakeAgentHandle,
) -> Agwd:
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
            },
            {
                "id": "an",
                "provider_type": "anthropic",
                "base_url": fake.url,
                "api_key": UPSTREAM_KEY,
            },
        ],
        "jwtProviders": [minter.provider("corp")],
        "virtualKeys": [{"id": "team", "tag": "beta"}, {"id": "other"}],
        "llmRoutes": [
            llm_route("oa", "openai", "oa", JWT, **ISSUE_RULES),
            llm_route("an", "anthropic", "an", JWT, **ISSUE_RULES),
            llm_route("claims", "openai", "oa", JWT, allow=['jwt.department == "sales"']),
            llm_route("keyed", "openai", "oa", KEYED, allow=['"beta" in key.tags']),
            llm_route(
                "anon",
                "openai",
                "oa",
                {},
                allow=['principal.user == "" && principal.groups == [] && key.id == ""'],
                deny=['mcp.tool.name == "add"', '"x-block" in request.headers'],
            ),
        ],
        "acpServices": [agent.service_config("agent")],
        "acpRoutes": [
            {
                "id": "acp",
                "service_id": "agent",
                "match_policy": {"path_prefix": "/acp"},
                "auth_policy": KEYED,
                "authorization": {"allow": ['"beta" in key.tags && acp.service_id == "agent"']},
            }
        ],
    }
    with agwd.client() as c:
        r = c.post("/admin/gateway/apply", json={"bundle": bundle})
        assert r.status_code == 200, r.text
        for vk in ("team", "other"):
            agwd.env[vk] = c.get(f"/admin/virtual_keys/{vk}").json()["key"]
    return agwd


def openai_client(gw: Agwd, route: str, key: str, **kw: Any) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=f"{gw.data_url}/{route}/v1", api_key=key, max_retries=0, timeout=30, **kw
    )


def token(minter: TokenMinter, user: str, *groups: str, **claims: Any) -> str:
    return minter.token(user.split("@")[0], email=user, groups=list(groups), **claims)


def upstream_calls(fake: FakeUpstream) -> int:
    return len([r for r in fake.requests() if "/_fake/" not in str(r.get("path", ""))])


def test_llm_allowed_by_group_or_by_model(gw: Agwd, minter: TokenMinter) -> None:
    eng = openai_client(gw, "oa", token(minter, "ana@example.com", "eng"))
    out = eng.chat.completions.create(model="o3-mini", messages=PROMPT)  # type: ignore[arg-type]
    assert out.choices[0].message.content
    ops = openai_client(gw, "oa", token(minter, "bo@example.com", "ops"))
    out = ops.chat.completions.create(model="gpt-4o-mini", messages=PROMPT)  # type: ignore[arg-type]
    assert out.choices[0].message.content


def test_llm_deny_wins_openai_dialect_before_any_upstream_call(
    gw: Agwd, minter: TokenMinter, fake: FakeUpstream
) -> None:
    before = upstream_calls(fake)
    blocked = openai_client(gw, "oa", token(minter, "blocked@example.com", "eng"))
    with pytest.raises(openai.PermissionDeniedError) as caught:
        blocked.chat.completions.create(model="gpt-4o", messages=PROMPT)  # type: ignore[arg-type]
    body = caught.value.body
    assert isinstance(body, dict)
    assert body["type"] == "permission_error"
    assert body["message"] == 'route "oa": denied by authorization rule deny[0]'
    assert upstream_calls(fake) == before
    (row,) = usage_rows(gw.db_path, "llm_usage_events", "user_id = 'blocked@example.com'")
    assert (row["status_code"], row["error_type"], row["route_id"]) == (403, "forbidden", "oa")
    assert (row["provider_id"], row["upstream_model"]) == ("oa", "gpt-4o")


def test_llm_no_allow_rule_matches(gw: Agwd, minter: TokenMinter) -> None:
    ops = openai_client(gw, "oa", token(minter, "cy@example.com", "ops"))
    with pytest.raises(openai.PermissionDeniedError) as caught:
        ops.chat.completions.create(model="o3-mini", messages=PROMPT)  # type: ignore[arg-type]
    assert "no authorization rule allows this request" in str(caught.value)


def test_llm_anthropic_dialect(gw: Agwd, minter: TokenMinter, fake: FakeUpstream) -> None:
    before = upstream_calls(fake)
    blocked = anthropic.Anthropic(
        base_url=f"{gw.data_url}/an",
        api_key=token(minter, "blocked@example.com", "eng"),
        max_retries=0,
        timeout=30,
    )
    with pytest.raises(anthropic.PermissionDeniedError) as caught:
        blocked.messages.create(model="claude-x", max_tokens=16, messages=PROMPT)  # type: ignore[arg-type]
    assert caught.value.body == {
        "type": "error",
        "error": {
            "type": "permission_error",
            "message": 'route "an": denied by authorization rule deny[0]',
        },
    }
    assert upstream_calls(fake) == before
    eng = anthropic.Anthropic(
        base_url=f"{gw.data_url}/an",
        api_key=token(minter, "dee@example.com", "eng"),
        max_retries=0,
        timeout=30,
    )
    out = eng.messages.create(model="claude-x", max_tokens=16, messages=PROMPT)  # type: ignore[arg-type]
    assert out.content


def test_a_rule_that_fails_to_evaluate_denies_and_the_log_names_it(
    gw: Agwd, minter: TokenMinter
) -> None:
    without = token(minter, "eve@example.com", "eng")  # no department claim
    client = openai_client(gw, "claims", without)
    with pytest.raises(openai.PermissionDeniedError) as caught:
        client.chat.completions.create(model="gpt-4o", messages=PROMPT)  # type: ignore[arg-type]
    assert "authorization rule allow[0] could not be evaluated" in str(caught.value)
    sales = token(minter, "fay@example.com", department="sales")
    out = openai_client(gw, "claims", sales).chat.completions.create(
        model="gpt-4o",
        messages=PROMPT,  # type: ignore[arg-type]
    )
    assert out.choices[0].message.content
    failed = [e for e in gw.log_events() if e.get("event") == "authorization_rule_failed"]
    assert failed, gw.logs()[-2000:]
    line = failed[-1]
    assert (line["route_id"], line["rule"]) == ("claims", "allow[0]")
    assert line["rule_source"] == 'jwt.department == "sales"'
    assert "department" in line["error"]
    assert line["user_id"] == "eve@example.com"
    logs = gw.logs()
    for secret in (without, sales):
        assert secret not in logs and secret.split(".")[2] not in logs


def test_a_deny_is_logged_with_route_and_rule(gw: Agwd, minter: TokenMinter) -> None:
    blocked = token(minter, "blocked@example.com", "eng")
    with pytest.raises(openai.PermissionDeniedError):
        openai_client(gw, "oa", blocked).chat.completions.create(
            model="gpt-4o",
            messages=PROMPT,  # type: ignore[arg-type]
        )
    denied = [e for e in gw.log_events() if e.get("event") == "authorization_denied"]
    assert any(e["route_id"] == "oa" and e["rule"] == "deny[0]" for e in denied), denied
    assert blocked not in gw.logs()


def test_virtual_key_tags(gw: Agwd) -> None:
    out = openai_client(gw, "keyed", gw.env["team"]).chat.completions.create(
        model="gpt-4o",
        messages=PROMPT,  # type: ignore[arg-type]
    )
    assert out.choices[0].message.content
    with pytest.raises(openai.PermissionDeniedError):
        openai_client(gw, "keyed", gw.env["other"]).chat.completions.create(
            model="gpt-4o",
            messages=PROMPT,  # type: ignore[arg-type]
        )
    (row,) = usage_rows(
        gw.db_path, "llm_usage_events", "route_id = 'keyed' AND virtual_key_id = 'other'"
    )
    assert (row["status_code"], row["error_type"]) == (403, "forbidden")


def test_anonymous_callers_and_other_planes_are_empty_not_errors(gw: Agwd) -> None:
    """On a route without credentials the principal's fields are "" and [], and ``mcp`` on an
    LLM route is there, empty: no rule errors, the allow rule about them matches."""
    client = openai_client(gw, "anon", "unused")
    out = client.chat.completions.create(model="gpt-4o", messages=PROMPT)  # type: ignore[arg-type]
    assert out.choices[0].message.content
    blocked = openai_client(gw, "anon", "unused", default_headers={"x-block": "1"})
    with pytest.raises(openai.PermissionDeniedError) as caught:
        blocked.chat.completions.create(model="gpt-4o", messages=PROMPT)  # type: ignore[arg-type]
    assert "deny[1]" in str(caught.value)


def test_a_model_listing_is_held_to_the_deny_rules_only(gw: Agwd, minter: TokenMinter) -> None:
    ops = openai_client(gw, "oa", token(minter, "gus@example.com", "ops"))
    assert ops.models.list().data is not None  # no allow rule matches, but a listing uses none
    blocked = openai_client(gw, "oa", token(minter, "blocked@example.com", "eng"))
    with pytest.raises(openai.PermissionDeniedError):
        blocked.models.list()


def test_acp_denied_before_any_agent_starts(gw: Agwd, agent: FakeAgentHandle) -> None:
    acp = AcpGateway(gw, agent)
    body = {"thread_id": "t-policy", "input": "hello"}
    refused = acp.turn("/acp", body, **{"x-api-key": gw.env["other"]})
    assert refused.status == 403, refused
    assert refused.events[0].data == {
        "error": 'route "acp": no authorization rule allows this request'
    }
    with httpx.Client(timeout=30) as http:
        r = http.post(
            acp.url("/acp/acp"),
            headers={"x-api-key": gw.env["other"]},
            json={"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {}},
        )
        assert r.status_code == 403, r.text
        r = http.get(acp.url("/acp/sessions"), headers={"x-api-key": gw.env["other"]})
        assert r.status_code == 403, r.text
    assert not agent.pids()  # no agent was started, not even a transient one
    rows = acp.rows("virtual_key_id = 'other'", count=3)
    assert [(r["status_code"], r["error_type"]) for r in rows] == [(403, "forbidden")] * 3
    assert [r["operation"] for r in rows] == ["turn", "initialize", "sessions"]
    done = acp.turn("/acp", body, **{"x-api-key": gw.env["team"]})
    assert done.status == 200, done
    assert "hello" in done.text


def test_a_rule_that_does_not_compile_is_refused_with_its_path(gw: Agwd) -> None:
    route = llm_route("bad", "openai", "oa", {}, allow=["true"], deny=['llm.model.startsWith("x"'])
    with gw.client() as c:
        r = c.post("/admin/llm/routes", json=route)
        assert r.status_code == 400, r.text
        assert "authorization.deny[0]" in r.json()["error"]
        assert "invalid CEL" in r.json()["error"]
        bundle = {
            "apiVersion": "gateway.agw/v1alpha1",
            "kind": "GatewayBundle",
            "llmRoutes": [llm_route("typed", "openai", "oa", {}, allow=['1 + "a" == 2'])],
        }
        r = c.post("/admin/gateway/apply", json={"bundle": bundle})
        assert r.status_code == 400, r.text
        text = json.dumps(r.json())
        assert "llmRoutes[0].authorization.allow[0]" in text
        assert "no matching overload" in text
        assert c.get("/admin/llm/routes/typed").status_code == 404
