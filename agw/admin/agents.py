"""The agents control plane (reference §5.10): one agent's workspace, activity, usage,
interactions, resources and health, read from the configuration, the ACP runtime and the usage
tables.

Plain CRUD of ``/admin/agents`` is a generic family (:mod:`agw.admin.resources`). Here:

- ``workspace``: the agent, its runtime, and for an ACP agent its service, the ACP routes to it,
  the runtime's pooled instances, in-flight turns and pending permissions of that service, its
  ACP usage totals and links to its sessions.
- ``activity``: its last 50 interactions (and pending permissions).
- ``usage``: LLM by upstream model, an LLM time series by route, MCP tools, ACP by operation.
- ``interactions``: ``/admin/metrics/interactions`` narrowed to the agent.
- ``resources`` (GET, PUT): the ``resources`` and ``routes`` lists, each id resolved; ``PUT``
  replaces those two sections only, validated like any agent write.
- ``health``: disabled or not, the runtime's counts, failures among the last 200 interactions,
  the usage pipeline's losses.

Usage is read through :class:`agw.usage.answers.MetricsQuery` with an
:class:`~agw.usage.query.Attribution`: a row belongs to the agent when its ``agent_id`` is the
agent's (stamped at write time), when its route is one of the agent's routes, or (ACP rows only)
when its service is the agent's runtime service.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from quart import Quart, request

from agw.admin.resources import JSONResponse, json_body, parse, view
from agw.config import families as f
from agw.config.agents import Agent
from agw.errors import InvalidRequest, NotFound, ReadOnly
from agw.runtime.manager import ConfigManager
from agw.runtime.snapshot import attributed_routes
from agw.runtime.state import ConfigState, Record, dump, touched
from agw.types import JsonObj
from agw.usage.answers import MetricsQuery
from agw.usage.query import Attribution, InvalidParameter

if TYPE_CHECKING:  # the runtime spawns processes; the admin app needs only the types
    from agw.acp import AcpRuntime, PermissionRegistry
    from agw.store.engine import Store
    from agw.usage.recorder import UsageRecorder

ACTIVITY_LIMIT = 50  # interactions in /activity
HEALTH_WINDOW = 200  # interactions /health looks at
USAGE_PARAMS = ("from", "to", "bucket")
_EDITABLE = ("resources", "routes")
# (resolved key, section, list field, family)
_RESOLVED: tuple[tuple[str, str, str, f.Family], ...] = (
    ("providers", "resources", "provider_ids", f.PROVIDER),
    ("mcp_services", "resources", "mcp_service_ids", f.MCP_SERVICE),
    ("virtual_keys", "resources", "virtual_key_ids", f.VIRTUAL_KEY),
    ("llm_routes", "routes", "llm_route_ids", f.LLM_ROUTE),
    ("mcp_routes", "routes", "mcp_route_ids", f.MCP_ROUTE),
    ("acp_routes", "routes", "acp_route_ids", f.ACP_ROUTE),
)


def acp_service_of(agent: Agent) -> str:
    """The agent's runtime ACP service id; "" for an ``http`` agent."""
    rt = agent.runtime
    return rt.acp.service_id if rt.type == "acp" and rt.acp is not None else ""


def acp_routes_of(state: ConfigState, agent: Agent) -> list[str]:
    """The ACP routes attributed to the agent: listed, or targeting its runtime service."""
    return sorted(attributed_routes(state, agent)["acp"])


def attribution(state: ConfigState, agent: Agent) -> Attribution:
    routes = set().union(*attributed_routes(state, agent).values())
    sid = acp_service_of(agent)
    return Attribution(agent.id, tuple(sorted(routes)), (sid,) if sid else ())


def _detail(family: f.Family, obj: Any) -> str:
    """One line saying what the object is (never a secret)."""
    if family is f.PROVIDER:
        return str(obj.provider_type)
    if family is f.MCP_SERVICE:
        return f"{obj.transport} service {obj.name!r}"
    if family is f.VIRTUAL_KEY:
        return str(obj.tag or obj.description)
    if family is f.LLM_ROUTE:
        tp = obj.target_policy
        target = (
            f"provider {tp.provider_id}"
            if tp.provider_id
            else f"logical model {tp.default_model or '?'}"
        )
        return f"{obj.protocol} {obj.match_policy.path_prefix or '/'} -> {target}"
    if family is f.MCP_ROUTE:
        services = ", ".join(obj.service_ids) if obj.service_ids else obj.service_id
        return f"{obj.match_policy.path_prefix or '/'} -> mcp service {services}"
    return f"{obj.match_policy.path_prefix or '/'} -> acp service {obj.service_id}"


