"""compile(config state) -> an immutable Snapshot the data plane reads without touching the store.

Compiling is also the last validation gate: a state that does not compile is never committed.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from agw.config import families as f
from agw.config import validate
from agw.config.access import VirtualKey
from agw.config.llm import Provider
from agw.errors import ConfigInvalid, Problem
from agw.policy.limits import EMPTY_TABLE, LimitTable, compile_limits
from agw.policy.rules import RuleError, RuleSet, compile_rules
from agw.runtime.state import ConfigState, Record

ROUTE_KINDS = tuple(fam.route_kind or "" for fam in f.ROUTE_FAMILIES)


@dataclass(frozen=True)
class CompiledRoute:
    id: str
    kind: str  # llm | mcp | acp | a2a
    protocol: str
    host: str
    path_prefix: str
    methods: frozenset[str]
    disabled: bool
    require_virtual_key: bool
    config: Any
    # JWT providers whose tokens admit callers (auth_policy.jwt_provider_ids)
    jwt_provider_ids: tuple[str, ...] = ()
    agent_id: str | None = None  # the one agent this route is bound to, stamped on usage rows
    # authorization (agw/policy/rules.py), compiled from config.authorization; None: no rules
    rules: RuleSet | None = field(default=None, compare=False)

    @property
    def needs_credential(self) -> bool:
        return self.require_virtual_key or bool(self.jwt_provider_ids)

    @property
    def rank(self) -> tuple[int, int, int]:
        return (len(self.path_prefix), 1 if self.host else 0, 1 if self.methods else 0)

    def matches(self, host: str, path: str, method: str) -> bool:
        if self.host and self.host != host:
            return False
        if not path.startswith(self.path_prefix):
            return False
        return not self.methods or method in self.methods


@dataclass(frozen=True)
class VirtualKeyEntry:
    id: str
    key: str
    config: VirtualKey


@dataclass(frozen=True)
class Snapshot:
    routes: tuple[CompiledRoute, ...] = ()
    virtual_keys: MappingProxyType[str, VirtualKeyEntry] = field(
        default_factory=lambda: MappingProxyType({})
    )
    providers: MappingProxyType[str, Provider] = field(default_factory=lambda: MappingProxyType({}))
    # enabled managed credentials by scope ("id:<provider>", "type:<type>", custom), highest
    # attributes.priority first
    credentials: MappingProxyType[str, tuple[Any, ...]] = field(
        default_factory=lambda: MappingProxyType({})
    )
    mcp_services: MappingProxyType[str, Any] = field(
        default_factory=lambda: MappingProxyType({})
    )  # McpService by id, disabled ones included
    acp_services: MappingProxyType[str, Any] = field(
        default_factory=lambda: MappingProxyType({})
    )  # AcpService by id, disabled ones included
    a2a_services: MappingProxyType[str, Any] = field(
        default_factory=lambda: MappingProxyType({})
    )  # A2aService by id, disabled ones included
    jwt_providers: MappingProxyType[str, Any] = field(
        default_factory=lambda: MappingProxyType({})
    )  # JwtProvider by id, disabled ones included
    limits: LimitTable = EMPTY_TABLE  # the enabled limits, by the routes they may apply to
    state: ConfigState = field(default_factory=ConfigState)

    def match(self, host: str, path: str, method: str) -> CompiledRoute | None:
        """Longest path prefix, then host-specific, then method-specific (reference §4.1).
        Disabled routes take part, so a disabled longer prefix shadows a shorter one."""
        host = host.split(":", 1)[0].lower() if not host.startswith("[") else host.lower()
        for route in self.routes:
            if route.matches(host, path, method.upper()):
                return route
        return None


def attributed_routes(state: ConfigState, agent: Any) -> dict[str, set[str]]:
    """The routes an agent is attributed, by kind (``llm``, ``mcp``, ``acp``): those it lists,
    and for an ACP agent the ACP routes to its runtime service."""
    out = {
        "llm": set(agent.routes.llm_route_ids),
        "mcp": set(agent.routes.mcp_route_ids),
        "acp": set(agent.routes.acp_route_ids),
    }
    if agent.runtime.type == "acp" and agent.runtime.acp is not None:
        sid = agent.runtime.acp.service_id
        out["acp"] |= {rid for rid, rec in state.records(f.ACP_ROUTE) if rec.obj.service_id == sid}
    return out


def _route_agents(state: ConfigState) -> dict[tuple[str, str], str]:
    """(route kind, route id) -> the agent its usage rows are stamped with: the one agent it is
    attributed to. A route claimed by two agents is attributed to neither (validation refuses
    that for listed routes)."""
    claims: dict[tuple[str, str], set[str]] = {}
    for aid, rec in state.records(f.AGENT):
        for kind, ids in attributed_routes(state, rec.obj).items():
            for rid in ids:
                claims.setdefault((kind, rid), set()).add(aid)
    return {key: next(iter(ids)) for key, ids in claims.items() if len(ids) == 1}


def _route_rules(state: ConfigState, problems: list[Problem]) -> dict[tuple[str, str], RuleSet]:
    """(route kind, route id) -> its compiled authorization rules, for the routes that have
    any; a rule that does not compile is a problem with its path
    (``llm_route "oa".authorization.allow[0]: invalid CEL: ...``)."""
    out: dict[tuple[str, str], RuleSet] = {}
    policies: list[tuple[frozenset[str], tuple[str, list[str], list[str]]]] = []
    for pid, rec in state.records(f.AUTHZ_POLICY):
        pol = rec.obj
        if pol.disabled or not (pol.allow or pol.deny):
            continue
        try:
            compile_rules(pol.allow, pol.deny)
        except RuleError as exc:
            problems.append(Problem(f'{f.AUTHZ_POLICY.name} "{pid}".{exc.rule}', exc.message))
            continue
        kinds = frozenset(pol.route_kinds or ROUTE_KINDS)
        policies.append((kinds, (pid, pol.allow, pol.deny)))
    for family in f.ROUTE_FAMILIES:
        kind = family.route_kind or ""
        mine = [p for kinds, p in policies if kind in kinds]
        for oid, rec in state.records(family):
            authz = rec.obj.authorization
            if not authz.allow and not authz.deny and not mine:
                continue
            try:
                out[(kind, oid)] = compile_rules(authz.allow, authz.deny, mine)
            except RuleError as exc:
                path = f'{family.name} "{oid}".authorization.{exc.rule}'
                problems.append(Problem(path, exc.message))
    return out


def _compile_routes(
    state: ConfigState, rules: dict[tuple[str, str], RuleSet]
) -> tuple[CompiledRoute, ...]:
    routes: list[CompiledRoute] = []
    agents = _route_agents(state)
    for family in f.ROUTE_FAMILIES:
        for oid, rec in state.records(family):
            cfg = rec.obj
            routes.append(
                CompiledRoute(
                    id=oid,
                    kind=family.route_kind or "",
                    protocol=cfg.protocol,
                    host=cfg.match_policy.host,
                    path_prefix=cfg.match_policy.path_prefix,
                    methods=frozenset(cfg.match_policy.methods),
                    disabled=cfg.disabled,
                    require_virtual_key=cfg.auth_policy.require_virtual_key,
                    config=cfg,
                    jwt_provider_ids=tuple(cfg.auth_policy.jwt_provider_ids),
                    agent_id=agents.get((family.route_kind or "", oid)),
                    rules=rules.get((family.route_kind or "", oid)),
                )
            )
    routes.sort(key=lambda r: (r.rank, r.id), reverse=True)
    return tuple(routes)


def compile_snapshot(state: ConfigState, enabled_provider_types: Iterable[str]) -> Snapshot:
    """Validate the whole state (every reference must resolve) and build the snapshot."""
    problems: list[Problem] = validate.check(state.catalog(), partial=False)
    enabled = set(enabled_provider_types)
    for oid, rec in state.records(f.PROVIDER):
        if rec.obj.provider_type not in enabled:
            problems.append(
                Problem(
                    f'provider "{oid}".provider_type',
                    f"provider type {rec.obj.provider_type!r} is not enabled on this gateway "
                    f"(enabled: {', '.join(sorted(enabled))})",
                )
            )
    for oid, rec in state.records(f.CREDENTIAL):
        provider: Record | None = state.get(f.PROVIDER, rec.obj.provider_id)
        if provider is not None and rec.obj.provider_type != provider.obj.provider_type:
            problems.append(
                Problem(f'credential "{oid}".provider_type', "does not match its provider")
            )
    rules = _route_rules(state, problems)
    limits = compile_limits(state, problems)
    if problems:
        raise ConfigInvalid(sorted(problems, key=lambda p: (p.path, p.message)), "configuration")
    vks = {
        rec.key: VirtualKeyEntry(oid, rec.key, rec.obj) for oid, rec in state.records(f.VIRTUAL_KEY)
    }
    providers = {oid: rec.obj for oid, rec in state.records(f.PROVIDER)}
    by_scope: dict[str, list[Any]] = {}
    for _, rec in state.records(f.CREDENTIAL):
        if not rec.obj.disabled:
            by_scope.setdefault(rec.obj.scope, []).append(rec.obj)
    credentials = {
        scope: tuple(sorted(creds, key=lambda c: -credential_priority(c)))
        for scope, creds in by_scope.items()
    }
    return Snapshot(
        routes=_compile_routes(state, rules),
        virtual_keys=MappingProxyType(vks),
        providers=MappingProxyType(providers),
        credentials=MappingProxyType(credentials),
        mcp_services=MappingProxyType({oid: rec.obj for oid, rec in state.records(f.MCP_SERVICE)}),
        acp_services=MappingProxyType({oid: rec.obj for oid, rec in state.records(f.ACP_SERVICE)}),
        a2a_services=MappingProxyType({oid: rec.obj for oid, rec in state.records(f.A2A_SERVICE)}),
        jwt_providers=MappingProxyType(
            {oid: rec.obj for oid, rec in state.records(f.JWT_PROVIDER)}
        ),
        limits=limits,
        state=state,
    )


def credential_priority(cred: Any) -> int:
    value = cred.attributes.get("priority", 0)
    return value if isinstance(value, int) and not isinstance(value, bool) else 0
