"""The object families: their names, bundle keys, tables, ids and secret fields, in apply order.

One table drives the store, the admin API, apply/export and agwctl, so adding a field or a
family is one edit here plus its model.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from agw.config import models as m
from agw.config import services as svc

REDACTED = "<redacted>"
_SENSITIVE_NAME = re.compile(
    r"key|token|secret|passw|authorization|cookie|credential|auth", re.IGNORECASE
)


@dataclass(frozen=True)
class SecretPath:
    """A secret inside an object: a dotted path, or a map whose sensitive-named values are
    secret (``map_of_names=True``)."""

    path: tuple[str, ...]
    map_of_names: bool = False


@dataclass(frozen=True)
class Family:
    name: str  # kind label: apply output, errors ("provider", "llm_route")
    title: str  # words for messages ("provider", "llm route")
    bundle_key: str | None  # None: not a bundle family (credentials)
    model: type[BaseModel]
    table: str | None  # None: runtime only (cliauth authenticators)
    source_label: str  # Go's view label for stored objects: "store" or "config_store"
    route_kind: str | None = None  # llm | mcp | acp for the shared routes table
    secrets: tuple[SecretPath, ...] = ()
    tag_of: Callable[[Any], str] = lambda obj: ""

    def id_of(self, obj: Any) -> str:
        return str(obj.id)


PROVIDER = Family(
    "provider",
    "provider",
    "providers",
    m.Provider,
    "providers",
    "store",
    secrets=(SecretPath(("api_key",)), SecretPath(("network", "extra_headers"), True)),
    tag_of=lambda o: o.provider_type,
)
MANAGED_MODEL = Family(
    "managed_model", "managed model", "managedModels", m.ManagedModel, "model_configs", "store"
)
LLM_ROUTE = Family("llm_route", "llm route", "llmRoutes", m.LLMRoute, "routes", "store", "llm")
VIRTUAL_KEY = Family(
    "virtual_key",
    "virtual key",
    "virtualKeys",
    m.VirtualKey,
    "virtual_keys",
    "store",
    tag_of=lambda o: o.tag,
)
CLIAUTH = Family(
    "cliauth_authenticator",
    "cliauth authenticator",
    "cliAuthAuthenticators",
    m.CliAuthAuthenticator,
    None,
    "runtime",
)
MCP_SERVICE = Family(
    "mcp_service",
    "mcp service",
    "mcpServices",
    svc.McpService,
    "mcp_services",
    "config_store",
    secrets=(
        SecretPath(("auth", "api_key")),
        SecretPath(("auth", "password")),
        SecretPath(("env",), True),
    ),
    tag_of=lambda o: o.transport,
)
MCP_ROUTE = Family("mcp_route", "mcp route", "mcpRoutes", svc.McpRoute, "routes", "store", "mcp")
ACP_SERVICE = Family(
    "acp_service",
    "acp service",
    "acpServices",
    svc.AcpService,
    "acp_services",
    "config_store",
    secrets=(SecretPath(("env",), True),),
    tag_of=lambda o: o.agent_type,
)
ACP_ROUTE = Family("acp_route", "acp route", "acpRoutes", svc.AcpRoute, "routes", "store", "acp")
AGENT = Family(
    "agent",
    "agent",
    "agents",
    svc.Agent,
    "agents",
    "config_store",
    tag_of=lambda o: o.runtime.type,
)
CREDENTIAL = Family(
    "credential",
    "credential",
    None,
    m.Credential,
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
    CLIAUTH,
    MCP_SERVICE,
    MCP_ROUTE,
    ACP_SERVICE,
    ACP_ROUTE,
    AGENT,
)
ALL_FAMILIES: tuple[Family, ...] = (*BUNDLE_FAMILIES, CREDENTIAL)
BY_NAME: dict[str, Family] = {f.name: f for f in ALL_FAMILIES}
BY_BUNDLE_KEY: dict[str, Family] = {f.bundle_key: f for f in BUNDLE_FAMILIES if f.bundle_key}


def _walk_secrets(
    family: Family, data: dict[str, Any], visit: Callable[[dict[str, Any], str], None]
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
                        visit(inner, name)
        elif last in node:
            visit(node, last)


def redact(family: Family, data: dict[str, Any]) -> dict[str, Any]:
    """Replace every non-empty secret in a dumped object with ``<redacted>`` (in place)."""

    def hide(node: dict[str, Any], key: str) -> None:
        if node.get(key):
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
        elif node.get(last) == REDACTED:
            if isinstance(old, dict) and old.get(last):
                node[last] = old[last]
            else:
                missing.append(".".join(secret.path))
    return missing
