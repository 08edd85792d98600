"""Bundle loading: every kind of bad bundle gets every problem reported, with path and line."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from agw.config.bundle import Bundle
from agw.config.loader import load_bundle_data, load_bundle_text
from agw.config.schema import bundle_schema_text
from agw.errors import ConfigInvalid, Problem

REPO = Path(__file__).resolve().parents[2]
HEAD = "apiVersion: gateway.agw/v1alpha1\nkind: GatewayBundle\n"


def problems(text: str, env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigInvalid) as info:
        load_bundle_text(text, env or {})
    return [str(p) for p in info.value.problems]


def test_minimal_bundle_loads_with_defaults() -> None:
    b = load_bundle_text(HEAD + "providers:\n  - id: p\n    provider_type: OpenAI\n", {})
    assert b.providers[0].provider_type == "openai"
    assert b.providers[0].network.request_timeout_seconds == 120
    assert b.providers[0].effective_base_url == "https://api.openai.com/v1"


def test_yaml_syntax_error_reports_line_and_column() -> None:
    (msg,) = problems(HEAD + "providers: [\n  {id: a,\n")
    assert "invalid YAML" in msg
    assert re.search(r"line \d+, column \d+", msg)


def test_unknown_field_is_an_error_with_path_line_and_suggestion() -> None:
    text = HEAD + (
        "llmRoutes:\n"
        "  - id: a\n    protocol: openai\n    match_policy: {path_prefix: /a}\n"
        "    target_policy: {provider_id: p}\n"
        "  - id: b\n    protocol: openai\n    match: {path_prefix: /b}\n"
        "    target_policy: {provider_id: p}\n"
    )
    msgs = problems(text)
    assert "llmRoutes[1].match (line 10): unknown field; did you mean match_policy?" in msgs


def test_all_problems_are_collected_and_sorted() -> None:
    text = HEAD + (
        "providers:\n"
        "  - id: p\n    provider_type: nope\n"
        "  - id: q\n    provider_type: openai\n    api_key: ${MISSING_KEY}\n"
        "  - id: q\n    provider_type: openai\n"
        "mcpRoutes:\n  - service_id: ghost\n    match_policy: {path_prefix: /mcp}\n"
        "mcpServices:\n  - id: s\n    name: s\n    transport: stdio\n"
    )
    msgs = problems(text)
    assert msgs == sorted(msgs, key=lambda m: m.split(" ")[0])
    joined = "\n".join(msgs)
    assert "providers[0].provider_type (line 5)" in joined
    assert 'environment variable "MISSING_KEY" is not set' in joined
    assert "providers[2] (line 9): duplicate provider id 'q'" in joined
    assert "mcpServices[0]" in joined and "stdio transport requires command" in joined
    assert len(msgs) == 4  # the dangling service ref is not reported: services are incomplete


def test_wrong_type_is_reported_with_the_value() -> None:
    msgs = problems(
        HEAD + "providers:\n  - id: p\n    provider_type: openai\n    disabled: maybe\n"
    )
    assert any(m.startswith("providers[0].disabled (line 6)") and "'maybe'" in m for m in msgs)


def test_env_expansion_in_every_string() -> None:
    text = HEAD + (
        "providers:\n  - id: ${PID}\n    provider_type: openai\n    api_key: sk-${KEY}-x\n"
        "    network: {extra_headers: {X-Team: '${TEAM}'}}\n"
    )
    b = load_bundle_text(text, {"PID": "main", "KEY": "abc", "TEAM": "t1"})
    p = b.providers[0]
    assert (p.id, p.api_key, p.network.extra_headers["X-Team"]) == ("main", "sk-abc-x", "t1")
    msgs = problems(text, {"PID": "main"})
    assert any('"KEY" is not set' in m for m in msgs)
    assert any('"TEAM" is not set' in m for m in msgs)


def test_double_dollar_is_a_literal_and_escape_round_trips() -> None:
    from agw.config.loader import escape_env

    text = HEAD + "providers:\n  - id: p\n    provider_type: openai\n    api_key: a$${X}b${Y}\n"
    assert load_bundle_text(text, {"Y": "y"}).providers[0].api_key == "a${X}by"
    stored = {"api_key": "lit${HOME}"}
    escaped = escape_env(stored)
    assert escaped == {"api_key": "lit$${HOME}"}
    problems_: list[Problem] = []
    from agw.config.loader import expand_env

    assert expand_env(escaped, {}, problems_) == stored and not problems_


def test_provider_types_key_is_rejected() -> None:
    (msg,) = problems(HEAD + "providerTypes: [openai]\n")
    assert msg.startswith("providerTypes (line 3): not allowed in a bundle")


def test_wrong_api_version_and_kind() -> None:
    msgs = problems("apiVersion: v1\nkind: Bundle\n")
    assert any(m.startswith("apiVersion (line 1): must be 'gateway.agw/v1alpha1'") for m in msgs)
    assert any(m.startswith("kind (line 2)") for m in msgs)
    assert len(msgs) == 2


def test_dangling_references_are_errors_when_the_family_is_present() -> None:
    text = HEAD + (
        "providers:\n  - id: p\n    provider_type: openai\n"
        "llmRoutes:\n  - id: r\n    protocol: openai\n    target_policy: {provider_id: ghost}\n"
        "virtualKeys:\n  - id: k\n    allowed_route_ids: [r, nowhere]\n"
    )
    msgs = problems(text)
    assert (
        "llmRoutes[0].target_policy.provider_id (line 9): provider 'ghost' does not exist" in msgs
    )
    assert "virtualKeys[0].allowed_route_ids (line 12): route 'nowhere' does not exist" in msgs
    # Without the providers family the reference is left for the server to check.
    partial = (
        HEAD + "llmRoutes:\n  - id: r\n    protocol: openai\n    target_policy: {provider_id: x}\n"
    )
    assert load_bundle_text(partial, {}).llmRoutes[0].target_policy.provider_id == "x"


def test_route_ids_are_unique_across_kinds_and_matches_distinct() -> None:
    text = HEAD + (
        "providers:\n  - id: p\n    provider_type: openai\n"
        "llmRoutes:\n"
        "  - id: same\n    protocol: openai\n    match_policy: {path_prefix: /a}\n"
        "    target_policy: {provider_id: p}\n"
        "  - id: other\n    protocol: cc\n    match_policy: {path_prefix: /a}\n"
        "    target_policy: {provider_id: p}\n"
        "mcpServices:\n  - {id: s, name: s, transport: stdio, command: x}\n"
        "mcpRoutes:\n  - id: same\n    service_id: s\n    match_policy: {path_prefix: /m}\n"
    )
    joined = "\n".join(problems(text))
    assert "route id 'same' is already used" in joined
    assert "matches exactly the same requests as route" in joined


def test_mcp_and_acp_route_default_ids() -> None:
    text = HEAD + (
        "mcpServices:\n  - {id: time, name: t, transport: stdio, command: x}\n"
        "mcpRoutes:\n  - {service_id: time, match_policy: {path_prefix: /MCP/Time_v1}}\n"
        "  - {service_id: time}\n"
        "acpServices:\n  - {id: oc, name: oc, agent_type: opencode, cwd: /srv}\n"
        "acpRoutes:\n  - {service_id: oc, match_policy: {path_prefix: /acp}}\n"
    )
    b = load_bundle_text(text, {})
    assert [r.id for r in b.mcpRoutes] == ["mcp:time:mcp-time-v1", "mcp:time:root"]
    assert b.acpRoutes[0].id == "acp:oc:acp"
    assert b.acpServices[0].allowed_roots == ["/srv"]


def test_slash_ids_rejected() -> None:
    msgs = problems(HEAD + "providers:\n  - id: a/b\n    provider_type: openai\n")
    assert any("must not contain" in m for m in msgs)


def test_acp_service_rules_and_durations() -> None:
    base = HEAD + "acpServices:\n  - id: a\n    name: a\n    agent_type: opencode\n"
    b = load_bundle_text(base + "    cwd: /srv/x\n    idle_ttl: 1h30m\n", {})
    assert b.acpServices[0].idle_ttl == 5400 * 10**9
    assert (
        load_bundle_text(base + "    cwd: /srv\n    idle_ttl: 5000\n", {}).acpServices[0].idle_ttl
        == 5000
    )
    joined = "\n".join(problems(base + "    cwd: relative\n    idle_ttl: soon\n"))
    assert "invalid duration" in joined
    joined = "\n".join(problems(base + "    cwd: /srv/x\n    allowed_roots: [/other]\n"))
    assert "not inside any of allowed_roots" in joined


def test_agent_binding_rules() -> None:
    text = HEAD + (
        "acpServices:\n  - {id: s1, name: s, agent_type: opencode, cwd: /srv}\n"
        "  - {id: s2, name: s, agent_type: opencode, cwd: /srv}\n"
        "acpRoutes:\n  - {id: r2, service_id: s2, match_policy: {path_prefix: /r2}}\n"
        "agents:\n"
        "  - {id: a, name: a, runtime: {type: acp, acp: {service_id: s1}},"
        " routes: {acp_route_ids: [r2]}}\n"
        "  - {id: b, name: b, runtime: {type: acp, acp: {service_id: s1}},"
        " routes: {acp_route_ids: [r2]}}\n"
        "  - {id: c, name: c, runtime: {type: http, http: {endpoint: 'http://x'}},"
        " resources: {provider_ids: [ghost]}}\n"
    )
    joined = "\n".join(problems(text))
    assert "targets service 's2', not the agent's runtime service 's1'" in joined
    assert "acp service 's1' is already bound to agent 'a'" in joined
    assert "route 'r2' is already bound to agent 'a'" in joined
    # providers family absent: the reference is not checked locally
    assert "ghost" not in joined


def test_logical_model_rules() -> None:
    text = HEAD + (
        "llmRoutes:\n  - id: r\n    protocol: openai\n    target_policy:\n"
        "      model_targets:\n        - name: m\n          candidates:\n"
        "            - {provider_id: p, upstream_model: x}\n"
        "            - {provider_id: p, upstream_model: x}\n"
        "      fallback: {enabled: true, max_num: 9}\n"
    )
    joined = "\n".join(problems(text))
    assert "max_num" in joined
    ok = load_bundle_text(
        text.replace("max_num: 9", "max_num: 2").replace(
            "upstream_model: x}\n            - {provider_id: p, upstream_model: x}",
            "upstream_model: x}\n            - {provider_id: p, upstream_model: y}",
        ),
        {},
    )
    tp = ok.llmRoutes[0].target_policy
    assert (tp.type, tp.default_model, tp.credential_scope_order) == (
        "logical-model",
        "m",
        ["model_custom", "provider_id"],
    )


def test_json_data_path_has_no_env_expansion() -> None:
    data = {
        "apiVersion": "gateway.agw/v1alpha1",
        "kind": "GatewayBundle",
        "providers": [{"id": "p", "provider_type": "openai", "api_key": "${X}"}],
    }
    assert load_bundle_data(data).providers[0].api_key == "${X}"


def test_normalised_dump_round_trips() -> None:
    b = load_bundle_text(
        (REPO / "bundles" / "everything.yaml").read_text(),
        {"OPENAI_API_KEY": "a", "ANTHROPIC_API_KEY": "b"},
    )
    again = Bundle.model_validate(b.model_dump(mode="json"))
    assert again.model_dump(mode="json") == b.model_dump(mode="json")


@pytest.mark.parametrize("path", sorted((REPO / "bundles").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_bundle_is_valid(path: Path) -> None:
    text = path.read_text()
    env = {name: "placeholder" for name in re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}", text)}
    load_bundle_text(text, env)


def test_json_schema_is_fresh() -> None:
    target = REPO / "docs" / "reference" / "bundle.schema.json"
    assert target.read_text() == bundle_schema_text(), "run scripts/gen-schema"
