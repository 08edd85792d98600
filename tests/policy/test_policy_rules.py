"""agw/policy/rules.py and agw/config/cel.py: how a route's CEL rules compile and decide, and
where a rule that does not compile is reported (the bundle models, the snapshot)."""

from __future__ import annotations

from typing import Any

import pytest

from agw.config import families as f
from agw.config.base import Authorization
from agw.config.llm import LLMRoute, Provider
from agw.errors import ConfigInvalid
from agw.policy.rules import Decision, RuleError, compile_rules
from agw.runtime.snapshot import compile_snapshot
from agw.runtime.state import ConfigState, Record

ISSUE_ALLOW = ['"eng" in principal.groups', 'llm.model.startsWith("gpt-4o")']
ISSUE_DENY = ['principal.user == "blocked@example.com"']


def variables(
    user: str = "alice@example.com", groups: list[str] | None = None, model: str = "gpt-4o"
) -> dict[str, Any]:
    return {
        "principal": {"user": user, "org": "acme", "groups": groups or [], "key_id": ""},
        "llm": {"model": model, "provider_id": "oa", "stream": False},
    }


def test_the_issue_rules_decide_deny_first_then_any_allow() -> None:
    rules = compile_rules(ISSUE_ALLOW, ISSUE_DENY)
    assert rules.variables == {"principal", "llm"}
    assert rules.decide(variables(groups=["eng"], model="claude")) == Decision(True, "allow[0]")
    assert rules.decide(variables(groups=["ops"])) == Decision(True, "allow[1]")
    assert rules.decide(variables(groups=["ops"], model="o3")) == Decision(False)
    blocked = variables("blocked@example.com", ["eng"])
    assert rules.decide(blocked) == Decision(False, "deny[0]")


def test_no_rules_allow_and_deny_only_skips_the_allow_rules() -> None:
    assert compile_rules([], []).decide({}) == Decision(True)
    rules = compile_rules(['"eng" in principal.groups'], ISSUE_DENY)
    assert rules.decide(variables(groups=["ops"]), deny_only=True) == Decision(True)
    blocked = variables("blocked@example.com")
    assert rules.decide(blocked, deny_only=True) == Decision(False, "deny[0]")


def test_an_evaluation_error_denies_and_names_the_rule() -> None:
    missing = compile_rules(['jwt.department == "sales"'], [])
    decision = missing.decide({"jwt": {"sub": "a"}})
    assert (decision.allowed, decision.rule) == (False, "allow[0]")
    assert decision.error is not None and "department" in decision.error
    wrong_type = compile_rules([], ["principal.groups.startsWith('x')"])
    decision = wrong_type.decide(variables())
    assert (decision.allowed, decision.rule) == (False, "deny[0]")
    assert decision.error is not None and "startsWith" in decision.error
    not_bool = compile_rules(["principal.user"], [])  # dyn: only known when evaluated
    decision = not_bool.decide(variables())
    assert decision == Decision(False, "allow[0]", "the rule gave a string, not a boolean")


def test_a_failing_allow_rule_is_forgiven_when_another_matches() -> None:
    """Allow rules are or-ed as CEL's || is; a deny rule that fails always denies."""
    rules = compile_rules(['jwt.department == "sales"', '"eng" in principal.groups'], [])
    assert rules.decide({**variables(groups=["eng"]), "jwt": {}}) == Decision(True, "allow[1]")
    failed = rules.decide({**variables(groups=["ops"]), "jwt": {}})
    assert (failed.allowed, failed.rule) == (False, "allow[0]") and failed.error
    denying = compile_rules(['"eng" in principal.groups'], ["jwt.level > 3"])
    decision = denying.decide({**variables(groups=["eng"]), "jwt": {}})
    assert (decision.allowed, decision.rule) == (False, "deny[0]") and decision.error


def test_explain_evaluates_every_rule() -> None:
    rules = compile_rules([*ISSUE_ALLOW, "jwt.level > 3"], ISSUE_DENY)
    decision, results = rules.explain({**variables(groups=["eng"]), "jwt": {}})
    assert decision == Decision(True, "allow[0]")
    assert [(r.rule, r.outcome) for r in results] == [
        ("deny[0]", "not_matched"),
        ("allow[0]", "matched"),
        ("allow[1]", "matched"),
        ("allow[2]", "error"),
    ]
    assert results[3].error and "level" in results[3].error
    assert rules.source("deny[0]") == ISSUE_DENY[0]


@pytest.mark.parametrize(
    ("rule", "why"),
    [
        ('llm.model.startsWith("gpt-4o"', "Syntax error"),
        ('1 + "a" == 2', "no matching overload"),
        ('nobody.user == "x"', "undeclared reference to 'nobody.user'"),
        ("principal.user + 1", "must be a boolean expression (this one is INT)"),
        ("   ", "must not be empty"),
    ],
)
def test_a_rule_that_does_not_compile_names_itself(rule: str, why: str) -> None:
    with pytest.raises(RuleError) as caught:
        compile_rules(["true"], ['principal.user == "x"', rule])
    assert caught.value.rule == "deny[1]"
    assert why in caught.value.message


def test_the_bundle_model_reports_the_rule_by_index() -> None:
    with pytest.raises(ValueError) as caught:
        Authorization.model_validate({"allow": ["true", "llm.model.startsWith("]})
    text = str(caught.value)
    assert "allow.1" in text and "invalid CEL" in text


def _state(authorization: Authorization) -> ConfigState:
    provider = Provider.model_validate({"id": "oa", "provider_type": "openai", "api_key": "k"})
    route = LLMRoute.model_validate(
        {"id": "oa", "protocol": "openai", "target_policy": {"provider_id": "oa"}}
    )
    route.authorization = authorization  # as a store written by another version might hold
    return (
        ConfigState().put(f.PROVIDER, Record(provider, 0, 0)).put(f.LLM_ROUTE, Record(route, 0, 0))
    )


def test_the_snapshot_compiles_the_rules_and_refuses_one_that_does_not_compile() -> None:
    snapshot = compile_snapshot(_state(Authorization(allow=ISSUE_ALLOW)), ["openai"])
    (route,) = snapshot.routes
    assert route.rules is not None and len(route.rules.allow) == 2
    assert compile_snapshot(_state(Authorization()), ["openai"]).routes[0].rules is None
    bad = Authorization.model_construct(allow=["true"], deny=['principal.user == "x" &&'])
    with pytest.raises(ConfigInvalid) as caught:
        compile_snapshot(_state(bad), ["openai"])
    (problem,) = caught.value.problems
    assert problem.path == 'llm_route "oa".authorization.deny[0]'
    assert problem.message.startswith("invalid CEL: ")
