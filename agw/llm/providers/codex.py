"""Codex's provider (``codex``): OpenAI's Responses wire as the ChatGPT backend takes it:
``store: false`` and ``parallel_tool_calls: false``, without ``max_output_tokens`` and
``metadata``, function tools only; with ``compact: cc`` Claude Code's stateful tools
(``Agent``, ``Task``, ``Team*``, ``SpawnTeam``) are dropped too."""

from __future__ import annotations

from agw.config.llm import Provider
from agw.llm.providers.base import ProviderKind
from agw.types import JsonObj

STATEFUL_CC_TOOLS = frozenset(
    {"agent", "task", "team", "teamcreate", "teamdelete", "spawnteam", "spawn_team"}
)


class Codex(ProviderKind):
    chat_wire = "responses"
    responses_native = True

    def url(self, provider: Provider, wire: str, model: str, *, stream: bool) -> str:
        base = provider.effective_base_url.rstrip("/")
        if wire == "models":
            return base + "/models"
        return base + "/responses"

    def needs_shaping(self, provider: Provider, wire: str) -> bool:
        return True

    def shape(self, provider: Provider, wire: str, body: JsonObj) -> dict[str, str]:
        if wire == "responses":
            _shape(body, drop_stateful=provider.options.get("compact") == "cc")
        return {}


def _shape(body: JsonObj, *, drop_stateful: bool) -> None:
    body["store"] = False
    body["parallel_tool_calls"] = False
    body.pop("max_output_tokens", None)
    body.pop("metadata", None)
    tools = body.get("tools")
    if isinstance(tools, list):
        kept = [t for t in tools if isinstance(t, dict) and t.get("type") == "function"]
        if drop_stateful:
            kept = [t for t in kept if str(t.get("name", "")).lower() not in STATEFUL_CC_TOOLS]
        body["tools"] = kept
        names = {t.get("name") for t in kept}
        choice = body.get("tool_choice")
        if isinstance(choice, dict) and choice.get("name") and choice["name"] not in names:
            body["tool_choice"] = "auto"
