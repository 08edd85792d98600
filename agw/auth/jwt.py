"""JWT callers: one :class:`JwtVerifier` per JWT provider, its signing keys and its tokens.

- **Keys.** A provider's JWK set comes from its inline ``jwks``, its ``jwks_uri``, or OIDC
  discovery from its issuer (``/.well-known/openid-configuration``, then
  ``/.well-known/oauth-authorization-server``). It is fetched in the background when the
  provider appears (retried with backoff while the issuer is down: its callers get a clear 401
  meanwhile, agwd serves everything else), refreshed every :data:`REFRESH_S`, and at once when a
  token names an unknown ``kid`` (at most once per :data:`UNKNOWN_KID_S` per provider). A failed
  refresh keeps the keys it had.
- **Tokens.** Only asymmetric algorithms from the provider's list (``none`` and HS* never: a
  JWKS holds public keys, so an HS256 token "signed" with one is key confusion); ``iss`` must
  equal the issuer, one ``aud`` must be among the provider's audiences, ``exp`` is required,
  ``nbf``/``iat`` are honoured, all with ``clock_skew_seconds``. A valid token is cached until
  its ``exp`` (a bounded LRU), so the hot path is one dictionary lookup.

Tokens are never logged; a refusal names what was wrong, not the token.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

import aiohttp

from agw.auth.fetch import get_json
from agw.auth.principal import Principal
from agw.config.access import JwtProvider

log = logging.getLogger("agw.auth")

REFRESH_S = 300.0  # background refresh of a fetched JWK set
UNKNOWN_KID_S = 30.0  # at most one refresh per provider this often for an unknown kid
RETRY_MAX_S = 60.0  # backoff ceiling while an issuer is unreachable
MAX_TOKEN_BYTES = 8192  # a bearer longer than this is refused before any parsing
TOKEN_CACHE_SIZE = 10_000

CODE = "invalid_token"
DISCOVERY = ("/.well-known/openid-configuration", "/.well-known/oauth-authorization-server")


def _pyjwt() -> Any:
    """PyJWT, imported when a token is first verified: it loads cryptography's public-key
    bindings (about 12 MiB), which a gateway without JWT providers never needs."""
    import jwt

    return jwt


class TokenRefused(Exception):
    """Why a token does not admit its caller (the message goes to the caller)."""


def looks_like_jwt(token: str) -> bool:
    """Three base64url segments: what a virtual key never is."""
    return token.count(".") == 2 and token.startswith("eyJ")


def _claim(claims: Mapping[str, Any], path: str) -> Any:
    node: Any = claims
    for part in path.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node


def _text(value: Any) -> str | None:
    if isinstance(value, str) and value:
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    return None


def _groups(value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        return tuple(g for g in value.replace(",", " ").split() if g)
    if isinstance(value, (list, tuple)):
        return tuple(str(g) for g in value if isinstance(g, (str, int)))
    return ()


def _scopes(claims: Mapping[str, Any]) -> frozenset[str]:
    out: set[str] = set()
    for name in ("scope", "scp"):
        value = claims.get(name)
        if isinstance(value, str):
            out.update(value.split())
        elif isinstance(value, list):
            out.update(s for s in value if isinstance(s, str))
    return frozenset(out)


class JwtVerifier:
    """One provider's keys and validated-token cache. ``session`` is the gateway's HTTP client
    for its JWKS (None: inline keys only)."""

    def __init__(self, provider: JwtProvider, session: aiohttp.ClientSession | None) -> None:
        self.provider = provider
        self.session = session
        self.keys: dict[str, Any] = {}  # by kid; "" for a key without one
        self.bound_alg: dict[int, str] = {}  # id(key) -> the "alg" its JWK declares
        self.loaded = False
        self.last_error = ""
        self._last_kid_refresh = -UNKNOWN_KID_S
        self._refresh_lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self._tokens: OrderedDict[str, tuple[Principal, float]] = OrderedDict()
        self._algorithms = tuple(provider.algorithms)
        if provider.jwks is not None:
            self._install(provider.jwks)

    # ------------------------------------------------------------------------------ keys

    def start(self) -> None:
        """Fetch the keys in the background (a provider with inline keys has them already)."""
        if self.provider.jwks is None and self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._keep_fresh())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
            self._task = None

    async def _keep_fresh(self) -> None:
        delay = 1.0
        while True:
            ok = await self.refresh()
            if ok:
                delay = 1.0
                await asyncio.sleep(REFRESH_S)
            else:
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX_S)

    async def refresh(self) -> bool:
        """Fetch the JWK set now; False (and the old keys kept) when that fails."""
        async with self._refresh_lock:
            try:
                uri = self.provider.jwks_uri or await self._discover()
                document = await self._get_json(uri)
                self._install(document)
            except Exception as exc:  # any failure keeps the cached keys
                self.last_error = str(exc) or type(exc).__name__
                log.warning(
                    "jwks_refresh_failed",
                    extra={"jwt_provider": self.provider.id, "error": self.last_error},
                )
                return False
            self.last_error = ""
            return True

    async def _discover(self) -> str:
        issuer = self.provider.issuer.rstrip("/")
        errors: list[str] = []
        for suffix in DISCOVERY:
            try:
                meta = await self._get_json(issuer + suffix)
            except Exception as exc:
                errors.append(f"{suffix}: {exc}")
                continue
            uri = meta.get("jwks_uri")
            if isinstance(uri, str) and uri.startswith(("https://", "http://")):
                return uri
            errors.append(f"{suffix}: no jwks_uri")
        raise ValueError("OIDC discovery failed (" + "; ".join(errors) + ")")

    async def _get_json(self, url: str) -> dict[str, Any]:
        if self.session is None:
            raise ValueError("no HTTP client to fetch keys with")
        return await get_json(self.session, url)

    def _install(self, document: Mapping[str, Any]) -> None:
        entries = document.get("keys")
        if not isinstance(entries, list):
            raise ValueError('JWK set without "keys"')
        keys: dict[str, Any] = {}
        bound: dict[int, str] = {}
        for entry in entries:
            if not isinstance(entry, dict) or entry.get("use", "sig") != "sig":
                continue
            if entry.get("kty") == "oct":  # a shared secret has no place in a JWKS
                continue
            try:
                key = _pyjwt().PyJWK(entry)
            except Exception:  # an unusable key is skipped, the others kept
                continue
            keys[str(entry.get("kid", ""))] = key
            if isinstance(entry.get("alg"), str):
                bound[id(key)] = entry["alg"]
        if not keys and entries:
            raise ValueError("JWK set has no usable signing key")
        self.keys, self.bound_alg = keys, bound
        self.loaded = True

    # ------------------------------------------------------------------------------ tokens

    def cached(self, token: str) -> Principal | None:
        """The principal of a token this verifier validated and that has not expired: the hot
        path (one dictionary lookup, no parsing)."""
        hit = self._tokens.get(token)
        if hit is None:
            return None
        if hit[1] > time.time():
            return hit[0]
        self._tokens.pop(token, None)
        return None

    async def verify(self, token: str) -> Principal:
        """The principal of a valid token; :class:`TokenRefused` otherwise."""
        hit = self.cached(token)
        if hit is not None:
            return hit
        pyjwt = _pyjwt()
        if len(token) > MAX_TOKEN_BYTES:
            raise TokenRefused(f"token is longer than {MAX_TOKEN_BYTES} bytes")
        try:
            header = pyjwt.get_unverified_header(token)
        except pyjwt.PyJWTError:
            raise TokenRefused("token is not a well-formed JWT") from None
        alg = header.get("alg")
        if alg not in self._algorithms:
            raise TokenRefused(f"token algorithm {alg!r} is not accepted")
        kid = header.get("kid")
        kid = kid if isinstance(kid, str) else ""
        key = await self._key(kid)
        declared = self.bound_alg.get(id(key))  # a key bound to one algorithm signs only with it
        if declared is not None and declared != alg:
            raise TokenRefused(f"token algorithm {alg!r} does not match its key")
        try:
            claims: dict[str, Any] = pyjwt.decode(
                token,
                key.key,
                algorithms=[alg],
                audience=self.provider.audiences,
                issuer=self.provider.issuer,
                leeway=self.provider.clock_skew_seconds,
                options={"require": ["exp", "iss", "aud"]},
            )
        except pyjwt.ExpiredSignatureError:
            raise TokenRefused("token is expired") from None
        except pyjwt.ImmatureSignatureError:
            raise TokenRefused("token is not yet valid") from None
        except pyjwt.InvalidAudienceError:
            raise TokenRefused("token audience is not accepted") from None
        except pyjwt.InvalidIssuerError:
            raise TokenRefused("token issuer is not accepted") from None
        except pyjwt.MissingRequiredClaimError as exc:
            raise TokenRefused(f"token has no {exc.claim!r} claim") from None
        except pyjwt.InvalidSignatureError:
            raise TokenRefused("token signature is invalid") from None
        except (pyjwt.PyJWTError, ValueError, TypeError):
            raise TokenRefused("token is not a valid JWT") from None
        principal = self._principal(claims, token)
        exp = float(claims["exp"]) + self.provider.clock_skew_seconds
        self._tokens[token] = (principal, exp)
        if len(self._tokens) > TOKEN_CACHE_SIZE:
            self._tokens.popitem(last=False)
        return principal

    async def _key(self, kid: str) -> Any:
        key = self.keys.get(kid) if kid else self._only_key()
        if key is not None:
            return key
        loop_now = time.monotonic()
        if self.provider.jwks is None and loop_now - self._last_kid_refresh >= UNKNOWN_KID_S:
            self._last_kid_refresh = loop_now
            await self.refresh()
            key = self.keys.get(kid) if kid else self._only_key()
            if key is not None:
                return key
        if not self.loaded:
            reason = f": {self.last_error}" if self.last_error else ""
            raise TokenRefused(
                f'signing keys of JWT provider "{self.provider.id}" are not available yet{reason}'
            )
        raise TokenRefused("token key id (kid) is unknown" if kid else "token has no key id (kid)")

    def _only_key(self) -> Any:
        """A token without ``kid`` is accepted when the set holds exactly one key."""
        return next(iter(self.keys.values())) if len(self.keys) == 1 else None

    def _principal(self, claims: dict[str, Any], token: str) -> Principal:
        mapping = self.provider.claims
        user = _text(_claim(claims, mapping.user)) if mapping.user else None
        org = _text(_claim(claims, mapping.org)) if mapping.org else None
        groups = _groups(_claim(claims, mapping.groups)) if mapping.groups else ()
        return Principal(
            "jwt",
            user=user,
            org=org,
            groups=groups,
            claims=claims,
            provider_id=self.provider.id,
            scopes=_scopes(claims),
            token=token,
            owner=f"jwt\x00{self.provider.id}\x00{claims.get('sub') or user or ''}",
        )


def unverified_issuer(token: str) -> str | None:
    """The ``iss`` a token claims, to pick its provider (verified afterwards)."""
    pyjwt = _pyjwt()
    try:
        claims = pyjwt.decode(token, options={"verify_signature": False})
    except pyjwt.PyJWTError:
        return None
    iss = claims.get("iss")
    return iss if isinstance(iss, str) else None
