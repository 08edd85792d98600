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


def _create(admin: httpx.Client, spec: FamilySpec) -> tuple[dict[str, Any], dict[str, Any]]:
    body = spec.build(admin, uid())
    return body, created(admin, spec.base, body)


@pytest.mark.parametrize("spec", FAMILIES, ids=FAMILY_IDS)
def test_create_get_list_update_toggle_delete(admin: httpx.Client, spec: FamilySpec) -> None:
    body, view = _create(admin, spec)
    oid = spec.oid(view)
    sent = {k: v for k, v in body.items() if k != "attributes"}  # secrets: test_admin_secrets
    assert contains(view, sent), (sent, view)
    assert view["source"] == spec.source
    assert view["read_only"] is False
    assert RFC3339_MS.match(view["created_at"]) and RFC3339_MS.match(view["updated_at"])

    r = admin.get(spec.url(oid))
    assert r.status_code == 200, r.text
    assert r.json() == view

    listed = items(admin, spec.base)
    assert [v for v in listed if spec.oid(v) == oid] == [view]

    r = admin.put(spec.url(oid), json={**put_body(view), **spec.change})
    assert r.status_code == 200, r.text
    updated = r.json()
    for key, value in spec.expected_change().items():
        assert updated[key] == value, (key, updated)
    assert updated["created_at"] == view["created_at"]
    assert updated["updated_at"] >= view["updated_at"]
    assert admin.get(spec.url(oid)).json() == updated

    on = spec.toggle == "enabled"  # managed models toggle `enabled`, the rest `disabled`
    r = admin.post(spec.url(oid) + "/disable")
    assert r.status_code == 200, r.text
    assert r.json()[spec.toggle] is (not on)
    assert admin.get(spec.url(oid)).json()[spec.toggle] is (not on)
    r = admin.post(spec.url(oid) + "/enable")
    assert r.status_code == 200, r.text
    assert r.json()[spec.toggle] is on
    assert admin.get(spec.url(oid)).json()[spec.toggle] is on

    r = admin.delete(spec.url(oid))
    assert r.status_code == 200, r.text
    expected: dict[str, Any] = {"status": "deleted", spec.delete_key: oid}
    if spec.name == "agent":
        expected["unbound"] = {}  # an http agent binds no ACP service or route
    assert r.json() == expected
    assert_error(admin.get(spec.url(oid)), 404, "not_found")
    assert oid not in ids_of(spec.base, items(admin, spec.base))


@pytest.mark.parametrize("spec", FAMILIES, ids=FAMILY_IDS)
def test_put_of_own_view_is_a_no_op(admin: httpx.Client, spec: FamilySpec) -> None:
    """A GET view sent back unchanged (source, read_only, redacted secrets and all) is
    accepted and changes nothing, not even updated_at."""
    _, view = _create(admin, spec)
    r = admin.put(spec.url(spec.oid(view)), json=put_body(view))
    assert r.status_code == 200, r.text
    assert r.json() == view
    assert admin.get(spec.url(spec.oid(view))).json() == view


@pytest.mark.parametrize("spec", FAMILIES, ids=FAMILY_IDS)
def test_duplicate_id_is_409(admin: httpx.Client, spec: FamilySpec) -> None:
    body, _ = _create(admin, spec)
    before = items(admin, spec.base)
    assert_error(admin.post(spec.base, json=body), 409, "conflict", "already")
    assert items(admin, spec.base) == before


@pytest.mark.parametrize("spec", FAMILIES, ids=FAMILY_IDS)
def test_missing_object_is_404_everywhere(admin: httpx.Client, spec: FamilySpec) -> None:
    body = spec.build(admin, uid())
    missing = spec.oid(body) if spec.name == "managed_model" else uid("missing")
    want = {"error": f"{spec.kind} not found", "code": "not_found"}
    before = items(admin, spec.base)
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
        r = admin.request(method, spec.url(missing) + suffix, json=payload)
        assert r.status_code == 404, (method, suffix, r.text)
        assert r.json() == want, (method, suffix)
    assert items(admin, spec.base) == before


