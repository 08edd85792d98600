"""Prompt and completion text for traces, only when the operator asks for it (--trace-content).

Never on by default: prompts and completions are the users' data. What is kept is cut to
:data:`CONTENT_LIMIT` characters. The prompt is the request's conversation as JSON (``system``
and ``messages``, ``input``, or ``contents``, by API); the completion is the answer's text,
joined across stream events, whatever the wire format.
"""

from __future__ import annotations

import json
from typing import Any

from agw import jsonfast
from agw.types import JsonObj

CONTENT_LIMIT = 16_384


def prompt_of(body: JsonObj | None) -> str | None:
    if not body:
        return None
    picked = {
        k: body[k] for k in ("system", "instructions", "messages", "input", "contents") if k in body
    }
    if not picked:
        return None
    return json.dumps(picked, ensure_ascii=False, default=str)[:CONTENT_LIMIT]


def _texts(data: Any, out: list[str]) -> None:
    """The text pieces of one answer or stream event, for chat, messages, responses, gemini."""
    if not isinstance(data, dict):
        return
    for choice in data.get("choices") or ():
        if isinstance(choice, dict):
            part = choice.get("delta") or choice.get("message") or {}
            if isinstance(part, dict) and isinstance(part.get("content"), str):
                out.append(part["content"])
    delta = data.get("delta")
    if isinstance(delta, dict) and isinstance(delta.get("text"), str):  # messages stream
        out.append(delta["text"])
    elif isinstance(delta, str) and str(data.get("type", "")).endswith("output_text.delta"):
        out.append(delta)  # responses stream
    for block in data.get("content") or ():  # messages answer
        if isinstance(block, dict) and isinstance(block.get("text"), str):
            out.append(block["text"])
    for item in data.get("output") or ():  # responses answer
        if isinstance(item, dict):
            for block in item.get("content") or ():
                if isinstance(block, dict) and isinstance(block.get("text"), str):
                    out.append(block["text"])
    for cand in data.get("candidates") or ():  # gemini
        parts = ((cand or {}).get("content") or {}).get("parts") or ()
        out.extend(
            p["text"] for p in parts if isinstance(p, dict) and isinstance(p.get("text"), str)
        )


class Completion:
    """Collects the answer's text from a JSON body or from stream events, up to the limit."""

    __slots__ = ("_parts", "_size")

    def __init__(self) -> None:
        self._parts: list[str] = []
        self._size = 0

    def feed(self, raw: str | bytes) -> None:
        if self._size >= CONTENT_LIMIT or not raw or raw == "[DONE]":
            return
        try:
            data = jsonfast.loads(raw)
        except ValueError:
            return
        before = len(self._parts)
        _texts(data, self._parts)
        self._size += sum(len(p) for p in self._parts[before:])

    def text(self) -> str:
        return "".join(self._parts)[:CONTENT_LIMIT]
