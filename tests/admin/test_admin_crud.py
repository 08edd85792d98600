"""CRUD and enable/disable for every configuration family, through the real admin API."""

from __future__ import annotations

import re
from typing import Any

import httpx
import pytest

from tests.support.admin import (
    FAMILIES,
    FAMILY_IDS,
    FamilySpec,
    assert_error,
    contains,
    created,
    ids_of,
    items,
    make_acp_service,
    make_mcp_service,
    make_provider,
    provider_body,
    put_body,
    service_route_body,
    uid,
)

RFC3339_MS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


def _create(api: httpx.Client, spec: FamilySpec) -> tuple[dict[str, Any], dict[str, Any]]:
    body = spec.build(api, uid())
    return body, created(api, spec.base, body)


@pytest.mark.parametrize("spec", FAMILIES, ids=FAMILY_IDS)
def test_create_get_list_update_toggle_delete(api: httpx.Client, spec: FamilySpec) -> None:
    body, view = _create(api, spec)
    oid = spec.oid(view)
    sent = {k: v for k, v in body.items() if k != "attributes"}  # secrets: test_admin_secrets
    assert contains(view, sent), (sent, view)
    assert view["source"] == spec.source
    assert view["read_only"] is False
    assert RFC3339_MS.match(view["created_at"]) and RFC3339_MS.match(view["updated_at"])

    r = api.get(spec.url(oid))
    assert r.status_code == 200, r.text
    assert r.json() == view

    listed = items(api, spec.base)
    assert [v for v in listed if spec.oid(v) == oid] == [view]

    r = api.put(spec.url(oid), json={**put_body(view), **spec.change})
    assert r.status_code == 200, r.text
    updated = r.json()
    for key, value in spec.expected_change().items():
        assert updated[key] == value, (key, updated)
    assert updated["created_at"] == view["created_at"]
    assert updated["updated_at"] >= view["updated_at"]
    assert api.get(spec.url(oid)).json() == updated

    on = spec.toggle == "enabled"  # managed models toggle `enabled`, the rest `disabled`
    r = api.post(spec.url(oid) + "/disable")
    assert r.status_code == 200, r.text
    assert r.json()[spec.toggle] is (not on)
    assert api.get(spec.url(oid)).json()[spec.toggle] is (not on)
    r = api.post(spec.url(oid) + "/enable")
    assert r.status_code == 200, r.text
    assert r.json()[spec.toggle] is on
    assert api.get(spec.url(oid)).json()[spec.toggle] is on

    r = api.delete(spec.url(oid))
    assert r.status_code == 200, r.text
    expected: dict[str, Any] = {"status": "deleted", spec.delete_key: oid}
    if spec.name == "agent":
        expected["unbound"] = {}  # an http agent binds no ACP service or route
    assert r.json() == expected
    assert_error(api.get(spec.url(oid)), 404, "not_found")
    assert oid not in ids_of(spec.base, items(api, spec.base))


@pytest.mark.parametrize("spec", FAMILIES, ids=FAMILY_IDS)
def test_put_of_own_view_is_a_no_op(api: httpx.Client, spec: FamilySpec) -> None:
    """A GET view sent back unchanged (source, read_only, redacted secrets and all) is
    accepted and changes nothing, not even updated_at."""
    _, view = _create(api, spec)
    r = api.put(spec.url(spec.oid(view)), json=put_body(view))
    assert r.status_code == 200, r.text
    assert r.json() == view
    assert api.get(spec.url(spec.oid(view))).json() == view


@pytest.mark.parametrize("spec", FAMILIES, ids=FAMILY_IDS)
def test_duplicate_id_is_409(api: httpx.Client, spec: FamilySpec) -> None:
    body, _ = _create(api, spec)
    before = items(api, spec.base)
    assert_error(api.post(spec.base, json=body), 409, "conflict", "already")
    assert items(api, spec.base) == before


