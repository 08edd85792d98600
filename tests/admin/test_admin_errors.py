"""Bad requests: one JSON error shape, a useful message, and nothing stored afterwards."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.support.admin import (
    assert_error,
    everything,
    make_mcp_service,
    make_provider,
    problem_paths,
    uid,
)
from tests.support.inproc import InprocLauncher

MAX_BODY = 16 * 1024 * 1024


@pytest.fixture(scope="module")
def seeded(api: httpx.Client) -> dict[str, str]:
    """A few objects, so 'nothing changed' compares non-empty lists."""
    pid = make_provider(api, api_key="sk-seeded-000000")
    return {"provider": pid, "mcp_service": make_mcp_service(api)}


@pytest.fixture
def unchanged(api: httpx.Client, seeded: dict[str, str]) -> Iterator[None]:
    """After the test: the server still answers, and every list is as it was before."""
    before = everything(api)
    yield
    assert api.get("/admin/health").json() == {"status": "ok"}
    assert everything(api) == before


def post_raw(api: httpx.Client, path: str, content: bytes) -> httpx.Response:
    return api.post(path, content=content, headers={"Content-Type": "application/json"})


# ---------------------------------------------------------------------------- bad JSON bodies

BAD_JSON = [
    pytest.param(b'{"id": "x", "provider_type": ', id="truncated"),
    pytest.param(b"{'id': 'x'}", id="single-quotes"),
    pytest.param(b'{"id": "x",}', id="trailing-comma"),
    pytest.param(b'{"id": "x"} trailing', id="extra-data"),
    pytest.param(b'{"id": "\xff\xfe"}', id="not-utf8"),
    pytest.param(b'{"id": "x", "provider_type": "openai", "options": {"t": NaN}}', id="NaN"),
    pytest.param(b'{"id": "x", "provider_type": "openai", "options": {"t": Infinity}}', id="inf"),
    pytest.param(b'{"a":' * 100_000 + b"1" + b"}" * 100_000, id="deeply-nested"),
]


@pytest.mark.usefixtures("unchanged")
@pytest.mark.parametrize("path", ["/admin/llm/providers", "/admin/gateway/apply"])
@pytest.mark.parametrize("content", BAD_JSON)
def test_malformed_json_is_400_naming_json(api: httpx.Client, path: str, content: bytes) -> None:
    assert_error(post_raw(api, path, content), 400, "invalid_request", "json")


@pytest.mark.usefixtures("unchanged")
def test_malformed_json_on_put_is_400(api: httpx.Client, seeded: dict[str, str]) -> None:
    r = api.put(
        f"/admin/llm/providers/{seeded['provider']}",
        content=b'{"id": ',
        headers={"Content-Type": "application/json"},
    )
    assert_error(r, 400, "invalid_request", "json")


@pytest.mark.usefixtures("unchanged")
@pytest.mark.parametrize(
    ("content", "needle"),
    [
        (b'[{"id": "x", "provider_type": "openai"}]', "object"),
        (b'"a string"', "object"),
        (b"42", "object"),
        (b"null", "object"),
        (b"", "object"),
        (b"   \n", "object"),
    ],
    ids=["array", "string", "number", "null", "empty", "blank"],
)
@pytest.mark.parametrize("path", ["/admin/llm/providers", "/admin/agents", "/admin/gateway/apply"])
def test_body_that_is_not_an_object_is_400(
    api: httpx.Client, path: str, content: bytes, needle: str
) -> None:
    assert_error(post_raw(api, path, content), 400, "invalid_request", needle)


# ------------------------------------------------------------------------- wrong field types


WRONG_TYPES = [
    (
        "/admin/llm/providers",
        {"id": "x", "provider_type": "openai", "network": {"max_retries": "many"}},
        "network.max_retries",
    ),
    ("/admin/llm/providers", {"id": ["x"], "provider_type": "openai"}, "id"),
    ("/admin/llm/providers", {"id": "x", "provider_type": "openai", "disabled": {}}, "disabled"),
    ("/admin/llm/providers", {"id": "x", "provider_type": "nope"}, "provider_type"),
    (
        "/admin/llm/providers",
        {"id": "x", "provider_type": "openai", "network": {"extra_headers": {"A": 1}}},
        "network.extra_headers.A",
    ),
    (
        "/admin/llm/routes",
        {
            "id": "x",
            "protocol": "openai",
            "match_policy": {"methods": [1]},
            "target_policy": {"provider_id": "p"},
        },
        "match_policy.methods[0]",
    ),
    ("/admin/virtual_keys", {"id": "x", "allowed_route_ids": "r1"}, "allowed_route_ids"),
    ("/admin/mcp/services", {"id": "x", "name": "n", "transport": "carrier-pigeon"}, "transport"),
    (
        "/admin/acp/services",
        {"id": "x", "name": "n", "agent_type": "codex", "cwd": "/tmp", "max_instances": -1},
        "max_instances",
    ),
    ("/admin/agents", {"id": "x", "name": "n", "runtime": {"type": "ftp"}}, "runtime.type"),
    ("/admin/llm/models/managed", {"provider_id": "p"}, "upstream_model"),
]


@pytest.mark.usefixtures("unchanged")
@pytest.mark.parametrize(("path", "body", "where"), WRONG_TYPES)
def test_wrong_field_types_are_400_with_problem_paths(
    api: httpx.Client, path: str, body: dict[str, Any], where: str
) -> None:
    err = assert_error(api.post(path, json=body), 400, "config_invalid")
    assert where in problem_paths(err), err
    assert all(isinstance(p["message"], str) and p["message"] for p in err["problems"])
    assert where in err["error"]


@pytest.mark.usefixtures("unchanged")
@pytest.mark.parametrize(
    ("path", "body", "where", "meant"),
    [
        (
            "/admin/llm/providers",
            {"id": "x", "provider_typ": "openai"},
            "provider_typ",
            "provider_type",
        ),
        (
            "/admin/llm/providers",
            {"id": "x", "provider_type": "openai", "network": {"max_retry": 1}},
            "network.max_retry",
            "max_retries",
        ),
        (
            "/admin/virtual_keys",
            {"id": "x", "allowed_routes": []},
            "allowed_routes",
            "allowed_route_ids",
        ),
        (
            "/admin/mcp/routes",
            {"id": "x", "service_id": "s", "match_policy": {"path": "/x"}},
            "match_policy.path",
            "path_prefix",
        ),
    ],
)
def test_unknown_field_is_400_with_did_you_mean(
    api: httpx.Client, path: str, body: dict[str, Any], where: str, meant: str
) -> None:
    err = assert_error(api.post(path, json=body), 400, "config_invalid")
    problem = next(p for p in err["problems"] if p["path"] == where)
    assert "unknown field" in problem["message"]
    assert f"did you mean {meant}" in problem["message"]


@pytest.mark.usefixtures("unchanged")
def test_wrong_types_on_put_are_400(api: httpx.Client, seeded: dict[str, str]) -> None:
    pid = seeded["provider"]
    r = api.put(
        f"/admin/llm/providers/{pid}",
        json={"id": pid, "provider_type": "openai", "network": {"max_retries": -1}},
    )
    err = assert_error(r, 400, "config_invalid")
    assert problem_paths(err) == ["network.max_retries"]


# -------------------------------------------------------------------------------- body size


def chunks(mib: int) -> Iterator[bytes]:
    """A JSON body of a little over ``mib`` MiB, sent chunked (no Content-Length)."""
    yield b'{"id": "'
    for _ in range(mib):
        yield b"x" * (1024 * 1024)
    yield b'"}'


@pytest.mark.usefixtures("unchanged")
def test_body_over_16_mib_is_413_json(api: httpx.Client) -> None:
    body = b'{"id": "' + b"x" * MAX_BODY + b'"}'
    r = post_raw(api, "/admin/llm/providers", body)
    assert_error(r, 413, "payload_too_large")
    # the unread rest of the body spoils the connection: the server must say it closes it
    assert r.headers["connection"] == "close"


@pytest.mark.usefixtures("unchanged")
def test_chunked_body_over_16_mib_is_413_json(api: httpx.Client) -> None:
    r = api.post(
        "/admin/gateway/apply", content=chunks(17), headers={"Content-Type": "application/json"}
    )
    assert_error(r, 413, "payload_too_large")
    # on agwd's listener: test_admin_auth.py::test_an_unread_chunked_body_closes_the_connection
    assert r.headers["connection"] == "close"


@pytest.mark.usefixtures("unchanged")
def test_body_just_under_the_limit_is_read(api: httpx.Client) -> None:
    filler = "y" * (MAX_BODY - 200)
    r = api.post("/admin/llm/providers", json={"id": "x", "provider_type": "openai", "z": filler})
    err = assert_error(r, 400, "config_invalid")  # read and validated, not refused for size
    assert problem_paths(err) == ["z"]


# ------------------------------------------------------------------------ routing: 404 / 405


@pytest.mark.usefixtures("unchanged")
@pytest.mark.parametrize(
    "path",
    [
        "/admin/nope",
        "/admin/llm/providerz",
        "/admin/llm/providers/x/y",
        "/admin/llm/routes/x/restart",
        "/admin/",
        "/",
        "/v1/chat/completions",
    ],
)
def test_unknown_path_is_404_json(api: httpx.Client, path: str) -> None:
    for method in ("GET", "POST"):
        r = api.request(method, path, json={"id": "x"} if method == "POST" else None)
        body = assert_error(r, 404, "not_found")
        assert path in body["error"] or path == "/"
        # a body left unread: the server says it will close the connection
        assert r.headers.get("connection") == ("close" if method == "POST" else None)


@pytest.mark.usefixtures("unchanged")
@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("DELETE", "/admin/llm/providers"),
        ("PUT", "/admin/virtual_keys"),
        ("PATCH", "/admin/llm/providers/x"),
        ("POST", "/admin/agents/x"),
        ("GET", "/admin/gateway/apply"),
        ("POST", "/admin/gateway/export"),
        ("GET", "/admin/mcp/routes/x/enable"),
        ("POST", "/admin/llm/provider_types"),
        ("DELETE", "/admin/cliauth/authenticators/codex"),
    ],
)
def test_wrong_method_is_405_json(api: httpx.Client, method: str, path: str) -> None:
    body = assert_error(api.request(method, path), 405, "method_not_allowed")
    assert method in body["error"]


# ------------------------------------------------------------------------------ apply bodies


@pytest.mark.usefixtures("unchanged")
@pytest.mark.parametrize(
    ("body", "needle"),
    [
        ({"bundle": {"apiVersion": "gateway.agw/v1alpha1", "kind": "GatewayBundle"}, "x": 1}, "x"),
        (
            {
                "bundle": {"apiVersion": "gateway.agw/v1alpha1", "kind": "GatewayBundle"},
                "dry_run": "yes",
            },
            "dry_run",
        ),
        (
            {"bundle": {"apiVersion": "gateway.agw/v1alpha1", "kind": "GatewayBundle"}, "prune": 1},
            "prune",
        ),
        ({}, "bundle"),
        ({"bundle": []}, "bundle"),
        ({"bundle": {"apiVersion": "v2", "kind": "GatewayBundle"}}, "apiVersion"),
        ({"bundle": {"apiVersion": "gateway.agw/v1alpha1", "kind": "Bundle"}}, "kind"),
        (
            {
                "bundle": {
                    "apiVersion": "gateway.agw/v1alpha1",
                    "kind": "GatewayBundle",
                    "providerTypes": ["openai"],
                }
            },
            "providerTypes",
        ),
        (
            {
                "bundle": {
                    "apiVersion": "gateway.agw/v1alpha1",
                    "kind": "GatewayBundle",
                    "providers": [{"id": "x", "provider_type": "openai", "apikey": "k"}],
                }
            },
            "did you mean api_key",
        ),
    ],
)
def test_bad_apply_requests_are_400(api: httpx.Client, body: dict[str, Any], needle: str) -> None:
    assert_error(api.post("/admin/gateway/apply", json=body), 400, None, needle)


def test_errors_carry_cors_headers(inproc_factory: InprocLauncher) -> None:
    origin = "https://console.example"
    gateway = inproc_factory.start(admin_cors_origins=(origin,))
    json_type = {"Content-Type": "application/json"}
    with gateway.client() as api:
        for r in (
            api.get("/admin/nope", headers={"Origin": origin}),
            api.post("/admin/llm/providers", content=b"{", headers={"Origin": origin} | json_type),
            api.delete("/admin/llm/providers", headers={"Origin": origin}),
        ):
            assert r.status_code >= 400
            assert r.headers["access-control-allow-origin"] == origin


def test_unique_ids_are_accepted_after_errors(api: httpx.Client) -> None:
    """The server keeps serving writes after a run of bad requests."""
    pid = uid("after-errors")
    r = api.post("/admin/llm/providers", json={"id": pid, "provider_type": "openai"})
    assert r.status_code == 201, r.text