def _resolved(state: ConfigState, family: f.Family, oid: str) -> JsonObj:
    rec = state.get(family, oid)
    if rec is None:
        return {"id": oid, "kind": family.name, "disabled": None, "detail": None, "exists": False}
    return {
        "id": oid,
        "kind": family.name,
        "disabled": bool(rec.obj.disabled),
        "detail": _detail(family, rec.obj),
        "exists": True,
    }


def resources_view(state: ConfigState, agent: Agent) -> JsonObj:
    resolved = {
        key: [_resolved(state, family, oid) for oid in getattr(getattr(agent, section), field)]
        for key, section, field, family in _RESOLVED
    }
    return {
        "resources": dump(agent.resources),
        "routes": dump(agent.routes),
        "resolved": resolved,
    }


def register(
    app: Quart,
    manager: ConfigManager,
    db: Store | None,
    runtime: AcpRuntime | None,
    permissions: PermissionRegistry | None,
    recorder: UsageRecorder | None,
) -> None:
    query = MetricsQuery(db)
    base = "/admin/agents/<oid>"

    def _agent(oid: str) -> tuple[Record, Agent]:
        rec = manager.state.get(f.AGENT, oid)
        if rec is None:
            raise NotFound("agent not found")
        agent: Agent = rec.obj
        return rec, agent

    def _runtime(agent: Agent) -> JsonObj:
        """The agent's runtime and whether it can serve: ``ready``, ``service_disabled``,
        ``service_missing``, ``not_running`` (no ACP plane here) or ``not_dispatched``
        (``http`` agents are stored, never dispatched to)."""
        sid = acp_service_of(agent)
        if not sid:
            endpoint = agent.runtime.http.endpoint if agent.runtime.http else ""
            return {"type": "http", "endpoint": endpoint, "status": "not_dispatched"}
        service = manager.snapshot.acp_services.get(sid)
        if service is None:
            status = "service_missing"
        elif service.disabled:
            status = "service_disabled"
        elif runtime is None:
            status = "not_running"
        else:
            status = "ready"
        return {"type": "acp", "service_id": sid, "status": status}

    def _instances(sid: str) -> list[JsonObj]:
        if runtime is None:
            return []
        return [i.view() for i in runtime.instances() if i.service_id == sid]

    def _inflight(sid: str) -> list[JsonObj]:
        if runtime is None:
            return []
        return [t for t in runtime.inflight() if t.get("service_id") == sid]

    def _pending(sid: str) -> list[JsonObj]:
        if permissions is None:
            return []
        return [p for p in permissions.pending() if p.get("service_id") == sid]

    def _only(names: Iterable[str], allowed: tuple[str, ...]) -> None:
        for name in names:
            if name not in allowed:
                accepted = ", ".join(sorted(allowed))
                raise InvalidParameter(
                    f'unknown parameter "{name}"; this endpoint accepts: {accepted}'
                )

    async def _acp_totals(attr: Attribution) -> JsonObj:
        """``{request_count, turn_count, success_count, failure_count, avg_latency_ms}`` of the
        agent's ACP rows."""
        kinds = await query.interactions_summary({"group_by": "route_kind"}, attr)
        acp = next((i for i in kinds["items"] if i["group_value"] == "acp"), None)
        ops = await query.breakdown("acp", {"group_by": "operation", "limit": "1000"}, attr)
        turns = sum(i["turn_count"] for i in ops["items"])
        return {
            "request_count": acp["request_count"] if acp else 0,
            "turn_count": turns,
            "success_count": acp["success_count"] if acp else 0,
            "failure_count": acp["failure_count"] if acp else 0,
            "avg_latency_ms": acp["avg_latency_ms"] if acp else None,
        }

    # ------------------------------------------------------------------------------ views

    async def workspace(oid: str) -> JSONResponse:
        rec, agent = _agent(oid)
        state = manager.state
        out: JsonObj = {
            "agent": view(f.AGENT, oid, rec, reveal=False),
            "runtime": _runtime(agent),
        }
        sid = acp_service_of(agent)
        if not sid:
            return out, 200
        service = state.get(f.ACP_SERVICE, sid)
        out["acp_service"] = (
            view(f.ACP_SERVICE, sid, service, reveal=False) if service is not None else None
        )
        routes = []
        for rid in acp_routes_of(state, agent):
            route = state.get(f.ACP_ROUTE, rid)
            if route is not None:
                prefix = route.obj.match_policy.path_prefix
                routes.append(
                    {"id": rid, "path_prefix": prefix, "service_id": route.obj.service_id}
                )
        out["acp_routes"] = routes
        out["runtime_view"] = {
            "pooled_instances": _instances(sid),
            "in_flight_turns": _inflight(sid),
            "pending_permissions": _pending(sid),
        }
        out["usage"] = await _acp_totals(attribution(state, agent))
        prefix = routes[0]["path_prefix"].rstrip("/") if routes else None
        out["links"] = {
            "sessions": f"{prefix}/sessions" if prefix is not None else None,
            "transcript": (
                f"{prefix}/sessions/{{session_id}}/transcript" if prefix is not None else None
            ),
            "admin_sessions": f"/admin/acp/services/{sid}/sessions",
            "admin_runtime": "/admin/acp/runtime",
        }
        return out, 200

    async def activity(oid: str) -> JSONResponse:
        _, agent = _agent(oid)
        attr = attribution(manager.state, agent)
        found = await query.interactions({"limit": str(ACTIVITY_LIMIT)}, attr)
        out: JsonObj = {"interactions": found["items"]}
        sid = acp_service_of(agent)
        if sid:
            out["pending_permissions"] = _pending(sid)
        return out, 200

    async def usage(oid: str) -> JSONResponse:
        _, agent = _agent(oid)
        _only(request.args, USAGE_PARAMS)
        window = {k: request.args[k] for k in ("from", "to") if k in request.args}
        attr = attribution(manager.state, agent)
        series = dict(window, group_by="route_id")
        if "bucket" in request.args:
            series["bucket"] = request.args["bucket"]
        return {
            "agent_id": agent.id,
            "llm": await query.breakdown("llm", dict(window, group_by="upstream_model"), attr),
            "timeseries": {"llm": await query.timeseries("llm", series, attr)},
            "mcp": await query.tools_summary(dict(window), attr),
            "acp": await query.breakdown("acp", dict(window, group_by="operation"), attr),
        }, 200

    async def interactions(oid: str) -> JSONResponse:
        _, agent = _agent(oid)
        params = {k: request.args[k] for k in request.args}
        return await query.interactions(params, attribution(manager.state, agent)), 200

    async def resources(oid: str) -> JSONResponse:
        _, agent = _agent(oid)
        return resources_view(manager.state, agent), 200

    async def put_resources(oid: str) -> JSONResponse:
        _agent(oid)
        body = await json_body()
        unknown = sorted(set(body) - set(_EDITABLE))
        if unknown:
            raise InvalidRequest(f"unknown field {unknown[0]!r}; expected resources, routes")
        if not body:
            raise InvalidRequest("request body must have resources, routes or both")

        def build(state: ConfigState) -> tuple[ConfigState, str]:
            current = state.get(f.AGENT, oid)
            if current is None:
                raise NotFound("agent not found")
            if current.static:
                raise ReadOnly(f'agent "{oid}" is read-only (defined in the static config)')
            data = dump(current.obj) | body
            obj = parse(f.AGENT, data)
            return state.put(f.AGENT, touched(current, obj)), oid

        await manager.change(build)
        _, agent = _agent(oid)
        return resources_view(manager.state, agent), 200

    async def health(oid: str) -> JSONResponse:
        _, agent = _agent(oid)
        attr = attribution(manager.state, agent)
        recent = (await query.interactions({"limit": str(HEALTH_WINDOW)}, attr))["items"]
        out: JsonObj = {
            "agent_id": agent.id,
            "disabled": agent.disabled,
            "runtime": _runtime(agent),
        }
        sid = acp_service_of(agent)
        if sid:
            out["pooled_instances"] = len(_instances(sid))
            out["in_flight_turns"] = len(_inflight(sid))
            out["pending_permissions"] = len(_pending(sid))
        out["recent_window"] = len(recent)
        out["recent_failures"] = sum(1 for i in recent if not i["success"])
        out["pipeline"] = {
            "dropped_events": recorder.dropped_events if recorder else 0,
            "write_failures": recorder.write_failures if recorder else 0,
        }
        return out, 200

    rules: tuple[tuple[str, str, Any, str], ...] = (
        (f"{base}/workspace", "agent_workspace", workspace, "GET"),
        (f"{base}/activity", "agent_activity", activity, "GET"),
        (f"{base}/usage", "agent_usage", usage, "GET"),
        (f"{base}/interactions", "agent_interactions", interactions, "GET"),
        (f"{base}/resources", "agent_resources", resources, "GET"),
        (f"{base}/resources", "agent_resources_put", put_resources, "PUT"),
        (f"{base}/health", "agent_health", health, "GET"),
    )
    for rule, endpoint, handler, method in rules:
        app.add_url_rule(rule, endpoint, handler, methods=[method])
