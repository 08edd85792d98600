"""A route's authorization rules, compiled once, decided per request.

``compile_rules(allow, deny)`` -> a :class:`RuleSet` (or :class:`RuleError` naming the rule and
why); ``RuleSet.decide(variables)`` -> a :class:`Decision`. The snapshot compiles every route's
rules when it is built (agw/runtime/snapshot.py), so a request only evaluates.

How a decision is made (docs/security.md, "Authorization rules (CEL)"):

- **Deny wins.** The deny rules are evaluated first, in order: the first that matches denies.
  One that fails to evaluate (a missing key, a wrong type, a result that is not a boolean)
  denies too: whether it would have matched cannot be known.
- **When allow rules exist, one must match.** They are or-ed as CEL's ``||`` is: one that
  matches allows, even when another failed to evaluate; none matching denies, naming the first
  that failed if one did, so a broken rule shows up in the log.
- No rules (an empty set): allowed.
- **Gateway-wide policies** (``authorizationPolicies``) join a route's rules: their deny rules
  deny like the route's own (labelled ``policy "id".deny[0]``), and each policy with allow
  rules is one more group of which one rule must match, as the route's own allow rules are.

The per-request cost is one CEL activation over the variables the rules name and one evaluation
per rule evaluated; the decisions are allocated once, when compiling (docs/performance.md).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from agw.config.cel import VARIABLES, CelSyntaxError, cel, compile_rule, environment

Outcome = Literal["matched", "not_matched", "error"]
# a variable named anywhere in a rule (a superset: a field or a string that spells one counts too)
_NAMES = re.compile(r"(?<!\w)(" + "|".join(VARIABLES) + r")(?!\w)")
_STATUS = re.compile(r"^[A-Z_]+: ")


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    rule: str | None = None  # the rule that decided (a matching deny, or a matching allow)
    error: str | None = None  # a rule failed to evaluate: the decision is then a deny


ALLOWED = Decision(True)
NO_ALLOW_MATCHED = Decision(False)


class RuleError(ValueError):
    """A rule that does not compile: ``rule`` names it (``allow[0]``), ``message`` says why."""

    def __init__(self, rule: str, message: str) -> None:
        super().__init__(f"{rule}: {message}")
        self.rule = rule
        self.message = message


@dataclass(frozen=True, slots=True)
class Rule:
    label: str  # allow[0], deny[1]
    source: str  # the CEL text
    expr: Any  # the compiled cel.Expression
    decision: Decision  # what this rule decides when it matches


@dataclass(frozen=True, slots=True)
class RuleResult:
    """One rule's outcome for ``explain``."""

    rule: str
    source: str
    outcome: Outcome
    error: str | None = None


def _error_of(value: Any, result: object) -> str:
    """Why an evaluation gave no boolean: CEL's error (``NOT_FOUND: Key not found in map``,
    status prefix removed), or the type it gave instead."""
    kind = value.type()
    if kind == cel().Type.ERROR:
        return _STATUS.sub("", str(result)).strip()
    return f"the rule gave a {kind.name().lower()}, not a boolean"


def _evaluate(rule: Rule, activation: Any) -> tuple[bool | None, str | None]:
    """(matched, None), or (None, why it failed)."""
    try:
        value = rule.expr.eval(activation)
        result = value.value()
    except Exception as exc:  # the engine's own failure: an error like any other
        return None, str(exc) or type(exc).__name__
    if result is True or result is False:
        return result, None
    return None, _error_of(value, result)