@pytest.mark.parametrize("spec", FAMILIES, ids=FAMILY_IDS)
@pytest.mark.parametrize("stamp", ["created_at", "updated_at"])
def test_client_timestamps_are_rejected(admin: httpx.Client, spec: FamilySpec, stamp: str) -> None:
    body = spec.build(admin, uid())
    stamp_value = "2024-01-01T00:00:00Z"
    before = items(admin, spec.base)
    assert_error(admin.post(spec.base, json={**body, stamp: stamp_value}), 400, None, stamp)
    assert items(admin, spec.base) == before

    view = created(admin, spec.base, body)
    r = admin.put(spec.url(spec.oid(view)), json={**put_body(view), stamp: stamp_value})
    assert_error(r, 400, None, stamp)
    assert admin.get(spec.url(spec.oid(view))).json() == view


@pytest.mark.parametrize("spec", [s for s in FAMILIES if s.name != "managed_model"], ids=str)
def test_put_with_other_id_in_body_is_400(admin: httpx.Client, spec: FamilySpec) -> None:
    _, view = _create(admin, spec)
    other = uid("other")
    r = admin.put(spec.url(view["id"]), json={**put_body(view), "id": other})
    assert_error(r, 400, None, "does not match")
    assert admin.get(spec.url(view["id"])).json() == view
    assert_error(admin.get(spec.url(other)), 404)


def test_managed_model_put_with_other_model_in_body_is_400(admin: httpx.Client) -> None:
    pid = make_provider(admin)
    view = created(
        admin, "/admin/llm/models/managed", {"provider_id": pid, "upstream_model": "org/m1"}
    )
    url = f"/admin/llm/models/managed/{pid}/org/m1"
    assert_error(admin.put(url, json={**put_body(view), "upstream_model": "org/m2"}), 400)
    assert_error(admin.put(url, json={**put_body(view), "provider_id": uid("p")}), 400)
    assert admin.get(url).json() == view
    assert_error(admin.get(f"/admin/llm/models/managed/{pid}/org/m2"), 404)


@pytest.mark.parametrize("spec", FAMILIES, ids=FAMILY_IDS)
def test_lists_are_sorted_by_id(admin: httpx.Client, spec: FamilySpec) -> None:
    for _ in range(3):
        _create(admin, spec)
    got = ids_of(spec.base, items(admin, spec.base))
    assert len(got) >= 3
    assert got == sorted(got)


def test_list_sort_is_by_id_not_creation_order(admin: httpx.Client) -> None:
    tag = uid("sorted")
    for suffix in ("c", "a", "b"):
        created(admin, "/admin/virtual_keys", {"id": f"{tag}-{suffix}", "tag": tag})
    got = [v["id"] for v in items(admin, "/admin/virtual_keys", tag=tag)]
    assert got == [f"{tag}-a", f"{tag}-b", f"{tag}-c"]


# ------------------------------------------------------------------------------ list filters


def test_provider_list_filter_by_type(admin: httpx.Client) -> None:
    anthropic = make_provider(admin, provider_type="anthropic")
    openai = make_provider(admin, provider_type="openai")
    got = items(admin, "/admin/llm/providers", provider_type="anthropic")
    assert anthropic in [v["id"] for v in got]
    assert openai not in [v["id"] for v in got]
    assert {v["provider_type"] for v in got} == {"anthropic"}
    assert items(admin, "/admin/llm/providers", provider_type="zhipu") == []


