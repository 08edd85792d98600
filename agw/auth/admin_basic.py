"""Admin API basic auth against a ``user:bcrypt-hash`` pair.

bcrypt is slow on purpose (~0.2 s), so it runs in a thread, and a successful check is
remembered by a SHA-256 of the presented header for the process lifetime (bounded), as Caddy
does; a wrong password is always checked in full.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac

from passlib.hash import bcrypt

_CACHE_LIMIT = 256


class AdminAuthConfigError(ValueError):
    pass


def hash_password(plaintext: str) -> str:
    if not plaintext:
        raise AdminAuthConfigError("password must not be empty")
    return str(bcrypt.using(rounds=12).hash(plaintext))


class BasicAuth:
    def __init__(self, spec: str) -> None:
        user, sep, hashed = spec.partition(":")
        if not sep or not user or not hashed:
            raise AdminAuthConfigError("admin basic auth must be user:bcrypt-hash")
        if not bcrypt.identify(hashed):
            raise AdminAuthConfigError(
                "admin basic auth hash is not a bcrypt hash (make one with agw hash-password)"
            )
        self.user = user
        self._hash = hashed
        self._good: set[bytes] = set()

    async def check(self, authorization: str | None) -> bool:
        if not authorization or authorization[:6].lower() != "basic ":
            return False
        digest = hashlib.sha256(authorization.encode()).digest()
        if digest in self._good:
            return True
        try:
            decoded = base64.b64decode(authorization[6:].strip(), validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            return False
        user, sep, password = decoded.partition(":")
        if not sep:
            return False
        user_ok = hmac.compare_digest(user.encode(), self.user.encode())
        ok = await asyncio.to_thread(_verify, password, self._hash)
        if ok and user_ok:
            if len(self._good) >= _CACHE_LIMIT:
                self._good.clear()
            self._good.add(digest)
            return True
        return False


def _verify(password: str, hashed: str) -> bool:
    try:
        return bool(bcrypt.verify(password, hashed))
    except ValueError:
        return False
