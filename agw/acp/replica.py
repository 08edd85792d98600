"""Which agwd replica holds an ACP session, told by the ids it hands out (docs/scale-out.md).

An ACP agent is a process of the replica that started it, so its sessions live there. With
``--replica-id`` set (a deployment of several replicas), the ids a replica hands out name it:
a turn's ``session_id`` and those of ``GET <route>/sessions`` are ``<replica>~<agent's id>``, a
permission ``request_id`` ``<replica>~perm-<hex>``, an ``Acp-Connection-Id`` ``<replica>~<hex>``.
A request that names another replica's id is refused with 421 and the owner (:func:`misdirected`)
before any agent is touched; an id without a tag, or with this replica's, is taken as this
replica's (an unknown one stays the usual 404). Without ``--replica-id`` ids are handed out and
taken whole, as by a single gateway. Every ACP answer carries
``x-agw-replica`` (:data:`HEADER`), which a load balancer can route sticky by.
"""

from __future__ import annotations

import re

from agw.acp.record import INVALID
from agw.errors import Refusal

HEADER = b"x-agw-replica"
OWNER_HEADER = b"x-agw-owner-replica"
SEP = "~"
ID_RE = re.compile(r"[A-Za-z0-9._:-]{1,64}")


def valid_replica_id(text: str) -> bool:
    """Letters, digits, ``.``, ``_``, ``:``, ``-``; 64 at most (never the separator ``~``)."""
    return ID_RE.fullmatch(text) is not None


class Replica:
    """This replica's name (``name``) and whether its ids carry it (``tagged``)."""

    def __init__(self, name: str, *, tagged: bool) -> None:
        self.name = name
        self.tagged = tagged
        self.header = (HEADER, name.encode())

    def tag(self, raw: str) -> str:
        """The id handed out for ``raw``, an id of this replica."""
        return f"{self.name}{SEP}{raw}" if self.tagged and raw else raw

    def local(self, given: str, what: str) -> str:
        """The raw id of ``given``; :func:`misdirected` when its tag names another replica.
        An untagged replica takes every id whole (an agent's own id may hold a ``~``)."""
        owner, sep, raw = given.partition(SEP)
        if not self.tagged or not sep or not valid_replica_id(owner):
            return given  # untagged: this replica's
        if owner != self.name:
            raise misdirected(what, given, owner, self.name)
        return raw


def misdirected(what: str, given: str, owner: str, here: str) -> Refusal:
    """421 ``{"error", "owner"}`` with ``x-agw-owner-replica``: ``given`` lives on ``owner``."""
    message = f'{what} "{given}" is held by replica "{owner}", not "{here}": send it there'
    return Refusal(421, INVALID, message, [(OWNER_HEADER, owner.encode())], detail={"owner": owner})
