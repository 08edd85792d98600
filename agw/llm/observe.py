"""Read usage and tool calls out of upstream answers, JSON or streamed, without changing them.

One :class:`Observer` per request watches the wire format the upstream speaks. It parses an event
only when a cheap byte check says it may hold what we need, so passthrough streams stay cheap.
Usage is read by the wire's one parser (:mod:`agw.llm.providers.tokens`), the one translation
uses too: the same answer records the same counts whatever the client's dialect.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from agw import jsonfast
from agw.llm.providers.anthropic import MessagesUsage, messages_usage
from agw.llm.providers.gemini import gemini_usage
from agw.llm.providers.openai import chat_usage, responses_usage
from agw.llm.providers.tokens import Usage
from agw.sse import Event, EventTooLarge, SSESplitter
from agw.types import JsonObj


def _dict(value: Any) -> JsonObj:
    return value if isinstance(value, dict) else {}


@dataclass(slots=True)
class Observer:
    wire: str  # chat | messages | responses | gemini | embeddings
    usage: Usage = field(default_factory=Usage)
    usage_seen: bool = False  # the provider reported usage
    tool_names: list[str] = field(default_factory=list)
    finished: bool = False  # the stream reached its own end marker
    final_usage: bool = False  # a stream's usage for the whole answer came (before its end)
    usage_only_chunk: bool = False  # last chat event was the usage-only chunk
    messages_usage: MessagesUsage | None = None  # a Messages stream's reports so far

    # ---------------------------------------------------------------------------- JSON bodies

    def body(self, raw: bytes) -> None:
        try:
            data = jsonfast.loads(raw)
        except ValueError:
            return
        if not isinstance(data, dict):
            return
        self.finished = True
        if self.wire == "messages":
            self._usage(messages_usage, data.get("usage"))
            for block in data.get("content") or ():
                if _dict(block).get("type") == "tool_use":
                    self.tool_names.append(str(block.get("name", "")))
        elif self.wire == "responses":
            self._responses(data)
        elif self.wire == "gemini":
            self._gemini(data)
        else:
            self._usage(chat_usage, data.get("usage"))
            for choice in data.get("choices") or ():
                message = _dict(_dict(choice).get("message"))
                for call in message.get("tool_calls") or ():
                    self.tool_names.append(str(_dict(_dict(call).get("function")).get("name", "")))

    # -------------------------------------------------------------------------------- streams

    def raw_event(self, event: Event) -> None:
        """One SSE event of the upstream stream, looked inside only when its bytes may hold
        something we read (usage, tool calls, the end marker)."""
        if not _worth_parsing(self.wire, event.raw):
            self.usage_only_chunk = False
            return
        self.event(event.name, event.data)

    def event(self, name: str, data: str) -> None:
        """One SSE event of the upstream stream."""
        self.usage_only_chunk = False
        if self.wire == "chat":
            if data == "[DONE]":
                self.finished = True
                return
            if '"tool_calls"' not in data and not (
                '"usage"' in data and '"usage":null' not in data and '"usage": null' not in data
            ):
                return
            chunk = _loads(data)
            usage = chunk.get("usage")
            if isinstance(usage, dict):
                self._usage(chat_usage, usage)
                self.final_usage = True
                self.usage_only_chunk = not chunk.get("choices")
            for choice in chunk.get("choices") or ():
                for call in _dict(_dict(choice).get("delta")).get("tool_calls") or ():
                    fn = _dict(_dict(call).get("function"))
                    if fn.get("name"):
                        self.tool_names.append(str(fn["name"]))
        elif self.wire == "messages":
            if name == "message_stop":
                self.finished = True
            elif name == "message_start":
                self._stream_usage(_dict(_loads(data).get("message")).get("usage"), delta=False)
            elif name == "message_delta":
                self._stream_usage(_loads(data).get("usage"), delta=True)
                self.final_usage = True
            elif name == "content_block_start" and "tool_use" in data:
                block = _dict(_loads(data).get("content_block"))
                if block.get("type") == "tool_use":
                    self.tool_names.append(str(block.get("name", "")))
        elif self.wire == "responses":
            if name in ("response.completed", "response.incomplete", "response.failed"):
                self.finished = True
                self._responses(_dict(_loads(data).get("response")), names=False)
            elif name == "response.output_item.done" and "function_call" in data:
                item = _dict(_loads(data).get("item"))
                if item.get("type") == "function_call":
                    self.tool_names.append(str(item.get("name", "")))
        elif self.wire == "gemini" and ("usageMetadata" in data or "functionCall" in data):
            chunk = _loads(data)
            self._gemini(chunk)
            for cand in chunk.get("candidates") or ():
                if _dict(cand).get("finishReason"):
                    self.finished = True

    # -------------------------------------------------------------------------------- formats

    def _usage(self, parse: Callable[[Mapping[str, Any]], Usage], usage: Any) -> None:
        """One complete usage report, read by the wire's parser (an empty one is none)."""
        if isinstance(usage, dict) and usage:
            self.usage = parse(usage)
            self.usage_seen = True

    def _stream_usage(self, usage: Any, *, delta: bool) -> None:
        """A Messages stream's report: message_start's, then message_delta's cumulative ones."""
        if not isinstance(usage, dict) or not usage:
            return
        if self.messages_usage is None:
            self.messages_usage = MessagesUsage()
        self.messages_usage.take(usage, delta=delta)
        self.usage = self.messages_usage.usage()
        self.usage_seen = True

    def _responses(self, data: JsonObj, *, names: bool = True) -> None:
        self._usage(responses_usage, data.get("usage"))
        if names:
            for item in data.get("output") or ():
                if _dict(item).get("type") == "function_call":
                    self.tool_names.append(str(item.get("name", "")))

    def _gemini(self, data: JsonObj) -> None:
        self._usage(gemini_usage, data.get("usageMetadata"))
        for cand in data.get("candidates") or ():
            for part in _dict(_dict(cand).get("content")).get("parts") or ():
                call = _dict(_dict(part).get("functionCall"))
                if call:
                    self.tool_names.append(str(call.get("name", "")))


