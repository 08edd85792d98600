"""Anthropic Messages streaming: SSE events <-> canonical stream events."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from agw import jsonfast
from agw.llm.providers.anthropic import MessagesUsage
from agw.llm.translate.canonical import (
    BlockStop,
    Error,
    Event,
    Ids,
    MessageDelta,
    MessageStart,
    MessageStop,
    TextDelta,
    ThinkingDelta,
    ToolCallArgsDelta,
    ToolCallStart,
    Usage,
    dumps,
    unwrap_signature,
)
from agw.llm.translate.messages import (
    STOP_REASONS,
    render_stop_reason,
    render_usage,
    tool_id,
)
from agw.llm.translate.reader import Reader
from agw.sse import frame


class StreamDecoder:
    """Upstream Anthropic events in, canonical events out."""

    def __init__(self) -> None:
        self._usage = MessagesUsage()
        self._blocks: dict[int, str] = {}  # index -> "text" | "thinking" | "tool" | "skip"
        self._started = False
        self._stop: MessageDelta | None = None
        self._done = False

    def feed(self, event: str | None, data: str) -> list[Event]:
        try:
            r = Reader(jsonfast.loads(data))
        except ValueError:
            return []
        kind = r.text("type") or event
        out: list[Event] = []
        if kind == "message_start":
            msg = r.obj("message")
            self._usage.take(msg.obj("usage").data, delta=False)
            self._started = True
            out.append(
                MessageStart(
                    id=msg.text("id") or None,
                    model=msg.text("model") or None,
                    usage=self._usage.usage(),
                )
            )
        elif kind == "content_block_start":
            out.extend(self._block_start(r.integer("index") or 0, r.obj("content_block")))
        elif kind == "content_block_delta":
            out.extend(self._block_delta(r.integer("index") or 0, r.obj("delta")))
        elif kind == "content_block_stop":
            if self._blocks.get(r.integer("index") or 0, "skip") != "skip":
                out.append(BlockStop())
        elif kind == "message_delta":
            self._usage.take(r.obj("usage").data, delta=True)
            delta = r.obj("delta")
            reason = delta.text("stop_reason")
            self._stop = MessageDelta(
                STOP_REASONS.get(reason, "end_turn") if reason else None,
                delta.text("stop_sequence"),
                self._usage.usage(),
            )
            out.append(self._stop)
        elif kind == "message_stop":
            if self._stop is None:
                self._stop = MessageDelta(usage=self._usage.usage())
                out.append(self._stop)
            self._done = True
            out.append(MessageStop())
        elif kind == "error":
            err = r.obj("error")
            self._done = True
            out.append(
                Error(err.text("message") or "upstream error", err.text("type") or "api_error")
            )
        return out

    def finish(self) -> list[Event]:
        if self._done:
            return []
        self._done = True
        if self._stop is not None:
            return [MessageStop()]
        return [Error("upstream stream ended before the message was complete")]

    def _block_start(self, index: int, block: Reader) -> list[Event]:
        kind = block.text("type")
        if kind == "text":
            self._blocks[index] = "text"
            text = block.text("text")
            return [TextDelta(text)] if text else []
        if kind == "thinking":
            self._blocks[index] = "thinking"
            return [ThinkingDelta(block.text("thinking") or "")]
        if kind == "redacted_thinking":
            self._blocks[index] = "thinking"
            data = block.text("data") or ""
            return [ThinkingDelta(signature=data, origin="messages", redacted=True)]
        if kind == "tool_use":
            self._blocks[index] = "tool"
            out: list[Event] = [ToolCallStart(block.text("id") or "", block.text("name") or "")]
            initial = block.object_value("input")
            if initial:
                out.append(ToolCallArgsDelta(dumps(initial)))
            return out
        self._blocks[index] = "skip"
        return []

    def _block_delta(self, index: int, delta: Reader) -> list[Event]:
        block = self._blocks.get(index, "skip")
        kind = delta.text("type")
        if block == "text" and kind == "text_delta":
            text = delta.text("text")
            return [TextDelta(text)] if text else []
        if block == "tool" and kind == "input_json_delta":
            partial = delta.text("partial_json")
            return [ToolCallArgsDelta(partial)] if partial else []
        if block == "thinking" and kind == "thinking_delta":
            text = delta.text("thinking")
            return [ThinkingDelta(text)] if text else []
        if block == "thinking" and kind == "signature_delta":
            sig = delta.text("signature")
            if sig:
                origin, sig = unwrap_signature(sig, "messages")
                return [ThinkingDelta(signature=sig, origin=origin)]
        return []


class StreamEncoder:
    """Canonical events in, Anthropic SSE bytes out (message_start ... message_stop)."""

    def __init__(self, *, model: str | None = None, ids: Ids | None = None) -> None:
        self._model = model
        self._ids = ids or Ids()
        self._started = False
        self._index = -1
        self._open: str | None = None  # "text" | "thinking" | "tool"
        self._delta_sent = False
        self._done = False
        self._usage = Usage()

    def encode(self, events: Iterable[Event]) -> bytes:
        out: list[bytes] = []
        for ev in events:
            if self._done:
                break
            if isinstance(ev, Error):
                self._done = True
                err = {"type": ev.type, "message": ev.message}
                out.append(frame({"type": "error", "error": err}, "error"))
                continue
            if not self._started:
                out.append(self._start(ev if isinstance(ev, MessageStart) else MessageStart()))
            if isinstance(ev, TextDelta):
                out.extend(self._open_block("text", {"type": "text", "text": ""}))
                out.append(self._delta({"type": "text_delta", "text": ev.text}))
            elif isinstance(ev, ThinkingDelta):
                out.extend(self._thinking(ev))
            elif isinstance(ev, ToolCallStart):
                out.extend(self._close_block())
                call_id = tool_id(ev.id) if ev.id else self._ids.new("toolu_")
                block = {"type": "tool_use", "id": call_id, "name": ev.name, "input": {}}
                out.extend(self._open_block("tool", block))
            elif isinstance(ev, ToolCallArgsDelta):
                if self._open == "tool" and ev.arguments:
                    delta = {"type": "input_json_delta", "partial_json": ev.arguments}
                    out.append(self._delta(delta))
            elif isinstance(ev, BlockStop):
                out.extend(self._close_block())
            elif isinstance(ev, MessageDelta):
                out.extend(self._message_delta(ev))
            elif isinstance(ev, MessageStop):
                out.extend(self._message_delta(MessageDelta()))
                out.append(frame({"type": "message_stop"}, "message_stop"))
                self._done = True
        return b"".join(out)

    def _start(self, ev: MessageStart) -> bytes:
        self._started = True
        if ev.usage is not None:
            self._usage.merge(ev.usage)
        message: dict[str, Any] = {
            "id": ev.id or self._ids.new("msg_"),
            "type": "message",
            "role": "assistant",
            "model": self._model or ev.model or "",
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": render_usage(self._usage),
        }
        return frame({"type": "message_start", "message": message}, "message_start")

    def _open_block(self, kind: str, block: dict[str, Any]) -> list[bytes]:
        if self._open == kind and kind != "tool":
            return []
        out = self._close_block()
        self._index += 1
        self._open = kind
        payload = {"type": "content_block_start", "index": self._index, "content_block": block}
        out.append(frame(payload, "content_block_start"))
        return out

    def _close_block(self) -> list[bytes]:
        if self._open is None:
            return []
        self._open = None
        return [frame({"type": "content_block_stop", "index": self._index}, "content_block_stop")]

    def _delta(self, delta: dict[str, Any]) -> bytes:
        payload = {"type": "content_block_delta", "index": self._index, "delta": delta}
        return frame(payload, "content_block_delta")

    def _thinking(self, ev: ThinkingDelta) -> list[bytes]:
        own_sig = ev.signature if ev.origin == "messages" else None
        if ev.redacted:
            if not own_sig:
                return []
            out = self._open_block("redacted", {"type": "redacted_thinking", "data": own_sig})
            return out + self._close_block()
        if not ev.text and not own_sig:
            return []
        out = self._open_block("thinking", {"type": "thinking", "thinking": "", "signature": ""})
        if ev.text:
            out.append(self._delta({"type": "thinking_delta", "thinking": ev.text}))
        if own_sig:
            out.append(self._delta({"type": "signature_delta", "signature": own_sig}))
        return out

    def _message_delta(self, ev: MessageDelta) -> list[bytes]:
        out = self._close_block()
        if self._delta_sent:
            return out
        self._delta_sent = True
        if ev.usage is not None:
            self._usage.merge(ev.usage)
        delta = {
            "stop_reason": render_stop_reason(ev.stop_reason),
            "stop_sequence": ev.stop_sequence,
        }
        payload = {"type": "message_delta", "delta": delta, "usage": render_usage(self._usage)}
        out.append(frame(payload, "message_delta"))
        return out
