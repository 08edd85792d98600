"""Minting JWTs for tests: a key pair whose public half a jwtProvider trusts (inline ``jwks``
or a JWKS server), and tokens signed with it, good or deliberately bad."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any, Literal

import jwt as pyjwt
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

ISSUER = "https://idp.test.example"
AUDIENCE = "https://agw.test.example"

KeyKind = Literal["RS256", "ES256", "EdDSA"]
PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey


class TokenMinter:
    """One signing key (``alg``) with a ``kid``; :meth:`rotate` makes a new current key and
    keeps the old one published until :meth:`drop_old`."""

    def __init__(self, alg: KeyKind = "RS256", issuer: str = ISSUER) -> None:
        self.alg: KeyKind = alg
        self.issuer = issuer
        self.keys: list[tuple[str, PrivateKey]] = []
        self.rotate()

    @staticmethod
    def _new_key(alg: KeyKind) -> PrivateKey:
        if alg == "RS256":
            return rsa.generate_private_key(public_exponent=65537, key_size=2048)
        if alg == "ES256":
            return ec.generate_private_key(ec.SECP256R1())
        return ed25519.Ed25519PrivateKey.generate()

    def rotate(self) -> str:
        kid = uuid.uuid4().hex[:12]
        self.keys.append((kid, self._new_key(self.alg)))
        return kid

    def drop_old(self) -> None:
        self.keys = self.keys[-1:]

    @property
    def kid(self) -> str:
        return self.keys[-1][0]

    @property
    def private_key(self) -> PrivateKey:
        return self.keys[-1][1]

    def public_jwk(self, kid: str, key: PrivateKey) -> dict[str, Any]:
        public = key.public_key()
        algo: Any = (
            RSAAlgorithm
            if isinstance(public, rsa.RSAPublicKey)
            else ECAlgorithm
            if isinstance(public, ec.EllipticCurvePublicKey)
            else OKPAlgorithm
        )
        jwk: dict[str, Any] = json.loads(algo.to_jwk(public))
        jwk.update(kid=kid, use="sig", alg=self.alg)
        return jwk

    def jwks(self) -> dict[str, Any]:
        return {"keys": [self.public_jwk(kid, key) for kid, key in self.keys]}

    def public_pem(self) -> bytes:
        from cryptography.hazmat.primitives import serialization

        return self.private_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def token(
        self,
        sub: str = "alice",
        *,
        aud: str | list[str] | None = AUDIENCE,
        iss: str | None = None,
        exp_in: float = 600,
        nbf_in: float | None = None,
        kid: str | None = None,
        headers: dict[str, Any] | None = None,
        **claims: Any,
    ) -> str:
        now = int(time.time())
        body: dict[str, Any] = {"sub": sub, "iss": iss or self.issuer, "iat": now}
        body["exp"] = now + int(exp_in)
        if aud is not None:
            body["aud"] = aud
        if nbf_in is not None:
            body["nbf"] = now + int(nbf_in)
        body.update(claims)
        head = {"kid": kid if kid is not None else self.kid, **(headers or {})}
        return pyjwt.encode(body, self.private_key, algorithm=self.alg, headers=head)

    def provider(self, pid: str = "corp", **fields: Any) -> dict[str, Any]:
        """A ``jwtProviders`` entry trusting this minter's keys inline."""
        entry: dict[str, Any] = {
            "id": pid,
            "issuer": self.issuer,
            "audiences": [AUDIENCE],
            "jwks": self.jwks(),
            "algorithms": [self.alg],
            "claims": {"user": "email", "org": "org_id", "groups": "groups"},
        }
        entry.update(fields)
        return entry
