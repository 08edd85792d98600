"""Helpers shared by the admin API tests: unique ids, object bodies per family, assertions.

Every helper talks to a real agwd over httpx; nothing here patches the gateway.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from tests.support.engines import postgres_rows

API_VERSION = "gateway.agw/v1alpha1"
KIND = "GatewayBundle"
REDACTED = "<redacted>"
VK_PATTERN = r"^vk-[A-Za-z0-9_-]{43}$"
REVEAL = {"X-AGW-Reveal-Secrets": "true"}  # ?reveal=true and ?include_secrets=true need it

_counter = itertools.count(1)


def uid(prefix: str = "t") -> str:
    """A short id unique within the test session (and readable in failures)."""
    return f"{prefix}{next(_counter)}-{os.getpid() % 1000}"


def bundle(**families: Any) -> dict[str, Any]:
    return {"apiVersion": API_VERSION, "kind": KIND, **families}


# ------------------------------------------------------------------------------ object bodies


def provider_body(pid: str, provider_type: str = "openai", **extra: Any) -> dict[str, Any]:
    return {"id": pid, "provider_type": provider_type, **extra}


def llm_route_body(rid: str, provider_id: str, **extra: Any) -> dict[str, Any]:
    return {
        "id": rid,
        "protocol": "openai",
        "match_policy": {"path_prefix": f"/{rid}/v1"},
        "target_policy": {"provider_id": provider_id},
        **extra,
    }


def mcp_service_body(sid: str, **extra: Any) -> dict[str, Any]:
    return {
        "id": sid,
        "name": f"MCP {sid}",
        "transport": "streamable_http",
        "url": f"http://127.0.0.1:9/{sid}/mcp",
        **extra,
    }


def acp_service_body(sid: str, **extra: Any) -> dict[str, Any]:
    return {"id": sid, "name": f"ACP {sid}", "agent_type": "codex", "cwd": "/tmp", **extra}


def service_route_body(rid: str, service_id: str, **extra: Any) -> dict[str, Any]:
    return {
        "id": rid,
        "service_id": service_id,
        "match_policy": {"path_prefix": f"/{rid}"},
        **extra,
    }


def http_agent_body(aid: str, **extra: Any) -> dict[str, Any]:
    return {
        "id": aid,
        "name": f"Agent {aid}",
        "runtime": {"type": "http", "http": {"endpoint": f"http://127.0.0.1:9/{aid}"}},
        **extra,
    }


def acp_agent_body(aid: str, service_id: str, **extra: Any) -> dict[str, Any]:
    return {
        "id": aid,
        "name": f"Agent {aid}",
        "runtime": {"type": "acp", "acp": {"service_id": service_id}},
        **extra,
    }


# ---------------------------------------------------------------------------------- requests


def created(client: httpx.Client, path: str, body: dict[str, Any]) -> dict[str, Any]:
    """POST and insist on 201."""
    r = client.post(path, json=body)
    assert r.status_code == 201, f"POST {path}: {r.status_code} {r.text}"
    data: dict[str, Any] = r.json()
    return data


def make_provider(client: httpx.Client, pid: str | None = None, **extra: Any) -> str:
    pid = pid or uid("prov")
    created(client, "/admin/llm/providers", provider_body(pid, **extra))
    return pid


def make_llm_route(client: httpx.Client, provider_id: str, rid: str | None = None) -> str:
    rid = rid or uid("route")
    created(client, "/admin/llm/routes", llm_route_body(rid, provider_id))
    return rid


def make_mcp_service(client: httpx.Client, sid: str | None = None, **extra: Any) -> str:
    sid = sid or uid("mcpsvc")
    created(client, "/admin/mcp/services", mcp_service_body(sid, **extra))
    return sid


def make_acp_service(client: httpx.Client, sid: str | None = None, **extra: Any) -> str:
    sid = sid or uid("acpsvc")
    created(client, "/admin/acp/services", acp_service_body(sid, **extra))
    return sid


def make_service_route(client: httpx.Client, plane: str, service_id: str) -> str:
    rid = uid(f"{plane}route")
    created(client, f"/admin/{plane}/routes", service_route_body(rid, service_id))
    return rid


def items(client: httpx.Client, path: str, **params: str) -> list[dict[str, Any]]:
    r = client.get(path, params=params, headers=REVEAL if "reveal" in params else None)
    assert r.status_code == 200, f"GET {path}: {r.status_code} {r.text}"
    body = r.json()
    assert set(body) == {"items"}, body
    assert isinstance(body["items"], list)
    out: list[dict[str, Any]] = body["items"]
    return out


def ids_of(path: str, views: list[dict[str, Any]]) -> list[str]:
    if path.endswith("/models/managed"):
        return [f"{v['provider_id']}/{v['upstream_model']}" for v in views]
    return [v["id"] for v in views]


LIST_PATHS = (
    "/admin/llm/providers",
    "/admin/llm/routes",
    "/admin/llm/models/managed",
    "/admin/virtual_keys",
    "/admin/credentials",
    "/admin/mcp/services",
    "/admin/mcp/routes",
    "/admin/acp/services",
    "/admin/acp/routes",
    "/admin/agents",
)


def everything(client: httpx.Client) -> dict[str, list[dict[str, Any]]]:
    """Every list of every family (with secrets revealed): equal before and after a request
    means the request stored nothing."""
    return {path: items(client, path, reveal="true") for path in LIST_PATHS}


def assert_error(
    r: httpx.Response, status: int, code: str | None = None, contains: str = ""
) -> dict[str, Any]:
    """One JSON error shape: ``{"error": <message>, "code": <code>, ...}``."""
    assert r.status_code == status, f"{r.request.method} {r.request.url}: {r.status_code} {r.text}"
    assert r.headers["content-type"].startswith("application/json"), r.headers
    body: dict[str, Any] = r.json()
    assert isinstance(body.get("error"), str) and body["error"], body
    if code is not None:
        assert body.get("code") == code, body
    if contains:
        assert contains.lower() in body["error"].lower(), body
    return body


def problem_paths(body: dict[str, Any]) -> list[str]:
    return [p["path"] for p in body.get("problems", [])]


def store_bytes(db_path: Path | str) -> dict[str, bytes]:
    """The SQLite database and its WAL, byte for byte; a PostgreSQL store's rows."""
    if isinstance(db_path, str):
        return postgres_rows(db_path)
    out = {}
    for suffix in ("", "-wal"):
        p = Path(str(db_path) + suffix)
        out[suffix or "db"] = p.read_bytes() if p.exists() else b""
    return out


