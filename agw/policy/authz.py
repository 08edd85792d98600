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
id and tags), ``session`` (id), and the plane's own ``llm``, ``mcp``, ``acp``; the planes a
request is not on are there with empty fields, so ``mcp.tool.name == "add"`` on an LLM route is
false, not an error. Only the variables the route's rules name are built.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field

from agw.auth.principal import Principal
from agw.config import families as f
from agw.errors import Refusal
from agw.policy.rules import ALLOWED, Decision, RuleResult, RuleSet
from agw.request import Request
from agw.runtime.snapshot import CompiledRoute, Snapshot

log = logging.getLogger(__name__)

# What the planes a request is not on look like (read-only by convention: never mutated)
EMPTY_PLANES: Mapping[str, Mapping[str, object]] = {
    "llm": {"model": "", "provider_id": "", "stream": False},
    "mcp": {
        "method": "",
        "tool": {"name": "", "service": ""},
        "resource": {"uri": "", "service": ""},
        "prompt": {"name": "", "service": ""},
    },
    "acp": {"service_id": "", "method": ""},
}
# headers a rule never sees: the caller's credentials
CREDENTIAL_HEADERS = frozenset(
    {"authorization", "proxy-authorization", "x-api-key", "cookie", "x-goog-api-key"}
)
_NO_KEY: Mapping[str, object] = {"id": "", "tags": []}
_ANONYMOUS: Mapping[str, object] = {
    "kind": "anonymous",
    "user": "",
    "org": "",
    "groups": [],
    "key_id": "",
    "provider_id": "",
    "scopes": [],
}
_VARS_KEY = "authz_vars"  # Request.extra: this request's variables, built once
_MISS = object()
MEMO_MAX = 8192  # allowed decisions remembered per rule set (cleared when full)


def principal_vars(principal: Principal | None) -> Mapping[str, object]:
    if principal is None:
        return _ANONYMOUS
    return {
        "kind": principal.kind,
        "user": principal.user or "",
        "org": principal.org or "",
        "groups": list(principal.groups),
        "key_id": principal.key_id or "",
        "provider_id": principal.provider_id or "",
        "scopes": sorted(principal.scopes),
    }


def key_vars(snapshot: Snapshot, principal: Principal | None) -> Mapping[str, object]:
    key_id = principal.key_id if principal is not None else None
    if not key_id:
        return _NO_KEY
    rec = snapshot.state.get(f.VIRTUAL_KEY, key_id)
    tag = rec.obj.tag if rec is not None else ""
    return {"id": key_id, "tags": [tag] if tag else []}


def request_variables(
    names: frozenset[str],
    snapshot: Snapshot,
    principal: Principal | None,
    *,
    method: str,
    path: str,
    headers: Mapping[str, str],
    session_id: str | None,
) -> dict[str, object]:
    """The variables of ``names`` that do not depend on the plane, the empty planes included."""
    out: dict[str, object] = {}
    for name in names:
        if name == "principal":
            out[name] = principal_vars(principal)
        elif name == "jwt":
            out[name] = dict(principal.claims) if principal is not None else {}
        elif name == "key":
            out[name] = key_vars(snapshot, principal)
        elif name == "request":
            kept = {k: v for k, v in headers.items() if k not in CREDENTIAL_HEADERS}
            out[name] = {"method": method, "path": path, "headers": kept}
        elif name == "session":
            out[name] = {"id": session_id or ""}
        elif name in EMPTY_PLANES:
            out[name] = EMPTY_PLANES[name]
    return out


def _variables(
    req: Request, rules: RuleSet, plane: dict[str, Mapping[str, object]]
) -> dict[str, object]:
    base: dict[str, object] | None = req.extra.get(_VARS_KEY)
    if base is None:
        base = request_variables(
            rules.variables,
            req.snapshot,
            req.principal,
            method=req.method,
            path=req.scope["path"],
            headers=req.headers,
            session_id=req.session_id,
        )
        req.extra[_VARS_KEY] = base
    return base | plane if plane else base


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
    if not rules.allows(_variables(req, rules, plane), deny_only=deny_only):
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
    decision = rules.decide(_variables(req, rules, plane))
    return None if decision.allowed else _denied(req, rules, decision)


def authorize_session(req: Request, **plane: Mapping[str, object]) -> Refusal | None:
    """:func:`authorize` with the deny rules only: for a request that uses nothing the allow
    rules are about (an MCP ``initialize``, a listing of models)."""
    rules = req.route.rules
    if rules is None:
        return None
    if _allowed(req, rules, plane, True):
        return None
    decision = rules.decide(_variables(req, rules, plane), deny_only=True)
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
