"""agw as the OAuth 2.1 resource server of its MCP routes, end to end against a real
authorization server: ``oidc-provider`` from npm (tests/fakes/oidc/server.mjs) with resource
indicators and JWT access tokens, and the official ``mcp`` client's OAuth support
(``OAuthClientProvider``): protected-resource metadata discovery (RFC 9728), dynamic
registration (RFC 7591) or a client ID metadata document, PKCE, the user's sign-in and consent
(driven by tests/support/oidc.py), then a tool call through a real agwd, in both eras. Also:
scope step-up on 403, the issuer rotating its signing key under a running agwd, a token for
another resource, and the registration shim in front of an issuer whose registration is closed.
"""

from __future__ import annotations

import contextlib
import http.server
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import httpx2
import jwt as pyjwt
import pytest
from mcp import Client
from mcp.client.auth import OAuthClientProvider
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.auth import OAuthClientMetadata, OAuthToken

from tests.support.agwd import Agwd, AgwdLauncher, free_port, usage_rows
from tests.support.mcp import sync
from tests.support.mcp_server import McpServerHandle, run_mcp_server
from tests.support.oidc import Browser, MemoryStorage, OidcServer, run_oidc_provider

REDIRECT = "http://127.0.0.1:1/callback"  # never served: the test's "browser" stops there
SHIM_CLIENT = "agw-mcp-clients"  # pre-registered at the closed issuer by its "operator"
TESTER = ("tester", "tester-secret")  # a confidential client for client-credentials tokens
OTHER_RESOURCE = "https://other.example/mcp"
ERAS = ["auto", "legacy"]  # 2026-07-28 (server/discover) and the initialize handshake


class DocumentServer:
    """Serves one client ID metadata document on loopback (the authorization server fetches
    it; the test seam maps its https:// URL to plain HTTP here)."""

    def __init__(self) -> None:
        self.document: dict[str, Any] = {}
        self.fetches = 0
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                outer.fetches += 1
                body = json.dumps(outer.document).encode()
                self.send_response(200 if self.path == "/client.json" else 404)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.host = f"127.0.0.1:{self.httpd.server_address[1]}"
        self.url = f"https://{self.host}/client.json"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@dataclass
class World:
    agwd: Agwd
    idp: OidcServer
    closed: OidcServer
    docs: DocumentServer
    alpha: McpServerHandle

    @property
    def base(self) -> str:
        return self.agwd.data_url

    def url(self, prefix: str) -> str:
        return self.base + prefix


