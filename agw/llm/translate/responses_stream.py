"""OpenAI Responses streaming: ``response.*`` events <-> canonical stream events."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from agw import jsonfast
from agw.llm.providers.openai import responses_usage
from agw.llm.translate.canonical import (
    BlockStop,
    Error,
    Event,
    Format,
    Ids,
    MessageDelta,
    MessageStart,
    MessageStop,
    StopReason,
    TextDelta,
    Thinking,
    ThinkingDelta,
    ToolCall,
    ToolCallArgsDelta,
    ToolCallStart,
    Usage,
    dumps,
    settle_stop_reason,
)
from agw.llm.translate.reader import Reader
from agw.llm.translate.responses import (
    Namespaces,
    call_names,
    function_call_item,
    message_item,
    parse_output_item,
    parse_reasoning,
    reasoning_item,
    response_object,
    status_of,
    stop_reason,
)
from agw.sse import frame


class StreamDecoder:
    """Upstream ``response.*`` events in, canonical events out."""

    def __init__(self) -> None:
        self._started = False
        self._items: dict[str, str] = {}  # item id -> "message" | "reasoning" | "function_call"
        self._args_seen: set[str] = set()
        self._calls = False
        self._done = False

    def feed(self, event: str | None, data: str) -> list[Event]:
        if self._done:
            return []
        try:
            r = Reader(jsonfast.loads(data))
        except ValueError:
            return []
        kind = r.text("type") or event or ""
        out: list[Event] = []
        if not self._started and kind.startswith("response."):
            self._started = True
            resp = r.obj("response")
            out.append(
                MessageStart(
                    id=resp.text("id") or None,
                    model=resp.text("model") or None,
                    created=resp.integer("created_at") or None,
                )
            )
        if kind == "response.output_item.added":
            out.extend(self._item_added(r.obj("item")))
        elif kind in ("response.output_text.delta", "response.refusal.delta"):
            if delta := r.text("delta"):
                out.append(TextDelta(delta))
        elif kind == "response.function_call_arguments.delta":
            if delta := r.text("delta"):
                self._args_seen.add(r.text("item_id") or "")
                out.append(ToolCallArgsDelta(delta))
        elif kind in ("response.reasoning_summary_text.delta", "response.reasoning_text.delta"):
            if delta := r.text("delta"):
                out.append(ThinkingDelta(delta))
        elif kind == "response.reasoning_summary_part.added":
            if (r.integer("summary_index") or 0) > 0:
                out.append(ThinkingDelta("\n\n"))
        elif kind == "response.output_item.done":
            out.extend(self._item_done(r.obj("item")))
        elif kind in ("response.completed", "response.incomplete"):
            resp = r.obj("response")
            reason = stop_reason(resp.text("status"), resp.obj("incomplete_details"))
            if kind == "response.incomplete" and reason == "end_turn":
                reason = "max_tokens"
            usage = responses_usage(resp.obj("usage").data) if resp.has("usage") else None
            self._done = True
            out.append(MessageDelta(settle_stop_reason(reason, self._calls), None, usage))
            out.append(MessageStop())
        elif kind == "response.failed":
            err = r.obj("response").obj("error")
            self._done = True
            out.append(
                Error(
                    err.text("message") or "upstream response failed",
                    err.text("code") or "api_error",
                )
            )
        elif kind == "error":
            self._done = True
            out.append(Error(r.text("message") or "upstream error", r.text("code") or "api_error"))
        return out

    def finish(self) -> list[Event]:
        if self._done:
            return []
        self._done = True
        return [Error("upstream stream ended before the response was complete")]

    def _item_added(self, item: Reader) -> list[Event]:
        kind = item.text("type") or ""
        item_id = item.text("id") or ""
        self._items[item_id] = kind
        if kind != "function_call":
            return []
        self._calls = True
        calls = [p for p in parse_output_item(item) if isinstance(p, ToolCall)]
        if not calls:
            return []
        out: list[Event] = [ToolCallStart(calls[0].id, calls[0].name)]
        if item.text("arguments"):
            self._args_seen.add(item_id)
            out.append(ToolCallArgsDelta(item.text("arguments") or ""))
        return out

    def _item_done(self, item: Reader) -> list[Event]:
        item_id = item.text("id") or ""
        kind = item.text("type") or ""
        if item_id not in self._items:  # never announced: take the whole item now
            return self._whole_item(item)
        out: list[Event] = []
        if kind == "function_call" and item_id not in self._args_seen:
            args = item.raw("arguments")
            if args:
                out.append(ToolCallArgsDelta(args if isinstance(args, str) else dumps(args)))
        if kind == "reasoning":
            thinking = parse_reasoning(item)
            if thinking.signature:
                out.append(ThinkingDelta(signature=thinking.signature, origin=thinking.origin))
        if kind in ("message", "reasoning", "function_call"):
            out.append(BlockStop())
        return out

    def _whole_item(self, item: Reader) -> list[Event]:
        out: list[Event] = []
        for part in parse_output_item(item):
            if isinstance(part, ToolCall):
                self._calls = True
                out.append(ToolCallStart(part.id, part.name))
                out.append(ToolCallArgsDelta(part.arguments))
            elif isinstance(part, Thinking):
                out.append(ThinkingDelta(part.text, part.signature, part.origin))
            else:
                out.append(TextDelta(getattr(part, "text", "")))
        if out:
            out.append(BlockStop())
        return out


@dataclass(slots=True)
class _Item:
    kind: str  # "message" | "reasoning" | "function_call"
    id: str
    index: int
    text: str = ""
    part_open: bool = False
    call_id: str = ""
    name: str = ""
    signature: str | None = None
    origin: Format | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class StreamEncoder:
    """Canonical events in, Responses SSE out (response.created ... response.completed)."""

    def __init__(
        self,
        *,
        model: str | None = None,
        ids: Ids | None = None,
        namespaces: Namespaces | None = None,
    ) -> None:
        self._namespaces = namespaces
        self._model = model
        self._ids = ids or Ids()
        self._seq = 0
        self._started = False
        self._id = ""
        self._created = 0
        self._model_out = ""
        self._output: list[dict[str, Any]] = []
        self._item: _Item | None = None
        self._reason: StopReason | None = None
        self._usage: Usage | None = None
        self._done = False

    def encode(self, events: Iterable[Event]) -> bytes:
        out: list[bytes] = []
        for ev in events:
            if self._done:
                break
            if not self._started:
                out.extend(self._start(ev if isinstance(ev, MessageStart) else MessageStart()))
            if isinstance(ev, Error):
                out.extend(self._error(ev))
            elif isinstance(ev, TextDelta):
                out.extend(self._text(ev.text))
            elif isinstance(ev, ThinkingDelta):
                out.extend(self._thinking(ev))
            elif isinstance(ev, ToolCallStart):
                out.extend(self._tool_start(ev))
            elif isinstance(ev, ToolCallArgsDelta):
                item = self._item
                if item is not None and item.kind == "function_call" and ev.arguments:
                    item.text += ev.arguments
                    out.append(
                        self._event(
                            "response.function_call_arguments.delta",
                            item_id=item.id,
                            output_index=item.index,
                            delta=ev.arguments,
                        )
                    )
            elif isinstance(ev, BlockStop):
                out.extend(self._close())
            elif isinstance(ev, MessageDelta):
                out.extend(self._close())
                self._reason = ev.stop_reason or self._reason
                if ev.usage is not None:
                    self._usage = self._usage or Usage()
                    self._usage.merge(ev.usage)
            elif isinstance(ev, MessageStop):
                out.extend(self._close())
                status, _ = status_of(self._reason)
                kind = "response.failed" if status == "failed" else f"response.{status}"
                resp = self._response(None)
                out.append(self._event(kind, response=resp))
                self._done = True
        return b"".join(out)

    def _event(self, kind: str, **fields: Any) -> bytes:
        payload = {"type": kind, "sequence_number": self._seq, **fields}
        self._seq += 1
        return frame(payload, kind)

    def _response(self, status: str | None) -> dict[str, Any]:
        return response_object(
            self._id,
            self._created,
            self._model_out,
            list(self._output),
            self._reason,
            self._usage or Usage() if status is None else None,
            status,
        )

    def _start(self, ev: MessageStart) -> list[bytes]:
        self._started = True
        self._id = ev.id or self._ids.new("resp_")
        self._created = ev.created or self._ids.now()
        self._model_out = self._model or ev.model or ""
        if ev.usage is not None and ev.usage.input_tokens:
            self._usage = Usage()
            self._usage.merge(ev.usage)
        return [
            self._event("response.created", response=self._response("in_progress")),
            self._event("response.in_progress", response=self._response("in_progress")),
        ]

    def _open(self, kind: str, prefix: str, added: dict[str, Any]) -> tuple[_Item, list[bytes]]:
        out = self._close()
        item = _Item(kind, self._ids.new(prefix), len(self._output))
        self._item = item
        added = {"id": item.id, **added}
        out.append(self._event("response.output_item.added", output_index=item.index, item=added))
        return item, out

    def _text(self, text: str) -> list[bytes]:
        out: list[bytes] = []
        item = self._item
        if item is None or item.kind != "message":
            added = {"type": "message", "status": "in_progress", "role": "assistant", "content": []}
            item, out = self._open("message", "msg_", added)
            part = {"type": "output_text", "text": "", "annotations": []}
            out.append(
                self._event(
                    "response.content_part.added",
                    item_id=item.id,
                    output_index=item.index,
                    content_index=0,
                    part=part,
                )
            )
        item.text += text
        out.append(
            self._event(
                "response.output_text.delta",
                item_id=item.id,
                output_index=item.index,
                content_index=0,
                delta=text,
                logprobs=[],
            )
        )
        return out

    def _thinking(self, ev: ThinkingDelta) -> list[bytes]:
        if ev.redacted or (not ev.text and not ev.signature):
            return []
        out: list[bytes] = []
        item = self._item
        if item is None or item.kind != "reasoning":
            item, out = self._open("reasoning", "rs_", {"type": "reasoning", "summary": []})
        if ev.signature:
            item.signature, item.origin = ev.signature, ev.origin
        if ev.text:
            if not item.part_open:
                item.part_open = True
                part = {"type": "summary_text", "text": ""}
                out.append(
                    self._event(
                        "response.reasoning_summary_part.added",
                        item_id=item.id,
                        output_index=item.index,
                        summary_index=0,
                        part=part,
                    )
                )
            item.text += ev.text
            out.append(
                self._event(
                    "response.reasoning_summary_text.delta",
                    item_id=item.id,
                    output_index=item.index,
                    summary_index=0,
                    delta=ev.text,
                )
            )
        return out

    def _tool_start(self, ev: ToolCallStart) -> list[bytes]:
        call_id = ev.id or self._ids.new("call_")
        added = {
            "type": "function_call",
            "status": "in_progress",
            "arguments": "",
            "call_id": call_id,
            **call_names(ev.name, self._namespaces),
        }
        item, out = self._open("function_call", "fc_", added)
        item.call_id, item.name = call_id, ev.name
        return out

    def _close(self) -> list[bytes]:
        item, self._item = self._item, None
        if item is None:
            return []
        out: list[bytes] = []
        at = {"item_id": item.id, "output_index": item.index}
        if item.kind == "message":
            done: dict[str, Any] = message_item([item.text], item.id)
            part = {"type": "output_text", "text": item.text, "annotations": []}
            out.append(
                self._event(
                    "response.output_text.done", **at, content_index=0, text=item.text, logprobs=[]
                )
            )
            out.append(self._event("response.content_part.done", **at, content_index=0, part=part))
        elif item.kind == "reasoning":
            thinking = Thinking(item.text, item.signature, item.origin)
            done = reasoning_item(thinking, item.id)
            if item.part_open:
                part = {"type": "summary_text", "text": item.text}
                out.append(
                    self._event(
                        "response.reasoning_summary_text.done",
                        **at,
                        summary_index=0,
                        text=item.text,
                    )
                )
                out.append(
                    self._event(
                        "response.reasoning_summary_part.done", **at, summary_index=0, part=part
                    )
                )
        else:
            call = ToolCall(item.call_id, item.name, item.text)
            done = function_call_item(call, item.id, item.call_id, self._namespaces)
            out.append(
                self._event("response.function_call_arguments.done", **at, arguments=item.text)
            )
        out.append(self._event("response.output_item.done", output_index=item.index, item=done))
        self._output.append(done)
        return out

    def _error(self, ev: Error) -> list[bytes]:
        self._done = True
        out = [self._event("error", code=ev.type, message=ev.message, param=None)]
        resp = self._response("failed")
        resp["error"] = {"code": "server_error", "message": ev.message}
        out.append(self._event("response.failed", response=resp))
        return out
