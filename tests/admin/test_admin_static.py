"""Objects from --static-config: listed with source "static", read_only, and immutable through
the admin API (409), and never written to the store."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.admin import (
    REDACTED,
    REVEAL,
    assert_error,
    bundle,
    created,
    everything,
    items,
    llm_route_body,
    put_body,
    uid,
)
from tests.support.engine_launchers import store_rows
from tests.support.inproc import InprocGateway, InprocLauncher

STATIC_YAML = """\
apiVersion: gateway.agw/v1alpha1
kind: GatewayBundle
providers:
  - id: static-openai
    provider_type: openai
    api_key: ${STATIC_OPENAI_KEY}
managedModels:
  - provider_id: static-openai
    upstream_model: openai/gpt-4o
llmRoutes:
  - id: static-chat
    protocol: openai
    match_policy: {path_prefix: /static/v1}
    target_policy: {provider_id: static-openai}
mcpServices:
  - id: static-mcp
    name: Static MCP
    transport: streamable_http
    url: http://127.0.0.1:9/mcp
mcpRoutes:
  - service_id: static-mcp
    match_policy: {path_prefix: /static/mcp}
acpServices:
  - id: static-acp
    name: Static ACP
    agent_type: codex
    cwd: /tmp
acpRoutes:
  - service_id: static-acp
    match_policy: {path_prefix: /static/acp}
agents:
  - id: static-agent
    name: Static agent
    runtime: {type: acp, acp: {service_id: static-acp}}
    routes: {acp_route_ids: ["acp:static-acp:static-acp"]}
