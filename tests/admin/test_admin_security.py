"""Attacks on the admin API from a browser page, a rebinding name and a password guesser
(docs/security.md, "Admin API"): against the admin app in-process, and against a real agwd
where the listener, the process or its files are part of the answer (raw requests, client
addresses, the password file).

A page in the operator's browser can send "simple" requests (``text/plain``, form bodies, no
custom header) to loopback without a CORS preflight, with the browser's saved Basic credentials;
a DNS-rebinding page does the same under its own name. None of that may read or change anything.
"""

from __future__ import annotations

import base64
import concurrent.futures
import json
import os
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.admin import REDACTED, mcp_service_body, uid
from tests.support.inproc import InprocGateway, InprocLauncher

UI_ORIGIN = "https://ui.example:8443"
REVEAL = {"X-AGW-Reveal-Secrets": "true"}


def basic(user: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


def client_from(agwd: Any, source: str) -> httpx.Client:
    """An anonymous client whose connections come from ``source`` (a 127.0.0.0/8 address)."""
    transport = httpx.HTTPTransport(local_address=source)
    return httpx.Client(base_url=agwd.admin_url, transport=transport, timeout=30, trust_env=False)


def raw(addr: str, request: bytes) -> bytes:
    """Send ``request`` as is and read the answer (until the server closes or 5 s pass)."""
    host, _, port = addr.removeprefix("http://").rpartition(":")
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(request)
        chunks = []
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                break
            if not chunk:
                break
            chunks.append(chunk)
            if b"\r\n\r\n" in b"".join(chunks):
                break
        return b"".join(chunks)


def shell_service(sid: str, marker: Path) -> dict[str, Any]:
    """What the attacker wants created: a stdio MCP service that runs /bin/sh."""
    return {
        "id": sid,
        "name": "pwned",
        "transport": "stdio",
        "command": "/bin/sh",
        "args": ["-c", f"touch {marker}"],
    }


def assert_error(r: httpx.Response, status: int, code: str) -> None:
    assert r.status_code == status, r.text
    body = r.json()
    assert body["code"] == code and isinstance(body["error"], str) and body["error"]


@pytest.fixture(scope="module")
def open_gateway(module_inproc_factory: InprocLauncher) -> InprocGateway:
    """The loopback default an attacker hopes for: no password (--admin-insecure), one listed
    UI origin."""
    return module_inproc_factory.start(auth=False, admin_cors_origins=(UI_ORIGIN,))


@pytest.fixture(scope="module")
def open_admin(open_gateway: InprocGateway) -> Iterator[httpx.Client]:
    with open_gateway.client(auth=False) as client:
        yield client


@pytest.fixture(scope="module")
def open_agwd(module_agwd_factory: Any) -> Any:
    """The same as a process, for requests only a raw socket can send."""
    return module_agwd_factory.start("--admin-cors-origin", UI_ORIGIN, auth=False)


# ------------------------------------------------------------------ simple requests (CSRF)

SIMPLE_BODIES = [
    pytest.param("text/plain", id="text-plain"),
    pytest.param("text/plain;charset=UTF-8", id="text-plain-charset"),
    pytest.param("application/x-www-form-urlencoded", id="form"),
    pytest.param("multipart/form-data; boundary=x", id="multipart"),
    pytest.param("text/plain; application/json", id="json-as-parameter"),
    pytest.param("application/jsonx", id="json-prefix"),
    pytest.param("application/json-patch+json", id="json-suffix-type"),
    pytest.param(None, id="no-content-type"),
]


@pytest.mark.parametrize("content_type", SIMPLE_BODIES)
def test_non_json_write_cannot_create_a_shell_service(
    open_admin: httpx.Client, tmp_path: Path, content_type: str | None
) -> None:
    sid = uid("sh")
    marker = tmp_path / "ran"
    body = json.dumps(shell_service(sid, marker)).encode()
    headers = {"Content-Type": content_type} if content_type else {}
    r = open_admin.post("/admin/mcp/services", content=body, headers=headers)
    assert_error(r, 415, "unsupported_media_type")
    assert open_admin.get(f"/admin/mcp/services/{sid}").status_code == 404
    # nor through the other writes that take a body
    bundle = {"bundle": {"mcpServices": [shell_service(sid, marker)]}}
    r = open_admin.post("/admin/gateway/apply", content=json.dumps(bundle), headers=headers)
    assert_error(r, 415, "unsupported_media_type")
    r = open_admin.put(f"/admin/mcp/services/{sid}", content=body, headers=headers)
    assert_error(r, 415, "unsupported_media_type")
    assert open_admin.get(f"/admin/mcp/services/{sid}").status_code == 404
    assert not marker.exists()


def test_json_write_still_works_and_json_with_charset_too(open_admin: httpx.Client) -> None:
    sid = uid("ok")
    body = json.dumps(mcp_service_body(sid))
    r = open_admin.post(
        "/admin/mcp/services",
        content=body,
        headers={"Content-Type": "Application/JSON; charset=utf-8"},
    )
    assert r.status_code == 201, r.text
    # writes without a body need no type (enable/disable, delete)
    assert open_admin.post(f"/admin/mcp/services/{sid}/disable").status_code == 200
    assert open_admin.delete(f"/admin/mcp/services/{sid}").status_code == 200


def test_empty_text_plain_write_is_415(open_admin: httpx.Client) -> None:
    """A form with no fields still names its type: a cross-site disable must not pass."""
    sid = uid("ok")
    assert open_admin.post("/admin/mcp/services", json=mcp_service_body(sid)).status_code == 201
    r = open_admin.post(
        f"/admin/mcp/services/{sid}/disable", headers={"Content-Type": "text/plain"}
    )
    assert_error(r, 415, "unsupported_media_type")
    assert open_admin.get(f"/admin/mcp/services/{sid}").json()["disabled"] is False


def test_two_content_types_are_415(open_agwd: Any) -> None:
    body = json.dumps(shell_service(uid("sh"), Path("/nonexistent/x")))
    request = (
        "POST /admin/mcp/services HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        "Content-Type: application/json\r\nContent-Type: text/plain\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n{body}"
    ).encode()
    answer = raw(open_agwd.admin_url, request)
    assert answer.startswith(b"HTTP/1.1 415"), answer[:200]


def test_basic_auth_csrf_with_saved_credentials_is_415(
    inproc: InprocGateway, tmp_path: Path
) -> None:
    """With a password: the page rides on the browser's saved credentials (CSRF)."""
    sid = uid("sh")
    marker = tmp_path / "ran"
    with inproc.client() as admin:  # the browser's saved credentials ride along
        r = admin.post(
            "/admin/mcp/services",
            content=json.dumps(shell_service(sid, marker)),
            headers={"Content-Type": "text/plain"},
        )
        assert_error(r, 415, "unsupported_media_type")
        assert admin.get(f"/admin/mcp/services/{sid}").status_code == 404
    assert not marker.exists()


# ---------------------------------------------------------------------------- DNS rebinding

REBINDING_HOSTS = [
    "attacker.example",
    "attacker.example:8019",
    "127.0.0.1.attacker.example",
    "localhost.attacker.example",
    "localhostx",
    "127.0.0.1@attacker.example",
    "attacker.example/127.0.0.1",
]


@pytest.mark.parametrize("host", REBINDING_HOSTS)
@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/admin/gateway/export"),
        ("GET", "/admin/health"),
        ("OPTIONS", "/admin/llm/providers"),
        ("POST", "/admin/mcp/services"),
    ],
)
def test_rebinding_host_is_421(open_admin: httpx.Client, host: str, method: str, path: str) -> None:
    sid = uid("sh")
    r = open_admin.request(
        method, path, headers={"Host": host}, json=shell_service(sid, Path("/tmp/x"))
    )
    assert_error(r, 421, "misdirected_request")
    assert "access-control-allow-origin" not in r.headers
    assert open_admin.get(f"/admin/mcp/services/{sid}").status_code == 404


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "LOCALHOST.", "[::1]", "agw.localhost"])
def test_trusted_hosts_pass(
    open_admin: httpx.Client, open_gateway: InprocGateway, host: str
) -> None:
    port = open_gateway.admin_url.rpartition(":")[2]
    r = open_admin.get("/admin/llm/providers", headers={"Host": f"{host}:{port}"})
    assert r.status_code == 200, r.text


