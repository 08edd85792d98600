"""Admin basic auth and CORS, against the admin app in-process with a basic auth hash and one
listed CORS origin, and on agwd's listener where the connection matters (the attacks on them:
test_admin_security.py)."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.support.admin import created, everything, make_provider, uid
from tests.support.agwd import Agwd
from tests.support.inproc import InprocGateway, InprocLauncher

REALM = 'Basic realm="agent-gateway-admin"'
UNAUTHORIZED = {"error": "unauthorized", "code": "unauthorized"}
CORS_METHODS = "GET, POST, PUT, DELETE, OPTIONS"
CORS_HEADERS = "Authorization, Content-Type, X-AGW-Reveal-Secrets"
UI_ORIGIN = "https://ui.example:8443"


@pytest.fixture(scope="module")
def module_inproc(module_inproc_factory: InprocLauncher) -> InprocGateway:
    return module_inproc_factory.start(admin_cors_origins=(UI_ORIGIN,))


@pytest.fixture(scope="module")
def anon(module_inproc: InprocGateway) -> Iterator[httpx.Client]:
    with module_inproc.client(auth=False) as client:
        yield client


def make_secrets(client: httpx.Client) -> dict[str, str]:
    pid = make_provider(client, pid=uid("authprov"), api_key="sk-auth-test-000111")
    vk = created(client, "/admin/virtual_keys", {"id": uid("authvk")})
    return {"provider": pid, "vk": vk["id"], "key": vk["key"]}


@pytest.fixture(scope="module")
def secret_ids(api: httpx.Client) -> dict[str, str]:
    return make_secrets(api)


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def assert_401(r: httpx.Response, secret_ids: dict[str, str]) -> None:
    assert r.status_code == 401, r.text
    assert r.headers["www-authenticate"] == REALM
    assert r.json() == UNAUTHORIZED
    for value in secret_ids.values():
        assert value not in r.text


PROTECTED = [
    ("GET", "/admin/llm/providers"),
    ("GET", "/admin/virtual_keys"),
    ("POST", "/admin/llm/providers"),
    ("GET", "/admin/gateway/export"),
    ("POST", "/admin/gateway/apply"),
    ("GET", "/admin/llm/provider_types"),
    ("GET", "/admin/cliauth/authenticators"),
    ("DELETE", "/admin/llm/providers/whatever"),
    ("GET", "/admin/no-such-endpoint"),
]


@pytest.mark.parametrize(("method", "path"), PROTECTED)
def test_no_credentials_is_401_with_realm(
    anon: httpx.Client, secret_ids: dict[str, str], method: str, path: str
) -> None:
    assert_401(anon.request(method, path, json={"id": "x"}), secret_ids)


@pytest.mark.parametrize(
    "authorization",
    [
        pytest.param(lambda h: basic("admin", "wrong-password"), id="wrong-password"),
        pytest.param(lambda h: basic("root", "test-password"), id="wrong-user"),
        pytest.param(lambda h: basic("admin", h.partition(":")[2]), id="hash-as-password"),
        pytest.param(lambda h: basic("admin", ""), id="empty-password"),
        pytest.param(lambda h: "Basic " + base64.b64encode(b"admin").decode(), id="no-colon"),
        pytest.param(lambda h: "Basic !!!not-base64!!!", id="not-base64"),
        pytest.param(lambda h: "Bearer test-password", id="bearer"),
        pytest.param(lambda h: "basic", id="bare-scheme"),
    ],
)
def test_wrong_credentials_are_401(
    inproc: InprocGateway, admin_hash: str, authorization: Any
) -> None:
    # its own gateway: failed logins count per client, and five of them would lock loopback out
    header = authorization(admin_hash)
    with inproc.client() as api:
        secret_ids = make_secrets(api)
    pid, vk_id = secret_ids["provider"], secret_ids["vk"]
    with inproc.client(auth=False) as anon:
        for path in ("/admin/llm/providers", f"/admin/llm/providers/{pid}"):
            assert_401(anon.get(path, headers={"Authorization": header}), secret_ids)
        assert_401(
            anon.get(f"/admin/virtual_keys/{vk_id}", headers={"Authorization": header}),
            secret_ids,
        )


def test_right_credentials_work_and_wrong_ones_still_fail_after(
    module_inproc: InprocGateway, anon: httpx.Client, secret_ids: dict[str, str]
) -> None:
    assert module_inproc.auth is not None
    user, _, password = module_inproc.auth.partition(":")
    ok = anon.get("/admin/virtual_keys", headers={"Authorization": basic(user, password)})
    assert ok.status_code == 200
    assert secret_ids["key"] in ok.text
    # a good answer is cached; a bad password must not ride on that cache
    for _ in range(2):
        r = anon.get("/admin/virtual_keys", headers={"Authorization": basic(user, password + "x")})
        assert_401(r, secret_ids)


def test_health_is_public(anon: httpx.Client) -> None:
    r = anon.get("/admin/health")
    assert r.status_code == 200 and r.json() == {"status": "ok"}
    r = anon.get("/admin/health", headers={"Authorization": basic("admin", "wrong")})
    assert r.status_code == 200 and r.json() == {"status": "ok"}


def test_only_health_is_public(anon: httpx.Client, secret_ids: dict[str, str]) -> None:
    assert_401(anon.post("/admin/health"), secret_ids)
    assert_401(anon.get("/admin/health/x"), secret_ids)


@pytest.mark.parametrize(
    "path",
    [
        "/admin/llm/providers",
        "/admin/llm/providers/some-id",
        "/admin/gateway/apply",
        "/admin/no-such-endpoint",
        "/anything/at/all",
    ],
)
def test_options_is_204_without_auth(anon: httpx.Client, path: str) -> None:
    r = anon.options(path)
    assert r.status_code == 204, r.text
    assert r.content == b""
    assert "www-authenticate" not in r.headers
    assert "access-control-allow-origin" not in r.headers  # no Origin, no CORS headers

    r = anon.options(
        path,
        headers={
            "Origin": UI_ORIGIN,
            "Access-Control-Request-Method": "PUT",
            "Access-Control-Request-Headers": "authorization,content-type",
        },
    )
    assert r.status_code == 204
    assert r.headers["access-control-allow-origin"] == UI_ORIGIN
    assert r.headers["access-control-allow-methods"] == CORS_METHODS
    assert r.headers["access-control-allow-headers"] == CORS_HEADERS
    assert r.headers["access-control-max-age"] == "86400"
    assert r.headers["vary"] == "Origin"


def test_listed_origin_gets_cors_headers_on_every_answer(
    api: httpx.Client, anon: httpx.Client, secret_ids: dict[str, str]
) -> None:
    answers = [
        api.get("/admin/llm/providers", headers={"Origin": UI_ORIGIN}),
        api.post("/admin/virtual_keys", json={"id": uid("cors")}, headers={"Origin": UI_ORIGIN}),
        anon.get("/admin/health", headers={"Origin": UI_ORIGIN}),
        anon.get("/admin/llm/providers", headers={"Origin": UI_ORIGIN}),
    ]
    assert [r.status_code for r in answers] == [200, 201, 200, 401]
    for r in answers:
        assert r.headers["access-control-allow-origin"] == UI_ORIGIN
        assert r.headers["access-control-allow-methods"] == CORS_METHODS
        assert r.headers["access-control-allow-headers"] == CORS_HEADERS
        assert r.headers["access-control-max-age"] == "86400"
    assert_401(answers[3], secret_ids)
    plain = api.get("/admin/llm/providers")
    assert "access-control-allow-origin" not in plain.headers


def test_insecure_admin_serves_everyone(inproc_factory: InprocLauncher) -> None:
    gateway = inproc_factory.start(auth=False)  # --admin-insecure
    with gateway.client(auth=False) as c:
        r = c.post("/admin/llm/providers", json={"id": "open", "provider_type": "openai"})
        assert r.status_code == 201
        assert [p["id"] for p in c.get("/admin/llm/providers").json()["items"]] == ["open"]


@pytest.fixture(scope="module")
def agwd_secret_ids(module_agwd: Agwd) -> dict[str, str]:
    with module_agwd.client() as admin:
        return make_secrets(admin)


@pytest.mark.parametrize(
    ("method", "path"),
    [("POST", "/admin/llm/providers"), ("DELETE", "/admin/llm/providers/x"), ("OPTIONS", "/x")],
)
def test_early_answer_to_a_request_with_a_body_closes_the_connection(
    module_agwd: Agwd, agwd_secret_ids: dict[str, str], method: str, path: str
) -> None:
    """On agwd's listener: the gate answers before the body is read; the server then drops
    the connection, so it must say Connection: close, or a keep-alive client sends its next
    request into it."""
    with module_agwd.client(auth=False) as anon:
        for _ in range(20):
            r = anon.request(method, path, json={"id": "x" * 1000})
            assert r.status_code in (204, 401)
            assert r.headers["connection"] == "close"
            assert anon.get("/admin/health").status_code == 200
        r = anon.get("/admin/llm/providers")
        assert_401(r, agwd_secret_ids)
        assert "connection" not in r.headers  # no body: the connection stays usable


def test_an_unread_chunked_body_closes_the_connection(
    module_agwd: Agwd, agwd_secret_ids: dict[str, str]
) -> None:
    """On agwd's listener: a chunked body over the limit gets 413 before it is read; the
    connection it spoils is closed, and the client's next request is served on a new one."""

    def chunks() -> Iterator[bytes]:
        yield b'{"id": "'
        for _ in range(17):
            yield b"x" * (1024 * 1024)
        yield b'"}'

    with module_agwd.client() as admin:
        before = everything(admin)
        r = admin.post(
            "/admin/gateway/apply", content=chunks(), headers={"Content-Type": "application/json"}
        )
        assert r.status_code == 413 and r.json()["code"] == "payload_too_large", r.text
        assert r.headers["connection"] == "close"
        assert admin.get("/admin/health").status_code == 200  # same client, next request fine
        assert everything(admin) == before
