"""The families test_admin_crud.py does not cover (JWT providers, authorization policies, A2A
services and routes, limits), on each engine: created through their admin paths, applied and
exported in a bundle, updated, disabled, deleted, and nothing left of them after."""

from __future__ import annotations

from typing import Any

import httpx

from tests.support.admin import uid
from tests.support.jwt import TokenMinter


def objects(suffix: str) -> dict[str, tuple[str, dict[str, Any]]]:
    """One object of each family, by bundle key: (admin path, body)."""
    jwt = TokenMinter().provider(f"corp-{suffix}")
    a2a = f"a2a-{suffix}"
    return {
        "jwtProviders": ("/admin/jwt_providers", jwt),
        "authorizationPolicies": (
            "/admin/authorization_policies",
            {"id": f"deny-{suffix}", "route_kinds": ["llm"], "deny": ['"x" in principal.groups']},
        ),
        "a2aServices": (
            "/admin/a2a/services",
            {
                "id": a2a,
                "card_url": "http://127.0.0.1:9/.well-known/agent-card.json",
                "auth": {"type": "bearer", "api_key": f"sk-a2a-{suffix}-0000"},
            },
        ),
        "a2aRoutes": (
            "/admin/a2a/routes",
            {"id": f"r-{a2a}", "service_id": a2a, "match_policy": {"path_prefix": f"/{a2a}"}},
        ),
        "limits": (
            "/admin/limits",
            {"id": f"rpm-{suffix}", "subject": "key", "window": "1m", "requests": 5},
        ),
    }


def ids(api: httpx.Client, path: str) -> set[str]:
    r = api.get(path)
    assert r.status_code == 200, r.text
    return {item["id"] for item in r.json()["items"]}


def test_each_family_round_trips_through_its_path_and_a_bundle(api: httpx.Client) -> None:
    made = objects(uid("f"))
    for path, body in made.values():
        r = api.post(path, json=body)
        assert r.status_code == 201, (path, r.text)
        assert body["id"] in ids(api, path)
    exported = api.get("/admin/gateway/export").json()
    for key, (_, body) in made.items():
        assert body["id"] in {o["id"] for o in exported[key]}, key
    secret = made["a2aServices"][1]["auth"]["api_key"]
    assert secret not in api.get(f"/admin/a2a/services/{made['a2aServices'][1]['id']}").text

    # a bundle of another set: created, then skipped when applied again
    other = objects(uid("g"))
    bundle: dict[str, Any] = {"apiVersion": "gateway.agw/v1alpha1", "kind": "GatewayBundle"}
    bundle |= {key: [body] for key, (_, body) in other.items()}
    r = api.post("/admin/gateway/apply", json={"bundle": bundle})
    assert r.status_code == 200, r.text
    assert r.json()["counts"]["create"] == len(other)
    r = api.post("/admin/gateway/apply", json={"bundle": bundle})
    assert r.json()["changed"] is False, r.text
    for path, body in other.values():
        assert body["id"] in ids(api, path)

    # update, disable, enable, delete (dependents first)
    policy_path, policy = made["authorizationPolicies"]
    r = api.put(f"{policy_path}/{policy['id']}", json={**policy, "deny": ["false"]})
    assert r.status_code == 200, r.text
    assert api.get(f"{policy_path}/{policy['id']}").json()["deny"] == ["false"]
    limit_path, limit = made["limits"]
    assert api.post(f"{limit_path}/{limit['id']}/disable").status_code == 200
    assert api.get(f"{limit_path}/{limit['id']}").json()["disabled"] is True
    assert api.post(f"{limit_path}/{limit['id']}/enable").status_code == 200
    for objs in (made, other):
        for key in ("a2aRoutes", "a2aServices", "limits", "authorizationPolicies", "jwtProviders"):
            path, body = objs[key]
            r = api.delete(f"{path}/{body['id']}")
            assert r.status_code == 200, (path, r.text)
            assert api.get(f"{path}/{body['id']}").status_code == 404
            assert body["id"] not in ids(api, path)
