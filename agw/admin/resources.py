"""CRUD + enable/disable for every configuration family, from the family table.

Each handler builds the new configuration state and hands it to the manager, which compiles it
and commits it in one transaction; reads come from the in-memory state (it equals the store).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError
from quart import Quart, request

from agw.clock import rfc3339_ms
from agw.config import families as f
from agw.config.loader import problems_from_validation
from agw.errors import AgwError, ConfigInvalid, Conflict, InvalidRequest, NotFound, ReadOnly
from agw.llm import CredentialHealth, ModelCatalog
from agw.runtime.apply import prepare
from agw.runtime.manager import ConfigManager
from agw.runtime.snapshot import attributed_routes
from agw.runtime.state import ConfigState, Record, dump, new_virtual_key, touched
from agw.settings import REVEAL_HEADER

JSONResponse = tuple[dict[str, Any], int]
CREDENTIAL_VIEW_FIELDS = (  # runtime state, from the LLM plane
    "unavailable",
    "next_retry_after",
    "quota",
    "last_error",
    "auth_invalid",
    "state_updated_at",
)
MANAGED_MODEL_VIEW_FIELDS = (
    "provider_type",
    "display_name",
    "description",
    "capabilities",
    "snapshot_status",
    "fetched_at",
    "last_error",
)
_SERVER_FIELDS = ("created_at", "updated_at")


def view(family: f.Family, oid: str, rec: Record, *, reveal: bool) -> dict[str, Any]:
    data = dump(rec.obj)
    if not reveal:
        f.redact(family, data)
    if family is f.VIRTUAL_KEY:
        data["key"] = rec.key
    data["created_at"] = rfc3339_ms(rec.created_at)
    data["updated_at"] = rfc3339_ms(rec.updated_at)
    data["source"] = "static" if rec.static else family.source_label
    data["read_only"] = rec.static
    return data


def reveal_requested(param: str = "reveal") -> bool:
    """``?reveal=true`` (``param``) with the ``X-AGW-Reveal-Secrets: true`` header: a page in a
    browser can put the parameter in a link or form but cannot add the header without a CORS
    preflight (docs/security.md, "Admin API"); the parameter alone is a 400."""
    if request.args.get(param, "").lower() not in ("1", "true", "yes"):
        return False
    if request.headers.get(REVEAL_HEADER, "").strip().lower() != "true":
        raise InvalidRequest(
            f"{param}=true shows secrets in clear and needs the header {REVEAL_HEADER}: true"
        )
    return True


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


async def json_body() -> dict[str, Any]:
    raw = await request.get_data()
    if not raw.strip():
        raise InvalidRequest("request body must be a JSON object")
    try:
        body = json.loads(raw, parse_constant=_reject_constant)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidRequest(f"invalid JSON body: {exc}") from None
    except RecursionError:
        raise InvalidRequest("invalid JSON body: nested too deeply") from None
    if not isinstance(body, dict):
        raise InvalidRequest(f"request body must be a JSON object, not {type(body).__name__}")
    return body


def parse(family: f.Family, body: dict[str, Any]) -> Any:
    try:
        return family.model.model_validate(body)
    except ValidationError as exc:
        raise ConfigInvalid(problems_from_validation(exc, family.model), family.title) from None


@dataclass(frozen=True)
class Resource:
    family: f.Family
    base: str
    id_rule: str = "<oid>"
    list_filters: tuple[tuple[str, Callable[[Any], str]], ...] = ()
    own_list: bool = False  # ``GET {base}`` is served by the family's module (limits)


RESOURCES: tuple[Resource, ...] = (
    Resource(
        f.PROVIDER,
        "/admin/llm/providers",
        list_filters=(("provider_type", lambda o: o.provider_type),),
    ),
    Resource(f.LLM_ROUTE, "/admin/llm/routes"),
    Resource(
        f.MANAGED_MODEL,
        "/admin/llm/models/managed",
        "<provider_id>/<path:upstream_model>",
        (("provider_id", lambda o: o.provider_id),),
    ),
    Resource(f.VIRTUAL_KEY, "/admin/virtual_keys", list_filters=(("tag", lambda o: o.tag),)),
    Resource(f.JWT_PROVIDER, "/admin/jwt_providers"),
    Resource(f.AUTHZ_POLICY, "/admin/authorization_policies"),
    Resource(f.LIMIT, "/admin/limits", own_list=True),  # the list: agw/admin/limits.py
    Resource(
        f.CREDENTIAL,
        "/admin/credentials",
        list_filters=(
            ("provider_type", lambda o: o.provider_type),
            ("provider_id", lambda o: o.provider_id),
            ("type", lambda o: o.type),
        ),
    ),
    Resource(f.MCP_SERVICE, "/admin/mcp/services"),
    Resource(f.MCP_ROUTE, "/admin/mcp/routes"),
    Resource(f.ACP_SERVICE, "/admin/acp/services"),
    Resource(f.ACP_ROUTE, "/admin/acp/routes"),
    Resource(f.AGENT, "/admin/agents"),
    Resource(f.A2A_SERVICE, "/admin/a2a/services"),
    Resource(f.A2A_ROUTE, "/admin/a2a/routes"),
)


class ResourceHandlers:
    def __init__(
        self,
        manager: ConfigManager,
        res: Resource,
        catalog: ModelCatalog | None = None,
        health: CredentialHealth | None = None,
    ) -> None:
        self.m = manager
        self.res = res
        self.family = res.family
        self.catalog = catalog
        self.health = health

    # ------------------------------------------------------------------------------ helpers

    def _oid(self, kw: dict[str, str]) -> str:
        if "oid" in kw:
            return kw["oid"]
        return f"{kw['provider_id']}/{kw['upstream_model']}"

    def _existing(self, state: ConfigState, oid: str) -> Record:
        rec = state.get(self.family, oid)
        if rec is None:
            raise NotFound(f"{self.family.title} not found")
        return rec

    def _writable(self, state: ConfigState, oid: str) -> Record:
        rec = self._existing(state, oid)
        if rec.static:
            raise ReadOnly(
                f'{self.family.title} "{oid}" is read-only (defined in the static config)'
            )
        return rec

    def _check_body(self, body: dict[str, Any]) -> None:
        for key in _SERVER_FIELDS:
            if key in body:
                raise InvalidRequest(f"{key} is managed by the server and must be omitted")
        view_only: tuple[str, ...] = ("source", "read_only")
        if self.family is f.CREDENTIAL:
            view_only += CREDENTIAL_VIEW_FIELDS
        if self.family is f.MANAGED_MODEL:
            # derived in the view: from the provider and from model discovery
            view_only += MANAGED_MODEL_VIEW_FIELDS
        for key in view_only:
            body.pop(key, None)

    def _prepare(self, body: dict[str, Any], current: Record | None) -> Any:
        obj, missing = prepare(self.family, parse(self.family, body), current)
        if missing:
            raise InvalidRequest(f"{', '.join(missing)}: <redacted> but nothing stored to keep")
        return obj

    def _fill_credential(self, state: ConfigState, body: dict[str, Any]) -> None:
        if self.family is not f.CREDENTIAL:
            return
        body.setdefault("id", str(uuid.uuid4()))
        if body.get("type") == "cliauth_token":
            raise InvalidRequest(
                "cliauth_token credentials come from a CLI login flow, which this gateway "
                "does not offer yet; create an api_key credential"
            )
        provider = state.get(f.PROVIDER, str(body.get("provider_id", "")))
        if provider is None:
            raise NotFound("provider not found")
        body["provider_type"] = provider.obj.provider_type

    async def _commit(
        self, build: Callable[[ConfigState], tuple[ConfigState, str]], *, deleting: str = ""
    ) -> str:
        try:
            oid, _ = await self.m.change(build)
        except ConfigInvalid as exc:
            if deleting:
                # Each problem is '<kind> "<id>".<field>: <kind> '<deleted>' does not exist'.
                users = sorted({p.path for p in exc.problems})
                raise Conflict(
                    f'cannot delete {self.family.title} "{deleting}": still referenced by '
                    + ", ".join(users)
                ) from None
            raise
        return oid

    # ----------------------------------------------------------------------------- handlers

    async def list(self) -> JSONResponse:
        reveal = reveal_requested()
        items = []
        for oid, rec in self.m.state.records(self.family):
            if any(
                request.args.get(name) not in (None, "", getter(rec.obj))
                for name, getter in self.res.list_filters
            ):
                continue
            items.append(self._view(oid, rec, reveal))
        return {"items": items}, 200

    def _view(self, oid: str, rec: Record, reveal: bool) -> dict[str, Any]:
        data = view(self.family, oid, rec, reveal=reveal)
        if self.family is f.MANAGED_MODEL:
            provider = self.m.state.get(f.PROVIDER, rec.obj.provider_id)
            data["provider_type"] = provider.obj.provider_type if provider else ""
            found = (
                self.catalog.find(rec.obj.provider_id, rec.obj.upstream_model)
                if self.catalog
                else None
            )
            data["display_name"] = found.display_name if found else ""
            data["description"] = found.description if found else ""
            data["capabilities"] = found.capabilities if found else {}
            data["snapshot_status"] = found.status if found else "not_discovered"
            data["fetched_at"] = found.fetched_at if found else None
            data["last_error"] = found.last_error if found else ""
        elif self.family is f.CREDENTIAL and self.health is not None:
            data.update(self.health.view(oid))
        return data

    async def get(self, **kw: str) -> JSONResponse:
        oid = self._oid(kw)
        return self._view(oid, self._existing(self.m.state, oid), reveal_requested()), 200

    async def create(self) -> JSONResponse:
        body = await json_body()
        self._check_body(body)
        if self.family is f.VIRTUAL_KEY and "key" in body:
            raise InvalidRequest("key is generated by the gateway and must be omitted")
        if self.family is f.AGENT:
            body.pop("owns_service", None)

        def build(state: ConfigState) -> tuple[ConfigState, str]:
            self._fill_credential(state, body)
            obj = self._prepare(body, None)
            oid = self.family.id_of(obj)
            existing = state.get(self.family, oid)
            if existing is not None:
                if existing.static:
                    raise ReadOnly(f'{self.family.title} "{oid}" is read-only (static config)')
                raise Conflict(f'{self.family.title} "{oid}" already exists')
            if self.family in f.ROUTE_FAMILIES and oid in state.route_ids():
                raise Conflict(f'route id "{oid}" is already used by another route')
            key = new_virtual_key() if self.family is f.VIRTUAL_KEY else ""
            return state.put(self.family, touched(None, obj, key=key)), oid

        oid = await self._commit(build)
        return self._view(oid, self._existing(self.m.state, oid), False), 201

    async def update(self, **kw: str) -> JSONResponse:
        oid = self._oid(kw)
        body = await json_body()
        self._check_body(body)
        if self.family is f.MANAGED_MODEL:
            body.setdefault("provider_id", kw["provider_id"])
            body.setdefault("upstream_model", kw["upstream_model"])
        else:
            body.setdefault("id", oid)

        def build(state: ConfigState) -> tuple[ConfigState, str]:
            current = self._writable(state, oid)
            if self.family is f.VIRTUAL_KEY and body.pop("key", current.key) != current.key:
                raise InvalidRequest("key is generated by the gateway and cannot be changed")
            if self.family is f.CREDENTIAL:
                body.setdefault("provider_id", current.obj.provider_id)
                self._fill_credential(state, body)
            obj = self._prepare(body, current)
            if self.family.id_of(obj) != oid:
                raise InvalidRequest(
                    f"id in body ({self.family.id_of(obj)!r}) does not match the path ({oid!r})"
                )
            return state.put(self.family, touched(current, obj)), oid

        await self._commit(build)
        return self._view(oid, self._existing(self.m.state, oid), False), 200

    async def delete(self, **kw: str) -> JSONResponse:
        oid = self._oid(kw)
        unbound: dict[str, Any] = {}

        def build(state: ConfigState) -> tuple[ConfigState, str]:
            current = self._writable(state, oid)
            if self.family is f.AGENT:
                unbound.update(agent_bindings(state, current.obj))
            return state.delete(self.family, oid), oid

        await self._commit(build, deleting=oid)
        key = "credential_id" if self.family is f.CREDENTIAL else "id"
        answer: dict[str, Any] = {"status": "deleted", key: oid}
        if self.family is f.AGENT:
            answer["unbound"] = unbound
        return answer, 200

    def toggler(self, disabled: bool) -> Callable[..., Awaitable[JSONResponse]]:
        async def toggle(**kw: str) -> JSONResponse:
            oid = self._oid(kw)

            def build(state: ConfigState) -> tuple[ConfigState, str]:
                current = self._writable(state, oid)
                if self.family is f.MANAGED_MODEL:
                    obj = current.obj.model_copy(update={"enabled": not disabled})
                else:
                    obj = current.obj.model_copy(update={"disabled": disabled})
                return state.put(self.family, touched(current, obj)), oid

            await self._commit(build)
            return self._view(oid, self._existing(self.m.state, oid), False), 200

        return toggle


def agent_bindings(state: ConfigState, agent: Any) -> dict[str, Any]:
    """What an ACP agent binds besides its lists: its runtime service, and the ACP routes it is
    attributed (those it lists and those that target the service). Deleting the agent leaves
    them in place, unbound: ``{acp_service_id?, acp_route_ids?}``."""
    runtime = agent.runtime
    if runtime.type != "acp" or runtime.acp is None:
        return {}
    routes = attributed_routes(state, agent)["acp"]
    return {"acp_service_id": runtime.acp.service_id} | (
        {"acp_route_ids": sorted(routes)} if routes else {}
    )


def register(
    app: Quart,
    manager: ConfigManager,
    catalog: ModelCatalog | None = None,
    health: CredentialHealth | None = None,
) -> None:
    for res in RESOURCES:
        h = ResourceHandlers(manager, res, catalog, health)
        name = res.family.name
        one = f"{res.base}/{res.id_rule}"
        if not res.own_list:
            app.add_url_rule(res.base, f"{name}_list", h.list, methods=["GET"])
        app.add_url_rule(res.base, f"{name}_create", h.create, methods=["POST"])
        app.add_url_rule(one, f"{name}_get", h.get, methods=["GET"])
        app.add_url_rule(one, f"{name}_update", h.update, methods=["PUT"])
        app.add_url_rule(one, f"{name}_delete", h.delete, methods=["DELETE"])
        app.add_url_rule(f"{one}/enable", f"{name}_enable", h.toggler(False), methods=["POST"])
        app.add_url_rule(f"{one}/disable", f"{name}_disable", h.toggler(True), methods=["POST"])


def family_error(exc: AgwError) -> dict[str, Any]:
    body: dict[str, Any] = {"error": exc.message, "code": exc.code}
    if isinstance(exc, ConfigInvalid):
        body["problems"] = [
            {"path": p.path, "message": p.message} | ({"line": p.line} if p.line else {})
            for p in exc.problems
        ]
    return body
