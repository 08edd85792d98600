"""Which session a data-plane request belongs to, for usage attribution across planes.

Two ids can be stamped on a usage row:

- ``session_id``: the client's own session id, when its agent sends one on every request
  (verified on the wire: Claude Code ``x-claude-code-session-id``, opencode ``x-session-id``,
  Codex ``session-id``, goose ``goose-session-id``).
- ``acp_session_id``: the ACP session of the gateway-run agent whose turn caused the request.
  When the gateway is an agent's only origin, the ACP runtime gives each session it opens a
  token, which the agent sends back in ``X-Agw-Acp-Session`` on its LLM and MCP requests, and
  binds it here; agents that send their ACP session id in their own session header (opencode
  does) are recognised by that id too.

In-process, no I/O: a lookup is a dict access, cheap enough for the hot path.
"""

from __future__ import annotations

from collections.abc import Mapping

ACP_SESSION_HEADER = "x-agw-acp-session"
CLIENT_SESSION_HEADERS = (
    "x-claude-code-session-id",
    "x-session-id",
    "session-id",
    "goose-session-id",
)


class SessionDirectory:
    def __init__(self) -> None:
        self._by_token: dict[str, str] = {}
        self._live: dict[str, int] = {}  # ACP session id -> how many tokens name it

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
        return len(self._by_token)


def attribute(
    headers: Mapping[str, str], directory: SessionDirectory | None
) -> tuple[str | None, str | None]:
    """(the client's own session id, the ACP session id) of a request, each None if unknown."""
    client = None
    for name in CLIENT_SESSION_HEADERS:
        value = headers.get(name)
        if value:
            client = value[:200]
            break
    acp = None
    if directory is not None and len(directory):
        acp = directory.lookup(headers.get(ACP_SESSION_HEADER, ""))
        if acp is None and client is not None and directory.is_session(client):
            acp = client
    return client, acp
