"""MCP OAuth 2.1: what agw publishes as the resource server of its MCP routes
(docs/security.md, "MCP OAuth 2.1"). Served by the dispatcher before route matching.

- **Protected-resource metadata** (RFC 9728) of every MCP route whose ``auth_policy`` names JWT
  providers, at ``/.well-known/oauth-protected-resource<route prefix>`` (a route at ``/`` at
  the bare well-known path): ``resource`` (the route's URL: the provider audience naming the
  route's path, else the request's origin + prefix), ``authorization_servers`` (each provider's
  ``authorization_servers``, or its issuer), ``scopes_supported`` (the providers' scopes and
  the route's required scopes), ``bearer_methods_supported: ["header"]``. The 401 and 403 of
  such a route point here (``WWW-Authenticate: Bearer resource_metadata=...``: identity.py).
- **Registration shim** of a provider with ``registration`` (an issuer whose dynamic
  registration is closed): an authorization-server facade whose issuer is
  ``<origin>/_agw/oauth/<provider id>``. Its metadata (``/.well-known/oauth-authorization-
  server/_agw/oauth/<id>`` and the OpenID variants) is the issuer's own, fetched and cached,
  with ``issuer`` and ``registration_endpoint`` naming agw; authorization and tokens stay at
  the issuer. ``POST /_agw/oauth/<id>/register`` answers RFC 7591 with the configured client.
  Protected-resource metadata then names the facade instead of the issuer.

Metadata answers any trusted ``Host`` (the listener's ``Host`` rules) with
``Access-Control-Allow-Origin: *`` (public documents, no credentials); the registration endpoint
also checks ``Origin`` like any MCP route and answers CORS only to listed origins.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any
from urllib.parse import quote, unquote, urlsplit

import aiohttp

from agw.auth.fetch import get_json
from agw.config.access import JwtProvider
from agw.edge import EdgeCheck, host_name
from agw.runtime.snapshot import CompiledRoute, Snapshot
from agw.types import Receive, Scope, Send

log = logging.getLogger("agw.auth")

PRM = "/.well-known/oauth-protected-resource"
ASM = "/.well-known/oauth-authorization-server"
OIDC = "/.well-known/openid-configuration"
SHIM = "/_agw/oauth/"
PATHS = ("/.well-known/o", SHIM)  # what the dispatcher hands here (one startswith)

METADATA_TTL_S = 300.0  # the issuer's metadata behind a facade is fetched again after this
RETRY_S = 10.0  # after a failed fetch (a cached copy keeps being served meanwhile)
MAX_REGISTRATION_BYTES = 64 << 10
GRANT_TYPES = ("authorization_code", "refresh_token")

Headers = list[tuple[bytes, bytes]]


def public_origin(headers: Mapping[str, str], scheme: str, urls: Iterable[str] = ()) -> str:
    """``scheme://host`` of this request as its client sees it. The ``Host`` header names the
    host; the scheme is the request's, unless one of ``urls`` (the configured audiences) names
    this host with another (TLS ended by a proxy in front of agw)."""
    host = headers.get("host", "").strip().lower() or "localhost"
    for url in urls:
        parts = urlsplit(url)
        if parts.netloc.lower() == host and parts.scheme in ("http", "https"):
            return f"{parts.scheme}://{host}"
    return f"{scheme}://{host}"


def metadata_url(route: CompiledRoute, origin: str) -> str:
    """Where the protected-resource metadata of ``route`` is (RFC 9728 §3.1)."""
    return origin + PRM + route.path_prefix.rstrip("/")


def facade_issuer(provider_id: str, origin: str) -> str:
    return f"{origin}{SHIM}{quote(provider_id, safe='')}"


def route_providers(snapshot: Snapshot, route: CompiledRoute) -> list[JwtProvider]:
    """The route's enabled JWT providers, in its order."""
    out: list[JwtProvider] = []
    for pid in route.jwt_provider_ids:
        provider = snapshot.jwt_providers.get(pid)
        if isinstance(provider, JwtProvider) and not provider.disabled:
            out.append(provider)
    return out