class RuleSet:
    """The compiled rules of one route (see the module docstring for how they decide)."""

    __slots__ = (
        "_activation",
        "_all",
        "_denies",
        "allow",
        "deny",
        "groups",
        "memo",
        "per_request",
        "variables",
    )

    def __init__(
        self, allow: Sequence[Rule], deny: Sequence[Rule], groups: Sequence[Sequence[Rule]] = ()
    ) -> None:
        """``groups``: further allow groups (gateway-wide policies), each needing one match."""
        self.groups = tuple(tuple(g) for g in (*groups, allow) if g)
        self.allow = tuple(rule for group in self.groups for rule in group)
        self.deny = tuple(deny)
        # the variables the rules name: the only ones an evaluation needs built
        self.variables = frozenset(
            name for rule in (*self.allow, *self.deny) for name in _NAMES.findall(rule.source)
        )
        self._activation = environment().Activation
        # allowed evaluations by their inputs (agw/policy/authz.py): rules are pure functions
        # of their variables, so a caller repeating a request is not evaluated again. Only
        # when no rule reads what changes with every request (``request``, ``session``).
        self.memo: dict[tuple[object, ...], object] = {}
        self.per_request = bool(self.variables & {"request", "session"})
        # the whole decision as one CEL expression: the hot path evaluates it once (one engine
        # call, not one per rule) and asks the rules one by one only when it is not ``true``
        denies = _joined(self.deny, " || ")
        ands = [f"!({denies})"] if denies else []
        ands += [f"({_joined(group, ' || ')})" for group in self.groups]
        self._all: Any = _combined(" && ".join(ands))
        self._denies: Any = _combined(f"!({denies})") if denies else None

    def allows(self, variables: Mapping[str, object], *, deny_only: bool = False) -> bool:
        """Whether :meth:`decide` would allow: one evaluation of the rules joined as CEL
        (deny rules or-ed and negated, and-ed with each allow group or-ed), whose error
        semantics are the rules' own: an error that can change the outcome is not ``true``.
        """
        expr = self._denies if deny_only else self._all
        if expr is None:  # nothing to evaluate, or a join that did not compile
            if not self.deny and (deny_only or not self.groups):
                return True
            return self.decide(variables, deny_only=deny_only).allowed
        try:
            return expr.eval(self._activation(variables)).value() is True
        except Exception:
            return False

    def __repr__(self) -> str:
        return f"RuleSet(allow={len(self.allow)}, deny={len(self.deny)})"

    def decide(self, variables: Mapping[str, object], *, deny_only: bool = False) -> Decision:
        """The decision for one evaluation. ``variables``: at least those in
        :attr:`variables`, each a map of plain values (dict, list, str, int, float, bool,
        None; a tuple is not one). ``deny_only``: only the deny rules count (what a request
        that uses nothing of the route's, such as an MCP ``initialize``, is held to)."""
        rule: Rule | None = None
        try:  # free unless raised (3.11); the engine reports errors as values, not exceptions
            activation = self._activation(variables)
            for rule in self.deny:
                value = rule.expr.eval(activation)
                result = value.value()
                if result is False:
                    continue
                if result is True:
                    return rule.decision
                return Decision(False, rule.label, _error_of(value, result))
            if deny_only or not self.groups:
                return ALLOWED
            allowed: Decision = ALLOWED
            for group in self.groups:
                failed: Rule | None = None
                why = ""
                for rule in group:
                    value = rule.expr.eval(activation)
                    result = value.value()
                    if result is True:
                        allowed = rule.decision
                        break
                    if result is not False and failed is None:
                        failed, why = rule, _error_of(value, result)
                else:
                    if failed is not None:
                        return Decision(False, failed.label, why)
                    return NO_ALLOW_MATCHED
            return allowed  # the route's own matching allow rule when it has one
        except Exception as exc:
            return Decision(False, rule.label if rule else None, str(exc) or type(exc).__name__)

    def explain(self, variables: Mapping[str, object]) -> tuple[Decision, list[RuleResult]]:
        """The decision, and every rule's own outcome (all evaluated, none skipped)."""
        activation = self._activation(variables)
        results = []
        for rule in (*self.deny, *self.allow):
            matched, error = _evaluate(rule, activation)
            outcome: Outcome = (
                "error" if matched is None else "matched" if matched else "not_matched"
            )
            results.append(RuleResult(rule.label, rule.source, outcome, error))
        return self.decide(variables), results

    def source(self, label: str) -> str:
        """The CEL text of the rule ``label`` names (``deny[0]``), or ``""``."""
        return next((r.source for r in (*self.deny, *self.allow) if r.label == label), "")


def _joined(rules: Sequence[Rule], op: str) -> str:
    return op.join(f"({rule.source})" for rule in rules)


def _combined(text: str) -> Any:
    """``text`` compiled, or None when there is nothing to join (or the join does not
    compile, which the rules on their own did: then the hot path asks them one by one)."""
    if not text:
        return None
    try:
        return compile_rule(text)
    except CelSyntaxError:
        return None


def _compile(kind: Literal["allow", "deny"], rules: Sequence[str], prefix: str = "") -> list[Rule]:
    out = []
    for i, text in enumerate(rules):
        label = f"{prefix}{kind}[{i}]"
        text = text.strip()
        if not text:
            raise RuleError(label, "a rule must not be empty")
        try:
            expr = compile_rule(text)
        except CelSyntaxError as exc:
            raise RuleError(label, str(exc)) from None
        out.append(Rule(label, text, expr, Decision(kind == "allow", label)))
    return out


def compile_rules(
    allow: Sequence[str],
    deny: Sequence[str],
    policies: Sequence[tuple[str, Sequence[str], Sequence[str]]] = (),
) -> RuleSet:
    """Compile a route's rules and the gateway-wide ``policies`` that apply to it (``(id,
    allow, deny)``, labelled ``policy "id".allow[0]``); :class:`RuleError` names the first
    that does not compile."""
    denies: list[Rule] = []
    groups: list[list[Rule]] = []
    for pid, p_allow, p_deny in policies:
        prefix = f'policy "{pid}".'
        denies += _compile("deny", p_deny, prefix)
        groups.append(_compile("allow", p_allow, prefix))
    return RuleSet(_compile("allow", allow), [*denies, *_compile("deny", deny)], groups)
