"""A real authorization server on loopback: the certified ``oidc-provider`` package from npm,
run by tests/fakes/oidc/server.mjs (its header says how it is configured), and what a test
needs to act as the user in front of it.

``oidc-provider`` is installed with npm into ``.cache/npm-oidc-provider`` on first use (about
3 MB; the npm registry must be reachable then); without npm and Node.js the test is skipped
(tests/support/npm.py).

    with run_oidc_provider(tmp, resources={"http://gw/mcp": "mcp:tools"}) as idp:
        idp.issuer                  # http://127.0.0.1:P
        idp.sign_in(auth_url, "alice")   # login + consent -> the redirect to the client
        idp.rotate()                # the next signing key: published, and signing from now on
        idp.client_credentials(...) # a token for a pre-registered confidential client

:class:`Browser` gives the official ``mcp`` client's ``OAuthClientProvider`` its redirect and
callback handlers: the "browser" follows the authorization URL, signs in as one account,
consents, and hands back the code from the redirect (with ``state`` and RFC 9207 ``iss``
exactly as the server sent them).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urljoin, urlsplit

import httpx
import pytest
from mcp.client.auth import TokenStorage
from mcp.shared.auth import AuthorizationCodeResult, OAuthClientInformationFull, OAuthToken

from tests.support.npm import npm_package

PACKAGE = "oidc-provider@9.13.3"
SCRIPT = Path(__file__).resolve().parent.parent / "fakes" / "oidc" / "server.mjs"
START_TIMEOUT_S = 20.0
MAX_HOPS = 16  # redirects and interaction steps of one sign-in


def _node_major() -> int:
    node = shutil.which("node")
    if node is None:
        return 0
    out = subprocess.run([node, "--version"], capture_output=True, text=True, check=False)
    return int(out.stdout.strip().lstrip("v").split(".")[0] or 0)


@dataclass
class OidcServer:
    proc: subprocess.Popen[bytes]
    port: int
    stderr_path: Path
    hops: list[str] = field(default_factory=list)  # the URLs of the last sign-in, in order

    @property
    def issuer(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def _post(self, path: str, body: Mapping[str, Any] | None = None) -> dict[str, Any]:
        r = httpx.post(self.issuer + path, json=dict(body or {}), timeout=10)
        assert r.status_code == 200, r.text
        out: dict[str, Any] = r.json()
        return out

    def rotate(self) -> str:
        """Publish the next signing key and sign new access tokens with it; the kid."""
        return str(self._post("/admin/rotate")["kid"])

    def send_iss(self, send: bool) -> None:
        """Whether authorization responses carry RFC 9207 ``iss`` (and discovery says so)."""
        self._post("/admin/iss", {"send": send})

    def metadata(self) -> dict[str, Any]:
        r = httpx.get(self.issuer + "/.well-known/openid-configuration", timeout=10)
        assert r.status_code == 200, r.text
        out: dict[str, Any] = r.json()
        return out

    def client_credentials(
        self, client_id: str, secret: str, resource: str, scope: str = ""
    ) -> str:
        """An access token (a JWT for ``resource``) for a confidential client."""
        data = {"grant_type": "client_credentials", "resource": resource}
        if scope:
            data["scope"] = scope
        r = httpx.post(self.issuer + "/token", data=data, auth=(client_id, secret), timeout=10)
        assert r.status_code == 200, r.text
        return str(r.json()["access_token"])

    def sign_in(self, authorization_url: str, account: str) -> str:
        """Be the user's browser: follow ``authorization_url`` through the login and consent
        interactions as ``account`` and return the URL the server finally redirects to (the
        client's redirect URI with ``code``, ``state``, ``iss``; or with ``error``)."""
        self.hops = []
        url = authorization_url
        with httpx.Client(follow_redirects=False, timeout=10) as browser:
            for _ in range(MAX_HOPS):
                self.hops.append(url)
                if not url.startswith(self.issuer + "/"):
                    return url  # left the authorization server: the redirect to the client
                r = browser.get(url)
                if r.is_redirect:
                    url = urljoin(url, r.headers["location"])
                    continue
                path = urlsplit(url).path
                if r.status_code == 200 and path.startswith("/interaction/"):
                    prompt = r.json()["prompt"]
                    if prompt == "login":
                        r = browser.post(url + "/login", json={"account": account})
                    elif prompt == "consent":
                        r = browser.post(url + "/confirm", json={})
                    else:
                        raise AssertionError(f"unexpected prompt {prompt!r}")
                    assert r.is_redirect, f"{prompt}: {r.status_code} {r.text[:500]}"
                    url = urljoin(url, r.headers["location"])
                    continue
                raise AssertionError(f"{url}: HTTP {r.status_code}: {r.text[:500]}")
        raise AssertionError(f"no redirect to the client after {MAX_HOPS} hops: {self.hops}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(3)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(5)


@contextlib.contextmanager
def run_oidc_provider(
    tmp_path: Path,
    *,
    resources: Mapping[str, str],
    clients: Sequence[Mapping[str, Any]] = (),
    registration: bool = True,
    cimd: bool = False,
    cimd_plain_http_hosts: Sequence[str] = (),
    send_iss: bool = True,
    name: str = "idp",
) -> Iterator[OidcServer]:
    """``oidc-provider`` as a node process on 127.0.0.1 (stopped on exit). ``resources``: the
    resource URLs it issues JWT access tokens for, each with its space-separated scopes;
    ``clients``: pre-registered clients; ``registration``: open dynamic registration;
    ``cimd``: client ID metadata documents; ``send_iss``: RFC 9207 ``iss`` in responses."""
    if _node_major() < 20:
        pytest.skip(f"{PACKAGE} needs Node.js 20 or later: node is missing or older")
    module = npm_package(PACKAGE, "oidc-provider", "oidc-provider")
    tmp_path.mkdir(parents=True, exist_ok=True)
    config = tmp_path / f"{name}.json"
    config.write_text(
        json.dumps(
            {
                "resources": dict(resources),
                "clients": [dict(c) for c in clients],
                "registration": registration,
                "cimd": cimd,
                "cimd_plain_http_hosts": list(cimd_plain_http_hosts),
                "send_iss": send_iss,
            }
        )
    )
    stdout_path, stderr_path = tmp_path / f"{name}.stdout", tmp_path / f"{name}.stderr"
    with stdout_path.open("wb") as out, stderr_path.open("wb") as err:
        proc = subprocess.Popen(
            ["node", str(SCRIPT), str(module / "lib" / "index.js"), str(config)],
            stdin=subprocess.DEVNULL, stdout=out, stderr=err, start_new_session=True,
        )  # fmt: skip
    server: OidcServer | None = None
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while server is None and time.monotonic() < deadline:
            for line in stdout_path.read_text(errors="replace").splitlines():
                if line.startswith("READY "):
                    server = OidcServer(proc, int(line.split()[1]), stderr_path)
            if server is None:
                if proc.poll() is not None:
                    raise RuntimeError(f"oidc-provider exited: {stderr_path.read_text()[-2000:]}")
                time.sleep(0.02)
        if server is None:
            raise RuntimeError(f"oidc-provider not ready after {START_TIMEOUT_S}s")
        yield server
    finally:
        (server or OidcServer(proc, 0, stderr_path)).stop()


class Browser:
    """The redirect and callback handlers of ``OAuthClientProvider``: the authorization URL is
    followed by :meth:`OidcServer.sign_in` as ``account``; the callback returns what the final
    redirect carried. ``urls`` records every authorization URL it was sent to."""

    def __init__(self, server: OidcServer, account: str) -> None:
        self.server = server
        self.account = account
        self.urls: list[str] = []
        self._landed = ""

    async def redirect(self, authorization_url: str) -> None:
        self.urls.append(authorization_url)
        self._landed = await asyncio.to_thread(self.server.sign_in, authorization_url, self.account)

    async def callback(self) -> AuthorizationCodeResult:
        query = {k: v[0] for k, v in parse_qs(urlsplit(self._landed).query).items()}
        if "error" in query:
            raise AssertionError(f"authorization failed: {query}")
        return AuthorizationCodeResult(
            code=query["code"], state=query.get("state"), iss=query.get("iss")
        )


class MemoryStorage(TokenStorage):
    """The client's tokens and registration, in memory (one per simulated client install)."""

    def __init__(self) -> None:
        self.tokens: OAuthToken | None = None
        self.client_info: OAuthClientInformationFull | None = None

    async def get_tokens(self) -> OAuthToken | None:
        return self.tokens

    async def set_tokens(self, tokens: OAuthToken) -> None:
        self.tokens = tokens

    async def get_client_info(self) -> OAuthClientInformationFull | None:
        return self.client_info

    async def set_client_info(self, client_info: OAuthClientInformationFull) -> None:
        self.client_info = client_info