def test_virtual_key_list_filter_by_tag(admin: httpx.Client) -> None:
    tag = uid("team")
    mine = [created(admin, "/admin/virtual_keys", {"id": uid("vk"), "tag": tag})["id"]]
    mine.append(created(admin, "/admin/virtual_keys", {"id": uid("vk"), "tag": tag})["id"])
    other = created(admin, "/admin/virtual_keys", {"id": uid("vk"), "tag": tag + "x"})["id"]
    got = [v["id"] for v in items(admin, "/admin/virtual_keys", tag=tag)]
    assert got == sorted(mine)
    assert other not in got


def test_managed_model_list_filter_by_provider(admin: httpx.Client) -> None:
    p1, p2 = make_provider(admin), make_provider(admin)
    for pid, model in ((p1, "a/x"), (p1, "b"), (p2, "a/x")):
        created(admin, "/admin/llm/models/managed", {"provider_id": pid, "upstream_model": model})
    got = items(admin, "/admin/llm/models/managed", provider_id=p1)
    assert [(v["provider_id"], v["upstream_model"]) for v in got] == [(p1, "a/x"), (p1, "b")]
    assert all(v["provider_type"] == "openai" for v in got)


def test_credential_list_filters(admin: httpx.Client) -> None:
    p1 = make_provider(admin, provider_type="anthropic")
    p2 = make_provider(admin, provider_type="openai")
    c1 = created(
        admin,
        "/admin/credentials",
        {"type": "api_key", "provider_id": p1, "attributes": {"api_key": "sk-1"}},
    )
    c2 = created(
        admin,
        "/admin/credentials",
        {"type": "api_key", "provider_id": p2, "attributes": {"api_key": "sk-2"}},
    )
    got = items(admin, "/admin/credentials", type="api_key", provider_id=p1)
    assert [v["id"] for v in got] == [c1["id"]]
    assert items(admin, "/admin/credentials", type="cliauth_token", provider_id=p1) == []
    by_type = [v["id"] for v in items(admin, "/admin/credentials", provider_type="openai")]
    assert c2["id"] in by_type and c1["id"] not in by_type


# ------------------------------------------------------------------------------- credentials