"""
STATIC_KEY = "sk-static-from-env-123456"

# (family, list path, static id, source label of stored objects)
STATIC = [
    ("provider", "/admin/llm/providers", "static-openai"),
    ("managed_model", "/admin/llm/models/managed", "static-openai/openai/gpt-4o"),
    ("llm_route", "/admin/llm/routes", "static-chat"),
    ("mcp_service", "/admin/mcp/services", "static-mcp"),
    ("mcp_route", "/admin/mcp/routes", "mcp:static-mcp:static-mcp"),
    ("acp_service", "/admin/acp/services", "static-acp"),
    ("acp_route", "/admin/acp/routes", "acp:static-acp:static-acp"),
    ("agent", "/admin/agents", "static-agent"),
]
STATIC_IDS = [s[0] for s in STATIC]


def view_id(path: str, view: dict[str, object]) -> str:
    if path.endswith("/managed"):
        return f"{view['provider_id']}/{view['upstream_model']}"
    return str(view["id"])


@pytest.fixture(scope="module")
def static_gateway(
    module_inproc_factory: InprocLauncher, tmp_path_factory: pytest.TempPathFactory
) -> InprocGateway:
    path: Path = tmp_path_factory.mktemp("static") / "static.yaml"
    path.write_text(STATIC_YAML)
    return module_inproc_factory.start(static=path, env={"STATIC_OPENAI_KEY": STATIC_KEY})


@pytest.fixture(scope="module")
def sc(static_gateway: InprocGateway) -> Iterator[httpx.Client]:
    with static_gateway.client() as client:
        yield client


@pytest.mark.parametrize(("family", "path", "oid"), STATIC, ids=STATIC_IDS)
def test_static_objects_are_listed_read_only(
    sc: httpx.Client, family: str, path: str, oid: str
) -> None:
    listed = {view_id(path, v): v for v in items(sc, path)}
    view = listed[oid]
    assert view["source"] == "static"
    assert view["read_only"] is True
    one = sc.get(f"{path}/{oid}")
    assert one.status_code == 200 and one.json() == view


def test_static_secrets_come_from_env_and_are_redacted(sc: httpx.Client) -> None:
    assert sc.get("/admin/llm/providers/static-openai").json()["api_key"] == REDACTED
    revealed = sc.get(
        "/admin/llm/providers/static-openai", params={"reveal": "true"}, headers=REVEAL
    ).json()
    assert revealed["api_key"] == STATIC_KEY


@pytest.mark.parametrize(("family", "path", "oid"), STATIC, ids=STATIC_IDS)
def test_static_objects_cannot_be_changed(
    sc: httpx.Client, family: str, path: str, oid: str
) -> None:
    before = everything(sc)
    view = sc.get(f"{path}/{oid}").json()
    body = put_body(view)
    if family == "provider":
        body["default_model"] = "changed"
    else:
        body["description" if family != "managed_model" else "credential_scope"] = "changed"
    for method, suffix, payload in (
        ("PUT", "", body),
        ("PUT", "", put_body(view)),  # even an unchanged PUT
        ("DELETE", "", None),
        ("POST", "/enable", None),
        ("POST", "/disable", None),
    ):
        r = sc.request(method, f"{path}/{oid}{suffix}", json=payload)
        assert_error(r, 409, "read_only", "read-only")
    assert everything(sc) == before


@pytest.mark.parametrize(("family", "path", "oid"), STATIC, ids=STATIC_IDS)
def test_creating_an_object_with_a_static_id_is_409(
    sc: httpx.Client, family: str, path: str, oid: str
) -> None:
    before = everything(sc)
    body = put_body(sc.get(f"{path}/{oid}", params={"reveal": "true"}, headers=REVEAL).json())
    body.pop("source")
    body.pop("read_only")
    body.pop("owns_service", None)
    if family == "managed_model":
        body.pop("provider_type")
    assert_error(sc.post(path, json=body), 409)
    assert everything(sc) == before


def test_stored_objects_sit_beside_static_ones(sc: httpx.Client) -> None:
    rid = uid("beside")
    view = created(sc, "/admin/llm/routes", llm_route_body(rid, "static-openai"))
    assert view["source"] == "store" and view["read_only"] is False
    sources = {v["id"]: v["source"] for v in items(sc, "/admin/llm/routes")}
    assert sources["static-chat"] == "static" and sources[rid] == "store"
    # a stored object may point at a static one; the static one then cannot be deleted anyway
    assert_error(sc.delete("/admin/llm/providers/static-openai"), 409)
    assert sc.delete(f"/admin/llm/routes/{rid}").status_code == 200


def test_static_objects_are_not_written_to_the_store(static_gateway: InprocGateway) -> None:
    store = static_gateway.store
    for table in ("providers", "routes", "mcp_services", "acp_services", "agents"):
        ids = [row["id"] for row in store_rows(store, f"SELECT id FROM {table}")]
        assert not [i for i in ids if "static-" in i], (table, ids)
    assert store_rows(store, "SELECT count(*) AS n FROM model_configs") == [{"n": 0}]


def test_apply_skips_unchanged_static_and_refuses_changes(sc: httpx.Client) -> None:
    exported = sc.get("/admin/gateway/export").json()
    assert "static-openai" in [p["id"] for p in exported["providers"]]
    r = sc.post("/admin/gateway/apply", json={"bundle": exported, "prune": True})
    assert r.status_code == 200, r.text
    static_actions = [a for a in r.json()["actions"] if "static" in a["id"]]
    assert len(static_actions) == len(STATIC)
    assert {a["action"] for a in static_actions} == {"skip"}

    before = everything(sc)
    new_provider = uid("with-static")
    changed = bundle(
        providers=[
            {"id": new_provider, "provider_type": "openai"},
            {"id": "static-openai", "provider_type": "openai", "default_model": "changed"},
        ]
    )
    r = sc.post("/admin/gateway/apply", json={"bundle": changed})
    assert r.status_code == 400, r.text
    body = r.json()
    assert body["status"] == "error"
    errors = [a for a in body["actions"] if a["action"] == "error"]
    assert [(a["kind"], a["id"]) for a in errors] == [("provider", "static-openai")]
    assert "read-only" in errors[0]["error"]
    assert everything(sc) == before


def test_prune_never_deletes_static_objects(sc: httpx.Client) -> None:
    empty = bundle(**{key: [] for key in ("providers", "managedModels", "llmRoutes", "agents")})
    # providers the static routes need are static, so an empty bundle prunes only stored ones
    r = sc.post("/admin/gateway/apply", json={"bundle": empty, "prune": True, "dry_run": True})
    assert r.status_code == 200, r.text
    assert not [a for a in r.json()["actions"] if "static" in a["id"]]
    assert "static-openai" in [v["id"] for v in items(sc, "/admin/llm/providers")]