# --------------------------------------------------------------------- per-family descriptions


@dataclass(frozen=True)
class FamilySpec:
    """How to exercise one family generically through its admin endpoints."""

    name: str
    base: str
    kind: str  # the "<kind> not found" words
    source: str
    build: Callable[[httpx.Client, str], dict[str, Any]]  # creates prerequisites, returns a body
    change: dict[str, Any]  # a PUT changes these fields (expected values in ``changed``)
    changed: dict[str, Any] = field(default_factory=dict)
    toggle: str = "disabled"
    delete_key: str = "id"

    def oid(self, view: dict[str, Any]) -> str:
        if self.name == "managed_model":
            return f"{view['provider_id']}/{view['upstream_model']}"
        return str(view["id"])

    def url(self, oid: str) -> str:
        return f"{self.base}/{oid}"

    def expected_change(self) -> dict[str, Any]:
        return {**self.change, **self.changed}


def _route_build(client: httpx.Client, u: str) -> dict[str, Any]:
    return llm_route_body(f"route-{u}", make_provider(client))


def _managed_build(client: httpx.Client, u: str) -> dict[str, Any]:
    # The model name has a slash: the path is /{provider_id}/{upstream_model...}.
    return {"provider_id": make_provider(client), "upstream_model": f"openai/gpt-4o-{u}"}


def _credential_build(client: httpx.Client, u: str) -> dict[str, Any]:
    return {
        "id": f"cred-{u}",
        "type": "api_key",
        "provider_id": make_provider(client),
        "attributes": {"api_key": f"sk-cred-{u}"},
    }


FAMILIES: tuple[FamilySpec, ...] = (
    FamilySpec(
        "provider",
        "/admin/llm/providers",
        "provider",
        "store",
        lambda c, u: provider_body(f"prov-{u}", default_model="gpt-4o"),
        {"default_model": "gpt-4.1"},
    ),
    FamilySpec(
        "llm_route",
        "/admin/llm/routes",
        "llm route",
        "store",
        _route_build,
        {"description": "changed"},
    ),
    FamilySpec(
        "managed_model",
        "/admin/llm/models/managed",
        "managed model",
        "store",
        _managed_build,
        {"credential_scope": "Team-A"},
        {"credential_scope": "team-a"},
        toggle="enabled",
    ),
    FamilySpec(
        "virtual_key",
        "/admin/virtual_keys",
        "virtual key",
        "store",
        lambda c, u: {"id": f"vk-{u}", "tag": "crud"},
        {"description": "changed"},
    ),
    FamilySpec(
        "credential",
        "/admin/credentials",
        "credential",
        "store",
        _credential_build,
        {"label": "changed"},
        delete_key="credential_id",
    ),
    FamilySpec(
        "mcp_service",
        "/admin/mcp/services",
        "mcp service",
        "config_store",
        lambda c, u: mcp_service_body(f"mcp-{u}"),
        {"description": "changed"},
    ),
    FamilySpec(
        "mcp_route",
        "/admin/mcp/routes",
        "mcp route",
        "store",
        lambda c, u: service_route_body(f"mroute-{u}", make_mcp_service(c)),
        {"description": "changed"},
    ),
    FamilySpec(
        "acp_service",
        "/admin/acp/services",
        "acp service",
        "config_store",
        lambda c, u: acp_service_body(f"acp-{u}"),
        {"description": "changed", "max_instances": 2},
    ),
    FamilySpec(
        "acp_route",
        "/admin/acp/routes",
        "acp route",
        "store",
        lambda c, u: service_route_body(f"aroute-{u}", make_acp_service(c)),
        {"description": "changed"},
    ),
    FamilySpec(
        "agent",
        "/admin/agents",
        "agent",
        "config_store",
        lambda c, u: http_agent_body(f"agent-{u}"),
        {"description": "changed"},
    ),
)
FAMILY_IDS = [f.name for f in FAMILIES]


def put_body(view: dict[str, Any]) -> dict[str, Any]:
    """A view turned back into a request body: only the timestamps dropped (the server
    must accept the rest of its own view, ``source``/``read_only`` included)."""
    body = dict(view)
    body.pop("created_at", None)
    body.pop("updated_at", None)
    return body


def contains(actual: Any, expected: Any) -> bool:
    """``expected`` is ``actual`` with some dict keys left out (defaults the server fills)."""
    if isinstance(expected, dict):
        return isinstance(actual, dict) and all(
            k in actual and contains(actual[k], v) for k, v in expected.items()
        )
    return bool(actual == expected)
