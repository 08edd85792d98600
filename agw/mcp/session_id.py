"""Self-contained session ids: what a replica needs to rebuild a handshake-era session that
another replica (or its own previous process) opened, sealed into the ``Mcp-Session-Id``.

The id is base64url (no padding) of a 12-byte random nonce and the AES-256-GCM ciphertext of a
compact JSON object: the route id, the owner (virtual key id or JWT principal), the negotiated
protocol version, the client's relayed capabilities, its client info, the issue time, and per
HTTP service the upstream's own ``Mcp-Session-Id``, protocol version and capability names. The
associated data names the format (``agw mcp session v1``). One key seals and opens every id of
the deployment: ``AGW_SESSION_KEY``, or one derived with HKDF from the store's secret key at
start (:attr:`agw.store.secrets.SecretBox.session_key`); nothing is derived per request.

An id that does not open (altered, another key), is older than :data:`MAX_AGE_MS`, or names
another route or owner is unknown: the ingress answers 404 and the client initializes again
(docs/mcp.md, "Session ids").
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import os
from dataclasses import dataclass
from typing import Any

from agw.clock import now_ms
from agw.store.secrets import parse_key
from agw.types import JsonObj

log = logging.getLogger(__name__)

KEY_ENV = "AGW_SESSION_KEY"
NONCE_BYTES = 12
TAG_BYTES = 16
AAD = b"agw mcp session v1"
PLAIN_MAX = 2048  # bytes of sealed JSON: an id is at most 2,784 characters
ID_MAX = 4 * -(-(NONCE_BYTES + PLAIN_MAX + TAG_BYTES) // 3)  # longer: unknown, never opened
UPSTREAM_ID_MAX = 256  # an upstream session id longer than this is not carried
MAX_AGE_MS = 24 * 3600 * 1000  # an id older than a day is unknown (the client re-initializes)
SKEW_MS = 5 * 60 * 1000  # an issue time this far in the future is refused too


@dataclass(frozen=True)
class UpstreamRef:
    """An HTTP upstream session a rebuilt session binds to."""

    service_id: str
    session_id: str
    protocol_version: str | None
    capabilities: tuple[str, ...]


@dataclass(frozen=True)
class Sealed:
    """What a session id carries."""

    route_id: str
    owner: str | None
    protocol_version: str
    client_capabilities: tuple[str, ...]
    client_info: JsonObj | None
    issued_at_ms: int
    upstreams: tuple[UpstreamRef, ...]


def env_session_key(env: dict[str, str] | None = None) -> bytes | None:
    """``AGW_SESSION_KEY`` (32 bytes, base64), None when unset: the gateway then uses the key
    derived from the store's (:attr:`agw.store.secrets.SecretBox.session_key`). A malformed
    value is a StoreError naming the variable, never the value."""
    raw = (os.environ if env is None else env).get(KEY_ENV, "")
    return parse_key(raw, KEY_ENV) if raw.strip() else None


def _aesgcm(key: bytes) -> Any:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    return AESGCM(key)


class SessionSealer:
    """Seals :class:`Sealed` into session ids and opens them (see the module docstring)."""

    __slots__ = ("_aead",)

    def __init__(self, key: bytes) -> None:
        self._aead = _aesgcm(key)

    def seal(self, sealed: Sealed) -> str | None:
        """The id carrying ``sealed``; upstream refs, then client info, are left out when it
        would be over :data:`PLAIN_MAX`; None when even the rest is too large."""
        upstreams = list(sealed.upstreams)
        info = sealed.client_info
        while True:
            plain = _encode(sealed, info, upstreams)
            if len(plain) <= PLAIN_MAX:
                break
            if upstreams:
                upstreams.pop()
            elif info is not None:
                info = None
            else:
                log.warning("mcp_session_id_too_large", extra={"route_id": sealed.route_id})
                return None
        nonce = os.urandom(NONCE_BYTES)
        raw = nonce + self._aead.encrypt(nonce, plain, AAD)
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

    def open(self, token: str) -> Sealed | None:
        """What ``token`` carries; None when it does not open (altered, another key, not an
        id), or is expired or malformed."""
        from cryptography.exceptions import InvalidTag

        if len(token) > ID_MAX or len(token) < 4 * (NONCE_BYTES + TAG_BYTES) // 3:
            return None
        try:
            raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
            plain = self._aead.decrypt(raw[:NONCE_BYTES], raw[NONCE_BYTES:], AAD)
            found = _decode(json.loads(plain))
        except (InvalidTag, ValueError, binascii.Error, TypeError, KeyError):
            return None
        age = now_ms() - found.issued_at_ms
        if age > MAX_AGE_MS or age < -SKEW_MS:
            return None
        return found


def _encode(sealed: Sealed, info: JsonObj | None, upstreams: list[UpstreamRef]) -> bytes:
    obj = {
        "r": sealed.route_id,
        "o": sealed.owner,
        "p": sealed.protocol_version,
        "c": list(sealed.client_capabilities),
        "i": info,
        "t": sealed.issued_at_ms,
        "u": [
            [u.service_id, u.session_id, u.protocol_version, list(u.capabilities)]
            for u in upstreams
        ],
    }
    return json.dumps(obj, separators=(",", ":")).encode()


def _strings(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError("not a list of strings")
    return tuple(value)


def _decode(obj: Any) -> Sealed:
    """A :class:`Sealed` from the opened JSON (ValueError, TypeError or KeyError if it is not
    one: only the gateway's key seals, but a bug must not crash a request)."""
    route, owner, version, info, issued = obj["r"], obj["o"], obj["p"], obj["i"], obj["t"]
    if not isinstance(route, str) or not isinstance(version, str) or not isinstance(issued, int):
        raise ValueError("malformed session id")
    if owner is not None and not isinstance(owner, str):
        raise ValueError("malformed owner")
    if info is not None and not isinstance(info, dict):
        raise ValueError("malformed client info")
    refs = []
    for sid, upstream_id, upstream_version, caps in obj["u"]:
        if not isinstance(sid, str) or not isinstance(upstream_id, str):
            raise ValueError("malformed upstream")
        if upstream_version is not None and not isinstance(upstream_version, str):
            raise ValueError("malformed upstream version")
        refs.append(UpstreamRef(sid, upstream_id, upstream_version, _strings(caps)))
    return Sealed(route, owner, version, _strings(obj["c"]), info, issued, tuple(refs))
