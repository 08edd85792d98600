"""Gemini streaming (``streamGenerateContent?alt=sse``) <-> canonical stream events.

Every event is a whole ``GenerateContentResponse`` holding the next parts; function calls
arrive whole. The stream has no terminator: the chunk with a ``finishReason`` (and the final
``usageMetadata``) ends it.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from agw.llm.providers.gemini import gemini_usage
from agw.llm.translate.canonical import (
    BlockStop,
    Error,
    Event,
    Ids,
    MessageDelta,
    MessageStart,
    MessageStop,
    StopReason,
    Text,
    TextDelta,
    Thinking,
    ThinkingDelta,
    ToolCall,
    ToolCallArgsDelta,
    ToolCallStart,
    Usage,
    settle_stop_reason,
)
from agw.llm.translate.gemini import (
    FINISH_TO_STOP,
    finish_reason,
    loads_or_none,
    parse_candidate_parts,
    render_part,
    render_usage,
)
from agw.llm.translate.reader import Reader
from agw.sse import frame


class StreamDecoder:
    def __init__(self) -> None:
        self._started = False
        self._block: str | None = None  # "text" | "thinking"
        self._calls = False
        self._usage: Usage | None = None
        self._reason: StopReason | None = None
        self._done = False

    def feed(self, event: str | None, data: str) -> list[Event]:
        if self._done:
            return []
        r = Reader(loads_or_none(data))
        out: list[Event] = []
        if r.has("error"):
            err = r.obj("error")
            self._done = True
            return [
                Error(err.text("message") or "upstream error", err.text("status") or "api_error")
            ]
        if not self._started:
            self._started = True
            out.append(
                MessageStart(id=r.text("responseId") or None, model=r.text("modelVersion") or None)
            )
        if r.has("usageMetadata"):
            self._usage = gemini_usage(r.obj("usageMetadata").data)
        candidates = r.objects("candidates")
        if candidates:
            for part in parse_candidate_parts(candidates[0]):
                out.extend(self._part(part))
            finish = candidates[0].text("finishReason")
            if finish:
                self._reason = FINISH_TO_STOP.get(finish, "end_turn")
                out.extend(self._end())
        elif r.obj("promptFeedback").text("blockReason"):
            self._reason = "content_filter"
            out.extend(self._end())
        return out

    def finish(self) -> list[Event]:
        if self._done:
            return []
        if not self._started:
            self._done = True
            return [Error("upstream stream ended without any content")]
        return self._end()

    def _end(self) -> list[Event]:
        self._done = True
        out = self._switch(None)
        reason = settle_stop_reason(self._reason, self._calls)
        return [*out, MessageDelta(reason, None, self._usage), MessageStop()]

    def _switch(self, block: str | None) -> list[Event]:
        if self._block == block:
            return []
        closing: list[Event] = [BlockStop()] if self._block is not None else []
        self._block = block
        return closing

    def _part(self, part: object) -> list[Event]:
        if isinstance(part, Text):
            return [*self._switch("text"), TextDelta(part.text)]
        if isinstance(part, Thinking):
            out = [*self._switch("thinking"), ThinkingDelta(part.text)]
            if part.signature:
                out.append(ThinkingDelta(signature=part.signature, origin=part.origin))
            return out
        if isinstance(part, ToolCall):
            self._calls = True
            return [
                *self._switch(None),
                ToolCallStart(part.id, part.name, part.signature),
                ToolCallArgsDelta(part.arguments),
                BlockStop(),
            ]
        return []


class StreamEncoder:
    """Canonical events in, ``data: {GenerateContentResponse}`` frames out."""

    def __init__(self, *, model: str | None = None, ids: Ids | None = None) -> None:
        self._model = model
        self._ids = ids or Ids()
        self._id = ""
        self._model_out = ""
        self._started = False
        self._call: ToolCall | None = None
        self._thinking_sig: str | None = None
        self._reason: StopReason | None = None
        self._usage: Usage | None = None
        self._done = False

    def encode(self, events: Iterable[Event]) -> bytes:
        out: list[bytes] = []
        for ev in events:
            if self._done:
                break
            if isinstance(ev, Error):
                self._done = True
                err = {"code": 500, "message": ev.message, "status": "INTERNAL"}
                out.append(frame({"error": err}))
                continue
            if not self._started:
                self._start(ev if isinstance(ev, MessageStart) else MessageStart())
            if isinstance(ev, TextDelta):
                out.extend(self._flush_call())
                out.append(self._chunk([{"text": ev.text}]))
            elif isinstance(ev, ThinkingDelta):
                out.extend(self._flush_call())
                part = render_part(Thinking(ev.text, ev.signature, ev.origin, ev.redacted))
                if part is not None and (ev.text or "thoughtSignature" in part):
                    out.append(self._chunk([part]))
            elif isinstance(ev, ToolCallStart):
                out.extend(self._flush_call())
                self._call = ToolCall(ev.id, ev.name, "", ev.signature)
            elif isinstance(ev, ToolCallArgsDelta):
                if self._call is not None:
                    self._call.arguments += ev.arguments
            elif isinstance(ev, BlockStop):
                out.extend(self._flush_call())
            elif isinstance(ev, MessageDelta):
                out.extend(self._flush_call())
                self._reason = ev.stop_reason or self._reason
                if ev.usage is not None:
                    self._usage = self._usage or Usage()
                    self._usage.merge(ev.usage)
            elif isinstance(ev, MessageStop):
                out.extend(self._flush_call())
                out.append(self._chunk([{"text": ""}], finish_reason(self._reason), True))
                self._done = True
        return b"".join(out)

    def _start(self, ev: MessageStart) -> None:
        self._started = True
        self._id = ev.id or self._ids.new("", 22)
        self._model_out = self._model or ev.model or ""
        if ev.usage is not None and ev.usage.input_tokens:
            self._usage = Usage()
            self._usage.merge(ev.usage)

    def _flush_call(self) -> list[bytes]:
        call, self._call = self._call, None
        if call is None:
            return []
        part = render_part(call)
        return [self._chunk([part])] if part is not None else []

    def _chunk(
        self, parts: list[dict[str, Any]], finish: str | None = None, last: bool = False
    ) -> bytes:
        candidate: dict[str, Any] = {"content": {"role": "model", "parts": parts}}
        if finish:
            candidate["finishReason"] = finish
        candidate["index"] = 0
        chunk: dict[str, Any] = {"candidates": [candidate]}
        if last and self._usage is not None:
            chunk["usageMetadata"] = render_usage(self._usage)
        chunk["modelVersion"] = self._model_out
        chunk["responseId"] = self._id
        return frame(chunk)