@pytest.mark.parametrize("host", ["localhost..", "127.0.0.1..", ".localhost", "a..localhost"])
def test_a_host_with_an_empty_label_is_421(
    open_admin: httpx.Client, caplog: pytest.LogCaptureFixture, host: str
) -> None:
    r = open_admin.get("/admin/llm/providers", headers={"Host": host})
    assert_error(r, 421, "misdirected_request")
    assert "BadHost" not in caplog.text


def test_two_host_headers_are_421(open_agwd: Any) -> None:
    request = (
        b"GET /admin/gateway/export HTTP/1.1\r\nHost: 127.0.0.1\r\nHost: attacker.example\r\n"
        b"Connection: close\r\n\r\n"
    )
    answer = raw(open_agwd.admin_url, request)
    assert answer.split(b" ", 2)[1] in (b"400", b"421"), answer[:200]
    assert b"apiVersion" not in answer


def test_listed_admin_host_passes(inproc_factory: InprocLauncher) -> None:
    gateway = inproc_factory.start(admin_hosts=("gw.internal",), auth=False)
    with gateway.client(auth=False) as c:
        assert c.get("/admin/llm/providers", headers={"Host": "gw.internal:1"}).status_code == 200
        r = c.get("/admin/llm/providers", headers={"Host": "other.internal"})
        assert_error(r, 421, "misdirected_request")


