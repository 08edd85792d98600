"""Who is calling: the one principal the identity step gives each data-plane request."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

PrincipalKind = Literal["virtual_key", "anonymous"]


@dataclass(frozen=True, slots=True)
class Principal:
    """The caller of one request. ``key_id`` is the virtual key's id when one was presented and
    accepted; ``user``, ``org`` and ``groups`` name a person and their organization once an
    identity provider says so; ``claims`` are what it said."""

    kind: PrincipalKind
    key_id: str | None = None
    user: str | None = None
    org: str | None = None
    groups: tuple[str, ...] = ()
    claims: Mapping[str, object] = field(default_factory=dict)


ANONYMOUS = Principal("anonymous")
"""The caller of a route that asks for no credential."""
