"""MCP OAuth metadata and the registration shim (agw/auth/oauth_metadata.py) in the in-process
tier: where the documents are, what names the resource and its origin, the shim's facade when
its issuer answers, is down or names another issuer, and the registration endpoint's checks.
The flows themselves, with a real authorization server and the ``mcp`` client, are in
tests/mcp/test_oauth.py."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from agw.config.access import JwtProvider, JwtRegistration
from agw.config.families import JWT_PROVIDER, redact
from tests.support.inproc import InprocGateway, InprocLauncher
from tests.support.jwt import TokenMinter

PRM = "/.well-known/oauth-protected-resource"
REDIRECT = "http://127.0.0.1:1/callback"


class IssuerServer:
    """Serves ``/.well-known/openid-configuration`` for an issuer on loopback; ``mode``:
    ``ok``, ``down`` (503) or ``other`` (names another issuer). ``hits`` counts requests."""

    def __init__(self) -> None:
        self.mode = "ok"
        self.hits = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                outer.hits += 1
                status, body = 404, b"{}"
                if self.path == "/.well-known/openid-configuration" and outer.mode != "down":
                    issuer = outer.url if outer.mode == "ok" else "https://elsewhere.example"
                    status, body = 200, json.dumps(outer.metadata(issuer)).encode()
                elif outer.mode == "down":
                    status = 503
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    @staticmethod
    def metadata(issuer: str) -> dict[str, Any]:
        return {
            "issuer": issuer,
            "authorization_endpoint": issuer + "/oauth2/v2.0/authorize",
            "token_endpoint": issuer + "/oauth2/v2.0/token",
            "jwks_uri": issuer + "/keys",
            "response_types_supported": ["code"],
            "authorization_response_iss_parameter_supported": True,
        }

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="module")
def issuer() -> Iterator[IssuerServer]:
    server = IssuerServer()
    yield server
    server.close()


@pytest.fixture(scope="module")
def gw(
    module_inproc_factory: InprocLauncher,
    issuer: IssuerServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> InprocGateway:
    minter = TokenMinter()
    shim = {"client_id": "shared", "redirect_uris": [REDIRECT]}
    providers = [
        {"id": "corp", "issuer": "https://idp.example", "audiences": ["http://127.0.0.1:8080/mcp"],
         "jwks": minter.jwks(), "scopes_supported": ["mcp:tools"]},
        {"id": "corp-a", "issuer": "https://idp.example", "audiences": ["http://a.example/mcp"],
         "jwks": minter.jwks(), "authorization_servers": ["https://as.a.example"]},
        {"id": "public", "issuer": "https://idp.example", "jwks": minter.jwks(),
         "audiences": ["https://gw.example/behind-tls"]},
        {"id": "root", "issuer": "https://idp.example", "audiences": ["http://root.example"],
         "jwks": minter.jwks()},
        {"id": "off", "issuer": "https://idp.example", "audiences": ["x"], "jwks": minter.jwks(),
         "disabled": True},
        {"id": "closed", "issuer": issuer.url, "audiences": ["http://127.0.0.1:8080/closed"],
         "jwks": minter.jwks(), "registration": shim},
        {"id": "closed-secret", "issuer": issuer.url, "audiences": ["y"], "jwks": minter.jwks(),
         "registration": {"client_id": "conf", "client_secret": "s3cret"}},
        {"id": "down", "issuer": "http://127.0.0.1:1", "audiences": ["z"], "jwks": minter.jwks(),
         "registration": shim},
    ]  # fmt: skip
    routes = [
        ("mcp", "/mcp", "", ["corp"]),
        ("mcp-a", "/mcp", "a.example", ["corp-a"]),
        ("tls", "/behind-tls", "", ["public"]),
        ("off", "/off", "", ["off"]),
        ("closed", "/closed", "", ["closed"]),
        ("root", "/", "root.example", ["root"]),
    ]
    bundle = {
        "apiVersion": "gateway.agw/v1alpha1",
        "kind": "GatewayBundle",
        "jwtProviders": providers,
        "mcpServices": [{"id": "svc", "name": "svc", "transport": "streamable_http",
                         "url": "http://127.0.0.1:1/mcp"}],
        "mcpRoutes": [
            {"id": rid, "service_id": "svc", "match_policy": {"path_prefix": prefix, "host": host},
             "auth_policy": {"jwt_provider_ids": ids}}
            for rid, prefix, host, ids in routes
        ],
    }  # fmt: skip
    path = tmp_path_factory.mktemp("oauth-metadata") / "bundle.json"
    path.write_text(json.dumps(bundle))
    gateway = module_inproc_factory.start(
        static=path,
        allowed_hosts=("gw.example", "a.example"),
        allowed_origins=("https://app.example",),
    )
    return gateway


def test_metadata_of_a_route_and_its_challenge(gw: InprocGateway) -> None:
    with gw.data_client() as http:
        doc = http.get(PRM + "/mcp").json()
        assert doc == {
            "resource": "http://127.0.0.1:8080/mcp",
            "authorization_servers": ["https://idp.example"],
            "bearer_methods_supported": ["header"],
            "scopes_supported": ["mcp:tools"],
        }
        assert http.get(PRM + "/mcp/").json() == doc  # a trailing slash names the same
        r = http.post("/mcp", json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"})
        assert r.status_code == 401
        assert r.headers["www-authenticate"] == (
            'Bearer resource_metadata="http://127.0.0.1:8080' + PRM + '/mcp"'
        )
        assert http.get(PRM + "/off").status_code == 404  # its only provider is disabled
        assert http.get(PRM + "/nothing-here").status_code == 404


def test_a_route_at_the_root_has_the_bare_well_known_path(gw: InprocGateway) -> None:
    with gw.data_client() as http:
        doc = http.get(PRM, headers={"host": "root.example"}).json()
        assert doc["resource"] == "http://root.example"
        assert doc["authorization_servers"] == ["https://idp.example"]


def test_a_host_specific_route_has_its_own_metadata(gw: InprocGateway) -> None:
    with gw.data_client() as http:
        doc = http.get(PRM + "/mcp", headers={"host": "a.example"}).json()
        assert doc["resource"] == "http://a.example/mcp"
        assert doc["authorization_servers"] == ["https://as.a.example"]
        assert http.get(PRM + "/mcp").json()["resource"] == "http://127.0.0.1:8080/mcp"


def test_an_audience_on_this_host_gives_the_scheme_behind_a_tls_proxy(gw: InprocGateway) -> None:
    with gw.data_client() as http:
        headers = {"host": "gw.example"}
        doc = http.get(PRM + "/behind-tls", headers=headers).json()
        assert doc["resource"] == "https://gw.example/behind-tls"
        r = http.post(
            "/behind-tls", json={"jsonrpc": "2.0", "id": 1, "method": "x"}, headers=headers
        )
        assert r.status_code == 401
        assert (
            f'resource_metadata="https://gw.example{PRM}/behind-tls"'
            in r.headers["www-authenticate"]
        )


def test_the_shim_publishes_the_issuer_behind_a_facade(
    gw: InprocGateway, issuer: IssuerServer
) -> None:
    facade = "http://127.0.0.1:8080/_agw/oauth/closed"
    with gw.data_client() as http:
        assert http.get(PRM + "/closed").json()["authorization_servers"] == [facade]
        paths = [
            "/.well-known/oauth-authorization-server/_agw/oauth/closed",
            "/.well-known/openid-configuration/_agw/oauth/closed",
            "/_agw/oauth/closed/.well-known/openid-configuration",
        ]
        docs = [http.get(p) for p in paths]
        assert all(d.status_code == 200 for d in docs), [d.text for d in docs]
        meta = docs[0].json()
        assert all(d.json() == meta for d in docs)
        upstream = IssuerServer.metadata(issuer.url)
        del upstream["authorization_response_iss_parameter_supported"]  # names the issuer
        assert meta == upstream | {
            "issuer": facade,
            "registration_endpoint": facade + "/register",
            "code_challenge_methods_supported": ["S256"],  # MCP clients insist; Entra's lacks it
        }
        assert meta["authorization_endpoint"] == issuer.url + "/oauth2/v2.0/authorize"
        assert docs[0].headers["access-control-allow-origin"] == "*"
        # the issuer's metadata is cached: three documents, one fetch
        hits = issuer.hits
        http.get(paths[0])
        assert issuer.hits == hits


def test_the_shim_says_why_when_the_issuer_is_unreachable(gw: InprocGateway) -> None:
    with gw.data_client() as http:
        r = http.get("/.well-known/oauth-authorization-server/_agw/oauth/down")
        assert r.status_code == 502
        assert r.json()["error"] == "temporarily_unavailable"
        assert 'JWT provider "down"' in r.json()["error_description"]
        # providers without a shim, and unknown ones, have no facade
        for pid in ("corp", "nope"):
            r = http.get(f"/.well-known/oauth-authorization-server/_agw/oauth/{pid}")
            assert r.status_code == 404


def test_registration_answers_with_the_configured_client(gw: InprocGateway) -> None:
    register = "/_agw/oauth/closed/register"
    with gw.data_client() as http:
        asked = {"redirect_uris": [REDIRECT], "client_name": "Claude Code", "scope": "x"}
        r = http.post(register, json=asked)
        assert r.status_code == 201, r.text
        body = r.json()
        assert body["client_id"] == "shared" and body["token_endpoint_auth_method"] == "none"
        assert body["redirect_uris"] == [REDIRECT] and body["client_name"] == "Claude Code"
        assert "client_secret" not in body and r.headers["cache-control"] == "no-store"

        r = http.post("/_agw/oauth/closed-secret/register", json={"redirect_uris": [REDIRECT]})
        body = r.json()
        assert body["client_secret"] == "s3cret" and body["client_secret_expires_at"] == 0
        assert body["token_endpoint_auth_method"] == "client_secret_basic"

        bad = [
            ({"redirect_uris": ["http://evil.example/cb"]}, 400, "invalid_redirect_uri"),
            ({"redirect_uris": "http://x"}, 400, "invalid_redirect_uri"),
            ([1, 2], 400, "invalid_client_metadata"),
        ]
        for payload, status, error in bad:
            r = http.post(register, json=payload)
            assert (r.status_code, r.json()["error"]) == (status, error), payload
        r = http.post(register, content=b"{not json")
        assert r.json()["error"] == "invalid_client_metadata"
        r = http.post(register, content=b"x" * (65 << 10))
        assert r.status_code == 413
        assert http.get(register).status_code == 405


def test_registration_checks_the_origin_like_an_mcp_route(gw: InprocGateway) -> None:
    register = "/_agw/oauth/closed/register"
    body = {"redirect_uris": [REDIRECT]}
    with gw.data_client() as http:
        r = http.post(register, json=body, headers={"origin": "https://evil.example"})
        assert r.status_code == 403
        r = http.post(register, json=body, headers={"origin": "https://app.example"})
        assert r.status_code == 201
        assert r.headers["access-control-allow-origin"] == "https://app.example"
        pre = http.options(register, headers={"origin": "https://app.example"})
        assert pre.status_code == 204
        assert pre.headers["access-control-allow-methods"] == "POST, OPTIONS"
        r = http.post(register, json=body, headers={"host": "attacker.example"})
        assert r.status_code == 421


def test_registration_config_is_checked_and_its_secret_redacted() -> None:
    assert JwtRegistration(client_id="a").token_endpoint_auth_method == "none"
    with_secret = JwtRegistration(client_id="a", client_secret="s")
    assert with_secret.token_endpoint_auth_method == "client_secret_basic"
    bad: list[dict[str, Any]] = [
        {"client_id": " "},
        {"client_id": "a", "client_secret": "s", "token_endpoint_auth_method": "none"},
        {"client_id": "a", "token_endpoint_auth_method": "client_secret_post"},
        {"client_id": "a", "redirect_uris": ["no-scheme"]},
        {"client_id": "a", "redirect_uris": ["http://x/cb#frag"]},
    ]
    for fields in bad:
        with pytest.raises(ValueError):
            JwtRegistration.model_validate(fields)
    provider = JwtProvider(
        id="p", issuer="https://idp.example", audiences=["a"],
        registration=JwtRegistration(client_id="c", client_secret="s"),
    )  # fmt: skip
    dumped = redact(JWT_PROVIDER, provider.model_dump(mode="json"))
    assert dumped["registration"]["client_secret"] == "<redacted>"
    assert dumped["registration"]["client_id"] == "c"


def test_admin_api_never_shows_the_shim_secret(gw: InprocGateway) -> None:
    with gw.client() as admin:
        r = admin.get("/admin/jwt_providers/closed-secret")
        assert r.status_code == 200, r.text
        text = json.dumps(r.json())
        assert "s3cret" not in text and "<redacted>" in text
