"""Who is calling: the one principal the identity step gives each data-plane request."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

PrincipalKind = Literal["virtual_key", "jwt", "anonymous"]


@dataclass(frozen=True, slots=True)
class Principal:
    """The caller of one request. ``key_id`` is the virtual key's id when one was presented and
    accepted; ``user``, ``org`` and ``groups`` name a person and their organization when an
    identity provider (``provider_id``, a JWT provider) says so; ``claims`` are what it said,
    ``scopes`` the token's ``scope``/``scp``; ``owner`` what isolates its sessions. ``token``
    is the caller's own bearer JWT: kept only to forward to a service that asks for it
    (``forward_client_token``), never logged."""

    kind: PrincipalKind
    key_id: str | None = None
    user: str | None = None
    org: str | None = None
    groups: tuple[str, ...] = ()
    claims: Mapping[str, object] = field(default_factory=dict)
    provider_id: str | None = None
    scopes: frozenset[str] = frozenset()
    token: str | None = field(default=None, repr=False)
    # whose sessions are whose (MCP sessions, ACP sessions and turns): the virtual key's id, or
    # for a JWT caller its provider and subject, so two people behind one route never share
    owner: str | None = None


ANONYMOUS = Principal("anonymous")
"""The caller of a route that asks for no credential."""
