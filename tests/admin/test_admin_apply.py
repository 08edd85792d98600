"""POST /admin/gateway/apply and GET /admin/gateway/export: plan, all-or-nothing commit,
no-op applies that write nothing, dry runs, prune, and export -> apply round trips."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.support.admin import (
    REDACTED,
    REVEAL,
    VK_PATTERN,
    assert_error,
    bundle,
    everything,
    items,
    store_bytes,
    uid,
)
from tests.support.inproc import InprocGateway, InprocLauncher


def full_bundle(u: str) -> dict[str, Any]:
    """One object of every bundle family, all cross-referenced."""
    return bundle(
        providers=[
            {"id": f"{u}-openai", "provider_type": "openai", "api_key": f"sk-{u}-secret-key"},
            {
                "id": f"{u}-claude",
                "provider_type": "anthropic",
                "network": {"extra_headers": {"Authorization": f"Bearer {u}-hdr-token"}},
            },
        ],
        managedModels=[{"provider_id": f"{u}-openai", "upstream_model": "openai/gpt-4o"}],
        llmRoutes=[
            {
                "id": f"{u}-chat",
                "protocol": "openai",
                "match_policy": {"path_prefix": f"/{u}/v1"},
                "target_policy": {"provider_id": f"{u}-openai"},
            },
            {
                "id": f"{u}-messages",
                "protocol": "anthropic",
                "match_policy": {"path_prefix": f"/{u}/anthropic"},
                "auth_policy": {"require_virtual_key": True},
                "target_policy": {
                    "model_targets": [
                        {
                            "name": "smart",
                            "candidates": [
                                {"provider_id": f"{u}-claude", "upstream_model": "claude-x"},
                                {"provider_id": f"{u}-openai", "upstream_model": "gpt-4o"},
                            ],
                        }
                    ]
                },
            },
        ],
        virtualKeys=[{"id": f"{u}-vk", "tag": "ci", "allowed_route_ids": [f"{u}-chat"]}],
        cliAuthAuthenticators=[{"name": "codex", "enabled": True, "config": {"no_browser": True}}],
        mcpServices=[
            {
                "id": f"{u}-mcp",
                "name": "MCP",
                "transport": "stdio",
                "command": "mcp-server",
                "env": {"API_TOKEN": f"{u}-mcp-env-secret"},
            }
        ],
        mcpRoutes=[{"service_id": f"{u}-mcp", "match_policy": {"path_prefix": f"/{u}/mcp"}}],
        acpServices=[{"id": f"{u}-acp", "name": "ACP", "agent_type": "codex", "cwd": "/tmp"}],
        acpRoutes=[{"service_id": f"{u}-acp", "match_policy": {"path_prefix": f"/{u}/acp"}}],
        agents=[
            {
                "id": f"{u}-agent",
                "name": "Agent",
                "runtime": {"type": "acp", "acp": {"service_id": f"{u}-acp"}},
                "routes": {"acp_route_ids": [f"acp:{u}-acp:{u}-acp"]},
                "resources": {"provider_ids": [f"{u}-openai"]},
            }
        ],
    )


EXPECTED_CREATES = [
    ("provider", "{u}-claude"),
    ("provider", "{u}-openai"),
    ("managed_model", "{u}-openai/openai/gpt-4o"),
    ("llm_route", "{u}-chat"),
    ("llm_route", "{u}-messages"),
    ("virtual_key", "{u}-vk"),
    ("cliauth_authenticator", "codex"),
    ("mcp_service", "{u}-mcp"),
    ("mcp_route", "mcp:{u}-mcp:{u}-mcp"),
    ("acp_service", "{u}-acp"),
    ("acp_route", "acp:{u}-acp:{u}-acp"),
    ("agent", "{u}-agent"),
]


def apply(client: httpx.Client, body: dict[str, Any], **flags: bool) -> httpx.Response:
    return client.post("/admin/gateway/apply", json={"bundle": body, **flags})


def ok(r: httpx.Response) -> dict[str, Any]:
    assert r.status_code == 200, r.text
    data: dict[str, Any] = r.json()
    assert data["status"] == "ok"
    assert set(data) == {"status", "dry_run", "changed", "actions", "counts"}
    assert set(data["counts"]) == {"create", "update", "skip", "delete", "error"}
    for action in data["actions"]:
        assert set(action) <= {"kind", "id", "action", "error"}
        assert data["counts"][action["action"]] >= 1
    assert sum(data["counts"].values()) == len(data["actions"])
    return data


def pairs(data: dict[str, Any], action: str) -> set[tuple[str, str]]:
    return {(a["kind"], a["id"]) for a in data["actions"] if a["action"] == action}


@pytest.fixture
def client(inproc: InprocGateway) -> Iterator[httpx.Client]:
    with inproc.client() as c:
        yield c


def test_apply_creates_then_skips_and_writes_nothing(
    inproc: InprocGateway, client: httpx.Client
) -> None:
    u = uid("ap")
    first = ok(apply(client, full_bundle(u)))
    assert first["dry_run"] is False and first["changed"] is True
    want = {(k, i.format(u=u)) for k, i in EXPECTED_CREATES}
    assert pairs(first, "create") == want
    assert first["counts"] == {"create": len(want), "update": 0, "skip": 0, "delete": 0, "error": 0}
    # actions come in apply order: providers first, agents last
    kinds = [a["kind"] for a in first["actions"]]
    assert kinds[0] == "provider" and kinds[-1] == "agent"

    vk = client.get(f"/admin/virtual_keys/{u}-vk").json()
    assert re.match(VK_PATTERN, vk["key"])
    assert client.get(f"/admin/mcp/routes/mcp:{u}-mcp:{u}-mcp").status_code == 200
    assert client.get("/admin/cliauth/authenticators/codex").json()["enabled"] is True
    state = everything(client)
    on_disk = store_bytes(inproc.store)

    second = ok(apply(client, full_bundle(u)))
    assert second["changed"] is False
    assert pairs(second, "skip") == want
    assert second["counts"]["skip"] == len(want) and second["counts"]["create"] == 0
    assert everything(client) == state  # updated_at and the VK key untouched
    assert store_bytes(inproc.store) == on_disk


def test_apply_updates_only_what_changed(client: httpx.Client) -> None:
    u = uid("up")
    ok(apply(client, full_bundle(u)))
    before = client.get(f"/admin/llm/routes/{u}-chat").json()
    vk_key = client.get(f"/admin/virtual_keys/{u}-vk").json()["key"]
    changed = full_bundle(u)
    changed["llmRoutes"][0]["description"] = "now with a description"
    changed["virtualKeys"][0]["disabled"] = True
    data = ok(apply(client, changed))
    assert data["changed"] is True
    assert pairs(data, "update") == {("llm_route", f"{u}-chat"), ("virtual_key", f"{u}-vk")}
    assert data["counts"]["update"] == 2 and data["counts"]["create"] == 0
    after = client.get(f"/admin/llm/routes/{u}-chat").json()
    assert after["description"] == "now with a description"
    assert after["created_at"] == before["created_at"]
    vk = client.get(f"/admin/virtual_keys/{u}-vk").json()
    assert vk["disabled"] is True and vk["key"] == vk_key


def test_dry_run_plans_but_writes_nothing(inproc: InprocGateway, client: httpx.Client) -> None:
    u = uid("dry")
    state, on_disk = everything(client), store_bytes(inproc.store)
    data = ok(apply(client, full_bundle(u), dry_run=True))
    assert data["dry_run"] is True and data["changed"] is True
    assert data["counts"]["create"] == len(EXPECTED_CREATES)
    assert everything(client) == state
    assert store_bytes(inproc.store) == on_disk
    assert client.get("/admin/cliauth/authenticators/codex").json()["enabled"] is False

    ok(apply(client, full_bundle(u)))
    changed = full_bundle(u)
    changed["providers"][0]["default_model"] = "gpt-4.1"
    state, on_disk = everything(client), store_bytes(inproc.store)
    data = ok(
        apply(
            client, bundle(providers=changed["providers"], virtualKeys=[]), dry_run=True, prune=True
        )
    )
    assert data["dry_run"] is True and data["changed"] is True
    assert pairs(data, "update") == {("provider", f"{u}-openai")}
    assert pairs(data, "delete") == {("virtual_key", f"{u}-vk")}
    assert everything(client) == state
    assert store_bytes(inproc.store) == on_disk


def test_prune_deletes_only_within_families_present(client: httpx.Client) -> None:
    u = uid("pr")
    ok(apply(client, full_bundle(u)))
    keep_vk = {"id": f"{u}-lonely", "tag": "x"}
    ok(apply(client, bundle(virtualKeys=[keep_vk])))

    # the bundle names virtualKeys only: prune may delete VKs, nothing else
    data = ok(apply(client, bundle(virtualKeys=[keep_vk]), prune=True))
    assert pairs(data, "delete") == {("virtual_key", f"{u}-vk")}
    assert pairs(data, "skip") == {("virtual_key", f"{u}-lonely")}
    assert [v["id"] for v in items(client, "/admin/virtual_keys")] == [f"{u}-lonely"]
    assert len(items(client, "/admin/llm/providers")) == 2
    assert len(items(client, "/admin/agents")) == 1

    # without prune, nothing is deleted
    data = ok(apply(client, bundle(virtualKeys=[])))
    assert data["counts"]["delete"] == 0 and data["changed"] is False
    assert len(items(client, "/admin/virtual_keys")) == 1

    # a present but empty family is emptied; deletes run in reverse apply order
    data = ok(apply(client, bundle(agents=[], acpRoutes=[], acpServices=[]), prune=True))
    assert pairs(data, "delete") == {
        ("agent", f"{u}-agent"),
        ("acp_route", f"acp:{u}-acp:{u}-acp"),
        ("acp_service", f"{u}-acp"),
    }
    assert [a["kind"] for a in data["actions"]] == ["agent", "acp_route", "acp_service"]
    assert items(client, "/admin/acp/services") == []
    assert len(items(client, "/admin/mcp/services")) == 1


def test_prune_that_would_break_a_reference_is_refused(client: httpx.Client) -> None:
    u = uid("pb")
    ok(apply(client, full_bundle(u)))
    state = everything(client)
    # pruning providers while routes (not in the bundle) still use them
    r = apply(client, bundle(providers=[]), prune=True)
    assert r.status_code == 400, r.text
    data = r.json()
    assert data["status"] == "error"
    errors = pairs(data, "error")
    assert ("llm_route", f"{u}-chat") in errors
    assert everything(client) == state


def test_error_in_bundle_stores_nothing(inproc: InprocGateway, client: httpx.Client) -> None:
    u = uid("err")
    state, on_disk = everything(client), store_bytes(inproc.store)
    # the bundle has no providers key, so the dangling reference is found against the server
    good_and_bad = bundle(
        virtualKeys=[{"id": f"{u}-vk"}],
        mcpServices=[{"id": f"{u}-mcp", "name": "m", "transport": "stdio", "command": "x"}],
        llmRoutes=[
            {
                "id": f"{u}-dangling",
                "protocol": "openai",
                "match_policy": {"path_prefix": f"/{u}"},
                "target_policy": {"provider_id": f"{u}-missing"},
            }
        ],
    )
    r = apply(client, good_and_bad)
    assert r.status_code == 400, r.text
    data = r.json()
    assert data["status"] == "error"
    assert data["counts"]["error"] == 1
    (error,) = [a for a in data["actions"] if a["action"] == "error"]
    assert (error["kind"], error["id"]) == ("llm_route", f"{u}-dangling")
    assert f"{u}-missing" in error["error"]
    assert "nothing was changed" in data["error"]
    assert everything(client) == state
    assert store_bytes(inproc.store) == on_disk
    # and the same bundle with the provider applies
    good_and_bad["providers"] = [{"id": f"{u}-missing", "provider_type": "openai"}]
    ok(apply(client, good_and_bad))


def test_invalid_bundle_is_400_with_problems_and_stores_nothing(client: httpx.Client) -> None:
    u = uid("inv")
    state = everything(client)
    b = bundle(
        providers=[{"id": f"{u}-p", "provider_type": "openai"}],
        llmRoutes=[
            {
                "id": f"{u}-r",
                "protocol": "openai",
                "target_policy": {"provider_id": f"{u}-typo"},
            }
        ],
    )
    err = assert_error(apply(client, b), 400, "config_invalid", f"{u}-typo")
    assert "llmRoutes[0].target_policy.provider_id" in [p["path"] for p in err["problems"]]
    assert everything(client) == state


def test_redacted_secret_with_nothing_stored_is_an_error_action(client: httpx.Client) -> None:
    u = uid("red")
    state = everything(client)
    b = bundle(
        providers=[
            {"id": f"{u}-ok", "provider_type": "openai"},
            {"id": f"{u}-p", "provider_type": "openai", "api_key": REDACTED},
        ]
    )
    r = apply(client, b)
    assert r.status_code == 400, r.text
    assert pairs(r.json(), "error") == {("provider", f"{u}-p")}
    assert everything(client) == state


def test_export_redacts_and_round_trips(inproc: InprocGateway, client: httpx.Client) -> None:
    u = uid("ex")
    ok(apply(client, full_bundle(u)))
    exported = client.get("/admin/gateway/export")
    assert exported.status_code == 200
    data = exported.json()
    assert data["apiVersion"] == "gateway.agw/v1alpha1" and data["kind"] == "GatewayBundle"
    for key in (
        "providers",
        "managedModels",
        "llmRoutes",
        "virtualKeys",
        "mcpServices",
        "mcpRoutes",
        "acpServices",
        "acpRoutes",
        "agents",
    ):
        assert data[key], key
        ids = [o.get("id") or f"{o['provider_id']}/{o['upstream_model']}" for o in data[key]]
        assert ids == sorted(ids), key
        for obj in data[key]:
            assert not {"source", "read_only", "created_at", "updated_at"} & set(obj)
    assert all("key" not in vk for vk in data["virtualKeys"])
    assert f"sk-{u}-secret-key" not in exported.text
    assert f"{u}-hdr-token" not in exported.text and f"{u}-mcp-env-secret" not in exported.text
    openai = next(p for p in data["providers"] if p["id"] == f"{u}-openai")
    assert openai["api_key"] == REDACTED

    revealed = client.get(
        "/admin/gateway/export", params={"include_secrets": "true"}, headers=REVEAL
    )
    assert f"sk-{u}-secret-key" in revealed.text
    assert f"Bearer {u}-hdr-token" in revealed.text and f"{u}-mcp-env-secret" in revealed.text

    state, on_disk = everything(client), store_bytes(inproc.store)
    for body in (data, revealed.json()):
        again = ok(apply(client, body, prune=True))
        assert again["changed"] is False
        assert again["counts"]["skip"] == len(again["actions"]) > 0
    assert everything(client) == state
    assert store_bytes(inproc.store) == on_disk


def test_export_applies_to_a_fresh_gateway(inproc_factory: InprocLauncher) -> None:
    source, target = inproc_factory.start(), inproc_factory.start()
    u = uid("copy")
    with source.client() as a, target.client() as b:
        ok(apply(a, full_bundle(u)))
        exported = a.get(
            "/admin/gateway/export", params={"include_secrets": "true"}, headers=REVEAL
        ).json()
        data = ok(apply(b, exported))
        assert data["counts"]["create"] == len(EXPECTED_CREATES)
        copy = b.get(
            "/admin/gateway/export", params={"include_secrets": "true"}, headers=REVEAL
        ).json()
        assert copy == exported
        # the copy's virtual key has a bearer of its own
        key_a = a.get(f"/admin/virtual_keys/{u}-vk").json()["key"]
        key_b = b.get(f"/admin/virtual_keys/{u}-vk").json()["key"]
        assert re.match(VK_PATTERN, key_b) and key_a != key_b


def test_bundle_with_virtual_key_bearer_is_refused(client: httpx.Client) -> None:
    b = bundle(virtualKeys=[{"id": uid("vk"), "key": "vk-" + "a" * 43}])
    err = assert_error(apply(client, b), 400, "config_invalid")
    assert "virtualKeys[0].key" in [p["path"] for p in err["problems"]]
