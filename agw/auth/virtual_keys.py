"""Step 2 of the request pipeline, for virtual keys: the request's credential -> a
:class:`Principal`, or the :class:`Refusal` that says why not.

No I/O: the keys come from the runtime snapshot, a gateway-run agent's session credential from
the attribution directory (agw/runtime/attribution.py).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from functools import lru_cache

from agw.auth.principal import ANONYMOUS, Principal
from agw.errors import Refusal
from agw.runtime.attribution import SessionDirectory
from agw.runtime.snapshot import CompiledRoute, Snapshot

CODE = "virtual_key_rejected"


def bearer(headers: Mapping[str, str]) -> str:
    """The token of ``Authorization: Bearer <token>`` (``""`` without one)."""
    scheme, _, token = headers.get("authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""


def virtual_key_candidates(headers: Mapping[str, str]) -> list[str]:
    """``x-api-key`` first, then ``Authorization: Bearer``; de-duplicated, empties skipped."""
    found: list[str] = []
    api_key = headers.get("x-api-key", "").strip()
    if api_key:
        found.append(api_key)
    token = bearer(headers)
    if token and token not in found:
        found.append(token)
    return found


@lru_cache(maxsize=4096)
def key_principal(key_id: str) -> Principal:
    """The principal of a virtual key: the same immutable value on every request, built once
    (a frozen dataclass is not free to build on the hot path)."""
    return Principal("virtual_key", key_id=key_id, owner=key_id)


def authenticate(
    snapshot: Snapshot,
    route: CompiledRoute,
    headers: Mapping[str, str],
    directory: SessionDirectory | None = None,
) -> tuple[Principal, Refusal | None]:
    """The caller, and the refusal when its key does not admit it to ``route`` (the principal
    then still names the key, so the refusal is recorded against it). The first candidate
    valid for this route wins, so an unrelated key in the other header cannot shadow a valid
    one."""
    if not route.require_virtual_key:
        return ANONYMOUS, None
    return check_virtual_key(snapshot, route, headers, directory)


def check_virtual_key(
    snapshot: Snapshot,
    route: CompiledRoute,
    headers: Mapping[str, str],
    directory: SessionDirectory | None = None,
) -> tuple[Principal, Refusal | None]:
    """:func:`authenticate` for a route that takes a virtual key, whatever it requires."""
    candidates = virtual_key_candidates(headers)
    if not candidates:
        return ANONYMOUS, Refusal(401, CODE, "virtual key is required")
    refused: tuple[Principal, Refusal] | None = None
    now = datetime.now(UTC)
    for candidate in candidates:
        entry = snapshot.virtual_keys.get(candidate)
        if entry is None and directory is not None:  # a gateway-run agent's session credential
            key = directory.credential(candidate)
            entry = snapshot.virtual_keys.get(key) if key else None
        if entry is None:
            continue
        vk = entry.config
        principal = key_principal(entry.id)
        if vk.disabled:
            message = "virtual key is disabled"
            if vk.status_message:
                message += f": {vk.status_message}"
            refusal = Refusal(403, CODE, message)
        elif vk.expires_at is not None and vk.expires_at <= now:
            refusal = Refusal(403, CODE, "virtual key is expired")
        elif vk.allowed_route_ids and route.id not in vk.allowed_route_ids:
            refusal = Refusal(403, CODE, "virtual key is not allowed to access this route")
        else:
            return principal, None
        refused = refused or (principal, refusal)
    if refused is not None:
        return refused
    return ANONYMOUS, Refusal(401, CODE, "invalid virtual key")