def resource_url(route: CompiledRoute, providers: Sequence[JwtProvider], origin: str) -> str:
    """The route's resource identifier: an audience of its providers whose path is the route's
    prefix (the one on this request's origin first), else this origin + the prefix. Tokens
    must carry it in ``aud`` (RFC 8707), so configure it as an audience."""
    prefix = route.path_prefix.rstrip("/")
    fallback = origin + prefix
    candidates: list[str] = []
    for provider in providers:
        for audience in provider.audiences:
            parts = urlsplit(audience)
            if parts.scheme not in ("http", "https") or parts.path.rstrip("/") != prefix:
                continue
            if route.host and (parts.hostname or "") != route.host:
                continue
            candidates.append(audience)
    for audience in candidates:
        if audience.lower().startswith(origin.lower()):
            return audience
    return candidates[0] if candidates else fallback


def protected_resource_metadata(
    snapshot: Snapshot, route: CompiledRoute, headers: Mapping[str, str], scheme: str
) -> dict[str, Any] | None:
    """The RFC 9728 document of ``route``; None when none of its providers is enabled."""
    providers = route_providers(snapshot, route)
    if not providers:
        return None
    origin = public_origin(headers, scheme, (a for p in providers for a in p.audiences))
    servers: list[str] = []
    scopes: list[str] = []
    for provider in providers:
        if provider.registration is not None:
            named = [facade_issuer(provider.id, origin)]
        else:
            named = provider.authorization_servers or [provider.issuer]
        servers += [s for s in named if s not in servers]
        scopes += [s for s in provider.scopes_supported if s not in scopes]
    scopes += [s for s in route.config.auth_policy.required_scopes if s not in scopes]
    document: dict[str, Any] = {
        "resource": resource_url(route, providers, origin),
        "authorization_servers": servers,
        "bearer_methods_supported": ["header"],
    }
    if scopes:
        document["scopes_supported"] = scopes
    return document


def prm_route(snapshot: Snapshot, suffix: str, host: str) -> CompiledRoute | None:
    """The MCP route with JWT providers whose prefix is ``suffix`` ("" for a route at "/") and
    whose match host, if any, is ``host`` (host-specific routes come first)."""
    for route in snapshot.routes:
        if (
            route.kind == "mcp"
            and route.jwt_provider_ids
            and not route.disabled
            and route.path_prefix.rstrip("/") == suffix
            and (not route.host or route.host == host)
        ):
            return route
    return None


def registration_answer(provider: JwtProvider, request: Any) -> tuple[int, dict[str, Any]]:
    """The RFC 7591 answer to a registration request (a parsed JSON body) under the shim."""
    shim = provider.registration
    assert shim is not None
    if not isinstance(request, dict):
        return 400, _oauth_error("invalid_client_metadata", "the body must be a JSON object")
    uris = request.get("redirect_uris", [])
    if not isinstance(uris, list) or not all(isinstance(u, str) and u for u in uris):
        return 400, _oauth_error("invalid_redirect_uri", "redirect_uris must be a list of URIs")
    unknown = [u for u in uris if shim.redirect_uris and u not in shim.redirect_uris]
    if unknown:
        return 400, _oauth_error(
            "invalid_redirect_uri",
            f"redirect URI {unknown[0]} is not registered with the client of JWT provider "
            f'"{provider.id}" (registered: {", ".join(shim.redirect_uris)})',
        )
    answer: dict[str, Any] = {
        "client_id": shim.client_id,
        "client_id_issued_at": int(time.time()),
        "token_endpoint_auth_method": shim.token_endpoint_auth_method,
        "redirect_uris": uris or list(shim.redirect_uris),
        "grant_types": list(GRANT_TYPES),
        "response_types": ["code"],
    }
    if shim.client_secret:
        answer |= {"client_secret": shim.client_secret, "client_secret_expires_at": 0}
    for name in ("client_name", "scope", "application_type", "software_id", "software_version"):
        value = request.get(name)
        if isinstance(value, str) and value:
            answer[name] = value
    return 201, answer


def facade_metadata(upstream: Mapping[str, Any], issuer: str) -> dict[str, Any]:
    """The issuer's metadata as the facade at ``issuer`` publishes it."""
    document = dict(upstream)
    document["issuer"] = issuer
    document["registration_endpoint"] = issuer + "/register"
    # RFC 9207: the issuer's authorization responses name the issuer, not the facade
    document.pop("authorization_response_iss_parameter_supported", None)
    # every provider this is for does S256 (Entra's metadata does not say so; MCP clients
    # refuse an authorization server that does not)
    document.setdefault("code_challenge_methods_supported", ["S256"])
    return document


