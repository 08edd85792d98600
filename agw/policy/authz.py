"""Authorization: a route's CEL rules (agw/policy/rules.py) over one request, after identity.

The planes call :func:`authorize` once they know what the request is for (the LLM plane once the
model and provider are resolved, the ACP plane before any agent starts, the MCP plane per item):

    refusal = authorize(req, llm={"model": "gpt-4o", "provider_id": "oa", "stream": False})

``None`` is allowed (a route without rules costs one attribute read); otherwise a
``Refusal(403, "forbidden", ...)`` naming the rule, and one ``authorization_denied`` log line
naming the route and the rule (never a credential). :func:`authorize_session` holds a request to
the deny rules only; :func:`visible_to` is the quiet form for filtering lists.

The variables of an evaluation (docs/security.md, "Authorization rules (CEL)"): ``request``
(method, path, headers without credentials), ``jwt`` (the token's claims, ``{}`` without one),
``principal`` (kind, user, org, groups, key_id, provider_id, scopes: ``""`` and ``[]`` when
absent, so a rule about them does not error on an anonymous caller), ``key`` (the virtual key's
id and tags), ``session`` (id), and the plane's own ``llm``, ``mcp``, ``acp``, ``a2a``; the
planes a request is not on are there with empty fields, so ``mcp.tool.name == "add"`` on an LLM
route is false, not an error. Only the variables the route's rules name are built.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field

from agw.auth.principal import Principal
from agw.errors import Refusal
from agw.policy.rules import ALLOWED, Decision, RuleResult, RuleSet
from agw.policy.variables import request_variables, variables_of
from agw.request import Request
from agw.runtime.snapshot import CompiledRoute, Snapshot

log = logging.getLogger(__name__)

_MISS = object()
MEMO_MAX = 8192  # allowed decisions remembered per rule set (cleared when full)


def refusal_of(route: CompiledRoute, decision: Decision) -> Refusal:
    """The caller's answer: the rule is named by its place (``deny[0]``), not its text."""
    if decision.error is not None:
        why = f"authorization rule {decision.rule} could not be evaluated"
    elif decision.rule is not None:
        why = f"denied by authorization rule {decision.rule}"
    else:
        why = "no authorization rule allows this request"
    return Refusal(403, "forbidden", f'route "{route.id}": {why}')


def _denied(req: Request, rules: RuleSet, decision: Decision) -> Refusal:
    route = req.route
    principal = req.principal
    extra = {
        "route_id": route.id,
        "rule": decision.rule or "",
        "rule_source": rules.source(decision.rule) if decision.rule else "",
        "principal_kind": principal.kind if principal is not None else "anonymous",
        "user_id": (principal.user or "") if principal is not None else "",
        "virtual_key_id": (principal.key_id or "") if principal is not None else "",
    }
    if decision.error is not None:
        extra["error"] = decision.error
        log.warning("authorization_rule_failed", extra=extra)
    else:
        log.info("authorization_denied", extra=extra)
    return refusal_of(route, decision)


def _frozen(value: object) -> object:
    if isinstance(value, Mapping):
        return tuple((k, _frozen(v)) for k, v in value.items())
    if isinstance(value, list):
        return tuple(_frozen(v) for v in value)
    return value


def _allowed(
    req: Request, rules: RuleSet, plane: dict[str, Mapping[str, object]], deny_only: bool
) -> bool:
    """Whether the rules allow: remembered for a caller repeating the same request (the same
    principal object, from the identity step's caches, and the same plane values), else one
    evaluation of the rules joined (:meth:`RuleSet.allows`). The CEL engine costs about 20 us a
    call inside a busy gateway (its code is cold between requests); a remembered answer about
    1 us (docs/performance.md)."""
    principal = req.principal
    key: tuple[object, ...] | None = None
    if not rules.per_request:
        key = (deny_only, id(principal), _frozen(plane))
        if rules.memo.get(key, _MISS) is principal:
            return True
    if not rules.allows(variables_of(req, rules, plane), deny_only=deny_only):
        return False
    if key is not None:
        if len(rules.memo) >= MEMO_MAX:
            rules.memo.clear()
        rules.memo[key] = principal  # held, so its id is not reused while remembered
    return True


def authorize(req: Request, **plane: Mapping[str, object]) -> Refusal | None:
    """None when the request may go on (or the route has no rules); else the 403 to answer.
    ``plane``: the plane's variable, e.g. ``llm={"model": ..., "provider_id": ..., "stream":
    False}``, ``mcp={...}``, ``acp={"service_id": ..., "method": ...}``."""
    rules = req.route.rules
    if rules is None:
        return None
    if _allowed(req, rules, plane, False):  # the rules one by one only to say why not
        return None
    decision = rules.decide(variables_of(req, rules, plane))
    return None if decision.allowed else _denied(req, rules, decision)


def authorize_session(req: Request, **plane: Mapping[str, object]) -> Refusal | None:
    """:func:`authorize` with the deny rules only: for a request that uses nothing the allow
    rules are about (an MCP ``initialize``, a listing of models)."""
    rules = req.route.rules
    if rules is None:
        return None
    if _allowed(req, rules, plane, True):
        return None
    decision = rules.decide(variables_of(req, rules, plane), deny_only=True)
    return None if decision.allowed else _denied(req, rules, decision)


def visible_to(req: Request, **plane: Mapping[str, object]) -> bool:
    """Whether the request's caller may use what ``plane`` describes, without a log line: for
    filtering a list (an MCP ``tools/list``)."""
    rules = req.route.rules
    return rules is None or _allowed(req, rules, plane, False)


@dataclass(frozen=True, slots=True)
class Explanation:
    """What the rules of a route say about one caller (``agwctl gateway auth explain``)."""

    decision: Decision
    results: list[RuleResult] = field(default_factory=list)
    refusal: Refusal | None = None  # what the caller would be answered, when denied
    variables: dict[str, object] = field(default_factory=dict)


def explain(
    snapshot: Snapshot,
    route: CompiledRoute,
    principal: Principal | None,
    plane: Mapping[str, Mapping[str, object]],
    *,
    deny_only: bool = False,
    method: str = "POST",
    path: str = "",
) -> Explanation:
    """Every rule of ``route`` evaluated for ``principal`` and ``plane`` (no request made), and
    the decision the data plane would take (``deny_only``: as for a session request)."""
    rules = route.rules
    if rules is None:
        return Explanation(ALLOWED)
    names = rules.variables | frozenset(plane)
    variables = request_variables(
        names,
        snapshot,
        principal,
        method=method,
        path=path or route.path_prefix or "/",
        headers={},
        session_id=None,
    )
    variables.update(plane)
    _, results = rules.explain(variables)
    decision = rules.decide(variables, deny_only=deny_only)
    refusal = None if decision.allowed else refusal_of(route, decision)
    return Explanation(decision, results, refusal, variables)
