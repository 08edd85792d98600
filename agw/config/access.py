"""Bundle models of who may call: virtual keys and JWT providers (the route policies that
name them, ``auth_policy`` and ``authorization``, are in base.py; docs/security.md)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Self

from pydantic import (
    Field,
    field_validator,
    model_validator,
)

from agw.config.base import (
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


class JwtClaims(Strict):
    """Which claims name the caller. A dotted name reads a nested claim (``realm.groups``)."""

    user: str = "sub"
    org: str = ""
    groups: str = ""


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
        if self.jwks_uri and self.jwks is not None:
            raise ValueError("give jwks_uri or jwks, not both")
        if self.jwks is not None and not isinstance(self.jwks.get("keys"), list):
            raise ValueError('jwks must be a JWK set: {"keys": [...]}')
        return self
