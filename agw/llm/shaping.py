"""Provider-specific request shaping (reference §3.3 "Compact modes" and provider specifics).

Applied to the upstream body after translation, so it holds whatever the client spoke:

- ``compact: cc`` on OpenAI-compatible chat providers: drop ``metadata`` and ``user``.
- ``deepseek`` / ``zhipu``: ``thinking: {type: <options.thinking_type>}`` (default ``disabled``,
  ``none`` sends nothing); deepseek ``response_format_type`` and tuning options fill what the
  request left unset.
- ``codex``: Responses with ``store: false`` and ``parallel_tool_calls: false``, without
  ``max_output_tokens`` and ``metadata``, function tools only; with ``compact: cc`` Claude Code's
  stateful tools (``Agent``, ``Task``, ``Team*``, ``SpawnTeam``) are dropped too.
- ``claudecode`` with ``compact: codex``: Codex tool names become Claude Code's on the way out
  and are restored on the way back (:func:`restore_tool_names`).
"""

from __future__ import annotations

import json
from typing import Any

from agw import jsonfast
from agw.config.llm import Provider
from agw.errors import InvalidRequest

OPENAI_COMPATIBLE = frozenset({"openai", "openrouter", "deepseek", "zhipu", "ollama"})
STATEFUL_CC_TOOLS = frozenset(
    {"agent", "task", "team", "teamcreate", "teamdelete", "spawnteam", "spawn_team"}
)
CODEX_TO_CLAUDE = {
    "exec_command": "Bash",
    "write_stdin": "TaskOutput",
    "update_plan": "TaskUpdate",
    "get_goal": "TaskGet",
    "create_goal": "TaskCreate",
    "update_goal": "TodoWrite",
    "request_user_input": "AskUserQuestion",
    "view_image": "Read",
}
DEEPSEEK_TUNING = (
    "max_tokens",
    "temperature",
    "top_p",
    "presence_penalty",
    "frequency_penalty",
    "log_probs",
    "top_log_probs",
)
CLAUDE_CODE_HEADERS = {
    "user-agent": "claude-cli/2.1.197 (external, sdk-cli)",
    "x-app": "cli",
    "anthropic-beta": "claude-code-20250219,oauth-2025-04-20,interleaved-thinking-2025-05-14,"
    "fine-grained-tool-streaming-2025-05-14",
    "anthropic-dangerous-direct-browser-access": "true",
    "x-stainless-lang": "js",
    "x-stainless-runtime": "node",
    "x-stainless-package-version": "0.60.0",
    "x-stainless-retry-count": "0",
}


def needs_shaping(provider: Provider, wire: str) -> bool:
    mode = provider.options.get("compact")
    ptype = provider.provider_type
    return (
        (mode == "cc" and wire == "chat" and ptype in OPENAI_COMPATIBLE)
        or ptype in ("deepseek", "zhipu", "codex")
        or (ptype == "claudecode" and mode == "codex" and wire == "messages")
    )


def shape(provider: Provider, wire: str, body: dict[str, Any]) -> dict[str, str]:
    """Edit ``body`` in place. Returns the tool names to restore in the answer (upstream name ->
    the client's), empty when none were changed."""
    mode = provider.options.get("compact")
    ptype = provider.provider_type
    if mode == "cc" and wire == "chat" and ptype in OPENAI_COMPATIBLE:
        body.pop("metadata", None)
        body.pop("user", None)
    if ptype in ("deepseek", "zhipu") and wire == "chat":
        thinking = str(provider.options.get("thinking_type", "disabled"))
        if thinking != "none":
            body["thinking"] = {"type": thinking}
        if ptype == "deepseek":
            fmt = provider.options.get("response_format_type")
            if fmt in ("text", "json_object"):
                body.setdefault("response_format", {"type": fmt})
            for name in DEEPSEEK_TUNING:
                if name in provider.options:
                    body.setdefault(name, provider.options[name])
    if ptype == "codex" and wire == "responses":
        _shape_codex(body, drop_stateful=mode == "cc")
    if ptype == "claudecode" and mode == "codex" and wire == "messages":
        return _rename_codex_tools(body)
    return {}


def _shape_codex(body: dict[str, Any], *, drop_stateful: bool) -> None:
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


def _rename_codex_tools(body: dict[str, Any]) -> dict[str, str]:
    used: set[str] = set()
    tools = body.get("tools")
    for tool in tools if isinstance(tools, list) else []:
        if isinstance(tool, dict) and isinstance(tool.get("name"), str):
            used.add(tool["name"])
    clash = sorted(codex for codex, claude in CODEX_TO_CLAUDE.items() if {codex, claude} <= used)
    if clash:
        raise InvalidRequest(
            f"tools {clash[0]!r} and {CODEX_TO_CLAUDE[clash[0]]!r} both present: compact mode "
            "codex cannot rename one onto the other"
        )
    renamed: dict[str, str] = {}

    def rename(node: dict[str, Any]) -> None:
        name = node.get("name")
        if isinstance(name, str) and name in CODEX_TO_CLAUDE:
            node["name"] = CODEX_TO_CLAUDE[name]
            renamed[node["name"]] = name

    for tool in tools if isinstance(tools, list) else []:
        if isinstance(tool, dict):
            rename(tool)
    for message in body.get("messages") or []:
        content = message.get("content") if isinstance(message, dict) else None
        for block in content if isinstance(content, list) else []:
            if isinstance(block, dict) and block.get("type") == "tool_use":
                rename(block)
    choice = body.get("tool_choice")
    if isinstance(choice, dict) and choice.get("type") == "tool":
        rename(choice)
    return renamed


def restore_tool_names(data: dict[str, Any], renamed: dict[str, str]) -> bool:
    """Messages answer or stream event: put the client's tool names back. True if changed."""
    changed = False
    blocks: list[Any] = []
    if data.get("type") == "content_block_start":
        blocks = [data.get("content_block")]
    elif isinstance(data.get("content"), list):
        blocks = data["content"]
    for block in blocks:
        if isinstance(block, dict) and block.get("type") == "tool_use":
            original = renamed.get(str(block.get("name")))
            if original:
                block["name"] = original
                changed = True
    return changed


def restore_event(name: str, data: str, renamed: dict[str, str]) -> str | None:
    """The event's data with tool names restored, or None when it needs no change."""
    if name != "content_block_start" or "tool_use" not in data:
        return None
    try:
        parsed = jsonfast.loads(data)
    except ValueError:
        return None
    if isinstance(parsed, dict) and restore_tool_names(parsed, renamed):
        return json.dumps(parsed)
    return None
