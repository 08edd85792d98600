"""Checks that span objects: duplicate ids, ambiguous routes, dangling references, agent bindings.

The same function checks a bundle on its own (``partial=True``: a reference is only checked when
the family it points into is part of the bundle, as the Go project does, so a bundle may refer to
objects already on the server) and the whole configuration a write would produce
(``partial=False``: every reference must resolve).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from agw.config import families as f
from agw.config.agents import AgentRuntime
from agw.config.base import MatchPolicy
from agw.config.llm import TargetPolicy
from agw.errors import Problem

# A labelled object: the label is where a problem is reported ("llmRoutes[1]" in a bundle,
# 'llm_route "chat"' for an object already stored).
Labelled = tuple[str, Any]
Catalog = Mapping[str, Sequence[Labelled]]

_ROUTE_FAMILIES = tuple(fam.name for fam in f.ROUTE_FAMILIES)


def check(catalog: Catalog, *, partial: bool, incomplete: Iterable[str] = ()) -> list[Problem]:
    """``incomplete``: families with objects that failed on their own; references into them
    are not checked (the object may be the one with a typo)."""
    problems: list[Problem] = []
    ids: dict[str, set[str]] = {}
    present = {name for name, objs in catalog.items() if objs or not partial}
    present -= set(incomplete)

    for name, objs in catalog.items():
        family = f.BY_NAME[name]
        seen: set[str] = set()
        for label, obj in objs:
            oid = family.id_of(obj)
            if oid in seen:
                problems.append(Problem(label, f"duplicate {family.title} id {oid!r}"))
            seen.add(oid)
        ids[name] = seen

    problems += _check_routes(catalog)
    all_routes = set().union(*(ids.get(n, set()) for n in _ROUTE_FAMILIES))

    def ref(label: str, field: str, family: f.Family, value: str) -> None:
        if family.name in present and value not in ids.get(family.name, set()):
            problems.append(Problem(f"{label}.{field}", f"{family.title} {value!r} does not exist"))

    for label, mm in catalog.get(f.MANAGED_MODEL.name, ()):
        ref(label, "provider_id", f.PROVIDER, mm.provider_id)
    for label, cred in catalog.get(f.CREDENTIAL.name, ()):
        ref(label, "provider_id", f.PROVIDER, cred.provider_id)
    for label, route in catalog.get(f.LLM_ROUTE.name, ()):
        tp: TargetPolicy = route.target_policy
        if tp.type == "direct-provider":
            ref(label, "target_policy.provider_id", f.PROVIDER, tp.provider_id)
        for ti, target in enumerate(tp.model_targets):
            for ci, cand in enumerate(target.candidates):
                where = f"target_policy.model_targets[{ti}].candidates[{ci}].provider_id"
                ref(label, where, f.PROVIDER, cand.provider_id)
    for label, route in catalog.get(f.MCP_ROUTE.name, ()):
        if route.service_id:
            ref(label, "service_id", f.MCP_SERVICE, route.service_id)
        for si, sid in enumerate(route.service_ids):
            ref(label, f"service_ids[{si}]", f.MCP_SERVICE, sid)
    for label, route in catalog.get(f.ACP_ROUTE.name, ()):
        ref(label, "service_id", f.ACP_SERVICE, route.service_id)
    for label, route in catalog.get(f.A2A_ROUTE.name, ()):
        ref(label, "service_id", f.A2A_SERVICE, route.service_id)
    for name in _ROUTE_FAMILIES:
        for label, route in catalog.get(name, ()):
            for pi, pid in enumerate(route.auth_policy.jwt_provider_ids):
                ref(label, f"auth_policy.jwt_provider_ids[{pi}]", f.JWT_PROVIDER, pid)
    for label, svc in catalog.get(f.ACP_SERVICE.name, ()):
        origin = svc.gateway_origin
        if origin is not None:
            if origin.mcp_route_id:
                ref(label, "gateway_origin.mcp_route_id", f.MCP_ROUTE, origin.mcp_route_id)
            if origin.llm_route_id:
                ref(label, "gateway_origin.llm_route_id", f.LLM_ROUTE, origin.llm_route_id)
            ref(label, "gateway_origin.virtual_key_id", f.VIRTUAL_KEY, origin.virtual_key_id)
    routes_present = any(n in present for n in _ROUTE_FAMILIES)
    for label, vk in catalog.get(f.VIRTUAL_KEY.name, ()):
        for rid in vk.allowed_route_ids:  # kept sorted, so no index: it would not match the file
            if routes_present and rid not in all_routes:
                problems.append(
                    Problem(f"{label}.allowed_route_ids", f"route {rid!r} does not exist")
                )
    for label, lim in catalog.get(f.LIMIT.name, ()):
        match = lim.match
        for i, rid in enumerate(match.route_ids):
            if routes_present and rid not in all_routes:
                problems.append(
                    Problem(f"{label}.match.route_ids[{i}]", f"route {rid!r} does not exist")
                )
        for i, kid in enumerate(match.key_ids):
            ref(label, f"match.key_ids[{i}]", f.VIRTUAL_KEY, kid)
        for i, pid in enumerate(match.provider_ids):
            ref(label, f"match.provider_ids[{i}]", f.PROVIDER, pid)
    problems += _check_agents(catalog, ids, present, ref)
    return problems


def _check_routes(catalog: Catalog) -> list[Problem]:
    """Route ids are unique across kinds, and no two routes match exactly the same requests."""
    problems: list[Problem] = []
    by_id: dict[str, str] = {}
    by_match: dict[tuple[str, str, tuple[str, ...]], str] = {}
    for name in _ROUTE_FAMILIES:
        for label, route in catalog.get(name, ()):
            other = by_id.get(route.id)
            if other is not None and not other.startswith(name):
                problems.append(Problem(label, f"route id {route.id!r} is already used by {other}"))
            by_id.setdefault(route.id, f"{name} {route.id!r}")
            mp: MatchPolicy = route.match_policy
            key = (mp.host, mp.path_prefix, tuple(mp.methods))
            if key in by_match and by_match[key] != route.id:
                problems.append(
                    Problem(
                        f"{label}.match_policy",
                        f"matches exactly the same requests as route {by_match[key]!r}",
                    )
                )
            by_match.setdefault(key, route.id)
    return problems


def _check_agents(
    catalog: Catalog,
    ids: Mapping[str, set[str]],
    present: set[str],
    ref: Any,
) -> list[Problem]:
    problems: list[Problem] = []
    service_owner: dict[str, str] = {}
    route_owner: dict[str, str] = {}
    acp_route_service = {r.id: r.service_id for _, r in catalog.get(f.ACP_ROUTE.name, ())}
    for label, agent in catalog.get(f.AGENT.name, ()):
        rt: AgentRuntime = agent.runtime
        if rt.type == "acp" and rt.acp is not None:
            sid = rt.acp.service_id
            ref(label, "runtime.acp.service_id", f.ACP_SERVICE, sid)
            if sid in service_owner:
                problems.append(
                    Problem(
                        f"{label}.runtime.acp.service_id",
                        f"acp service {sid!r} is already bound to agent {service_owner[sid]!r}",
                    )
                )
            service_owner.setdefault(sid, agent.id)
        lists: Iterable[tuple[str, list[str], f.Family]] = (
            ("routes.llm_route_ids", agent.routes.llm_route_ids, f.LLM_ROUTE),
            ("routes.mcp_route_ids", agent.routes.mcp_route_ids, f.MCP_ROUTE),
            ("routes.acp_route_ids", agent.routes.acp_route_ids, f.ACP_ROUTE),
            ("resources.provider_ids", agent.resources.provider_ids, f.PROVIDER),
            ("resources.mcp_service_ids", agent.resources.mcp_service_ids, f.MCP_SERVICE),
            ("resources.virtual_key_ids", agent.resources.virtual_key_ids, f.VIRTUAL_KEY),
        )
        for field, values, family in lists:
            for i, value in enumerate(values):
                ref(label, f"{field}[{i}]", family, value)
                if field.startswith("routes."):
                    if value in route_owner:
                        problems.append(
                            Problem(
                                f"{label}.{field}[{i}]",
                                f"route {value!r} is already bound to agent {route_owner[value]!r}",
                            )
                        )
                    route_owner.setdefault(value, agent.id)
        for i, rid in enumerate(agent.routes.acp_route_ids):
            svc = acp_route_service.get(rid)
            want = rt.acp.service_id if rt.acp else None
            if svc is not None and svc != want:
                mine = f"the agent's runtime service {want!r}" if want else "an acp runtime"
                problems.append(
                    Problem(
                        f"{label}.routes.acp_route_ids[{i}]",
                        f"acp route {rid!r} targets service {svc!r}, not {mine}",
                    )
                )
    return problems
