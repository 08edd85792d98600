"""Bundle models of who may call: virtual keys and JWT providers (the route policies that
name them, ``auth_policy`` and ``authorization``, are in base.py; docs/security.md)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal, Self

from pydantic import (
    Field,
    field_validator,
    model_validator,
)

from agw.config.base import (
    Authorization,
    Stamped,
    Strict,
    dedupe,
)

# Asymmetric algorithms only: a JWKS publishes public keys, so ``none`` and the HS* family
# (whose "key" would be the public key itself: key confusion) are never accepted.
JWT_ALGORITHMS = (
    "RS256",
    "RS384",
    "RS512",
    "PS256",
    "PS384",
    "PS512",
    "ES256",
    "ES384",
    "ES512",
    "EdDSA",
)
DEFAULT_JWT_ALGORITHMS = ["RS256", "ES256", "EdDSA"]


class VirtualKey(Stamped):
    id: str
    tag: str = ""
    description: str = ""
    disabled: bool = False
    allowed_route_ids: list[str] = Field(default_factory=list)
    status_message: str = ""
    expires_at: datetime | None = None

    @field_validator("allowed_route_ids")
    @classmethod
    def _routes(cls, v: list[str]) -> list[str]:
        if any(not r.strip() for r in v):
            raise ValueError("allowed_route_ids must not contain empty entries")
        return sorted(dedupe(v))

    @field_validator("expires_at")
    @classmethod
    def _tz(cls, v: datetime | None) -> datetime | None:
        if v is not None and v.tzinfo is None:
            raise ValueError("expires_at must be RFC3339 with a time zone (e.g. ...Z)")
        return v


class AuthorizationPolicy(Stamped, Authorization):
    """Gateway-wide rules (``authorizationPolicies``): every route of ``route_kinds`` (all when
    empty) is held to them as well as to its own ``authorization``. Deny rules of any policy
    deny; each policy with allow rules needs one of them to match, as the route's own do."""

    id: str
    description: str = ""
    disabled: bool = False
    route_kinds: list[Literal["llm", "mcp", "acp", "a2a"]] = Field(default_factory=list)

    @field_validator("route_kinds")
    @classmethod
    def _kinds(cls, v: list[str]) -> list[str]:
        return sorted(set(v))


class JwtClaims(Strict):
    """Which claims name the caller. A dotted name reads a nested claim (``realm.groups``)."""

    user: str = "sub"
    org: str = ""
    groups: str = ""


class JwtRegistration(Strict):
    """The registration shim of an identity provider that keeps dynamic client registration
    closed (Okta, Entra ID, Cognito): agw answers MCP clients' RFC 7591 registrations with
    this client, registered at the provider by the operator (docs/security.md, "MCP OAuth
    2.1"). Prefer a public client (no secret, PKCE): a secret given here is handed to every
    client that registers."""

    client_id: str
    client_secret: str = ""
    # default: "none" without a secret, "client_secret_basic" with one
    token_endpoint_auth_method: (
        Literal["none", "client_secret_basic", "client_secret_post"] | None
    ) = None
    # the redirect URIs registered with the client at the provider; a registration naming
    # another is refused with invalid_redirect_uri (empty: not checked here)
    redirect_uris: list[str] = Field(default_factory=list)

    @field_validator("client_id")
    @classmethod
    def _client_id(cls, v: str) -> str:
        v = v.strip()
        if not v:
            raise ValueError("client_id must not be empty")
        return v

    @field_validator("redirect_uris")
    @classmethod
    def _redirect_uris(cls, v: list[str]) -> list[str]:
        for uri in v:
            scheme, sep, rest = uri.partition(":")
            if not sep or not scheme or not rest or "#" in uri or any(c.isspace() for c in uri):
                raise ValueError(f"redirect URI {uri!r} must be an absolute URI without fragment")
        return dedupe(v)

    @model_validator(mode="after")
    def _method(self) -> Self:
        if self.token_endpoint_auth_method is None:
            self.token_endpoint_auth_method = (
                "client_secret_basic" if self.client_secret else "none"
            )
        if self.client_secret and self.token_endpoint_auth_method == "none":
            raise ValueError('token_endpoint_auth_method "none" takes no client_secret')
        if not self.client_secret and self.token_endpoint_auth_method != "none":
            raise ValueError(
                f'token_endpoint_auth_method "{self.token_endpoint_auth_method}" needs a '
                "client_secret"
            )
        return self


class JwtProvider(Stamped):
    """An identity provider whose signed JWTs admit callers (docs/security.md)."""

    id: str
    description: str = ""
    disabled: bool = False
    issuer: str
    audiences: list[str] = Field(default_factory=list)
    jwks_uri: str = ""
    jwks: dict[str, Any] | None = None
    algorithms: list[str] = Field(default_factory=lambda: list(DEFAULT_JWT_ALGORITHMS))
    clock_skew_seconds: int = Field(default=60, ge=0, le=3600)
    claims: JwtClaims = Field(default_factory=JwtClaims)
    org_header: str = ""
    # MCP OAuth 2.1 (RFC 9728): the authorization servers a protected-resource metadata
    # document names (default: the issuer) and the scopes it advertises
    authorization_servers: list[str] = Field(default_factory=list)
    scopes_supported: list[str] = Field(default_factory=list)
    # the registration shim (agw/auth/oauth_metadata.py): set for an issuer whose dynamic
    # client registration is closed; protected-resource metadata then names agw's facade of it
    registration: JwtRegistration | None = None

    @field_validator("issuer")
    @classmethod
    def _issuer(cls, v: str) -> str:
        v = v.strip()
        if not v.startswith(("https://", "http://")):
            raise ValueError("issuer must be an http(s) URL")
        return v

    @field_validator("jwks_uri")
    @classmethod
    def _jwks_uri(cls, v: str) -> str:
        v = v.strip()
        if v and not v.startswith(("https://", "http://")):
            raise ValueError("jwks_uri must be an http(s) URL")
        return v

    @field_validator("audiences", "scopes_supported", "authorization_servers")
    @classmethod
    def _list(cls, v: list[str]) -> list[str]:
        return dedupe(v)

    @field_validator("algorithms")
    @classmethod
    def _algorithms(cls, v: list[str]) -> list[str]:
        out: list[str] = []
        for alg in dedupe(v):
            canonical = next((a for a in JWT_ALGORITHMS if a.lower() == alg.lower()), None)
            if canonical is None:
                raise ValueError(
                    f"algorithm {alg!r} is not accepted (use: {', '.join(JWT_ALGORITHMS)}; "
                    "'none' and HS* never are)"
                )
            out.append(canonical)
        if not out:
            raise ValueError("algorithms must name at least one algorithm")
        return out

    @field_validator("org_header")
    @classmethod
    def _header(cls, v: str) -> str:
        return v.strip().lower()

    @model_validator(mode="after")
    def _keys(self) -> Self:
        if not self.audiences:
            raise ValueError(
                "audiences must name at least one audience (the token's aud must include one)"
            )
        if self.jwks_uri and self.jwks is not None:
            raise ValueError("give jwks_uri or jwks, not both")
        if self.jwks is not None and not isinstance(self.jwks.get("keys"), list):
            raise ValueError('jwks must be a JWK set: {"keys": [...]}')
        return self