def _oauth_error(code: str, description: str) -> dict[str, Any]:
    return {"error": code, "error_description": description}


class _Cached:
    __slots__ = ("document", "error", "fetched_at", "lock", "provider", "tried_at")

    def __init__(self, provider: JwtProvider) -> None:
        self.provider = provider
        self.document: dict[str, Any] | None = None
        self.fetched_at = 0.0
        self.tried_at = -RETRY_S
        self.error = ""
        self.lock = asyncio.Lock()


class OAuthEndpoints:
    """The well-known documents and the registration shim, for one data listener."""

    def __init__(self, edge: EdgeCheck) -> None:
        self.edge = edge
        self._session: aiohttp.ClientSession | None = None
        self._issuers: dict[str, _Cached] = {}

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def serve(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        snapshot: Snapshot,
        headers: Mapping[str, str],
    ) -> bool:
        """Answer the request when its path is one of these endpoints; False otherwise (the
        dispatcher then matches routes as usual)."""
        path: str = scope["path"]
        method: str = scope["method"]
        scheme: str = scope.get("scheme", "http")
        host = host_name(headers.get("host", "")) or ""
        if path == PRM or path.startswith(PRM + "/"):
            route = prm_route(snapshot, path[len(PRM) :].rstrip("/"), host)
            if route is None:
                return False
            if not await self._document_request(method, route.host, headers, scheme, send):
                return True
            document = protected_resource_metadata(snapshot, route, headers, scheme)
            if document is None:
                return False
            await _json(send, 200, document, _PUBLIC)
            return True
        provider_id, tail = _shim_target(path)
        provider = snapshot.jwt_providers.get(provider_id) if provider_id else None
        if not isinstance(provider, JwtProvider) or provider.registration is None:
            return False
        if provider.disabled:
            return False
        if tail == "register":
            await self._register(receive, send, method, provider, headers, scheme)
            return True
        if not await self._document_request(method, "", headers, scheme, send):
            return True
        origin = public_origin(headers, scheme, provider.audiences)
        issuer = facade_issuer(provider.id, origin)
        upstream = await self._issuer_metadata(provider)
        if isinstance(upstream, str):
            await _json(send, 502, _oauth_error("temporarily_unavailable", upstream), _PUBLIC)
            return True
        await _json(send, 200, facade_metadata(upstream, issuer), _PUBLIC)
        return True

    async def _document_request(
        self, method: str, route_host: str, headers: Mapping[str, str], scheme: str, send: Send
    ) -> bool:
        """True when a metadata request may be answered; otherwise it was (421, 405, or the
        CORS preflight)."""
        refusal = self.edge.refusal(route_host, {"host": headers.get("host", "")}, scheme)
        if refusal is not None:
            await _json(send, refusal.status, {"error": refusal.message}, [])
            return False
        if method == "OPTIONS":
            await _preflight(send, "*", "GET, OPTIONS")
            return False
        if method not in ("GET", "HEAD"):
            await _json(send, 405, {"error": "GET only"}, [(b"allow", b"GET, HEAD, OPTIONS")])
            return False
        return True

    async def _register(
        self,
        receive: Receive,
        send: Send,
        method: str,
        provider: JwtProvider,
        headers: Mapping[str, str],
        scheme: str,
    ) -> None:
        refusal = self.edge.refusal("", headers, scheme)
        if refusal is not None:
            await _json(send, refusal.status, {"error": refusal.message}, [])
            return
        allowed = self.edge.policy.cors_origin(headers.get("origin"))
        cors: Headers = [(b"access-control-allow-origin", allowed.encode())] if allowed else []
        if method == "OPTIONS":
            await _preflight(send, allowed, "POST, OPTIONS")
            return
        if method != "POST":
            await _json(send, 405, {"error": "POST only"}, [(b"allow", b"POST, OPTIONS"), *cors])
            return
        body = await _read_body(receive, MAX_REGISTRATION_BYTES)
        if body is None:
            error = _oauth_error("invalid_client_metadata", "registration request too large")
            await _json(send, 413, error, [*cors, (b"connection", b"close")])
            return
        try:
            request = json.loads(body or b"null")
        except ValueError:
            request = None
        status, answer = registration_answer(provider, request)
        if status == 201:
            log.info(
                "oauth_registration_shim",
                extra={"jwt_provider": provider.id, "client_name": answer.get("client_name", "")},
            )
        await _json(send, status, answer, [(b"cache-control", b"no-store"), *cors])

    async def _issuer_metadata(self, provider: JwtProvider) -> dict[str, Any] | str:
        """The issuer's authorization-server metadata (cached), or why it is not available."""
        cached = self._issuers.get(provider.id)
        if cached is None or cached.provider != provider:
            cached = self._issuers[provider.id] = _Cached(provider)
        now = time.monotonic()
        fresh = cached.document is not None and now - cached.fetched_at < METADATA_TTL_S
        if fresh or now - cached.tried_at < RETRY_S:
            return cached.document if cached.document is not None else cached.error
        async with cached.lock:
            if cached.tried_at >= now:  # fetched while this request waited
                return cached.document if cached.document is not None else cached.error
            cached.tried_at = time.monotonic()
            try:
                cached.document = await self._fetch_metadata(provider.issuer)
                cached.fetched_at = time.monotonic()
                cached.error = ""
            except Exception as exc:
                cached.error = f'metadata of the issuer of JWT provider "{provider.id}": {exc}'
                log.warning(
                    "oauth_issuer_metadata_failed",
                    extra={"jwt_provider": provider.id, "error": str(exc)},
                )
        return cached.document if cached.document is not None else cached.error

    async def _fetch_metadata(self, issuer: str) -> dict[str, Any]:
        """RFC 8414 (path-aware), then OpenID discovery; the document must name ``issuer``."""
        parts = urlsplit(issuer.rstrip("/"))
        origin = f"{parts.scheme}://{parts.netloc}"
        urls = [origin + ASM + parts.path, issuer.rstrip("/") + OIDC]
        if parts.path:
            urls.append(origin + OIDC + parts.path)
        errors: list[str] = []
        for url in urls:
            try:
                document = await self._get_json(url)
            except Exception as exc:
                errors.append(str(exc) or type(exc).__name__)
                continue
            named = document.get("issuer")
            if not isinstance(named, str) or named.rstrip("/") != issuer.rstrip("/"):
                errors.append(f"{url} names issuer {named!r}")
                continue
            if not isinstance(document.get("authorization_endpoint"), str):
                errors.append(f"{url} has no authorization_endpoint")
                continue
            return document
        raise ValueError("; ".join(errors))

    async def _get_json(self, url: str) -> dict[str, Any]:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                headers={"accept": "application/json"}, trust_env=True
            )
        return await get_json(self._session, url)


