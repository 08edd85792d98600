"""A small synchronous client of the agw admin API, and the one error agwctl reports.

Every failure a user can cause or meet (an unreachable gateway, rejected credentials, an HTTP
error, a file that cannot be read) becomes a :class:`CliError`: one ``agwctl: ...`` line on
stderr and exit status 1, never a traceback.
"""

from __future__ import annotations

import ipaddress
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import httpx
import typer

from agw.settings import ADMIN_PASSWORD_FILE, DEFAULT_CONFIG_STORE, REVEAL_HEADER

DEFAULT_ADMIN_ADDR = "http://localhost:8019"
TIMEOUT_S = 30.0
# the file agwd writes its generated admin password to, with its default store (./data)
DEFAULT_PASSWORD_FILE = Path(DEFAULT_CONFIG_STORE).parent / ADMIN_PASSWORD_FILE
_REVEAL_PARAMS = ("reveal", "include_secrets")

JSONObject = dict[str, Any]


class CliError(Exception):
    """An error reported as ``agwctl: <message>`` on stderr, exit status 1 (by ``main``)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@dataclass(frozen=True)
class AdminSettings:
    addr: str = DEFAULT_ADMIN_ADDR
    basic_auth: tuple[str, str] | None = None
    headers: tuple[tuple[str, str], ...] = ()


@dataclass
class Ctl:
    """What the root and ``gateway`` callbacks parsed, shared with every command."""

    output: str = "table"
    admin: AdminSettings = field(default_factory=AdminSettings)

    @property
    def json(self) -> bool:
        return self.output == "json"


def normalize_addr(addr: str) -> str:
    addr = addr.strip().rstrip("/")
    if not addr:
        return DEFAULT_ADMIN_ADDR
    if "://" not in addr:
        addr = "http://" + addr
    return addr


def parse_basic_auth(value: str) -> tuple[str, str]:
    user, sep, password = value.partition(":")
    if not sep or not user:
        raise typer.BadParameter("must be user:password", param_hint="'--admin-basic-auth'")
    return user, password


def password_file_auth(addr: str) -> tuple[str, str] | None:
    """Credentials from the password file agwd generated: ``AGW_ADMIN_PASSWORD_FILE``, else
    ``./data/admin-password`` when it exists and the admin address is on this machine (the
    local gateway's password is never sent elsewhere)."""
    named = os.environ.get("AGW_ADMIN_PASSWORD_FILE", "").strip()
    path = Path(named) if named else DEFAULT_PASSWORD_FILE
    if not named and not (_is_local(addr) and path.is_file()):
        return None
    try:
        first = path.read_text(encoding="utf-8").splitlines()[:1]
    except (OSError, UnicodeDecodeError) as exc:
        raise CliError(f"cannot read the admin password file {path}: {exc}") from None
    user, sep, password = first[0].partition(":") if first else ("", "", "")
    if not sep or not user:
        raise CliError(f"the admin password file {path} must hold user:password")
    return user, password


def _is_local(addr: str) -> bool:
    host = urlsplit(normalize_addr(addr)).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def parse_header(value: str) -> tuple[str, str]:
    name, sep, val = value.partition(":")
    name = name.strip()
    if not sep or not name or any(c.isspace() for c in name):
        raise typer.BadParameter(
            f"{value!r} must look like 'Name: value'", param_hint="'--admin-header'"
        )
    return name, val.strip()


def segment(value: str, *, keep_slashes: bool = False) -> str:
    """A path segment for an id (a managed model's upstream model keeps its slashes)."""
    return quote(value, safe=":@/" if keep_slashes else ":@")


def _reason(exc: Exception) -> str:
    text = str(exc) or type(exc).__name__
    lowered = text.lower()
    if "refused" in lowered:
        return "connection refused"
    if isinstance(exc, httpx.TimeoutException):
        return f"no answer within {TIMEOUT_S:g}s ({type(exc).__name__})"
    if "name or service not known" in lowered or "nodename nor servname" in lowered:
        return "unknown host"
    return text


class AdminClient:
    """Talks to the admin API. Use as a context manager."""

    def __init__(self, settings: AdminSettings) -> None:
        self.addr = normalize_addr(settings.addr)
        self._http = httpx.Client(
            base_url=self.addr,
            auth=settings.basic_auth,
            headers=dict(settings.headers),
            timeout=TIMEOUT_S,
            trust_env=False,
        )

    def __enter__(self) -> AdminClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self._http.close()

    def send(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, str] | None = None,
        body: JSONObject | None = None,
    ) -> tuple[int, Any]:
        """One request; returns the status and the decoded JSON body (the text when it is not
        JSON). Raises only when the gateway cannot be reached or rejects the credentials."""
        # secrets in clear need the reveal header too (a browser page cannot add it)
        reveal = any(
            (params or {}).get(name, "").lower() in ("1", "true", "yes") for name in _REVEAL_PARAMS
        )
        headers = {REVEAL_HEADER: "true"} if reveal else None
        try:
            resp = self._http.request(method, path, params=params, json=body, headers=headers)
        except httpx.InvalidURL as exc:
            raise CliError(f"invalid admin address {self.addr!r}: {exc}") from None
        except httpx.HTTPError as exc:
            raise CliError(f"cannot reach admin API at {self.addr}: {_reason(exc)}") from None
        try:
            data = resp.json() if resp.content else None
        except (ValueError, UnicodeDecodeError):
            data = None
        if resp.status_code == 401:
            raise CliError(
                "admin API rejected the credentials (401); set --admin-basic-auth or "
                "AGW_ADMIN_BASIC_AUTH, or AGW_ADMIN_PASSWORD_FILE to agwd's password file"
            )
        if resp.status_code == 429:
            raise CliError(
                "admin API refuses logins from this address for now (429, too many failed "
                f"logins); retry in {resp.headers.get('Retry-After', '60')}s"
            )
        return resp.status_code, (data if data is not None else resp.text)

    def call(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, str] | None = None,
        body: JSONObject | None = None,
    ) -> JSONObject:
        """A request that must succeed with a JSON object."""
        status, data = self.send(method, path, params=params, body=body)
        if status >= 400:
            raise CliError(f"{method} {path}: {status} {error_of(data)}")
        if not isinstance(data, dict):
            raise CliError(f"{method} {path}: the admin API did not answer with a JSON object")
        return data

    def items(self, path: str, params: dict[str, str] | None = None) -> list[JSONObject]:
        data = self.call("GET", path, params=params)
        items = data.get("items")
        if not isinstance(items, list):
            raise CliError(f"GET {path}: the admin API answer has no items list")
        return [item for item in items if isinstance(item, dict)]


def error_of(data: Any) -> str:
    """The message of an error answer: its ``error`` field, else its text."""
    if isinstance(data, dict) and isinstance(data.get("error"), str):
        return str(data["error"])
    text = " ".join((data if isinstance(data, str) else json.dumps(data)).split())
    return text[:300] if text else "(empty response)"