@pytest.mark.parametrize("spec", FAMILIES, ids=FAMILY_IDS)
def test_missing_object_is_404_everywhere(api: httpx.Client, spec: FamilySpec) -> None:
    body = spec.build(api, uid())
    missing = spec.oid(body) if spec.name == "managed_model" else uid("missing")
    want = {"error": f"{spec.kind} not found", "code": "not_found"}
    before = items(api, spec.base)
    for method, suffix in (
        ("GET", ""),
        ("PUT", ""),
        ("DELETE", ""),
        ("POST", "/enable"),
        ("POST", "/disable"),
    ):
        payload = None
        if method == "PUT":
            payload = dict(body)
            if "id" in payload:
                payload["id"] = missing
        r = api.request(method, spec.url(missing) + suffix, json=payload)
        assert r.status_code == 404, (method, suffix, r.text)
        assert r.json() == want, (method, suffix)
    assert items(api, spec.base) == before


@pytest.mark.parametrize("spec", FAMILIES, ids=FAMILY_IDS)
@pytest.mark.parametrize("stamp", ["created_at", "updated_at"])
def test_client_timestamps_are_rejected(api: httpx.Client, spec: FamilySpec, stamp: str) -> None:
    body = spec.build(api, uid())
    stamp_value = "2024-01-01T00:00:00Z"
    before = items(api, spec.base)
    assert_error(api.post(spec.base, json={**body, stamp: stamp_value}), 400, None, stamp)
    assert items(api, spec.base) == before

    view = created(api, spec.base, body)
    r = api.put(spec.url(spec.oid(view)), json={**put_body(view), stamp: stamp_value})
    assert_error(r, 400, None, stamp)
    assert api.get(spec.url(spec.oid(view))).json() == view


@pytest.mark.parametrize(
    "spec", [s for s in FAMILIES if s.name != "managed_model"], ids=lambda s: s.name
)
def test_put_with_other_id_in_body_is_400(api: httpx.Client, spec: FamilySpec) -> None:
    _, view = _create(api, spec)
    other = uid("other")
    r = api.put(spec.url(view["id"]), json={**put_body(view), "id": other})
    assert_error(r, 400, None, "does not match")
    assert api.get(spec.url(view["id"])).json() == view
    assert_error(api.get(spec.url(other)), 404)


def test_managed_model_put_with_other_model_in_body_is_400(api: httpx.Client) -> None:
    pid = make_provider(api)
    view = created(
        api, "/admin/llm/models/managed", {"provider_id": pid, "upstream_model": "org/m1"}
    )
    url = f"/admin/llm/models/managed/{pid}/org/m1"
    assert_error(api.put(url, json={**put_body(view), "upstream_model": "org/m2"}), 400)
    assert_error(api.put(url, json={**put_body(view), "provider_id": uid("p")}), 400)
    assert api.get(url).json() == view
    assert_error(api.get(f"/admin/llm/models/managed/{pid}/org/m2"), 404)


@pytest.mark.parametrize("spec", FAMILIES, ids=FAMILY_IDS)
def test_lists_are_sorted_by_id(api: httpx.Client, spec: FamilySpec) -> None:
    for _ in range(3):
        _create(api, spec)
    got = ids_of(spec.base, items(api, spec.base))
    assert len(got) >= 3
    assert got == sorted(got)


def test_list_sort_is_by_id_not_creation_order(api: httpx.Client) -> None:
    tag = uid("sorted")
    for suffix in ("c", "a", "b"):
        created(api, "/admin/virtual_keys", {"id": f"{tag}-{suffix}", "tag": tag})
    got = [v["id"] for v in items(api, "/admin/virtual_keys", tag=tag)]
    assert got == [f"{tag}-a", f"{tag}-b", f"{tag}-c"]


# ------------------------------------------------------------------------------ list filters


def test_provider_list_filter_by_type(api: httpx.Client) -> None:
    anthropic = make_provider(api, provider_type="anthropic")
    openai = make_provider(api, provider_type="openai")
    got = items(api, "/admin/llm/providers", provider_type="anthropic")
    assert anthropic in [v["id"] for v in got]
    assert openai not in [v["id"] for v in got]
    assert {v["provider_type"] for v in got} == {"anthropic"}
    assert items(api, "/admin/llm/providers", provider_type="zhipu") == []


def test_virtual_key_list_filter_by_tag(api: httpx.Client) -> None:
    tag = uid("team")
    mine = [created(api, "/admin/virtual_keys", {"id": uid("vk"), "tag": tag})["id"]]
    mine.append(created(api, "/admin/virtual_keys", {"id": uid("vk"), "tag": tag})["id"])
    other = created(api, "/admin/virtual_keys", {"id": uid("vk"), "tag": tag + "x"})["id"]
    got = [v["id"] for v in items(api, "/admin/virtual_keys", tag=tag)]
    assert got == sorted(mine)
    assert other not in got


