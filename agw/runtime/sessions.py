"""Which ACP session a request belongs to, for usage attribution across planes.

When the gateway is an agent's only origin, the ACP runtime gives each session it opens a token
(sent back by the agent on its LLM and MCP requests) and binds it here; the LLM and MCP planes
look a request's token up to stamp the ACP ``session_id`` on its usage row. In-process, no I/O.
"""

from __future__ import annotations


class SessionDirectory:
    def __init__(self) -> None:
        self._by_token: dict[str, str] = {}

    def bind(self, token: str, session_id: str) -> None:
        self._by_token[token] = session_id

    def unbind(self, token: str) -> None:
        self._by_token.pop(token, None)

    def lookup(self, token: str) -> str | None:
        return self._by_token.get(token) if token else None

    def __len__(self) -> int:
        return len(self._by_token)