_PUBLIC: Headers = [
    (b"access-control-allow-origin", b"*"),
    (b"cache-control", b"no-store"),
]


def _shim_target(path: str) -> tuple[str, str]:
    """``(provider id, "register" | "metadata" | "")`` of a path under the shim."""
    for well_known in (ASM, OIDC):
        if path.startswith(well_known + SHIM):
            rest = path[len(well_known + SHIM) :]
            return (unquote(rest), "metadata") if rest and "/" not in rest else ("", "")
    if path.startswith(SHIM):
        rest = path[len(SHIM) :]
        pid, _, tail = rest.partition("/")
        if tail == "register":
            return unquote(pid), "register"
        if tail == OIDC.lstrip("/"):
            return unquote(pid), "metadata"
    return "", ""


async def _read_body(receive: Receive, limit: int) -> bytes | None:
    """The request body, or None once it passes ``limit`` bytes."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return b"".join(chunks)
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


async def _preflight(send: Send, origin: str | None, methods: str) -> None:
    headers: Headers = [(b"content-length", b"0")]
    if origin:
        headers += [
            (b"access-control-allow-origin", origin.encode()),
            (b"access-control-allow-methods", methods.encode()),
            (b"access-control-allow-headers", b"content-type, mcp-protocol-version"),
            (b"access-control-max-age", b"86400"),
        ]
    await send({"type": "http.response.start", "status": 204, "headers": headers})
    await send({"type": "http.response.body", "body": b""})


async def _json(send: Send, status: int, value: Mapping[str, Any], headers: Headers) -> None:
    body = json.dumps(value).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