# ----------------------------------------------------------------------------------- CORS

FOREIGN_ORIGINS = [
    "https://evil.example",
    "null",
    "https://ui.example:8443.evil.example",
    "https://ui.example",  # the listed host on another port
    "http://ui.example:8443",  # ... on another scheme
    "https://evil.example/https://ui.example:8443",
    "http://localhost:5173",  # another local dev server is another origin
    "http://127.0.0.1:1",
]


@pytest.mark.parametrize("origin", FOREIGN_ORIGINS)
def test_unlisted_origin_is_403_without_cors_headers(open_admin: httpx.Client, origin: str) -> None:
    preflight = open_admin.options(
        "/admin/mcp/services",
        headers={
            "Origin": origin,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type",
        },
    )
    assert_error(preflight, 403, "origin_not_allowed")
    assert "access-control-allow-origin" not in preflight.headers
    for r in (
        open_admin.get("/admin/gateway/export", headers={"Origin": origin}),
        open_admin.get("/admin/health", headers={"Origin": origin}),
        open_admin.post(
            "/admin/mcp/services", json=mcp_service_body(uid("o")), headers={"Origin": origin}
        ),
    ):
        assert_error(r, 403, "origin_not_allowed")
        assert "access-control-allow-origin" not in r.headers
        assert "apiVersion" not in r.text


@pytest.mark.parametrize("sent", [UI_ORIGIN, "HTTPS://UI.EXAMPLE:8443", "https://ui.example:8443/"])
def test_listed_origin_gets_exactly_the_listed_origin(open_admin: httpx.Client, sent: str) -> None:
    preflight = open_admin.options(
        "/admin/gateway/export",
        headers={
            "Origin": sent,
            "Access-Control-Request-Method": "GET",
            "Access-Control-Request-Headers": "x-agw-reveal-secrets",
        },
    )
    assert preflight.status_code == 204
    assert preflight.headers["access-control-allow-origin"] == UI_ORIGIN
    assert "X-AGW-Reveal-Secrets" in preflight.headers["access-control-allow-headers"]
    assert "access-control-allow-credentials" not in preflight.headers
    r = open_admin.get("/admin/llm/providers", headers={"Origin": sent})
    assert r.status_code == 200
    assert r.headers["access-control-allow-origin"] == UI_ORIGIN
    assert r.headers["vary"] == "Origin"


def test_the_listeners_own_origin_is_not_trusted_either(
    open_admin: httpx.Client, open_gateway: InprocGateway
) -> None:
    """The admin API serves no pages; on a listener shared with the data plane, a page served
    there (an upstream's HTML error passed through) would be the admin API's own origin."""
    own = open_gateway.admin_url
    r = open_admin.get("/admin/gateway/export", headers={"Origin": own})
    assert_error(r, 403, "origin_not_allowed")
    assert "access-control-allow-origin" not in r.headers


# ---------------------------------------------------------------------------- secret reveal


