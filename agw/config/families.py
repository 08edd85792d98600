"""The object families: their names, bundle keys, tables, ids and secret fields, in apply order.

One table drives the store, the admin API, apply/export and agwctl, so adding a field or a
family is one edit here plus its model.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

from pydantic import BaseModel

from agw.config.a2a import A2aRoute, A2aService
from agw.config.access import AuthorizationPolicy, JwtProvider, VirtualKey
from agw.config.acp import AcpRoute, AcpService
from agw.config.agents import Agent
from agw.config.limits import Limit
from agw.config.llm import CliAuthAuthenticator, Credential, LLMRoute, ManagedModel, Provider
from agw.config.mcp import McpRoute, McpService

REDACTED = "<redacted>"
_SENSITIVE_NAME = re.compile(
    r"key|token|secret|passw|authorization|cookie|credential|auth", re.IGNORECASE
)


@dataclass(frozen=True)
class SecretPath:
    """A secret inside an object: a dotted path, a map whose sensitive-named values are
    secret (``map_of_names=True``), or a URL whose credentials are (``in_url=True``: the
    password of ``user:password@``, a lone ``token@``, and sensitive-named query values)."""

    path: tuple[str, ...]
    map_of_names: bool = False
    in_url: bool = False


@dataclass(frozen=True)
class Family:
    name: str  # kind label: apply output, errors ("provider", "llm_route")
    title: str  # words for messages ("provider", "llm route")
    bundle_key: str | None  # None: not a bundle family (credentials)
    model: type[BaseModel]
    table: str | None  # None: runtime only (cliauth authenticators)
    source_label: str  # Go's view label for stored objects: "store" or "config_store"
    route_kind: str | None = None  # llm | mcp | acp | a2a for the shared routes table
    secrets: tuple[SecretPath, ...] = ()
    tag_of: Callable[[Any], str] = lambda obj: ""

    def id_of(self, obj: Any) -> str:
        return str(obj.id)


PROVIDER = Family(
    "provider",
    "provider",
    "providers",
    Provider,
    "providers",
    "store",
    secrets=(
        SecretPath(("api_key",)),
        SecretPath(("network", "extra_headers"), True),
        SecretPath(("network", "proxy_url"), in_url=True),
        SecretPath(("base_url",), in_url=True),
    ),
    tag_of=lambda o: o.provider_type,
)
MANAGED_MODEL = Family(
    "managed_model", "managed model", "managedModels", ManagedModel, "model_configs", "store"
)
LLM_ROUTE = Family("llm_route", "llm route", "llmRoutes", LLMRoute, "routes", "store", "llm")
VIRTUAL_KEY = Family(
    "virtual_key",
    "virtual key",
    "virtualKeys",
    VirtualKey,
    "virtual_keys",
    "store",
    tag_of=lambda o: o.tag,
)
JWT_PROVIDER = Family(
    "jwt_provider",
    "jwt provider",
    "jwtProviders",
    JwtProvider,
    "jwt_providers",
    "store",
    secrets=(SecretPath(("registration", "client_secret")),),
)
AUTHZ_POLICY = Family(
    "authorization_policy",
    "authorization policy",
    "authorizationPolicies",
    AuthorizationPolicy,
    "authorization_policies",
    "store",
)
LIMIT = Family("limit", "limit", "limits", Limit, "limits", "store", tag_of=lambda o: o.subject)
CLIAUTH = Family(
    "cliauth_authenticator",
    "cliauth authenticator",
    "cliAuthAuthenticators",
    CliAuthAuthenticator,
    None,
    "runtime",
)
MCP_SERVICE = Family(
    "mcp_service",
    "mcp service",
    "mcpServices",
    McpService,
    "mcp_services",
    "config_store",
    secrets=(
        SecretPath(("auth", "api_key")),
        SecretPath(("auth", "password")),
        SecretPath(("env",), True),
        SecretPath(("url",), in_url=True),
        SecretPath(("post_url",), in_url=True),
        SecretPath(("spec",), in_url=True),
        SecretPath(("base_url",), in_url=True),
    ),
    tag_of=lambda o: o.transport,
)
MCP_ROUTE = Family("mcp_route", "mcp route", "mcpRoutes", McpRoute, "routes", "store", "mcp")
ACP_SERVICE = Family(
    "acp_service",
    "acp service",
    "acpServices",
    AcpService,
    "acp_services",
    "config_store",
    secrets=(SecretPath(("env",), True),),
    tag_of=lambda o: o.agent_type,
)
ACP_ROUTE = Family("acp_route", "acp route", "acpRoutes", AcpRoute, "routes", "store", "acp")
AGENT = Family(
    "agent",
    "agent",
    "agents",
    Agent,
    "agents",
    "config_store",
    secrets=(SecretPath(("runtime", "http", "endpoint"), in_url=True),),
    tag_of=lambda o: o.runtime.type,
)
A2A_SERVICE = Family(
    "a2a_service",
    "a2a service",
    "a2aServices",
    A2aService,
    "a2a_services",
    "config_store",
    secrets=(
        SecretPath(("auth", "api_key")),
        SecretPath(("auth", "password")),
        SecretPath(("card_url",), in_url=True),
    ),
)
A2A_ROUTE = Family("a2a_route", "a2a route", "a2aRoutes", A2aRoute, "routes", "store", "a2a")
CREDENTIAL = Family(
    "credential",
    "credential",
    None,
    Credential,
    "cliauth_credentials",
    "store",
    secrets=(SecretPath(("attributes", "api_key")),),
    tag_of=lambda o: o.provider_type,
)

# Apply order (reference §3.4); prune deletes in the reverse order.
BUNDLE_FAMILIES: tuple[Family, ...] = (
    PROVIDER,
    MANAGED_MODEL,
    LLM_ROUTE,
    VIRTUAL_KEY,
    JWT_PROVIDER,
    AUTHZ_POLICY,
    CLIAUTH,
    MCP_SERVICE,
    MCP_ROUTE,
    ACP_SERVICE,
    ACP_ROUTE,
    AGENT,
    A2A_SERVICE,
    A2A_ROUTE,
    LIMIT,
)
ALL_FAMILIES: tuple[Family, ...] = (*BUNDLE_FAMILIES, CREDENTIAL)
BY_NAME: dict[str, Family] = {f.name: f for f in ALL_FAMILIES}
BY_BUNDLE_KEY: dict[str, Family] = {f.bundle_key: f for f in BUNDLE_FAMILIES if f.bundle_key}
ROUTE_FAMILIES: tuple[Family, ...] = tuple(f for f in BUNDLE_FAMILIES if f.route_kind)
"""The families of the shared routes table, one per route kind."""


def url_secrets(url: str) -> list[tuple[str, int, int]]:
    """Where the credentials of a URL are: ``(slot, start, end)`` spans of ``url``. Slots name
    what a span is (``password``, ``user`` for a lone ``token@``, ``query:<name>:<n>``) so a
    masked URL sent back can take each value from the stored one."""
    found: list[tuple[str, int, int]] = []
    scheme_end = url.find("://")
    if scheme_end < 0:
        return found
    start = scheme_end + 3
    end = len(url)
    for c in "/?#":
        i = url.find(c, start)
        if i >= 0:
            end = min(end, i)
    at = url.rfind("@", start, end)
    if at > start:
        colon = url.find(":", start, at)
        if colon < 0 or colon + 1 == at:  # token@ or token:@
            found.append(("user", start, colon if colon >= 0 else at))
        else:
            found.append(("password", colon + 1, at))
    q = url.find("?", end)
    if q >= 0:
        stop = url.find("#", q)
        stop = len(url) if stop < 0 else stop
        seen: dict[str, int] = {}
        pos = q + 1
        while pos <= stop:
            amp = url.find("&", pos, stop)
            amp = stop if amp < 0 else amp
            name, eq, _ = url[pos:amp].partition("=")
            plain = unquote(name)
            if eq and amp > pos + len(name) + 1 and _SENSITIVE_NAME.search(plain):
                n = seen[plain] = seen.get(plain, -1) + 1
                found.append((f"query:{plain}:{n}", pos + len(name) + 1, amp))
            pos = amp + 1
    return found


def mask_url(url: str) -> str:
    """``url`` with its credentials replaced by ``<redacted>``."""
    for _, start, end in reversed(url_secrets(url)):
        if end > start:
            url = url[:start] + REDACTED + url[end:]
    return url


def unmask_url(url: str, stored: str) -> tuple[str, list[str]]:
    """``url`` with each ``<redacted>`` credential taken from ``stored`` (same slot); returns
    it and the slots that say ``<redacted>`` but have no stored value."""
    old = {slot: stored[start:end] for slot, start, end in url_secrets(stored)}
    missing: list[str] = []
    for slot, start, end in reversed(url_secrets(url)):
        if url[start:end] != REDACTED:
            continue
        if old.get(slot):
            url = url[:start] + old[slot] + url[end:]
        else:
            missing.append(slot)
    return url, missing


def _walk_secrets(
    family: Family, data: dict[str, Any], visit: Callable[[SecretPath, dict[str, Any], str], None]
) -> None:
    for secret in family.secrets:
        node: Any = data
        for part in secret.path[:-1]:
            node = node.get(part) if isinstance(node, dict) else None
        if not isinstance(node, dict):
            continue
        last = secret.path[-1]
        if secret.map_of_names:
            inner = node.get(last)
            if isinstance(inner, dict):
                for name in list(inner):
                    if _SENSITIVE_NAME.search(name):
                        visit(secret, inner, name)
        elif last in node:
            visit(secret, node, last)


def redact(family: Family, data: dict[str, Any]) -> dict[str, Any]:
    """Replace every non-empty secret in a dumped object with ``<redacted>`` (in place)."""

    def hide(secret: SecretPath, node: dict[str, Any], key: str) -> None:
        if secret.in_url:
            if isinstance(node[key], str):
                node[key] = mask_url(node[key])
        elif node.get(key):
            node[key] = REDACTED

    _walk_secrets(family, data, hide)
    return data


def restore_redacted(
    family: Family, data: dict[str, Any], stored: dict[str, Any] | None
) -> list[str]:
    """Put stored secrets back where ``data`` says ``<redacted>`` (in place). Returns the
    paths that say ``<redacted>`` but have no stored value to keep."""
    missing: list[str] = []
    for secret in family.secrets:
        node: Any = data
        old: Any = stored
        for part in secret.path[:-1]:
            node = node.get(part) if isinstance(node, dict) else None
            old = old.get(part) if isinstance(old, dict) else None
        if not isinstance(node, dict):
            continue
        last = secret.path[-1]
        if secret.map_of_names:
            inner, old_inner = node.get(last), old.get(last) if isinstance(old, dict) else None
            if not isinstance(inner, dict):
                continue
            for name, value in list(inner.items()):
                if value == REDACTED:
                    if isinstance(old_inner, dict) and name in old_inner:
                        inner[name] = old_inner[name]
                    else:
                        missing.append(".".join((*secret.path, name)))
        elif secret.in_url:
            value = node.get(last)
            if isinstance(value, str) and REDACTED in value:
                previous = old.get(last) if isinstance(old, dict) else None
                node[last], lost = unmask_url(value, previous if isinstance(previous, str) else "")
                missing += [f"{'.'.join(secret.path)} ({slot})" for slot in lost]
        elif node.get(last) == REDACTED:
            if isinstance(old, dict) and old.get(last):
                node[last] = old[last]
            else:
                missing.append(".".join(secret.path))
    return missing
