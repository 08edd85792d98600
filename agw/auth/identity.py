"""Step 2 of the request pipeline: the request's credentials -> one :class:`Principal`, or the
:class:`Refusal` that says why not (docs/security.md, "Who may call").

A route's ``auth_policy`` says which credentials admit a caller:

- ``require_virtual_key`` alone: a valid virtual key (agw/auth/virtual_keys.py).
- ``jwt_provider_ids``: a valid bearer JWT from one of them; ``allow_virtual_key`` lets a valid
  virtual key in instead. With ``require_virtual_key`` too, the key is required and a JWT
  beside it (``x-api-key`` holds the key, ``Authorization`` the JWT) names the user.
- ``required_scopes``: each must be in the JWT's ``scope``/``scp`` (403 ``insufficient_scope``).

On a ``gemini`` route the key (or JWT) may also come the way Google's clients send theirs:
``x-goog-api-key``, or the ``key`` query parameter; either stands for ``x-api-key``.

A refusal of a JWT route carries ``WWW-Authenticate: Bearer`` (RFC 6750); on an MCP route it
also names the route's protected-resource metadata (RFC 9728), where an MCP client learns
which authorization server to sign in with.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Iterable, Mapping
from urllib.parse import parse_qsl

import aiohttp

from agw.auth.jwt import CODE, JwtVerifier, TokenRefused, looks_like_jwt, unverified_issuer
from agw.auth.oauth_metadata import metadata_url, public_origin
from agw.auth.principal import ANONYMOUS, Principal
from agw.auth.virtual_keys import authenticate as authenticate_key
from agw.auth.virtual_keys import bearer, check_virtual_key
from agw.errors import Refusal
from agw.runtime.attribution import SessionDirectory
from agw.runtime.snapshot import CompiledRoute, Snapshot


def resource_metadata_url(
    route: CompiledRoute, headers: Mapping[str, str], scheme: str, audiences: Iterable[str] = ()
) -> str:
    """Where the protected-resource metadata of ``route`` is served (RFC 9728 §3.1: the
    well-known prefix inserted before the resource's path), on the origin the metadata names
    (agw/auth/oauth_metadata.py: an audience on this host gives the scheme)."""
    return metadata_url(route, public_origin(headers, scheme, audiences))


def _quoted(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"')


class Identity:
    """The identity step: virtual keys from the snapshot, JWTs through one
    :class:`JwtVerifier` per provider (kept across snapshots while the provider's
    configuration is unchanged, so its keys and token cache survive unrelated writes)."""

    def __init__(self, directory: SessionDirectory | None = None) -> None:
        self.directory = directory
        self.verifiers: dict[str, JwtVerifier] = {}
        self._session: aiohttp.ClientSession | None = None
        self._retired: list[JwtVerifier] = []
        self._synced: Snapshot | None = None

    def sync(self, snapshot: Snapshot) -> None:
        """Follow the snapshot's JWT providers: start new ones fetching their keys, drop the
        removed and changed ones. Called on every configuration swap (in the running loop)."""
        self._synced = snapshot
        wanted = {pid: p for pid, p in snapshot.jwt_providers.items() if not p.disabled}
        for pid, verifier in list(self.verifiers.items()):
            if wanted.get(pid) != verifier.provider:
                self._retired.append(self.verifiers.pop(pid))
        for pid, provider in wanted.items():
            if pid not in self.verifiers:
                verifier = JwtVerifier(provider, self._http())
                self.verifiers[pid] = verifier
                verifier.start()
        if self._retired:
            retired, self._retired = self._retired, []
            asyncio.get_running_loop().create_task(_close_all(retired))

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=16, ttl_dns_cache=300),
                headers={"accept": "application/json"},
                trust_env=True,
            )
        return self._session

    async def close(self) -> None:
        verifiers, self.verifiers = list(self.verifiers.values()), {}
        await _close_all(verifiers)
        if self._session is not None:
            await self._session.close()
            self._session = None

    # ----------------------------------------------------------------------------- the step

    async def authenticate(
        self,
        snapshot: Snapshot,
        route: CompiledRoute,
        headers: Mapping[str, str],
        scheme: str = "http",
        query: bytes = b"",
    ) -> tuple[Principal, Refusal | None]:
        """``query``: the raw query string (a gemini route's ``?key=``)."""
        if route.protocol == "gemini":
            headers = google_key(headers, query)
        if not route.jwt_provider_ids:
            return authenticate_key(snapshot, route, headers, self.directory)
        if snapshot is not self._synced:
            self.sync(snapshot)
        policy = route.config.auth_policy
        token = bearer(headers)
        jwt = token if looks_like_jwt(token) else ""
        if not jwt:  # SDKs that only send x-api-key (Anthropic's) carry the JWT there
            api_key = headers.get("x-api-key", "").strip()
            jwt = api_key if looks_like_jwt(api_key) else ""
        key_principal: Principal | None = None
        if route.require_virtual_key:
            key_principal, refusal = check_virtual_key(
                snapshot, route, _without_jwt(headers, jwt), self.directory
            )
            if refusal is not None:
                return key_principal, refusal
            if not jwt:
                return key_principal, None
        elif not jwt:
            if policy.allow_virtual_key and (token or headers.get("x-api-key")):
                return check_virtual_key(snapshot, route, headers, self.directory)
            return ANONYMOUS, self._refusal(
                route,
                headers,
                scheme,
                "a bearer JWT is required" if not token else "the bearer token is not a JWT",
                token_given=bool(token),
            )
        try:
            principal = await self._verify(route, jwt)
        except TokenRefused as exc:
            return key_principal or ANONYMOUS, self._refusal(
                route, headers, scheme, str(exc), token_given=True
            )
        provider = self.verifiers[principal.provider_id or ""].provider
        if principal.org is None and provider.org_header:
            org = headers.get(provider.org_header, "").strip()
            if org:
                principal = dataclasses.replace(principal, org=org[:256])
        if key_principal is not None:
            principal = dataclasses.replace(principal, key_id=key_principal.key_id)
        missing = [s for s in policy.required_scopes if s not in principal.scopes]
        if missing:
            scope = " ".join(policy.required_scopes)
            challenge = (
                f'Bearer error="insufficient_scope", scope="{_quoted(scope)}", '
                f'error_description="missing scope {_quoted(" ".join(missing))}"'
            )
            if route.kind == "mcp":
                url = resource_metadata_url(route, headers, scheme, self._audiences(route))
                challenge += f', resource_metadata="{_quoted(url)}"'
            return principal, Refusal(
                403,
                "insufficient_scope",
                f"token lacks the scope {' '.join(missing)}",
                headers=((b"www-authenticate", challenge.encode()),),
            )
        return principal, None

    async def _verify(self, route: CompiledRoute, token: str) -> Principal:
        """The first of the route's providers whose issuer the token names verifies it."""
        for pid in route.jwt_provider_ids:  # the hot path: a token validated before
            verifier = self.verifiers.get(pid)
            if verifier is not None:
                hit = verifier.cached(token)
                if hit is not None:
                    return hit
        issuer = unverified_issuer(token)
        if issuer is None:
            raise TokenRefused("token is not a well-formed JWT")
        candidates = [
            self.verifiers[pid]
            for pid in route.jwt_provider_ids
            if pid in self.verifiers and self.verifiers[pid].provider.issuer == issuer
        ]
        if not candidates:
            raise TokenRefused("token issuer is not accepted on this route")
        refused: TokenRefused | None = None
        for verifier in candidates:
            try:
                return await verifier.verify(token)
            except TokenRefused as exc:
                refused = refused or exc
        assert refused is not None
        raise refused

    def _audiences(self, route: CompiledRoute) -> list[str]:
        return [
            audience
            for pid in route.jwt_provider_ids
            if pid in self.verifiers
            for audience in self.verifiers[pid].provider.audiences
        ]

    def _refusal(
        self,
        route: CompiledRoute,
        headers: Mapping[str, str],
        scheme: str,
        message: str,
        *,
        token_given: bool,
    ) -> Refusal:
        params: list[str] = []
        if route.kind == "mcp":
            url = resource_metadata_url(route, headers, scheme, self._audiences(route))
            params.append(f'resource_metadata="{_quoted(url)}"')
        if token_given:
            params.append(f'error="invalid_token", error_description="{_quoted(message)}"')
        challenge = "Bearer " + ", ".join(params) if params else "Bearer"
        return Refusal(401, CODE, message, headers=((b"www-authenticate", challenge.encode()),))


def google_key(headers: Mapping[str, str], query: bytes) -> Mapping[str, str]:
    """The headers with Google's credential (``x-goog-api-key``, else ``?key=``) as
    ``x-api-key``, unless that header is set already."""
    if "x-api-key" in headers:
        return headers
    key = headers.get("x-goog-api-key", "").strip()
    if not key and b"key=" in query:
        pairs = parse_qsl(query.decode("latin-1"), keep_blank_values=True)
        key = next((v.strip() for k, v in pairs if k == "key"), "")
    return {**headers, "x-api-key": key} if key else headers


def _without_jwt(headers: Mapping[str, str], jwt: str) -> Mapping[str, str]:
    """The headers a virtual-key check sees: not the JWT, which is no key."""
    if not jwt:
        return headers
    return {
        k: v
        for k, v in headers.items()
        if not (k == "x-api-key" and v.strip() == jwt)
        and not (k == "authorization" and bearer(headers) == jwt)
    }


async def _close_all(verifiers: list[JwtVerifier]) -> None:
    for verifier in verifiers:
        await verifier.close()