@pytest.fixture(scope="module")
def secret_provider(open_admin: httpx.Client) -> dict[str, str]:
    pid = uid("revprov")
    body = {
        "id": pid,
        "provider_type": "openai",
        "api_key": "sk-reveal-test-123456",
        "network": {"proxy_url": "http://proxyuser:proxy-pass-789@127.0.0.1:3128"},
    }
    assert open_admin.post("/admin/llm/providers", json=body).status_code == 201
    return {"id": pid, "api_key": "sk-reveal-test-123456", "proxy_password": "proxy-pass-789"}


@pytest.mark.parametrize(
    ("path", "param"),
    [
        ("/admin/gateway/export", "include_secrets=true"),
        ("/admin/llm/providers", "reveal=true"),
        ("/admin/llm/providers/{id}", "reveal=1"),
    ],
)
def test_reveal_without_the_header_is_400(
    open_admin: httpx.Client, secret_provider: dict[str, str], path: str, param: str
) -> None:
    url = path.format(id=secret_provider["id"]) + "?" + param
    for headers in ({}, {"X-AGW-Reveal-Secrets": "1x"}, {"X-Reveal": "true"}):
        r = open_admin.get(url, headers=headers)
        assert_error(r, 400, "invalid_request")
        assert "X-AGW-Reveal-Secrets" in r.json()["error"]
        assert secret_provider["api_key"] not in r.text
    revealed = open_admin.get(url, headers=REVEAL)
    assert revealed.status_code == 200
    assert secret_provider["api_key"] in revealed.text
    assert secret_provider["proxy_password"] in revealed.text


def test_reveal_header_alone_reveals_nothing(
    open_admin: httpx.Client, secret_provider: dict[str, str]
) -> None:
    r = open_admin.get("/admin/gateway/export", headers=REVEAL)
    assert r.status_code == 200
    assert secret_provider["api_key"] not in r.text


# ----------------------------------------------------------------- credentials inside URLs


def test_url_credentials_are_masked_everywhere_and_kept_on_write_back(
    open_admin: httpx.Client, secret_provider: dict[str, str]
) -> None:
    pid = secret_provider["id"]
    sid = uid("urlsvc")
    url = "https://mcpuser:mcp-pass-4242@127.0.0.1:9/mcp?api_key=mcp-key-5151&x=1"
    assert open_admin.post("/admin/mcp/services", json=mcp_service_body(sid, url=url)).is_success
    secrets = ("proxy-pass-789", "mcp-pass-4242", "mcp-key-5151")
    answers = [
        open_admin.get("/admin/gateway/export"),
        open_admin.get("/admin/llm/providers"),
        open_admin.get(f"/admin/llm/providers/{pid}"),
        open_admin.get("/admin/mcp/services"),
        open_admin.get(f"/admin/mcp/services/{sid}"),
    ]
    for r in answers:
        assert r.status_code == 200
        for secret in secrets:
            assert secret not in r.text
    view = answers[2].json()
    assert view["network"]["proxy_url"] == f"http://proxyuser:{REDACTED}@127.0.0.1:3128"
    service = answers[4].json()
    assert service["url"] == f"https://mcpuser:{REDACTED}@127.0.0.1:9/mcp?api_key={REDACTED}&x=1"
    # the masked view written back keeps the stored credentials
    for key in ("created_at", "updated_at", "source", "read_only"):
        view.pop(key)
        service.pop(key)
    view["default_model"] = "gpt-x"
    assert open_admin.put(f"/admin/llm/providers/{pid}", json=view).status_code == 200
    assert open_admin.put(f"/admin/mcp/services/{sid}", json=service).status_code == 200
    shown = open_admin.get(f"/admin/llm/providers/{pid}?reveal=true", headers=REVEAL).json()
    assert shown["network"]["proxy_url"] == "http://proxyuser:proxy-pass-789@127.0.0.1:3128"
    shown = open_admin.get(f"/admin/mcp/services/{sid}?reveal=true", headers=REVEAL).json()
    assert shown["url"] == url