@pytest.fixture(scope="module")
def world(
    module_agwd_factory: AgwdLauncher, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("mcp-oauth")
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with contextlib.ExitStack() as stack:
        docs = DocumentServer()
        stack.callback(docs.close)
        idp = stack.enter_context(
            run_oidc_provider(
                tmp,
                resources={
                    base + "/mcp": "mcp:tools mcp:admin",
                    base + "/scoped": "mcp:tools mcp:admin",
                    OTHER_RESOURCE: "mcp:tools",
                },
                clients=[{"client_id": TESTER[0], "client_secret": TESTER[1],
                          "grant_types": ["client_credentials"], "redirect_uris": [],
                          "response_types": []}],
                registration=True,
                cimd=True,
                cimd_plain_http_hosts=[docs.host],
            )
        )  # fmt: skip
        closed = stack.enter_context(
            run_oidc_provider(
                tmp,
                name="closed",
                resources={base + "/closed": "mcp:tools"},
                clients=[{"client_id": SHIM_CLIENT, "token_endpoint_auth_method": "none",
                          "application_type": "native", "redirect_uris": [REDIRECT],
                          "grant_types": ["authorization_code", "refresh_token"],
                          "response_types": ["code"]}],
                registration=False,
                send_iss=False,  # like Entra ID and Cognito (see the shim's limits)
            )
        )  # fmt: skip
        alpha = stack.enter_context(run_mcp_server(tmp, "streamable-http", "alpha"))
        claims = {"user": "email", "groups": "groups"}
        bundle = {
            "apiVersion": "gateway.agw/v1alpha1",
            "kind": "GatewayBundle",
            # one provider per route, each with the route's URL as its audience: a token is
            # bound to the route it was issued for (RFC 8707)
            "jwtProviders": [
                {"id": "idp", "issuer": idp.issuer, "audiences": [base + "/mcp"],
                 "scopes_supported": ["mcp:tools"], "claims": claims},
                {"id": "idp-scoped", "issuer": idp.issuer, "audiences": [base + "/scoped"],
                 "scopes_supported": ["mcp:tools"], "claims": claims},
                {"id": "closed", "issuer": closed.issuer, "audiences": [base + "/closed"],
                 "scopes_supported": ["mcp:tools"], "claims": claims,
                 "registration": {"client_id": SHIM_CLIENT, "redirect_uris": [REDIRECT]}},
            ],
            "mcpServices": [alpha.service_config()],
            "mcpRoutes": [
                {"id": "mcp", "service_id": "alpha", "match_policy": {"path_prefix": "/mcp"},
                 "auth_policy": {"jwt_provider_ids": ["idp"]}},
                {"id": "scoped", "service_id": "alpha",
                 "match_policy": {"path_prefix": "/scoped"},
                 "auth_policy": {"jwt_provider_ids": ["idp-scoped"],
                                 "required_scopes": ["mcp:admin"]}},
                {"id": "closed", "service_id": "alpha",
                 "match_policy": {"path_prefix": "/closed"},
                 "auth_policy": {"jwt_provider_ids": ["closed"]}},
                {"id": "open", "service_id": "alpha", "match_policy": {"path_prefix": "/open"}},
            ],
        }  # fmt: skip
        path = tmp / "bundle.json"
        path.write_text(json.dumps(bundle, indent=1))
        agwd = module_agwd_factory.start("--addr", f"127.0.0.1:{port}", static=path)
        assert agwd.data_url == base
        yield World(agwd, idp, closed, docs, alpha)


def client_metadata() -> OAuthClientMetadata:
    return OAuthClientMetadata(
        client_name="agw oauth test",
        redirect_uris=[REDIRECT],
        grant_types=["authorization_code", "refresh_token"],
        response_types=["code"],
        token_endpoint_auth_method="none",
    )


async def call_echo(url: str, oauth: OAuthClientProvider, mode: str, message: str = "hi") -> str:
    """Connect with ``oauth`` as the HTTP client's auth and call ``echo`` (the route has one
    service: its tools have no prefix)."""
    async with (
        httpx2.AsyncClient(auth=oauth, timeout=30) as http,
        Client(streamable_http_client(url, http_client=http), mode=mode) as client,
    ):
        result = await client.call_tool("echo", {"message": message})
        assert not result.is_error, result
        return str(result.content[0].text)  # type: ignore[union-attr]


def claims_of(token: str) -> dict[str, Any]:
    out: dict[str, Any] = pyjwt.decode(token, options={"verify_signature": False})
    return out


def kid_of(token: str) -> str:
    return str(pyjwt.get_unverified_header(token)["kid"])


def initialize(http: httpx.Client, url: str, token: str | None = None) -> httpx.Response:
    headers = {"accept": "application/json, text/event-stream"}
    if token is not None:
        headers["authorization"] = f"Bearer {token}"
    body = {"jsonrpc": "2.0", "id": 1, "method": "initialize",
            "params": {"protocolVersion": "2025-11-25", "capabilities": {},
                       "clientInfo": {"name": "raw", "version": "1"}}}  # fmt: skip
    return http.post(url, json=body, headers=headers)


def challenge(response: httpx.Response) -> dict[str, str]:
    """The parameters of a ``WWW-Authenticate: Bearer k="v", ...`` header."""
    value = response.headers["www-authenticate"]
    scheme, _, rest = value.partition(" ")
    assert scheme == "Bearer", value
    out: dict[str, str] = {}
    for part in rest.split('", '):
        name, _, quoted = part.partition("=")
        out[name.strip()] = quoted.strip().strip('"')
    return out


# ----------------------------------------------------------------------------- metadata


def test_a_refusal_names_the_metadata_and_the_metadata_names_the_issuer(world: World) -> None:
    with httpx.Client(timeout=10) as http:
        r = initialize(http, world.url("/mcp"))
        assert r.status_code == 401, r.text
        prm_url = world.url("/.well-known/oauth-protected-resource/mcp")
        assert challenge(r) == {"resource_metadata": prm_url}  # no token: no error code

        r = http.get(prm_url)
        assert r.status_code == 200, r.text
        assert r.headers["access-control-allow-origin"] == "*"
        assert r.json() == {
            "resource": world.url("/mcp"),
            "authorization_servers": [world.idp.issuer],
            "bearer_methods_supported": ["header"],
            "scopes_supported": ["mcp:tools"],
        }
        # the route's required scopes are advertised too
        scoped = http.get(world.url("/.well-known/oauth-protected-resource/scoped")).json()
        assert scoped["scopes_supported"] == ["mcp:tools", "mcp:admin"]
        # a route without JWT auth has none; a POST is not a metadata request
        assert http.get(world.url("/.well-known/oauth-protected-resource/open")).status_code == 404
        assert http.post(prm_url).status_code == 405
        preflight = http.options(prm_url, headers={"origin": "https://inspector.example"})
        assert preflight.status_code == 204
        assert preflight.headers["access-control-allow-origin"] == "*"
        # a Host the listener does not trust gets no document naming it
        r = http.get(prm_url, headers={"host": "attacker.example"})
        assert r.status_code == 421

        r = initialize(http, world.url("/mcp"), "eyJhbGciOiJSUzI1NiJ9.e30.c2ln")
        assert r.status_code == 401
        params = challenge(r)
        assert params["error"] == "invalid_token" and params["resource_metadata"] == prm_url


# ----------------------------------------------------------------------------- sign-in


@pytest.mark.parametrize("mode", ERAS)
def test_mcp_client_registers_signs_in_and_calls_a_tool(world: World, mode: str) -> None:
    storage, browser = MemoryStorage(), Browser(world.idp, "alice")
    oauth = OAuthClientProvider(
        world.url("/mcp"),
        client_metadata(),
        storage,
        redirect_handler=browser.redirect,
        callback_handler=browser.callback,
    )
    assert sync_call(call_echo(world.url("/mcp"), oauth, mode, f"hello {mode}")) == f"hello {mode}"

    # dynamic registration at the issuer, one sign-in, PKCE S256, the resource indicator
    assert storage.client_info is not None and storage.client_info.client_id
    assert not storage.client_info.client_id.startswith("https://")
    assert len(browser.urls) == 1
    query = parse_qs(urlsplit(browser.urls[0]).query)
    assert query["code_challenge_method"] == ["S256"] and query["code_challenge"]
    assert query["resource"] == [world.url("/mcp")]
    # the metadata's scope, and offline_access for a refresh token (SEP-2207)
    assert query["scope"] == ["mcp:tools offline_access"]
    assert storage.tokens is not None and storage.tokens.refresh_token
    claims = claims_of(storage.tokens.access_token)
    assert claims["aud"] == world.url("/mcp") and claims["iss"] == world.idp.issuer
    assert claims["sub"] == "alice" and claims["scope"] == "mcp:tools"  # the resource's share
    # the gateway knows who called
    rows = usage_rows(
        world.agwd.db_path, "mcp_usage_events", "route_id = 'mcp' AND tool_name = ?",
        1, ("echo",),
    )  # fmt: skip
    assert {r["user_id"] for r in rows} == {"alice@example.test"}


def test_mcp_client_uses_a_client_id_metadata_document(world: World) -> None:
    world.docs.document = {
        "client_id": world.docs.url,
        "client_name": "agw oauth test (CIMD)",
        "redirect_uris": [REDIRECT],
        "grant_types": ["authorization_code", "refresh_token"],
        "response_types": ["code"],
        "token_endpoint_auth_method": "none",
        "application_type": "native",
    }
    fetched = world.docs.fetches
    storage, browser = MemoryStorage(), Browser(world.idp, "bob")
    oauth = OAuthClientProvider(
        world.url("/mcp"),
        client_metadata(),
        storage,
        redirect_handler=browser.redirect,
        callback_handler=browser.callback,
        client_metadata_url=world.docs.url,
    )
    assert sync_call(call_echo(world.url("/mcp"), oauth, "auto")) == "hi"
    assert storage.client_info is not None and storage.client_info.client_id == world.docs.url
    assert world.docs.fetches > fetched  # the issuer read the document
    assert parse_qs(urlsplit(browser.urls[0]).query)["client_id"] == [world.docs.url]
    assert storage.tokens is not None and claims_of(storage.tokens.access_token)["sub"] == "bob"


def test_a_missing_scope_is_403_and_the_client_steps_up(world: World) -> None:
    url = world.url("/scoped")
    narrow = world.idp.client_credentials(*TESTER, resource=url, scope="mcp:tools")
    with httpx.Client(timeout=10) as http:
        r = initialize(http, url, narrow)
        assert r.status_code == 403, r.text
        params = challenge(r)
        assert params["error"] == "insufficient_scope" and params["scope"] == "mcp:admin"
        prm_url = world.url("/.well-known/oauth-protected-resource/scoped")
        assert params["resource_metadata"] == prm_url

    # the client holds the narrow token; the 403 sends it through a new sign-in asking for
    # the union of what it had and what the challenge names (SEP-2350)
    storage, browser = MemoryStorage(), Browser(world.idp, "carol")
    storage.tokens = OAuthToken(access_token=narrow, token_type="Bearer", scope="mcp:tools")
    oauth = OAuthClientProvider(
        url, client_metadata(), storage,
        redirect_handler=browser.redirect, callback_handler=browser.callback,
    )  # fmt: skip
    assert sync_call(call_echo(url, oauth, "auto")) == "hi"
    assert len(browser.urls) == 1
    asked = set(parse_qs(urlsplit(browser.urls[0]).query)["scope"][0].split())
    assert asked >= {"mcp:tools", "mcp:admin"}
    assert storage.tokens is not None
    assert set(claims_of(storage.tokens.access_token)["scope"].split()) >= {"mcp:admin"}


# ----------------------------------------------------------------------------- tokens


def test_a_token_for_another_resource_is_refused(world: World) -> None:
    elsewhere = world.idp.client_credentials(*TESTER, resource=OTHER_RESOURCE, scope="mcp:tools")
    scoped = world.idp.client_credentials(*TESTER, resource=world.url("/scoped"), scope="mcp:tools")
    with httpx.Client(timeout=10) as http:
        for token in (elsewhere, scoped):  # another server's; another route's of this gateway
            r = initialize(http, world.url("/mcp"), token)
            assert r.status_code == 401, r.text
            params = challenge(r)
            assert params["error"] == "invalid_token"
            assert "audience" in params["error_description"]
        mine = world.idp.client_credentials(*TESTER, resource=world.url("/mcp"), scope="mcp:tools")
        assert initialize(http, world.url("/mcp"), mine).status_code == 200


def test_the_issuer_rotates_its_key_under_a_running_gateway(world: World) -> None:
    url = world.url("/mcp")
    old = world.idp.client_credentials(*TESTER, resource=url, scope="mcp:tools")
    pid = world.agwd.proc.pid
    with httpx.Client(timeout=10) as http:
        assert initialize(http, url, old).status_code == 200
        kid = world.idp.rotate()
        assert kid_of(old) != kid
        # a user signs in after the rotation: the token is signed with a key agwd has never
        # seen; it fetches the issuer's keys again on the unknown kid
        storage, browser = MemoryStorage(), Browser(world.idp, "dave")
        oauth = OAuthClientProvider(
            url, client_metadata(), storage,
            redirect_handler=browser.redirect, callback_handler=browser.callback,
        )  # fmt: skip
        assert sync_call(call_echo(url, oauth, "legacy", "rotated")) == "rotated"
        assert storage.tokens is not None and kid_of(storage.tokens.access_token) == kid
        # the old key is still published: tokens signed with it keep working
        assert initialize(http, url, old).status_code == 200
    assert world.agwd.proc.pid == pid and world.agwd.proc.poll() is None


# ----------------------------------------------------------------------------- the shim


def test_registration_shim_in_front_of_an_issuer_with_closed_registration(world: World) -> None:
    facade = world.url("/_agw/oauth/closed")
    assert "registration_endpoint" not in world.closed.metadata()  # registration is closed
    with httpx.Client(timeout=10) as http:
        prm = http.get(world.url("/.well-known/oauth-protected-resource/closed")).json()
        assert prm["authorization_servers"] == [facade]
        r = http.get(world.url("/.well-known/oauth-authorization-server/_agw/oauth/closed"))
        assert r.status_code == 200, r.text
        meta = r.json()
        assert meta["issuer"] == facade
        assert meta["registration_endpoint"] == facade + "/register"
        assert meta["authorization_endpoint"] == world.closed.issuer + "/auth"
        assert meta["token_endpoint"] == world.closed.issuer + "/token"
        assert meta["code_challenge_methods_supported"] == ["S256"]
        assert "authorization_response_iss_parameter_supported" not in meta
        # a redirect URI the operator did not register with the client is refused here, not
        # after the user signed in
        r = http.post(facade + "/register", json={"redirect_uris": ["http://evil.example/cb"]})
        assert r.status_code == 400 and r.json()["error"] == "invalid_redirect_uri"

    storage, browser = MemoryStorage(), Browser(world.closed, "erin")
    oauth = OAuthClientProvider(
        world.url("/closed"), client_metadata(), storage,
        redirect_handler=browser.redirect, callback_handler=browser.callback,
    )  # fmt: skip
    assert sync_call(call_echo(world.url("/closed"), oauth, "auto", "shim")) == "shim"
    assert storage.client_info is not None and storage.client_info.client_id == SHIM_CLIENT
    assert storage.tokens is not None
    claims = claims_of(storage.tokens.access_token)
    assert claims["iss"] == world.closed.issuer and claims["aud"] == world.url("/closed")
    assert claims["client_id"] == SHIM_CLIENT and claims["sub"] == "erin"


def test_shim_limit_an_issuer_that_sends_rfc9207_iss(world: World) -> None:
    """The facade is the issuer the client discovered; an issuer that names itself in its
    authorization responses (RFC 9207) is a different one, and a strict client stops there."""
    world.closed.send_iss(True)
    try:
        storage, browser = MemoryStorage(), Browser(world.closed, "frank")
        oauth = OAuthClientProvider(
            world.url("/closed"), client_metadata(), storage,
            redirect_handler=browser.redirect, callback_handler=browser.callback,
        )  # fmt: skip
        with pytest.raises(BaseException) as caught:
            sync_call(call_echo(world.url("/closed"), oauth, "auto"))
        assert "iss mismatch" in describe(caught.value), describe(caught.value)
    finally:
        world.closed.send_iss(False)


def describe(exc: BaseException) -> str:
    """Every message in an exception and the groups and causes around it."""
    parts = [f"{type(exc).__name__}: {exc}"]
    if isinstance(exc, BaseExceptionGroup):
        parts += [describe(e) for e in exc.exceptions]
    if exc.__cause__ is not None:
        parts.append(describe(exc.__cause__))
    return " | ".join(parts)


def sync_call(coro: Any) -> Any:
    out: list[Any] = []

    async def case() -> None:
        out.append(await coro)

    sync(case)()
    return out[0]
