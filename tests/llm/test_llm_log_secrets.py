"""No credential reaches agwd's log, whatever an upstream echoes (issue 12).

A real agwd at debug level, upstreams that reject requests with error bodies that echo keys of
every provider format, and provider URLs carrying credentials; then the log file is searched for
each secret. The scrubber itself is tested format by format in tests/test_logs.py.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import httpx
import pytest

from tests.fakes.run import FakeUpstream, start_fake_upstream
from tests.support.agwd import Agwd, AgwdLauncher

# Made-up secrets in each provider's format (none is real).
SECRETS = {
    "gemini": "AIzaSyD4n0tAr3alK3yJustTheRightShape012",
    "anthropic": "sk-ant-api03-n0tR3alAnthropicKeyForTests-0123456789abcdef",
    "openai_project": "sk-proj-N0tARealProjectKey_0123456789abcdefABCDEF",
    "openai_service": "sk-svcacct-N0tARealServiceKey0123456789abcdef",
    "xai": "xai-N0tARealXaiKey0123456789abcdefghijklmnop",
    "groq": "gsk_N0tARealGroqKey0123456789abcdefghijklmnop",
    "aws": "AKIAN0TREALKEY012345",
    "aws_session": "ASIAN0TREALKEY012345",
    "github": "ghp_N0tARealGitHubToken0123456789abcdefgh",
    "github_pat": "github_pat_11N0tAReal0123456789_abcdefghijklmnopqrstuvwxyz",
    "huggingface": "hf_N0tARealHuggingFaceToken0123456789abcd",
    # opaque: known only by where they stand (a header, a URL's user info)
    "bearer": "opaque-bearer-value-0123456789",
    "goog_header": "opaque-goog-header-value-0123",
    "url_password": "url-pa55word-0123456789",
}
OPAQUE = ("bearer", "goog_header", "url_password")


def echo_message(gw: Agwd) -> str:
    """An upstream error message echoing everything it was sent, as some proxies do."""
    return (
        f"rejected key {SECRETS['gemini']}; also saw {SECRETS['anthropic']} "
        f"{SECRETS['openai_project']} {SECRETS['openai_service']} {SECRETS['xai']} "
        f"{SECRETS['groq']} {SECRETS['aws']} {SECRETS['aws_session']} {SECRETS['github']} "
        f"{SECRETS['github_pat']} {SECRETS['huggingface']} "
        f"headers: {{'Authorization': 'Bearer {SECRETS['bearer']}', "
        f"'x-goog-api-key': '{SECRETS['goog_header']}', 'x-api-key': '{gw.env['VK']}'}} "
        f"proxy http://agw:{SECRETS['url_password']}@proxy.internal:3128"
    )


@pytest.fixture(scope="module")
def fake(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeUpstream]:
    with start_fake_upstream(tmp_path_factory.mktemp("fake")) as f:
        yield f


@pytest.fixture(scope="module")
def refusing_proxy() -> Iterator[int]:
    """An HTTP proxy that refuses every ``CONNECT`` with 403 (as a proxy's ACL does); yields
    its port."""
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except OSError:
                continue
            with conn:
                conn.settimeout(5)
                try:
                    conn.recv(65536)
                    conn.sendall(b"HTTP/1.1 403 Forbidden\r\ncontent-length: 0\r\n\r\n")
                except OSError:
                    pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield server.getsockname()[1]
    stop.set()
    thread.join(5)
    server.close()


@pytest.fixture(scope="module")
def gw(module_agwd_factory: AgwdLauncher, fake: FakeUpstream, refusing_proxy: int) -> Agwd:
    agwd = module_agwd_factory.start("--log-level", "debug")
    host = fake.url.removeprefix("http://")
    once = {"max_retries": 0}
    bundle = {
        "apiVersion": "gateway.agw/v1alpha1",
        "kind": "GatewayBundle",
        "providers": [
            {"id": "oa", "provider_type": "openai", "base_url": f"{fake.url}/v1", "network": once},
            {
                "id": "creds",  # credentials in the provider's URL (aiohttp sends them as Basic)
                "provider_type": "openai",
                "base_url": f"http://agw:{SECRETS['url_password']}@{host}/v1",
                "network": once,
            },
            {
                "id": "badport",  # an invalid URL: the error names it
                "provider_type": "openai",
                "base_url": f"http://agw:{SECRETS['url_password']}@127.0.0.1:99999/v1",
                "network": once,
            },
            {
                "id": "proxied",  # through a proxy that refuses the CONNECT: the error names it
                "provider_type": "openai",
                "base_url": "https://127.0.0.1:9/v1",
                "network": {
                    "max_retries": 0,
                    "proxy_url": f"http://agw:{SECRETS['url_password']}@127.0.0.1:{refusing_proxy}",
                },
            },
            {
                "id": "gem",
                "provider_type": "gemini",
                "base_url": fake.url,
                "api_key": SECRETS["gemini"],
                "network": once,
            },
        ],
        "llmRoutes": [
            {
                "id": rid,
                "protocol": "openai",
                "match_policy": {"path_prefix": f"/{rid}"},
                "auth_policy": {"require_virtual_key": True},
                "target_policy": {"provider_id": rid},
            }
            for rid in ("oa", "creds", "badport", "proxied", "gem")
        ],
        "virtualKeys": [{"id": "k"}],
    }
    with agwd.client() as c:
        r = c.post("/admin/gateway/apply", json={"bundle": bundle})
        assert r.status_code == 200, r.text
        agwd.env["VK"] = c.get("/admin/virtual_keys/k").json()["key"]
    return agwd


def call(gw: Agwd, route: str, **extra: str) -> httpx.Response:
    return httpx.post(
        f"{gw.data_url}/{route}/v1/chat/completions",
        json={"model": "fake-gpt", "messages": [{"role": "user", "content": "hi"}]},
        headers={"authorization": f"Bearer {gw.env['VK']}", **extra},
        timeout=20,
    )


@pytest.mark.parametrize("status", [500, 429, 401])
def test_upstream_errors_echoing_keys_leave_no_key_in_the_log(
    gw: Agwd, fake: FakeUpstream, status: int
) -> None:
    since = len(gw.logs())
    fake.configure(status=status, error_message=echo_message(gw))
    try:
        for route in ("oa", "creds", "gem"):
            r = call(gw, route)
            assert r.status_code == status, r.text
        # each key alone too: the log line cuts long messages, never a secret in half
        shaped = [v for k, v in SECRETS.items() if k not in OPAQUE]
        for secret in (*shaped, gw.env["VK"]):
            fake.configure(error_message=f"bad credential {secret} given")
            assert call(gw, "oa").status_code == status
    finally:
        fake.configure(status=0, error_message="")
    assert "upstream_attempt_failed" in gw.logs()[since:] or status == 401
    assert_no_secret(gw, since)


def test_an_invalid_provider_url_with_credentials_is_logged_without_them(gw: Agwd) -> None:
    since = len(gw.logs())
    r = call(gw, "badport")
    assert r.status_code == 502, r.text
    assert "upstream_attempt_failed" in gw.logs()[since:]
    assert_no_secret(gw, since)


@pytest.mark.parametrize("route", ["badport", "proxied"])
def test_url_credentials_never_reach_the_client(gw: Agwd, route: str) -> None:
    """aiohttp's error quotes the provider's URL (an invalid one) or the proxy's (a refused
    CONNECT) with its password; that error is the client's 502 message (issue 12 variant: a
    virtual key holder read the provider's and the proxy's passwords)."""
    r = call(gw, route)
    assert r.status_code == 502, r.text
    assert "unreachable" in r.text and "<redacted>@" in r.text, r.text
    assert SECRETS["url_password"] not in r.text


def test_a_cut_stream_and_a_crashing_request_leave_no_key_in_the_log(
    gw: Agwd, fake: FakeUpstream
) -> None:
    since = len(gw.logs())
    fake.configure(cut_after=1)
    try:
        with httpx.stream(
            "POST",
            f"{gw.data_url}/creds/v1/chat/completions",
            json={"model": "m", "stream": True, "messages": [{"role": "user", "content": "a b"}]},
            headers={"authorization": f"Bearer {gw.env['VK']}"},
            timeout=20,
        ) as r:
            assert "ended early" in r.read().decode()
    finally:
        fake.configure(cut_after=-1)
    assert_no_secret(gw, since)


def assert_no_secret(gw: Agwd, since: int) -> None:
    """Nothing agwd logged after offset ``since`` of its log holds a secret."""
    logs = gw.logs()[since:]
    assert logs.strip(), "agwd logged nothing"
    leaked = {
        name: [line[:400] for line in logs.splitlines() if secret in line]
        for name, secret in SECRETS.items()
        if secret in logs
    }
    assert not leaked, leaked
    assert gw.env["VK"] not in logs
    # nor a recognisable piece of one (a key cut before it was scrubbed)
    for secret in SECRETS.values():
        assert secret[:16] not in logs, secret


def test_a_rejected_credentials_state_shows_no_echoed_key(gw: Agwd, fake: FakeUpstream) -> None:
    """GET /admin/credentials shows why a credential is cooling down: the upstream's message,
    scrubbed like a log line."""
    with gw.client() as admin:
        r = admin.post(
            "/admin/credentials",
            json={
                "id": "echoed",
                "type": "api_key",
                "provider_id": "oa",
                "attributes": {"api_key": SECRETS["openai_project"]},
            },
        )
        assert r.status_code == 201, r.text
        fake.configure(status=401, error_message=echo_message(gw))
        try:
            assert call(gw, "oa").status_code == 401
        finally:
            fake.configure(status=0, error_message="")
        state = admin.get("/admin/credentials").text
        admin.delete("/admin/credentials/echoed")
    assert "rejected key <redacted>" in state, state
    leaked = [name for name, secret in SECRETS.items() if secret in state]
    assert not leaked and gw.env["VK"] not in state, leaked
