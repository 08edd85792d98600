"""Referential integrity: references must resolve on write, and referenced objects cannot be
deleted; a refused write stores nothing."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.support.admin import (
    acp_agent_body,
    assert_error,
    created,
    everything,
    http_agent_body,
    items,
    llm_route_body,
    make_acp_service,
    make_llm_route,
    make_mcp_service,
    make_provider,
    make_service_route,
    problem_paths,
    service_route_body,
    uid,
)


def refused(
    api: httpx.Client, method: str, path: str, body: Any, status: int, *needles: str
) -> dict[str, Any]:
    before = everything(api)
    r = api.request(method, path, json=body)
    err = assert_error(r, status)
    for needle in needles:
        assert needle in err["error"], err
    assert everything(api) == before
    return err


# ---------------------------------------------------------------------------------- providers


def test_llm_route_to_missing_provider_is_400(api: httpx.Client) -> None:
    rid, missing = uid("r"), uid("no-provider")
    err = refused(api, "POST", "/admin/llm/routes", llm_route_body(rid, missing), 400, missing)
    assert err["code"] == "config_invalid"
    assert any("target_policy.provider_id" in p for p in problem_paths(err)), err
    assert_error(api.get(f"/admin/llm/routes/{rid}"), 404)


def test_logical_model_candidate_to_missing_provider_is_400(api: httpx.Client) -> None:
    pid, missing = make_provider(api), uid("no-provider")
    body: dict[str, Any] = {
        "id": uid("r"),
        "protocol": "openai",
        "match_policy": {"path_prefix": f"/{uid('lm')}"},
        "target_policy": {
            "model_targets": [
                {
                    "name": "fast",
                    "candidates": [
                        {"provider_id": pid, "upstream_model": "m1"},
                        {"provider_id": missing, "upstream_model": "m2"},
                    ],
                }
            ]
        },
    }
    refused(api, "POST", "/admin/llm/routes", body, 400, missing, "candidates[1]")
    body["target_policy"]["model_targets"][0]["candidates"].pop()
    view = created(api, "/admin/llm/routes", body)
    assert view["target_policy"]["type"] == "logical-model"
    assert view["target_policy"]["default_model"] == "fast"


def test_route_update_to_missing_provider_is_400(api: httpx.Client) -> None:
    rid = make_llm_route(api, make_provider(api))
    missing = uid("no-provider")
    refused(api, "PUT", f"/admin/llm/routes/{rid}", llm_route_body(rid, missing), 400, missing)


def test_provider_referenced_by_a_route_cannot_be_deleted(api: httpx.Client) -> None:
    pid = make_provider(api)
    rid = make_llm_route(api, pid)
    err = refused(api, "DELETE", f"/admin/llm/providers/{pid}", None, 409, rid, pid)
    assert err["code"] == "conflict"
    assert api.delete(f"/admin/llm/routes/{rid}").status_code == 200
    assert api.delete(f"/admin/llm/providers/{pid}").json() == {"status": "deleted", "id": pid}


def test_provider_referenced_by_managed_model_or_credential_cannot_be_deleted(
    api: httpx.Client,
) -> None:
    pid = make_provider(api)
    created(api, "/admin/llm/models/managed", {"provider_id": pid, "upstream_model": "a/b"})
    cred = created(
        api,
        "/admin/credentials",
        {"type": "api_key", "provider_id": pid, "attributes": {"api_key": "sk-ref"}},
    )
    refused(api, "DELETE", f"/admin/llm/providers/{pid}", None, 409, cred["id"], f"{pid}/a/b")
    assert api.delete(f"/admin/llm/models/managed/{pid}/a/b").status_code == 200
    assert api.delete(f"/admin/credentials/{cred['id']}").status_code == 200
    assert api.delete(f"/admin/llm/providers/{pid}").status_code == 200


def test_managed_model_for_missing_provider_is_400(api: httpx.Client) -> None:
    missing = uid("no-provider")
    body = {"provider_id": missing, "upstream_model": "x"}
    refused(api, "POST", "/admin/llm/models/managed", body, 400, missing)


def test_credential_for_missing_provider_is_404(api: httpx.Client) -> None:
    body = {"type": "api_key", "provider_id": uid("none"), "attributes": {"api_key": "k"}}
    err = refused(api, "POST", "/admin/credentials", body, 404)
    assert err == {"error": "provider not found", "code": "not_found"}


# ------------------------------------------------------------------------------- virtual keys


def test_virtual_key_to_missing_route_is_400(api: httpx.Client) -> None:
    missing = uid("no-route")
    body = {"id": uid("vk"), "allowed_route_ids": [missing]}
    err = refused(api, "POST", "/admin/virtual_keys", body, 400, missing)
    assert any("allowed_route_ids" in p for p in problem_paths(err)), err


def test_virtual_key_routes_resolve_and_pin_the_route(api: httpx.Client) -> None:
    llm = make_llm_route(api, make_provider(api))
    mcp = make_service_route(api, "mcp", make_mcp_service(api))
    vid = uid("vk")
    view = created(api, "/admin/virtual_keys", {"id": vid, "allowed_route_ids": [mcp, llm, llm]})
    assert view["allowed_route_ids"] == sorted({llm, mcp})
    refused(
        api,
        "PUT",
        f"/admin/virtual_keys/{vid}",
        {"id": vid, "allowed_route_ids": [llm, "gone"]},
        400,
        "gone",
    )
    refused(api, "DELETE", f"/admin/llm/routes/{llm}", None, 409, vid)
    refused(api, "DELETE", f"/admin/mcp/routes/{mcp}", None, 409, vid)


# ----------------------------------------------------------------------------------- MCP/ACP


@pytest.mark.parametrize("plane", ["mcp", "acp"])
def test_service_route_to_missing_service_is_400(api: httpx.Client, plane: str) -> None:
    missing = uid("no-service")
    body = service_route_body(uid("r"), missing)
    err = refused(api, "POST", f"/admin/{plane}/routes", body, 400, missing)
    assert any(p.endswith(".service_id") for p in problem_paths(err)), err


@pytest.mark.parametrize("plane", ["mcp", "acp"])
def test_service_route_requires_service_id(api: httpx.Client, plane: str) -> None:
    err = refused(api, "POST", f"/admin/{plane}/routes", {"id": uid("r")}, 400)
    if plane == "acp":
        assert "service_id" in problem_paths(err)
    else:  # one of two fields: the route itself is the problem
        assert any("service_id or service_ids is required" in p["message"] for p in err["problems"])


@pytest.mark.parametrize("plane", ["mcp", "acp"])
def test_service_with_routes_cannot_be_deleted(api: httpx.Client, plane: str) -> None:
    sid = make_mcp_service(api) if plane == "mcp" else make_acp_service(api)
    rid = make_service_route(api, plane, sid)
    refused(api, "DELETE", f"/admin/{plane}/services/{sid}", None, 409, rid)
    assert api.delete(f"/admin/{plane}/routes/{rid}").status_code == 200
    assert api.delete(f"/admin/{plane}/services/{sid}").status_code == 200


# ------------------------------------------------------------------------------------ agents


def test_agent_acp_runtime_must_name_an_existing_service(api: httpx.Client) -> None:
    missing = uid("no-acp")
    err = refused(api, "POST", "/admin/agents", acp_agent_body(uid("a"), missing), 400, missing)
    assert any("runtime.acp.service_id" in p for p in problem_paths(err)), err


def test_one_acp_service_is_bound_by_one_agent(api: httpx.Client) -> None:
    sid = make_acp_service(api)
    first = created(api, "/admin/agents", acp_agent_body(uid("a"), sid))
    assert first["owns_service"] is False
    refused(api, "POST", "/admin/agents", acp_agent_body(uid("a"), sid), 400, first["id"], sid)
    # a PUT that moves another agent onto the service is refused the same way
    other = created(api, "/admin/agents", acp_agent_body(uid("a"), make_acp_service(api)))
    refused(
        api,
        "PUT",
        f"/admin/agents/{other['id']}",
        acp_agent_body(other["id"], sid),
        400,
        first["id"],
    )


def test_agent_acp_routes_must_target_its_runtime_service(api: httpx.Client) -> None:
    mine, theirs = make_acp_service(api), make_acp_service(api)
    my_route = make_service_route(api, "acp", mine)
    their_route = make_service_route(api, "acp", theirs)
    body = acp_agent_body(uid("a"), mine, routes={"acp_route_ids": [my_route, their_route]})
    refused(api, "POST", "/admin/agents", body, 400, their_route, theirs)
    body["routes"] = {"acp_route_ids": [my_route, " " + my_route + " "]}
    view = created(api, "/admin/agents", body)
    assert view["routes"]["acp_route_ids"] == [my_route]  # trimmed and de-duplicated


def test_a_route_is_bound_by_one_agent(api: httpx.Client) -> None:
    rid = make_llm_route(api, make_provider(api))
    first = created(
        api, "/admin/agents", http_agent_body(uid("a"), routes={"llm_route_ids": [rid]})
    )
    body = http_agent_body(uid("a"), routes={"llm_route_ids": [rid]})
    refused(api, "POST", "/admin/agents", body, 400, rid, first["id"])


@pytest.mark.parametrize(
    ("section", "field", "target"),
    [
        ("routes", "llm_route_ids", "llm route"),
        ("routes", "mcp_route_ids", "mcp route"),
        ("routes", "acp_route_ids", "acp route"),
        ("resources", "provider_ids", "provider"),
        ("resources", "mcp_service_ids", "mcp service"),
        ("resources", "virtual_key_ids", "virtual key"),
    ],
)
def test_agent_dangling_references_are_400(
    api: httpx.Client, section: str, field: str, target: str
) -> None:
    missing = uid("missing")
    body = http_agent_body(uid("a"), **{section: {field: [missing]}})
    err = refused(api, "POST", "/admin/agents", body, 400, missing, target)
    assert f"{section}.{field}" in err["error"]


def test_objects_bound_by_an_agent_cannot_be_deleted(api: httpx.Client) -> None:
    sid = make_acp_service(api)
    rid = make_service_route(api, "acp", sid)
    pid = make_provider(api)
    aid = uid("a")
    created(
        api,
        "/admin/agents",
        acp_agent_body(
            aid, sid, routes={"acp_route_ids": [rid]}, resources={"provider_ids": [pid]}
        ),
    )
    refused(api, "DELETE", f"/admin/acp/routes/{rid}", None, 409, aid)
    refused(api, "DELETE", f"/admin/llm/providers/{pid}", None, 409, aid)
    api.delete(f"/admin/acp/routes/{rid}")  # still refused: the agent holds it
    refused(api, "DELETE", f"/admin/acp/services/{sid}", None, 409, aid)
    r = api.delete(f"/admin/agents/{aid}")
    assert r.status_code == 200 and r.json()["status"] == "deleted" and r.json()["id"] == aid
    for path in (
        f"/admin/acp/routes/{rid}",
        f"/admin/acp/services/{sid}",
        f"/admin/llm/providers/{pid}",
    ):
        assert api.delete(path).status_code == 200, path
    assert aid not in [a["id"] for a in items(api, "/admin/agents")]


def test_agent_owns_service_is_server_controlled(api: httpx.Client) -> None:
    body = http_agent_body(uid("a"), owns_service=True)
    view = created(api, "/admin/agents", body)
    assert view["owns_service"] is False
    r = api.put(f"/admin/agents/{view['id']}", json={**body, "owns_service": True})
    assert r.status_code == 200 and r.json()["owns_service"] is False