def test_credential_defaults_and_provider_type_copied(admin: httpx.Client) -> None:
    pid = make_provider(admin, provider_type="anthropic")
    view = created(
        admin,
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
    r = admin.delete(f"/admin/credentials/{view['id']}")
    assert r.json() == {"status": "deleted", "credential_id": view["id"]}


def test_credential_type_scope_is_kept(admin: httpx.Client) -> None:
    pid = make_provider(admin)
    view = created(
        admin,
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
    admin: httpx.Client, change: dict[str, Any], status: int, needle: str
) -> None:
    pid = make_provider(admin)
    body = {"type": "api_key", "provider_id": pid, "attributes": {"api_key": "sk-z"}, **change}
    before = items(admin, "/admin/credentials")
    assert_error(admin.post("/admin/credentials", json=body), status, None, needle)
    assert items(admin, "/admin/credentials") == before


# ------------------------------------------------------------------------ MCP and ACP routes


@pytest.mark.parametrize("plane", ["mcp", "acp"])
@pytest.mark.parametrize(
    ("prefix", "slug"),
    [("/", "root"), ("", "root"), ("/mcp", "mcp"), ("/Team_A//Tools/", "team-a-tools")],
)
def test_service_route_default_id(admin: httpx.Client, plane: str, prefix: str, slug: str) -> None:
    sid = make_mcp_service(admin) if plane == "mcp" else make_acp_service(admin)
    host = f"{sid}.example"  # the agwd is shared: no two routes may match the same requests
    view = created(
        admin,
        f"/admin/{plane}/routes",
        {"service_id": sid, "match_policy": {"path_prefix": prefix, "host": host}},
    )
    assert view["id"] == f"{plane}:{sid}:{slug}"
    assert view["kind"] == plane and view["protocol"] == plane
    assert view["service_id"] == sid
    assert admin.get(f"/admin/{plane}/routes/{view['id']}").json() == view


@pytest.mark.parametrize("plane", ["mcp", "acp"])
def test_service_routes_that_slugify_alike_collide(admin: httpx.Client, plane: str) -> None:
    sid = make_mcp_service(admin) if plane == "mcp" else make_acp_service(admin)
    base = f"/admin/{plane}/routes"
    host = f"{sid}.example"
    created(admin, base, {"service_id": sid, "match_policy": {"path_prefix": "/a-b", "host": host}})
    r = admin.post(
        base, json={"service_id": sid, "match_policy": {"path_prefix": "/a_b", "host": host}}
    )
    assert_error(r, 409, "conflict", f"{plane}:{sid}:a-b")


@pytest.mark.parametrize("plane", ["mcp", "acp"])
@pytest.mark.parametrize("bad", ["a/b", "a\\b", "a%2Fb", "a%5cb"])
def test_service_route_ids_with_slashes_are_400(admin: httpx.Client, plane: str, bad: str) -> None:
    sid = make_mcp_service(admin) if plane == "mcp" else make_acp_service(admin)
    before = items(admin, f"/admin/{plane}/routes")
    r = admin.post(f"/admin/{plane}/routes", json=service_route_body(bad, sid))
    assert_error(r, 400, None, "must not contain")
    assert items(admin, f"/admin/{plane}/routes") == before


def test_route_lists_only_show_their_kind(admin: httpx.Client) -> None:
    llm = created(
        admin,
        "/admin/llm/routes",
        {
            "id": uid("kind"),
            "protocol": "openai",
            "match_policy": {"path_prefix": f"/{uid('k')}"},
            "target_policy": {"provider_id": make_provider(admin)},
        },
    )["id"]
    mcp = created(
        admin, "/admin/mcp/routes", service_route_body(uid("kind"), make_mcp_service(admin))
    )["id"]
    acp = created(
        admin, "/admin/acp/routes", service_route_body(uid("kind"), make_acp_service(admin))
    )["id"]
    for plane, mine, others in (
        ("llm", llm, (mcp, acp)),
        ("mcp", mcp, (llm, acp)),
        ("acp", acp, (llm, mcp)),
    ):
        listed = [v["id"] for v in items(admin, f"/admin/{plane}/routes")]
        assert mine in listed
        assert not set(others) & set(listed)
        for other in others:
            r = admin.get(f"/admin/{plane}/routes/{other}")
            assert r.json() == {"error": f"{plane} route not found", "code": "not_found"}
            assert_error(admin.delete(f"/admin/{plane}/routes/{other}"), 404)
    assert admin.get(f"/admin/llm/routes/{llm}").status_code == 200


def test_route_id_is_unique_across_kinds(admin: httpx.Client) -> None:
    rid = uid("shared")
    created(admin, "/admin/mcp/routes", service_route_body(rid, make_mcp_service(admin)))
    r = admin.post(
        "/admin/acp/routes",
        json={**service_route_body(rid, make_acp_service(admin)), "match_policy": {}},
    )
    assert_error(r, 409, "conflict", rid)
    r = admin.post(
        "/admin/llm/routes",
        json={
            "id": rid,
            "protocol": "openai",
            "match_policy": {"path_prefix": f"/{uid('x')}"},
            "target_policy": {"provider_id": make_provider(admin)},
        },
    )
    assert_error(r, 409, "conflict", rid)


def test_provider_update_keeps_created_at_and_put_body_replaces(admin: httpx.Client) -> None:
    pid = make_provider(admin, default_model="m1", options={"organization": "org-1"})
    before = admin.get(f"/admin/llm/providers/{pid}").json()
    r = admin.put(f"/admin/llm/providers/{pid}", json=provider_body(pid, "anthropic"))
    assert r.status_code == 200, r.text
    after = r.json()
    assert after["provider_type"] == "anthropic"
    assert after["default_model"] == "" and after["options"] == {}
    assert after["created_at"] == before["created_at"]
