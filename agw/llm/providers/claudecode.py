"""Claude Code's provider (``claudecode``): Anthropic's wire with a subscription token, the
headers Claude Code itself sends, and ``compact: codex``: Codex tool names become Claude
Code's on the way out and are restored on the way back (:func:`restore_tool_names`)."""

from __future__ import annotations

import json
from typing import Any

from agw import jsonfast
from agw.config.llm import Provider
from agw.errors import InvalidRequest
from agw.llm.providers.anthropic import Anthropic
from agw.types import JsonObj

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


class ClaudeCode(Anthropic):
    request_headers = CLAUDE_CODE_HEADERS

    def key_headers(self, provider: Provider, wire: str, key: str) -> dict[str, str]:
        """A bearer token (an OAuth ``sk-ant-oat`` one always), or ``x-api-key`` when
        ``options.api_key_header`` says so."""
        if not key:
            return {}
        if provider.options.get("api_key_header") == "x-api-key" and not key.startswith(
            "sk-ant-oat"
        ):
            return {"x-api-key": key}
        return {"authorization": f"Bearer {key}"}

    def needs_shaping(self, provider: Provider, wire: str) -> bool:
        return provider.options.get("compact") == "codex" and wire == "messages"

    def shape(self, provider: Provider, wire: str, body: JsonObj) -> dict[str, str]:
        if provider.options.get("compact") == "codex" and wire == "messages":
            return _rename_codex_tools(body)
        return {}


def _rename_codex_tools(body: JsonObj) -> dict[str, str]:
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

    def rename(node: JsonObj) -> None:
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


def restore_tool_names(data: JsonObj, renamed: dict[str, str]) -> bool:
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