def test_managed_model_list_filter_by_provider(api: httpx.Client) -> None:
    p1, p2 = make_provider(api), make_provider(api)
    for pid, model in ((p1, "a/x"), (p1, "b"), (p2, "a/x")):
        created(api, "/admin/llm/models/managed", {"provider_id": pid, "upstream_model": model})
    got = items(api, "/admin/llm/models/managed", provider_id=p1)
    assert [(v["provider_id"], v["upstream_model"]) for v in got] == [(p1, "a/x"), (p1, "b")]
    assert all(v["provider_type"] == "openai" for v in got)


def test_credential_list_filters(api: httpx.Client) -> None:
    p1 = make_provider(api, provider_type="anthropic")
    p2 = make_provider(api, provider_type="openai")
    c1 = created(
        api,
        "/admin/credentials",
        {"type": "api_key", "provider_id": p1, "attributes": {"api_key": "sk-1"}},
    )
    c2 = created(
        api,
        "/admin/credentials",
        {"type": "api_key", "provider_id": p2, "attributes": {"api_key": "sk-2"}},
    )
    got = items(api, "/admin/credentials", type="api_key", provider_id=p1)
    assert [v["id"] for v in got] == [c1["id"]]
    assert items(api, "/admin/credentials", type="cliauth_token", provider_id=p1) == []
    by_type = [v["id"] for v in items(api, "/admin/credentials", provider_type="openai")]
    assert c2["id"] in by_type and c1["id"] not in by_type


# ------------------------------------------------------------------------------- credentials


def test_credential_defaults_and_provider_type_copied(api: httpx.Client) -> None:
    pid = make_provider(api, provider_type="anthropic")
    view = created(
        api,
        "/admin/credentials",
        {
            "type": "api_key",
            "provider_id": pid,
            "provider_type": "openai",  # ignored: copied from the provider
            "attributes": {"api_key": "sk-ant-x"},
        },
    )
    assert re.match(r"^[0-9a-f-]{36}$", view["id"]), view["id"]
    assert view["provider_type"] == "anthropic"
    assert view["scope"] == f"id:{pid}"
    assert view["source"] == "store" and view["read_only"] is False
    r = api.delete(f"/admin/credentials/{view['id']}")
    assert r.json() == {"status": "deleted", "credential_id": view["id"]}


def test_credential_type_scope_is_kept(api: httpx.Client) -> None:
    pid = make_provider(api)
    view = created(
        api,
        "/admin/credentials",
        {
            "id": uid("cred"),
            "type": "api_key",
            "provider_id": pid,
            "scope": "type:openai",
            "attributes": {"api_key": "sk-y"},
        },
    )
    assert view["scope"] == "type:openai"


@pytest.mark.parametrize(
    ("change", "status", "needle"),
    [
        ({"attributes": {}}, 400, "api_key"),
        ({"attributes": {"api_key": "  "}}, 400, "api_key"),
        ({"type": "oauth"}, 400, "type"),
        ({"type": "cliauth_token"}, 400, "cliauth_token"),
        ({"provider_id": "no-such-provider"}, 404, "provider not found"),
        ({"scope": "global"}, 400, "scope"),
    ],
)
def test_credential_create_rejections(
    api: httpx.Client, change: dict[str, Any], status: int, needle: str
) -> None:
    pid = make_provider(api)
    body = {"type": "api_key", "provider_id": pid, "attributes": {"api_key": "sk-z"}, **change}
    before = items(api, "/admin/credentials")
    assert_error(api.post("/admin/credentials", json=body), status, None, needle)
    assert items(api, "/admin/credentials") == before


# ------------------------------------------------------------------------ MCP and ACP routes


@pytest.mark.parametrize("plane", ["mcp", "acp"])
@pytest.mark.parametrize(
    ("prefix", "slug"),
    [("/", "root"), ("", "root"), ("/mcp", "mcp"), ("/Team_A//Tools/", "team-a-tools")],
)
def test_service_route_default_id(api: httpx.Client, plane: str, prefix: str, slug: str) -> None:
    sid = make_mcp_service(api) if plane == "mcp" else make_acp_service(api)
    host = f"{sid}.example"  # the gateway is shared: no two routes may match the same requests
    view = created(
        api,
        f"/admin/{plane}/routes",
        {"service_id": sid, "match_policy": {"path_prefix": prefix, "host": host}},
    )
    assert view["id"] == f"{plane}:{sid}:{slug}"
    assert view["kind"] == plane and view["protocol"] == plane
    assert view["service_id"] == sid
    assert api.get(f"/admin/{plane}/routes/{view['id']}").json() == view


