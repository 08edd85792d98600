"""Which session a data-plane request belongs to, for usage attribution across planes.

Two ids can be stamped on a usage row:

- ``session_id``: the agent session the call belongs to, one id across LLM, MCP and ACP rows:
  the ACP session of the gateway-run agent whose turn caused it (the id its turn rows carry),
  else the agent's own session header, the first of ``agent-session-id``, ``goose-session-id``
  (verified on the wire: goose), ``x-claude-code-session-id`` (Claude Code), ``x-session-id``
  (opencode), ``session-id`` (Codex: verified on the wire, the CLI 0.171 sends the session id
  ``codex exec`` prints on every Responses call); an MCP request may also name it in
  ``params._meta["agent-session-id"]`` (the MCP plane reads that).
- ``acp_session_id``: the ACP session of the gateway-run agent whose turn caused the request.
  When the gateway is an agent's only origin, the ACP runtime gives each agent it starts a
  token, which the agent sends back as its credential (``Authorization: Bearer``, an API key)
  and in ``X-Agw-Acp-Session`` on its LLM and MCP requests, and binds it here; agents that
  send their ACP session id in their own session header (opencode does) are recognised by that
  id too.

The same token is the agent's credential: :meth:`SessionDirectory.grant` lets it stand for the
service's virtual key while the agent lives, so the agent never holds the key itself and its
credential dies with it. The dispatcher accepts it where a virtual key is expected.

In-process, no I/O: a lookup is a dict access, cheap enough for the hot path.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

ACP_SESSION_HEADER = "x-agw-acp-session"
CLIENT_SESSION_HEADERS = (
    "agent-session-id",
    "goose-session-id",
    "x-claude-code-session-id",
    "x-session-id",
    "session-id",
)
SESSION_ID_MAX = 200  # longer client ids are cut: they are stored and logged


class Owner(Protocol):
    """What a granted credential lives as long as (an agent's connection)."""

    @property
    def alive(self) -> bool: ...


class SessionDirectory:
    def __init__(self) -> None:
        self._by_token: dict[str, str] = {}
        self._live: dict[str, int] = {}  # ACP session id -> how many tokens name it
        self._grants: dict[str, tuple[str, Owner]] = {}  # token -> (virtual key bearer, owner)

    def grant(self, token: str, key: str, owner: Owner) -> None:
        """Let ``token`` stand for the virtual key ``key`` while ``owner`` is alive: the
        credential a gateway-run agent is given instead of the key itself."""
        self._grants[token] = (key, owner)

    def revoke(self, token: str) -> None:
        self._grants.pop(token, None)

    def credential(self, token: str) -> str | None:
        """The virtual key bearer ``token`` stands for, or None (unknown, or its agent is gone)."""
        grant = self._grants.get(token)
        if grant is None:
            return None
        if not grant[1].alive:
            del self._grants[token]
            return None
        return grant[0]

    def bind(self, token: str, session_id: str) -> None:
        self.unbind(token)
        self._by_token[token] = session_id
        self._live[session_id] = self._live.get(session_id, 0) + 1

    def unbind(self, token: str) -> None:
        session_id = self._by_token.pop(token, None)
        if session_id is not None:
            left = self._live.get(session_id, 1) - 1
            if left > 0:
                self._live[session_id] = left
            else:
                self._live.pop(session_id, None)

    def lookup(self, token: str) -> str | None:
        return self._by_token.get(token) if token else None

    def is_session(self, session_id: str) -> bool:
        return bool(session_id) and session_id in self._live

    def __len__(self) -> int:
        return len(self._by_token) + len(self._grants)


def attribute(
    headers: Mapping[str, str], directory: SessionDirectory | None
) -> tuple[str | None, str | None]:
    """(the session id, the ACP session id) of a request, each None if unknown: the session id
    is the ACP session when there is one, else the client's own session header."""
    client = None
    for name in CLIENT_SESSION_HEADERS:
        value = headers.get(name)
        if value:
            client = value[:SESSION_ID_MAX]
            break
    acp = None
    if directory is not None and len(directory):
        acp = directory.lookup(headers.get(ACP_SESSION_HEADER, ""))
        if acp is None:  # the session credential itself, as the agent's bearer or API key
            scheme, _, bearer = headers.get("authorization", "").partition(" ")
            if scheme.lower() == "bearer":
                acp = directory.lookup(bearer.strip())
            if acp is None:
                acp = directory.lookup(headers.get("x-api-key", "").strip())
        if acp is None and client is not None and directory.is_session(client):
            acp = client
    return acp or client, acp
