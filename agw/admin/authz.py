"""``POST /admin/auth/explain``: what a route's identity step and authorization rules say about a
caller, without a request to any upstream (``agwctl gateway auth explain``).

Body: ``{"route_id": ..., "token": "<JWT>" | "key": "<virtual key>", "model": ..., "tool": ...,
"service": ..., "method": ...}`` (``token`` and ``key`` may come together, as a route that
requires a key and names its user with a JWT takes them). The answer: the principal (never the
token), whether the identity step admitted it, each rule with ``matched`` / ``not_matched`` /
``error``, and the decision (docs/reference/admin-api.md).
"""

from __future__ import annotations

from typing import Any

from quart import Quart

from agw.admin.resources import JSONResponse, json_body
from agw.auth.identity import Identity
from agw.auth.principal import Principal
from agw.errors import InvalidRequest, NotFound
from agw.policy.authz import explain
from agw.policy.variables import EMPTY_PLANES
from agw.runtime.manager import ConfigManager
from agw.runtime.snapshot import CompiledRoute

FIELDS = ("route_id", "token", "key", "model", "tool", "service", "method")


def _strings(body: dict[str, Any]) -> dict[str, str]:
    unknown = sorted(set(body) - set(FIELDS))
    if unknown:
        raise InvalidRequest(f"unknown field {unknown[0]!r}; expected {', '.join(FIELDS)}")
    out: dict[str, str] = {}
    for name in FIELDS:
        value = body.get(name)
        if value is None:
            continue
        if not isinstance(value, str):
            raise InvalidRequest(f"{name} must be a string")
        out[name] = value.strip()
    if not out.get("route_id"):
        raise InvalidRequest("route_id is required")
    return out


def _llm(route: CompiledRoute, model: str) -> dict[str, object]:
    """What the LLM plane would evaluate: the model (or the route's default) and the provider
    of its first candidate (highest priority)."""
    tp = route.config.target_policy
    if tp.type == "direct-provider" or not tp.model_targets:
        provider = route.config.target_policy.provider_id
        return {"model": model, "provider_id": provider, "stream": False}
    name = model or tp.default_model
    target = next((t for t in tp.model_targets if t.name == name), None)
    provider = ""
    if target is not None and target.candidates:
        provider = max(target.candidates, key=lambda c: c.priority).provider_id
    return {"model": name, "provider_id": provider, "stream": False}


def _plane(route: CompiledRoute, args: dict[str, str]) -> tuple[dict[str, Any], bool]:
    """The plane's variable, and whether only the deny rules decide (as for a request that uses
    no item: an MCP ``initialize``, an ACP permission answer)."""
    if route.kind == "llm":
        return {"llm": _llm(route, args.get("model", ""))}, False
    if route.kind == "mcp":
        tool = args.get("tool", "")
        cfg = route.config
        services = [cfg.service_id] if cfg.service_id else list(cfg.service_ids)
        service = args.get("service") or (services[0] if len(services) == 1 else "")
        method = args.get("method") or ("tools/call" if tool else "initialize")
        mcp = {
            "method": method,
            "tool": {"name": tool, "service": service if tool else ""},
            "resource": {"uri": ""},
            "prompt": {"name": ""},
        }
        return {"mcp": mcp}, not tool
    if route.kind == "a2a":
        return {
            "a2a": {"service_id": route.config.service_id, "method": args.get("method", "")}
        }, False
    method = args.get("method") or "session/prompt"
    acp = {"service_id": route.config.service_id, "method": method}
    deny_only = method in ("session/request_permission", "session/cancel", "session/close", "")
    return {"acp": acp}, deny_only


def principal_view(principal: Principal | None) -> dict[str, Any]:
    if principal is None:
        return {"kind": "anonymous"}
    return {
        "kind": principal.kind,
        "user": principal.user,
        "org": principal.org,
        "groups": list(principal.groups),
        "key_id": principal.key_id,
        "provider_id": principal.provider_id,
        "scopes": sorted(principal.scopes),
        "claims": dict(principal.claims),
    }


def register(app: Quart, manager: ConfigManager, identity: Identity | None) -> None:
    async def explain_route() -> JSONResponse:
        args = _strings(await json_body())
        snapshot = manager.snapshot
        route = next((r for r in snapshot.routes if r.id == args["route_id"]), None)
        if route is None:
            raise NotFound(f"route {args['route_id']!r} not found")
        headers: dict[str, str] = {}
        if args.get("token"):
            headers["authorization"] = f"Bearer {args['token']}"
        if args.get("key"):
            headers["x-api-key"] = args["key"]
        principal: Principal | None = None
        authentication: dict[str, Any] = {"ok": True}
        if route.needs_credential:
            if identity is None:
                raise NotFound("the identity step is not running on this gateway")
            principal, refusal = await identity.authenticate(snapshot, route, headers)
            if refusal is not None:
                authentication = {
                    "ok": False,
                    "status": refusal.status,
                    "code": refusal.code,
                    "message": refusal.message,
                }
        out: dict[str, Any] = {
            "route_id": route.id,
            "kind": route.kind,
            "disabled": route.disabled,
            "principal": principal_view(principal),
            "authentication": authentication,
        }
        if not authentication["ok"]:
            out |= {"rules": [], "decision": {"allowed": False, "stage": "identity"}}
            return out, 200
        plane, deny_only = _plane(route, args)
        found = explain(snapshot, route, principal, plane, deny_only=deny_only)
        decision = found.decision
        out["variables"] = {k: v for k, v in plane.items() if k in EMPTY_PLANES}
        out["rules"] = [
            {"rule": r.rule, "expression": r.source, "result": r.outcome, "error": r.error}
            for r in found.results
        ]
        out["decision"] = {
            "allowed": decision.allowed,
            "stage": "authorization" if route.rules is not None else "none",
            "rule": decision.rule,
            "error": decision.error,
            "deny_rules_only": deny_only,
            "message": found.refusal.message if found.refusal is not None else None,
        }
        return out, 200

    app.add_url_rule("/admin/auth/explain", "auth_explain", explain_route, methods=["POST"])