def test_a_failed_model_refresh_shows_no_url_credentials(open_admin: httpx.Client) -> None:
    """Model discovery of a provider whose URL carries a password and cannot be reached (an
    invalid port: aiohttp's error quotes the whole URL): the 502 and the discovered view keep
    it masked, as the provider's own view does (issue 12 variant: the refresh showed it)."""
    pid = uid("discprov")
    body = {
        "id": pid,
        "provider_type": "openai",
        "base_url": "http://agw:disc-pa55word-0123@127.0.0.1:99999/v1",
        "network": {"max_retries": 0},
    }
    assert open_admin.post("/admin/llm/providers", json=body).status_code == 201
    r = open_admin.post(f"/admin/llm/models/providers/{pid}/refresh", json={})
    assert r.status_code == 502, r.text
    assert "disc-pa55word-0123" not in r.text and "<redacted>@" in r.text, r.text
    r = open_admin.get(f"/admin/llm/models/providers/{pid}/discovered")
    assert "disc-pa55word-0123" not in r.text


def test_masked_url_without_a_stored_secret_is_refused(open_admin: httpx.Client) -> None:
    sid = uid("urlsvc")
    url = f"https://user:{REDACTED}@127.0.0.1:9/mcp"
    r = open_admin.post("/admin/mcp/services", json=mcp_service_body(sid, url=url))
    assert r.status_code == 400, r.text
    assert "url" in r.text


# ------------------------------------------------------------------------- login backoff


@pytest.mark.sqlite_only("the admin listener's login backoff, in the process: no store read")
def test_login_backoff_is_429_and_logged_with_the_address(agwd_factory: Any) -> None:
    agwd = agwd_factory.start()
    user, _, password = agwd.auth.partition(":")
    with client_from(agwd, "127.0.0.2") as guesser, client_from(agwd, "127.0.0.3") as other:
        proven = basic(user, password)
        assert other.get("/admin/llm/providers", headers=proven).status_code == 200
        statuses = [
            guesser.get("/admin/llm/providers", headers=basic(user, f"guess{i}")).status_code
            for i in range(5)
        ]
        assert statuses == [401] * 5
        blocked = guesser.get("/admin/llm/providers", headers=basic(user, "guess6"))
        assert_error(blocked, 429, "too_many_requests")
        assert 0 < int(blocked.headers["retry-after"]) <= 60
        # every loopback address is one client (a local user can bind any of 127.0.0.0/8)
        r = other.get("/admin/llm/providers", headers=basic(user, "guess7"))
        assert_error(r, 429, "too_many_requests")
        # the right password in a header not yet proven is not checked either ...
        token = base64.b64encode(f"{user}:{password}".encode()).decode()
        r = guesser.get("/admin/llm/providers", headers={"Authorization": f"basic {token}"})
        assert r.status_code == 429
        # ... while a header proven before still works (it costs no check)
        assert guesser.get("/admin/llm/providers", headers=proven).status_code == 200
        # no credentials at all is a plain 401, and is not counted
        assert guesser.get("/admin/llm/providers").status_code == 401
    failed = [e for e in agwd.log_events() if e.get("event") == "admin_auth_failed"]
    assert len(failed) == 6  # five guesses and the bare request
    assert [e.get("client") for e in failed] == ["127.0.0.2"] * 6
    throttled = [e for e in agwd.log_events() if e.get("event") == "admin_auth_throttled"]
    assert {e.get("client") for e in throttled} == {"127.0.0.2", "127.0.0.3"}
    assert password not in agwd.logs()


@pytest.mark.sqlite_only("the admin listener's login backoff, in the process: no store read")
def test_parallel_guesses_cannot_outrun_the_backoff(agwd_factory: Any) -> None:
    agwd = agwd_factory.start()
    user = agwd.auth.partition(":")[0]

    def guess(i: int) -> int:
        with client_from(agwd, "127.0.0.4") as c:
            return c.get("/admin/llm/providers", headers=basic(user, f"p{i}")).status_code

    with concurrent.futures.ThreadPoolExecutor(20) as pool:
        statuses = list(pool.map(guess, range(20)))
    assert statuses.count(401) == 5, statuses
    assert statuses.count(429) == 15, statuses


# -------------------------------------------------------------- the generated password