_MARKERS = {
    "messages": (b"message_", b"tool_use"),
    "responses": (
        b"response.completed",
        b"response.incomplete",
        b"response.failed",
        b"function_call",
    ),
}


def _worth_parsing(wire: str, raw: bytes) -> bool:
    if wire == "chat":
        if b"[DONE]" in raw or b'"tool_calls"' in raw:
            return True
        return b'"usage"' in raw and b'"usage":null' not in raw and b'"usage": null' not in raw
    markers = _MARKERS.get(wire)
    return markers is None or any(m in raw for m in markers)


def _loads(data: str) -> JsonObj:
    try:
        value = jsonfast.loads(data)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def request_tools(body: JsonObj, wire: str) -> list[str]:
    """Names of the tools a request offers, for the usage row."""
    names: list[str] = []
    if wire == "gemini":
        for tool in body.get("tools") or ():
            for decl in _dict(tool).get("functionDeclarations") or ():
                names.append(str(_dict(decl).get("name", "")))
        return names
    for tool in body.get("tools") or ():
        tool = _dict(tool)
        fn = _dict(tool.get("function"))
        name = fn.get("name") or tool.get("name") or tool.get("type")
        if name:
            names.append(str(name))
    return names


def estimate_tokens(body: JsonObj) -> int:
    """chars/4 over every string in the request (the Go cc profile's count_tokens estimate)."""
    total = 0
    stack: list[Any] = [body]
    while stack:
        value = stack.pop()
        if isinstance(value, str):
            total += len(value)
        elif isinstance(value, dict):
            stack.extend(v for k, v in value.items() if k not in ("model", "stream", "max_tokens"))
        elif isinstance(value, list):
            stack.extend(value)
    return max(1, total // 4)


def estimate_output_tokens(relayed: list[bytes], size: int, *, stream: bool) -> int:
    """chars/4 (rounded up) of the answer the client received, for an answer whose own usage
    never came (a client that left mid-stream, a cut stream). ``relayed`` is what was sent,
    whole or its first pieces: when ``size`` (everything sent) is more, the kept pieces' share
    of text in their bytes is applied to the rest. Text, reasoning and tool arguments count,
    in any of the four formats (the client's, as sent)."""
    kept = chars = 0
    if stream:
        splitter = SSESplitter()
        for piece in relayed:
            kept += len(piece)
            try:
                events = splitter.feed(piece)
            except EventTooLarge:
                break
            for event in events:
                if event.data and event.data != "[DONE]":
                    chars += _output_chars(_loads(event.data))
    elif relayed and relayed[0]:
        kept = len(relayed[0])
        try:
            chars = _output_chars(jsonfast.loads(relayed[0]))
        except (ValueError, RecursionError):
            chars = 0
    if kept and size > kept:
        chars = chars * size // kept
    return -(-chars // 4)


def event_output_chars(data: str) -> int:
    """Characters of output in one stream event's data (text, reasoning, tool arguments)."""
    if not data or data == "[DONE]":
        return 0
    return _output_chars(_loads(data))


def _strlen(value: Any) -> int:
    return len(value) if isinstance(value, str) else 0


def _output_chars(data: Any) -> int:
    """Characters of output in one answer or stream event: chat, messages, responses, gemini."""
    if not isinstance(data, dict):
        return 0
    n = 0
    for choice in data.get("choices") or ():  # chat: a chunk's delta or an answer's message
        part = _dict(choice).get("delta") or _dict(choice).get("message")
        if isinstance(part, dict):
            n += _strlen(part.get("content")) + _strlen(part.get("reasoning_content"))
            for call in part.get("tool_calls") or ():
                n += _strlen(_dict(_dict(call).get("function")).get("arguments"))
    delta = data.get("delta")
    if isinstance(delta, dict):  # messages: content_block_delta
        n += _strlen(delta.get("text")) + _strlen(delta.get("partial_json"))
        n += _strlen(delta.get("thinking"))
    elif isinstance(delta, str) and str(data.get("type", "")).endswith(".delta"):
        n += len(delta)  # responses: output_text, function_call_arguments, reasoning deltas
    for block in data.get("content") or ():  # messages answer
        block = _dict(block)
        n += _strlen(block.get("text")) + _strlen(block.get("thinking"))
        if block.get("type") == "tool_use":
            n += len(json.dumps(block.get("input") or {}))
    for item in data.get("output") or ():  # responses answer
        item = _dict(item)
        n += _strlen(item.get("arguments"))
        for block in item.get("content") or item.get("summary") or ():
            n += _strlen(_dict(block).get("text"))
    for cand in data.get("candidates") or ():  # gemini
        for part in _dict(_dict(cand).get("content")).get("parts") or ():
            part = _dict(part)
            n += _strlen(part.get("text"))
            if part.get("functionCall"):
                n += len(json.dumps(_dict(part["functionCall"]).get("args") or {}))
    return n
