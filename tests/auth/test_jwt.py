"""JWT callers through a real agwd: the openai and anthropic SDKs sending a JWT, every bad token
the issue names refused with a clear error in the caller's dialect (and no token in the log),
JWKS fetched from a real server: down, slow, garbage, rotated."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Iterator
from typing import Any

import anthropic
import httpx
import openai
import pytest

from tests.fakes.jwks_server import JwksServer
from tests.fakes.run import FakeUpstream, start_fake_upstream
from tests.support.agwd import Agwd, AgwdLauncher
from tests.support.jwt import AUDIENCE, TokenMinter

UPSTREAM_KEY = "sk-upstream-jwt-0001"


@pytest.fixture(scope="module")
def fake(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeUpstream]:
    with start_fake_upstream(tmp_path_factory.mktemp("fake"), "--require-key", UPSTREAM_KEY) as f:
        yield f


@pytest.fixture(scope="module")
def minter() -> TokenMinter:
    return TokenMinter("RS256")


@pytest.fixture(scope="module")
def remote_minter() -> TokenMinter:
    return TokenMinter("ES256", issuer="https://remote.idp.test")


@pytest.fixture(scope="module")
def jwks(remote_minter: TokenMinter) -> Iterator[JwksServer]:
    with JwksServer(remote_minter.jwks).running() as server:
        yield server


def _route(rid: str, protocol: str, provider: str, **auth: Any) -> dict[str, Any]:
    return {
        "id": rid,
        "protocol": protocol,
        "match_policy": {"path_prefix": f"/{rid}"},
        "auth_policy": auth,
        "target_policy": {"provider_id": provider},
    }


@pytest.fixture(scope="module")
def gw(
    module_agwd_factory: AgwdLauncher,
    fake: FakeUpstream,
    minter: TokenMinter,
    remote_minter: TokenMinter,
    jwks: JwksServer,
) -> Agwd:
    agwd = module_agwd_factory.start()
    bundle = {
        "apiVersion": "gateway.agw/v1alpha1",
        "kind": "GatewayBundle",
        "providers": [
            {
                "id": "oa",
                "provider_type": "openai",
                "base_url": f"{fake.url}/v1",
                "api_key": UPSTREAM_KEY,
            },
            {
                "id": "an",
                "provider_type": "anthropic",
                "base_url": fake.url,
                "api_key": UPSTREAM_KEY,
            },
        ],
        "jwtProviders": [
            minter.provider("corp", org_header="x-org-id"),
            {
                "id": "remote",
                "issuer": remote_minter.issuer,
                "audiences": [AUDIENCE],
                "jwks_uri": jwks.jwks_uri,
                "algorithms": ["ES256"],
            },
        ],
        "llmRoutes": [
            _route("oa", "openai", "oa", jwt_provider_ids=["corp", "remote"]),
            _route("an", "anthropic", "an", jwt_provider_ids=["corp"]),
            _route(
                "mixed",
                "openai",
                "oa",
                jwt_provider_ids=["corp"],
                allow_virtual_key=True,
            ),
            _route("both", "openai", "oa", jwt_provider_ids=["corp"], require_virtual_key=True),
            _route("scoped", "openai", "oa", jwt_provider_ids=["corp"], required_scopes=["llm"]),
        ],
        "virtualKeys": [{"id": "team"}],
    }
    with agwd.client() as c:
        r = c.post("/admin/gateway/apply", json={"bundle": bundle})
        assert r.status_code == 200, r.text
        agwd.env["VK"] = c.get("/admin/virtual_keys/team").json()["key"]
    return agwd


def _ask(client: openai.OpenAI) -> str:
    with client:
        out = client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}]
        )
    return out.choices[0].message.content or ""


def _chat(gw: Agwd, route: str, key: str) -> str:
    return _ask(openai.OpenAI(base_url=f"{gw.data_url}/{route}/v1", api_key=key, max_retries=0))


def test_openai_sdk_with_a_jwt(gw: Agwd, minter: TokenMinter, fake: FakeUpstream) -> None:
    token = minter.token("alice", email="alice@example.com", org_id="acme", groups=["eng"])
    assert _chat(gw, "oa", token)
    # the JWT is the caller's: the upstream sees the provider's key, never the token
    last = fake.requests()[-1]
    assert token not in json.dumps(last)


def test_anthropic_sdk_with_a_jwt(gw: Agwd, minter: TokenMinter) -> None:
    token = minter.token("bob", email="bob@example.com")
    url = f"{gw.data_url}/an"
    for client in (
        anthropic.Anthropic(base_url=url, auth_token=token, max_retries=0),
        anthropic.Anthropic(base_url=url, api_key=token, max_retries=0),
    ):
        with client:
            msg = client.messages.create(
                model="claude-sonnet-4-5",
                max_tokens=16,
                messages=[{"role": "user", "content": "hi"}],
            )
        assert msg.content


def test_no_token_is_a_401_with_a_bearer_challenge(gw: Agwd) -> None:
    r = httpx.post(f"{gw.data_url}/oa/v1/chat/completions", json={"model": "m", "messages": []})
    assert r.status_code == 401
    assert r.headers["www-authenticate"].startswith("Bearer")
    assert r.json()["error"]["message"] == "a bearer JWT is required"


def _b64(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def _bad_tokens(minter: TokenMinter) -> dict[str, tuple[str, str]]:
    """name -> (token, the message the caller gets)"""
    now = int(time.time())
    claims = {"sub": "eve", "iss": minter.issuer, "aud": AUDIENCE, "exp": now + 600}
    none_token = f"{_b64({'alg': 'none', 'typ': 'JWT'})}.{_b64(claims)}."
    # key confusion: HS256 "signed" with the RSA public key as the HMAC secret
    # (built by hand: PyJWT itself refuses to use a PEM key as an HMAC secret)
    signing_input = f"{_b64({'alg': 'HS256', 'typ': 'JWT', 'kid': minter.kid})}.{_b64(claims)}"
    mac = hmac.new(minter.public_pem(), signing_input.encode(), hashlib.sha256).digest()
    confused = f"{signing_input}.{base64.urlsafe_b64encode(mac).rstrip(b'=').decode()}"
    return {
        "expired": (minter.token(exp_in=-3600), "token is expired"),
        "not yet valid": (minter.token(nbf_in=3600), "token is not yet valid"),
        "wrong iss": (
            minter.token(iss="https://evil.example"),
            "token issuer is not accepted on this route",
        ),
        "wrong aud": (minter.token(aud="https://other.example"), "token audience is not accepted"),
        "alg none": (none_token, "token algorithm 'none' is not accepted"),
        "key confusion": (confused, "token algorithm 'HS256' is not accepted"),
        "unknown kid": (minter.token(kid="nope"), "token key id (kid) is unknown"),
        "malformed base64": ("eyJhbGciOiJSUzI1NiJ9.@@@.###", "token is not a well-formed JWT"),
        "16 KiB": (
            minter.token(pad="x" * 16384),
            "",  # refused by the listener's header limit or the identity step: a 4xx either way
        ),
        "bad signature": (minter.token()[:-6] + "AAAAAA", "token signature is invalid"),
    }


def test_bad_tokens_are_refused_in_the_openai_dialect(gw: Agwd, minter: TokenMinter) -> None:
    for name, (token, message) in _bad_tokens(minter).items():
        r = httpx.post(
            f"{gw.data_url}/oa/v1/chat/completions",
            headers={"authorization": f"Bearer {token}"},
            json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]},
        )
        assert 400 <= r.status_code < 500, (name, r.status_code, r.text)
        if message:
            assert r.status_code == 401, (name, r.text)
            error = r.json()["error"]
            assert error["message"] == message, name
            assert error["type"] == "authentication_error", error
            assert 'error="invalid_token"' in r.headers["www-authenticate"], name
    # the gateway kept serving, and no token reached its log
    assert _chat(gw, "oa", minter.token())
    logs = gw.logs()
    for name, (token, _) in _bad_tokens(minter).items():
        assert token.split(".")[1][:40] not in logs, name


def test_bad_token_in_the_anthropic_dialect(gw: Agwd, minter: TokenMinter) -> None:
    client = anthropic.Anthropic(
        base_url=f"{gw.data_url}/an", auth_token=minter.token(exp_in=-3600), max_retries=0
    )
    with client, pytest.raises(anthropic.AuthenticationError) as info:
        client.messages.create(
            model="claude-sonnet-4-5", max_tokens=8, messages=[{"role": "user", "content": "x"}]
        )
    body = info.value.body
    assert isinstance(body, dict) and body["type"] == "error"
    assert body["error"]["message"] == "token is expired"


def test_a_virtual_key_where_allowed_and_both_where_required(gw: Agwd, minter: TokenMinter) -> None:
    vk = gw.env["VK"]
    assert _chat(gw, "mixed", vk)
    with pytest.raises(openai.AuthenticationError):
        _chat(gw, "oa", vk)
    # require_virtual_key + a JWT provider: the key is required, the JWT beside it names the user
    both = openai.OpenAI(
        base_url=f"{gw.data_url}/both/v1",
        api_key=minter.token("carol"),
        default_headers={"x-api-key": vk},
        max_retries=0,
    )
    assert _ask(both)
    with pytest.raises(openai.AuthenticationError):
        _chat(gw, "both", minter.token("carol"))


def test_required_scopes(gw: Agwd, minter: TokenMinter) -> None:
    with pytest.raises(openai.PermissionDeniedError) as info:
        _chat(gw, "scoped", minter.token(scope="read"))
    challenge = info.value.response.headers["www-authenticate"]
    assert 'error="insufficient_scope"' in challenge and 'scope="llm"' in challenge
    assert _chat(gw, "scoped", minter.token(scope="read llm"))
    assert _chat(gw, "scoped", minter.token(scp=["llm"]))


def _status(gw: Agwd, token: str) -> tuple[int, str]:
    r = httpx.post(
        f"{gw.data_url}/oa/v1/chat/completions",
        headers={"authorization": f"Bearer {token}"},
        json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]},
        timeout=30,
    )
    message = r.json()["error"]["message"] if r.status_code != 200 else ""
    return r.status_code, message


def _wait_for(check: Any, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def test_jwks_uri_rotation_and_outages(
    gw: Agwd, remote_minter: TokenMinter, jwks: JwksServer
) -> None:
    _wait_for(lambda: _status(gw, remote_minter.token())[0] == 200)
    # the issuer rotates its key: a token with the new kid works without a restart
    remote_minter.rotate()
    assert _status(gw, remote_minter.token()) == (200, "")
    # the JWKS endpoint goes down, answers garbage, or is slow: cached keys keep working
    for mode in ("down", "garbage", "slow"):
        jwks.mode = mode
        jwks.delay_s = 8.0
        assert _status(gw, remote_minter.token())[0] == 200, mode
        # an unknown kid meanwhile is a clear 401 and the gateway keeps serving
        code, message = _status(gw, remote_minter.token(kid=f"unknown-{mode}"))
        assert code == 401 and message == "token key id (kid) is unknown", (mode, message)
    jwks.mode = "ok"


def test_an_issuer_that_is_down_at_start(
    agwd_factory: AgwdLauncher, fake: FakeUpstream, tmp_path: Any
) -> None:
    minter = TokenMinter("EdDSA", issuer="https://late.idp.test")
    server = JwksServer(minter.jwks)
    server.mode = "down"
    with server.running():
        bundle = {
            "apiVersion": "gateway.agw/v1alpha1",
            "kind": "GatewayBundle",
            "providers": [
                {
                    "id": "oa",
                    "provider_type": "openai",
                    "base_url": f"{fake.url}/v1",
                    "api_key": UPSTREAM_KEY,
                },
            ],
            "jwtProviders": [
                {
                    "id": "late",
                    "issuer": minter.issuer,
                    "audiences": [AUDIENCE],
                    "jwks_uri": server.jwks_uri,
                    "algorithms": ["EdDSA"],
                }
            ],
            "llmRoutes": [_route("oa", "openai", "oa", jwt_provider_ids=["late"])],
        }
        path = tmp_path / "bundle.json"
        path.write_text(json.dumps(bundle))
        gw = agwd_factory.start("--static-config", str(path))
        code, message = _status(gw, minter.token())
        assert code == 401
        assert message.startswith('signing keys of JWT provider "late" are not available yet')
        server.mode = "ok"
        # the background fetch retries with backoff (1 s, 2 s, 4 s ...): keys arrive
        _wait_for(lambda: not _status(gw, minter.token())[1].startswith("signing keys"), 20)


def test_admin_crud_and_strict_validation(gw: Agwd) -> None:
    with gw.client() as c:
        good = {"id": "extra", "issuer": "https://x.example", "audiences": ["a"]}
        r = c.post("/admin/jwt_providers", json=good)
        assert r.status_code in (200, 201), r.text
        assert c.get("/admin/jwt_providers/extra").json()["issuer"] == "https://x.example"
        for bad, where in (
            ({**good, "id": "b1", "algorithms": ["HS256"]}, "algorithms"),
            ({**good, "id": "b2", "algorithms": ["none"]}, "algorithms"),
            ({**good, "id": "b3", "audiences": []}, "audiences"),
            ({**good, "id": "b4", "issuer": "idp.example"}, "issuer"),
            ({**good, "id": "b5", "jwks": {"nokeys": 1}}, "jwks"),
            ({**good, "id": "b6", "surprise": 1}, "surprise"),
        ):
            r = c.post("/admin/jwt_providers", json=bad)
            assert r.status_code == 400, (bad, r.text)
            assert where in r.text, (where, r.text)
        # a route naming a provider that does not exist
        r = c.post(
            "/admin/llm/routes",
            json=_route("ghost", "openai", "oa", jwt_provider_ids=["nobody"]),
        )
        assert r.status_code == 400 and "nobody" in r.text, r.text
        assert c.delete("/admin/jwt_providers/extra").status_code in (200, 204)
        # a provider a route names cannot go: the configuration would not compile
        r = c.delete("/admin/jwt_providers/corp")
        assert r.status_code == 409, r.text
        assert 'llm_route "oa".auth_policy.jwt_provider_ids[0]' in r.json()["error"]
