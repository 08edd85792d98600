"""Whole-gateway endpoints: bundle apply and export, type registries, cliauth authenticators."""

from __future__ import annotations

from typing import Any

from quart import Quart

from agw.admin.resources import JSONResponse, json_body, parse, reveal_requested, view
from agw.config import families as f
from agw.config.bundle import API_VERSION, KIND
from agw.config.llm import AUTHENTICATORS, LLM_PROTOCOLS, PROVIDER_TYPES
from agw.config.loader import load_bundle_data
from agw.errors import ConfigInvalid, InvalidRequest, NotFound, ReadOnly, StoreUnavailable
from agw.runtime import apply
from agw.runtime.manager import ConfigManager
from agw.runtime.state import ConfigState, Record, dump, touched


def _flag(body: dict[str, Any], name: str) -> bool:
    value = body.get(name, False)
    if not isinstance(value, bool):
        raise InvalidRequest(f"{name} must be a boolean")
    return value


def export_bundle(state: ConfigState, *, include_secrets: bool) -> dict[str, Any]:
    out: dict[str, Any] = {"apiVersion": API_VERSION, "kind": KIND}
    for family in f.BUNDLE_FAMILIES:
        assert family.bundle_key is not None
        items = []
        for _, rec in state.records(family):
            data = dump(rec.obj)
            if not include_secrets:
                f.redact(family, data)
            if family is f.AGENT:
                data.pop("owns_service", None)
            items.append(data)
        out[family.bundle_key] = items
    return out


def register(app: Quart, manager: ConfigManager) -> None:
    async def health() -> JSONResponse:
        # A few stat calls (agw.store.db): a store deleted or read-only under agwd, or whose
        # last write failed (disk full), is a 503.
        problem = manager.db.problem() or manager.db.last_failure
        if problem is not None:
            return {
                "status": "degraded",
                "error": f"config store unavailable: {problem}",
                "code": StoreUnavailable.code,
            }, StoreUnavailable.status
        return {"status": "ok"}, 200

    async def provider_types() -> JSONResponse:
        enabled = set(manager.enabled_provider_types)
        items = [{"provider_type": t, "enabled": t in enabled} for t in PROVIDER_TYPES]
        return {"items": items}, 200

    async def api_handler_types() -> JSONResponse:
        return {"items": [{"llm_api_handler_type": t} for t in LLM_PROTOCOLS]}, 200

    async def apply_bundle() -> JSONResponse:
        body = await json_body()
        unknown = set(body) - {"bundle", "dry_run", "prune"}
        if unknown:
            raise InvalidRequest(
                f"unknown field {sorted(unknown)[0]!r}; expected bundle, dry_run, prune"
            )
        dry_run, prune = _flag(body, "dry_run"), _flag(body, "prune")
        bundle = load_bundle_data(body.get("bundle"))
        actions: list[apply.Action] = []

        def build(state: ConfigState) -> tuple[ConfigState, None]:
            new, planned = apply.plan(state, bundle, prune=prune)
            actions.extend(planned)
            if any(a.action == "error" for a in actions):
                raise ConfigInvalid([], "apply")
            return new, None

        try:
            _, result = await manager.change(build, dry_run=dry_run)
        except ConfigInvalid as exc:
            apply.attach_problems(actions, exc)
            counts = apply.counts(actions)
            return {
                "status": "error",
                "code": exc.code,
                "error": f"gateway apply failed with {counts['error']} error(s); "
                "nothing was changed",
                "dry_run": dry_run,
                "actions": [a.as_json() for a in actions],
                "counts": counts,
            }, 400
        return {
            "status": "ok",
            "dry_run": dry_run,
            "changed": result.changed,
            "actions": [a.as_json() for a in actions],
            "counts": apply.counts(actions),
        }, 200

    async def export() -> JSONResponse:
        include = reveal_requested("include_secrets")
        return export_bundle(manager.state, include_secrets=include), 200

    async def authenticators() -> JSONResponse:
        items = []
        for name in AUTHENTICATORS:
            rec = manager.state.get(f.CLIAUTH, name)
            items.append(_authenticator_view(name, rec))
        return {"items": items}, 200

    async def authenticator(name: str) -> JSONResponse:
        if name not in AUTHENTICATORS:
            raise NotFound(f"cliauth authenticator {name!r} not found")
        return _authenticator_view(name, manager.state.get(f.CLIAUTH, name)), 200

    async def put_authenticator(name: str) -> JSONResponse:
        if name not in AUTHENTICATORS:
            raise NotFound(f"cliauth authenticator {name!r} not found")
        body = await json_body()
        unknown = set(body) - {"enabled", "config"}
        if unknown:
            raise InvalidRequest(f"unknown field {sorted(unknown)[0]!r}; expected enabled, config")
        if "enabled" not in body and "config" not in body:
            raise InvalidRequest("enabled or config is required")
        enabled = _flag(body, "enabled") if "enabled" in body else True
        if enabled is False and body.get("config") is not None:
            raise InvalidRequest("config cannot be set while disabling an authenticator")
        if enabled and body.get("config") is None:
            raise InvalidRequest("enabling an authenticator requires config (use {} for defaults)")
        obj = parse(f.CLIAUTH, {"name": name, "enabled": enabled, "config": body.get("config")})

        def build(state: ConfigState) -> tuple[ConfigState, Record | None]:
            current = state.get(f.CLIAUTH, name)
            if current is not None and current.static:
                raise ReadOnly(
                    f'cliauth authenticator "{name}" is read-only (defined in the static config)'
                )
            return state.put(f.CLIAUTH, touched(current, obj)), current

        previous, _ = await manager.change(build)
        status = "updated" if enabled else "disabled"
        code = 201 if enabled and (previous is None or not previous.obj.enabled) else 200
        if code == 201:
            status = "enabled"
        view_ = _authenticator_view(name, manager.state.get(f.CLIAUTH, name))
        return {"status": status, "authenticator": view_}, code

    def _authenticator_view(name: str, rec: Record | None) -> dict[str, Any]:
        if rec is None:
            return {"name": name, "enabled": False, "config": None, "source": "runtime"}
        data = view(f.CLIAUTH, name, rec, reveal=False)
        return data

    app.add_url_rule("/admin/health", "health", health, methods=["GET"])
    app.add_url_rule("/admin/llm/provider_types", "provider_types", provider_types, methods=["GET"])
    app.add_url_rule(
        "/admin/llm/api_handler_types", "api_handler_types", api_handler_types, methods=["GET"]
    )
    app.add_url_rule("/admin/gateway/apply", "gateway_apply", apply_bundle, methods=["POST"])
    app.add_url_rule("/admin/gateway/export", "gateway_export", export, methods=["GET"])
    app.add_url_rule(
        "/admin/cliauth/authenticators", "cliauth_list", authenticators, methods=["GET"]
    )
    app.add_url_rule(
        "/admin/cliauth/authenticators/<name>", "cliauth_get", authenticator, methods=["GET"]
    )
    app.add_url_rule(
        "/admin/cliauth/authenticators/<name>", "cliauth_put", put_authenticator, methods=["PUT"]
    )
