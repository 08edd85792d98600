"""OpenAI Chat Completions streaming: ``chat.completion.chunk`` events <-> canonical events."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from agw import jsonfast
from agw.llm.providers.openai import chat_usage
from agw.llm.translate.canonical import (
    BlockStop,
    Error,
    Event,
    Ids,
    MessageDelta,
    MessageStart,
    MessageStop,
    StopReason,
    TextDelta,
    ThinkingDelta,
    ToolCallArgsDelta,
    ToolCallStart,
    Usage,
)
from agw.llm.translate.chat import FINISH_TO_STOP, STOP_TO_FINISH, render_usage
from agw.llm.translate.reader import Reader
from agw.sse import frame


class StreamDecoder:
    """Upstream chunks in, canonical events out.

    The finish reason and the usage chunk (``stream_options.include_usage``) may come in
    either order before ``[DONE]``, so the closing MessageDelta waits for ``[DONE]``.
    """

    def __init__(self) -> None:
        self._started = False
        self._block: str | None = None  # "text" | "thinking" | "tool"
        self._tools: dict[int, int] = {}  # upstream tool index -> our ordinal
        self._tool: int | None = None  # upstream index of the open tool call
        self._tool_id: str | None = None
        self._finish: StopReason | None = None
        self._usage: Usage | None = None
        self._done = False

    def feed(self, event: str | None, data: str) -> list[Event]:
        if self._done:
            return []
        if data.strip() == "[DONE]":
            return self._end()
        try:
            r = Reader(jsonfast.loads(data))
        except ValueError:
            return []
        out: list[Event] = []
        if r.has("error"):
            err = r.obj("error")
            self._done = True
            return [Error(err.text("message") or "upstream error", err.text("type") or "api_error")]
        if not self._started:
            self._started = True
            out.append(
                MessageStart(
                    id=r.text("id") or None,
                    model=r.text("model") or None,
                    created=r.integer("created") or None,
                )
            )
        if r.has("usage"):
            self._usage = chat_usage(r.obj("usage").data)
        for choice in r.objects("choices")[:1]:
            out.extend(self._delta(choice.obj("delta")))
            finish = choice.text("finish_reason")
            if finish:
                self._finish = FINISH_TO_STOP.get(finish, "end_turn")
                out.extend(self._close())
        return out

    def finish(self) -> list[Event]:
        if self._done:
            return []
        if self._finish is not None:
            return self._end()
        self._done = True
        return [Error("upstream stream ended before the completion was finished")]

    def _end(self) -> list[Event]:
        self._done = True
        out = self._close()
        if not self._started:
            out.append(MessageStart())
        out.append(MessageDelta(self._finish, None, self._usage))
        out.append(MessageStop())
        return out

    def _close(self) -> list[Event]:
        if self._block is None:
            return []
        self._block, self._tool = None, None
        return [BlockStop()]

    def _switch(self, block: str) -> list[Event]:
        if self._block == block:
            return []
        out = self._close()
        self._block = block
        return out

    def _delta(self, d: Reader) -> list[Event]:
        out: list[Event] = []
        reasoning = d.text("reasoning_content") or _str(d.raw("reasoning"))
        if reasoning:
            out.extend(self._switch("thinking"))
            out.append(ThinkingDelta(reasoning))
        content = d.text("content") or d.text("refusal")
        if content:
            out.extend(self._switch("text"))
            out.append(TextDelta(content))
        for tc in d.objects("tool_calls"):
            out.extend(self._tool_delta(tc))
        return out

    def _tool_delta(self, tc: Reader) -> list[Event]:
        index = tc.integer("index")
        index = len(self._tools) if index is None else index
        call_id = tc.text("id")
        f = tc.obj("function")
        out: list[Event] = []
        new_call = index not in self._tools or (
            call_id is not None and self._tool == index and call_id != self._tool_id
        )
        if new_call:
            out.extend(self._close())
            self._tools[index] = len(self._tools)
            self._block, self._tool, self._tool_id = "tool", index, call_id
            out.append(ToolCallStart(call_id or "", f.text("name") or ""))
        elif self._tool != index:
            return out  # a late fragment of a call already closed: nothing can carry it
        args = f.raw("arguments")
        if isinstance(args, dict):
            args = json.dumps(args)
        if isinstance(args, str) and args:
            out.append(ToolCallArgsDelta(args))
        return out


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


class StreamEncoder:
    """Canonical events in, ``data: {chunk}`` frames out, ending with ``data: [DONE]``.

    With ``include_usage`` a last chunk with ``choices: []`` carries the usage, as OpenAI
    sends it for ``stream_options.include_usage``.
    """

    def __init__(
        self, *, model: str | None = None, ids: Ids | None = None, include_usage: bool = True
    ) -> None:
        self._model = model
        self._ids = ids or Ids()
        self._include_usage = include_usage
        self._id = ""
        self._created = 0
        self._model_out = ""
        self._started = False
        self._tools = -1
        self._in_tool = False
        self._finished = False
        self._usage: Usage | None = None
        self._done = False

    def encode(self, events: Iterable[Event]) -> bytes:
        out: list[bytes] = []
        for ev in events:
            if self._done:
                break
            if isinstance(ev, Error):
                self._done = True
                err = {"message": ev.message, "type": ev.type, "param": None, "code": None}
                out.append(frame({"error": err}))
                out.append(frame("[DONE]"))
                continue
            if not self._started:
                out.append(self._start(ev if isinstance(ev, MessageStart) else MessageStart()))
            if isinstance(ev, TextDelta):
                self._in_tool = False
                out.append(self._chunk({"content": ev.text}))
            elif isinstance(ev, ThinkingDelta):
                self._in_tool = False
                if ev.text:
                    out.append(self._chunk({"reasoning_content": ev.text}))
            elif isinstance(ev, ToolCallStart):
                self._tools += 1
                self._in_tool = True
                call = {
                    "index": self._tools,
                    "id": ev.id or self._ids.new("call_"),
                    "type": "function",
                    "function": {"name": ev.name, "arguments": ""},
                }
                out.append(self._chunk({"tool_calls": [call]}))
            elif isinstance(ev, ToolCallArgsDelta):
                if self._in_tool and ev.arguments:
                    frag = {"index": self._tools, "function": {"arguments": ev.arguments}}
                    out.append(self._chunk({"tool_calls": [frag]}))
            elif isinstance(ev, BlockStop):
                self._in_tool = False
            elif isinstance(ev, MessageDelta):
                out.extend(self._finish(ev))
            elif isinstance(ev, MessageStop):
                out.extend(self._finish(MessageDelta()))
                if self._include_usage and self._usage is not None:
                    chunk = self._base()
                    chunk["choices"] = []
                    chunk["usage"] = render_usage(self._usage)
                    out.append(frame(chunk))
                out.append(frame("[DONE]"))
                self._done = True
        return b"".join(out)

    def _start(self, ev: MessageStart) -> bytes:
        self._started = True
        self._id = ev.id or self._ids.new("chatcmpl-")
        self._created = ev.created or self._ids.now()
        self._model_out = self._model or ev.model or ""
        if ev.usage is not None and ev.usage.input_tokens:
            self._usage = Usage()
            self._usage.merge(ev.usage)
        return self._chunk({"role": "assistant", "content": ""})

    def _base(self) -> dict[str, Any]:
        return {
            "id": self._id,
            "object": "chat.completion.chunk",
            "created": self._created,
            "model": self._model_out,
        }

    def _chunk(self, delta: dict[str, Any], finish: str | None = None) -> bytes:
        chunk = self._base()
        chunk["choices"] = [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]
        return frame(chunk)

    def _finish(self, ev: MessageDelta) -> list[bytes]:
        if ev.usage is not None:
            self._usage = self._usage or Usage()
            self._usage.merge(ev.usage)
        if self._finished:
            return []
        self._finished = True
        return [self._chunk({}, STOP_TO_FINISH.get(ev.stop_reason or "end_turn", "stop"))]