@pytest.mark.parametrize("plane", ["mcp", "acp"])
def test_service_routes_that_slugify_alike_collide(api: httpx.Client, plane: str) -> None:
    sid = make_mcp_service(api) if plane == "mcp" else make_acp_service(api)
    base = f"/admin/{plane}/routes"
    host = f"{sid}.example"
    created(api, base, {"service_id": sid, "match_policy": {"path_prefix": "/a-b", "host": host}})
    r = api.post(
        base, json={"service_id": sid, "match_policy": {"path_prefix": "/a_b", "host": host}}
    )
    assert_error(r, 409, "conflict", f"{plane}:{sid}:a-b")


@pytest.mark.parametrize("plane", ["mcp", "acp"])
@pytest.mark.parametrize("bad", ["a/b", "a\\b", "a%2Fb", "a%5cb"])
def test_service_route_ids_with_slashes_are_400(api: httpx.Client, plane: str, bad: str) -> None:
    sid = make_mcp_service(api) if plane == "mcp" else make_acp_service(api)
    before = items(api, f"/admin/{plane}/routes")
    r = api.post(f"/admin/{plane}/routes", json=service_route_body(bad, sid))
    assert_error(r, 400, None, "must not contain")
    assert items(api, f"/admin/{plane}/routes") == before


def test_route_lists_only_show_their_kind(api: httpx.Client) -> None:
    llm = created(
        api,
        "/admin/llm/routes",
        {
            "id": uid("kind"),
            "protocol": "openai",
            "match_policy": {"path_prefix": f"/{uid('k')}"},
            "target_policy": {"provider_id": make_provider(api)},
        },
    )["id"]
    mcp = created(api, "/admin/mcp/routes", service_route_body(uid("kind"), make_mcp_service(api)))[
        "id"
    ]
    acp = created(api, "/admin/acp/routes", service_route_body(uid("kind"), make_acp_service(api)))[
        "id"
    ]
    for plane, mine, others in (
        ("llm", llm, (mcp, acp)),
        ("mcp", mcp, (llm, acp)),
        ("acp", acp, (llm, mcp)),
    ):
        listed = [v["id"] for v in items(api, f"/admin/{plane}/routes")]
        assert mine in listed
        assert not set(others) & set(listed)
        for other in others:
            r = api.get(f"/admin/{plane}/routes/{other}")
            assert r.json() == {"error": f"{plane} route not found", "code": "not_found"}
            assert_error(api.delete(f"/admin/{plane}/routes/{other}"), 404)
    assert api.get(f"/admin/llm/routes/{llm}").status_code == 200


def test_route_id_is_unique_across_kinds(api: httpx.Client) -> None:
    rid = uid("shared")
    created(api, "/admin/mcp/routes", service_route_body(rid, make_mcp_service(api)))
    r = api.post(
        "/admin/acp/routes",
        json={**service_route_body(rid, make_acp_service(api)), "match_policy": {}},
    )
    assert_error(r, 409, "conflict", rid)
    r = api.post(
        "/admin/llm/routes",
        json={
            "id": rid,
            "protocol": "openai",
            "match_policy": {"path_prefix": f"/{uid('x')}"},
            "target_policy": {"provider_id": make_provider(api)},
        },
    )
    assert_error(r, 409, "conflict", rid)


def test_provider_update_keeps_created_at_and_put_body_replaces(api: httpx.Client) -> None:
    pid = make_provider(api, default_model="m1", options={"organization": "org-1"})
    before = api.get(f"/admin/llm/providers/{pid}").json()
    r = api.put(f"/admin/llm/providers/{pid}", json=provider_body(pid, "anthropic"))
    assert r.status_code == 200, r.text
    after = r.json()
    assert after["provider_type"] == "anthropic"
    assert after["default_model"] == "" and after["options"] == {}
    assert after["created_at"] == before["created_at"]