@pytest.mark.sqlite_only(
    "the generated password file lies beside the SQLite file (./data/ with a PostgreSQL store)"
)
def test_generated_password_file(agwd_factory: Any, tmp_path: Path) -> None:
    agwd = agwd_factory.start(auth="generated")
    path = agwd.db_path.parent / "admin-password"
    info = path.stat()
    assert stat.S_IMODE(info.st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) & 0o077 == 0
    user, _, password = path.read_text().strip().partition(":")
    assert user == "admin" and len(password) >= 24
    assert agwd.logs().count(password) == 1  # shown once, on stderr
    assert str(path) in agwd.logs()
    with agwd.client(auth=False) as c:
        assert c.get("/admin/llm/providers").status_code == 401
        assert c.get("/admin/llm/providers", headers=basic(user, password)).status_code == 200
    # agwctl finds it: named by AGW_ADMIN_PASSWORD_FILE, or ./data/admin-password by default
    env = {**agwd.env, "AGW_ADMIN_PASSWORD_FILE": str(path)}
    env.pop("AGW_ADMIN_BASIC_AUTH", None)
    done = _agwctl(env, agwd.workdir, "gateway", "provider", "list")
    assert done.returncode == 0, done.stderr
    del env["AGW_ADMIN_PASSWORD_FILE"]
    done = _agwctl(env, agwd.db_path.parent.parent, "gateway", "provider", "list")
    assert done.returncode == 0, done.stderr
    done = _agwctl(env, tmp_path, "gateway", "provider", "list")  # no file here: 401
    assert done.returncode == 1 and "401" in done.stderr
    agwd.stop()

    again = agwd_factory.start(auth="generated", db_path=agwd.db_path)
    assert password not in again.logs()  # not shown again
    assert path.read_text().strip() == f"admin:{password}"
    with again.client(auth=False) as c:
        assert c.get("/admin/llm/providers", headers=basic(user, password)).status_code == 200
    again.stop()


@pytest.mark.sqlite_only("a refused password file stops agwd at its start, whatever the store")
@pytest.mark.parametrize("mode", [0o640, 0o604, 0o620, 0o644])
def test_password_file_open_to_others_is_refused(
    agwd_factory: Any, tmp_path: Path, mode: int
) -> None:
    path = tmp_path / "pw" / "admin-password"
    path.parent.mkdir()
    path.write_text("admin:some-password-here\n")
    os.chmod(path, mode)
    agwd = agwd_factory.start("--admin-password-file", str(path), auth="generated", wait=False)
    assert agwd.proc.wait(30) == 1
    assert "chmod 600" in agwd.logs()


@pytest.mark.sqlite_only("a refused password file stops agwd at its start, whatever the store")
def test_password_file_that_is_no_password_file_is_refused(
    agwd_factory: Any, tmp_path: Path
) -> None:
    empty = tmp_path / "empty"
    empty.touch(mode=0o600)
    no_password = tmp_path / "no-password"
    no_password.write_text("admin:\n")
    no_password.chmod(0o600)
    fifo = tmp_path / "fifo"  # must not hang the start
    os.mkfifo(fifo, 0o600)
    for path in (tmp_path, empty, no_password, fifo):
        agwd = agwd_factory.start("--admin-password-file", str(path), auth="generated", wait=False)
        assert agwd.proc.wait(30) == 1, agwd.logs()
        assert "admin password" in agwd.logs()


@pytest.mark.sqlite_only("looks for the password file beside the SQLite file")
def test_insecure_admin_still_checks_host_and_type(agwd_factory: Any) -> None:
    agwd = agwd_factory.start("--admin-insecure", auth="generated", same_listener=True)
    assert not (agwd.db_path.parent / "admin-password").exists()
    with agwd.client(auth=False) as c:
        assert c.get("/admin/llm/providers").status_code == 200
        r = c.get("/admin/llm/providers", headers={"Host": "attacker.example"})
        assert_error(r, 421, "misdirected_request")
        r = c.get("/admin/llm/providers", headers={"Origin": "https://evil.example"})
        assert_error(r, 403, "origin_not_allowed")
        sid = uid("sh")
        body = json.dumps(shell_service(sid, Path("/nonexistent/x")))
        r = c.post("/admin/mcp/services", content=body, headers={"Content-Type": "text/plain"})
        assert_error(r, 415, "unsupported_media_type")


def _agwctl(env: dict[str, str], cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agwctl.main", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_hash_password_reads_stdin(tmp_path: Path) -> None:
    from passlib.hash import bcrypt

    done = subprocess.run(
        [sys.executable, "-m", "agw.cli", "hash-password"],
        input="from stdin, not argv\n",
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert bcrypt.verify("from stdin, not argv", done.stdout.strip())
