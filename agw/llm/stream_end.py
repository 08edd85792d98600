"""A clean end for a passthrough SSE stream the gateway stops itself (a limit's ``on_exceed: cut``).

A passthrough stream relays the upstream's own bytes; when the gateway stops it mid-answer, the
client must still see its dialect's normal end, so that the official SDKs finish without error
and report a "too many tokens" stop. :class:`StreamCloser` watches the relayed events
(:meth:`StreamCloser.see`, parsing an event only when a byte check says it holds something
needed) and writes that end (:meth:`StreamCloser.close`). A translated stream ends through
:meth:`agw.llm.translate.StreamTranslator.cut` instead.

The tail ``close(usage)`` returns, per wire:

``chat`` (OpenAI Chat Completions)
    a chunk with the stream's ``id``, ``object``, ``created``, ``model`` (and
    ``system_fingerprint`` when the upstream sent one), read from its first chunk:
    ``choices: [{"index": 0, "delta": {}, "logprobs": null, "finish_reason": "length"}]``
    (left out when the upstream already sent a finish reason); then, when the client asked for
    usage (``include_usage``), ``usage`` is given and the upstream has not sent its usage chunk
    yet, a usage-only chunk (``choices: []``, ``usage`` with ``prompt_tokens``,
    ``completion_tokens``, ``total_tokens`` and their details); then ``data: [DONE]``.
``messages`` (Anthropic Messages)
    ``content_block_stop`` for the block still open (its index), if any; ``message_delta`` with
    ``delta: {"stop_reason": "max_tokens", "stop_sequence": null}`` and
    ``usage: {"output_tokens": N}`` (``usage.output_tokens``, else the last count the upstream
    reported), left out when the upstream already sent its ``message_delta``; ``message_stop``.
``responses`` (OpenAI Responses)
    each output item still open is finished as the upstream would have: its open content parts
    (``response.output_text.done`` / ``response.refusal.done`` / ``response.reasoning_text.done``
    with the text so far, then ``response.content_part.done``), its open summary parts
    (``response.reasoning_summary_text.done``, ``response.reasoning_summary_part.done``), its
    arguments (``response.function_call_arguments.done``), then ``response.output_item.done``
    with the item as it stands, ``status: "incomplete"``. Then ``response.incomplete`` whose
    ``response`` is the upstream's ``response.created`` object with ``status: "incomplete"``,
    ``incomplete_details: {"reason": "max_output_tokens"}``, ``output`` every item done so far
    (in ``output_index`` order) and ``usage`` (when given). Each event carries the next
    ``sequence_number`` when the upstream's events carry one.
``gemini`` (Google ``streamGenerateContent?alt=sse``)
    one last chunk: ``candidates: [{"content": {"role": "model", "parts": [{"text": ""}]},
    "finishReason": "MAX_TOKENS", "index": 0}]``, ``usageMetadata`` (when ``usage`` is given),
    and the stream's ``modelVersion`` and ``responseId`` (from its first chunk).

A stream cut before its first event gets the opening events too (chat: a ``role`` chunk;
messages: ``message_start``; responses: ``response.created`` and ``response.in_progress``),
with generated ids and the ``model`` given to the closer. A stream the upstream already ended
(its own terminator or error event) gets b"", as does a second ``close``.

Cost: chat, messages and gemini keep a few fields; responses also keeps references to the events
of the output item in progress (its text so far), dropped when the item is done.
"""

from __future__ import annotations

from typing import Any

from agw import jsonfast
from agw.llm.providers.tokens import Usage
from agw.llm.translate import check_format
from agw.llm.translate.canonical import Format, Ids
from agw.llm.translate.chat import render_usage as chat_usage
from agw.llm.translate.gemini import render_usage as gemini_usage
from agw.llm.translate.responses import render_usage as responses_usage
from agw.llm.translate.responses import response_object
from agw.sse import Event, frame
from agw.types import JsonObj

__all__ = ["StreamCloser"]


class StreamCloser:
    """Watches a passthrough stream in ``wire`` (chat, messages, responses, gemini) and ends
    it cleanly on demand (see the module docstring for the tail per wire).

    ``include_usage``: the chat client asked for the usage chunk
    (``stream_options.include_usage``). ``model`` names the model in the opening events of a
    stream cut before its first event; ``ids`` makes the ids generated then reproducible.
    """

    __slots__ = ("_end", "wire")

    def __init__(
        self,
        wire: str,
        *,
        include_usage: bool,
        model: str | None = None,
        ids: Ids | None = None,
    ) -> None:
        self.wire: Format = check_format(wire)
        ids = ids or Ids()
        end: _End
        if self.wire == "chat":
            end = _ChatEnd(include_usage, model or "", ids)
        elif self.wire == "messages":
            end = _MessagesEnd(model or "", ids)
        elif self.wire == "responses":
            end = _ResponsesEnd(model or "", ids)
        else:
            end = _GeminiEnd(model or "", ids)
        self._end = end

    @property
    def finished(self) -> bool:
        """Whether the stream has ended: its own terminator (or error) came, or ``close`` ran."""
        return self._end.done

    def see(self, event: Event) -> None:
        """One upstream event, as it is relayed to the client."""
        if not self._end.done:
            self._end.see(event)

    def close(self, usage: Usage | None = None) -> bytes:
        """The tail that ends the stream with a "too many tokens" stop; ``usage`` is the
        answer's usage so far, when known. b"" when the stream has already ended."""
        end = self._end
        if end.done:
            return b""
        tail = end.close(usage)
        end.done = True
        return tail


# ------------------------------------------------------------------------------- per wire


class _End:
    __slots__ = ("done",)

    def __init__(self) -> None:
        self.done = False

    def see(self, event: Event) -> None:
        raise NotImplementedError

    def close(self, usage: Usage | None) -> bytes:
        raise NotImplementedError


def _load(event: Event) -> JsonObj:
    """An event's data as a JSON object ({} for anything else). An event with one ``data:``
    line, last (as every provider writes them), is parsed from its bytes as they are."""
    raw = event.raw
    start = raw.find(b"data:")
    value: Any = None
    if start >= 0 and raw.find(b"\n", start, len(raw) - 2) < 0:
        try:
            value = jsonfast.loads(raw[start + 5 :])
        except ValueError:
            value = None
    if value is None:
        try:
            value = jsonfast.loads(event.data)
        except ValueError:
            return {}
    return value if isinstance(value, dict) else {}


def _obj(value: Any) -> JsonObj:
    return value if isinstance(value, dict) else {}


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _str(value: Any) -> str:
    return value if isinstance(value, str) else ""


# A key or a string value in quotes, as these patterns write them, can only be JSON structure:
# inside a JSON string a quote is escaped (``\"``), so ``"finish_reason":"`` never matches text.


class _ChatEnd(_End):
    __slots__ = ("_finish_sent", "_head", "_ids", "_include_usage", "_model", "_usage_sent")

    def __init__(self, include_usage: bool, model: str, ids: Ids) -> None:
        super().__init__()
        self._include_usage = include_usage
        self._model = model
        self._ids = ids
        self._head: JsonObj | None = None  # id, object, created, model of the first chunk
        self._finish_sent = False
        self._usage_sent = False

    def see(self, event: Event) -> None:
        raw = event.raw
        if self._head is None:
            self._start(event)
        # every chunk with choices has a finish_reason (mostly null): one search finds it
        at = raw.find(b'"finish_reason"')
        if at >= 0:
            if raw[at + 15 : at + 20].lstrip(b": ")[:1] == b'"':
                self._finish_sent = True  # some servers put the usage on this chunk
                self._usage_sent = self._usage_sent or self._has_usage(event)
            return
        # no choices: [DONE], the usage-only chunk, an error
        if len(raw) < 32 and b"[DONE]" in raw and event.data.strip() == "[DONE]":
            self.done = True
        elif b'"error"' in raw and isinstance(_load(event).get("error"), dict):
            self.done = True  # the upstream ended the stream with its error
        elif self._has_usage(event):
            self._usage_sent = True

    def _has_usage(self, event: Event) -> bool:
        return (
            self._include_usage
            and b'"usage"' in event.raw
            and bool(_obj(_load(event).get("usage")))
        )

    def _start(self, event: Event) -> None:
        chunk = _load(event)
        if chunk and "error" not in chunk:
            self._head = {
                "id": _str(chunk.get("id")) or self._ids.new("chatcmpl-"),
                "object": "chat.completion.chunk",
                "created": _int(chunk.get("created")) or self._ids.now(),
                "model": _str(chunk.get("model")) or self._model,
            }
            if isinstance(chunk.get("system_fingerprint"), str):
                self._head["system_fingerprint"] = chunk["system_fingerprint"]

    def close(self, usage: Usage | None) -> bytes:
        out: list[bytes] = []
        head = self._head
        if head is None:
            head = {
                "id": self._ids.new("chatcmpl-"),
                "object": "chat.completion.chunk",
                "created": self._ids.now(),
                "model": self._model,
            }
            out.append(self._chunk(head, {"role": "assistant", "content": ""}, None))
        if not self._finish_sent:
            out.append(self._chunk(head, {}, "length"))
        if self._include_usage and not self._usage_sent and usage is not None:
            out.append(frame({**head, "choices": [], "usage": chat_usage(usage)}))
        out.append(frame("[DONE]"))
        return b"".join(out)

    @staticmethod
    def _chunk(head: JsonObj, delta: JsonObj, finish: str | None) -> bytes:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        return frame({**head, "choices": [choice]})


class _MessagesEnd(_End):
    __slots__ = ("_delta_sent", "_ids", "_model", "_open", "_output_tokens", "_started")

    def __init__(self, model: str, ids: Ids) -> None:
        super().__init__()
        self._model = model
        self._ids = ids
        self._started = False
        self._open: int | None = None  # index of the content block started and not stopped
        self._delta_sent = False
        self._output_tokens = 0  # the last count the upstream reported

    def see(self, event: Event) -> None:
        raw = event.raw
        if raw.startswith(b"event: content_block_delta"):
            return  # most events: skipped at a glance
        # message_start, content_block_start / message_stop, content_block_stop,
        # message_delta, error: every other event (the deltas, ping) is never parsed
        if not (
            b'start"' in raw or b'stop"' in raw or b'message_delta"' in raw or b'error"' in raw
        ):
            return
        data = _load(event)
        kind = _str(data.get("type")) or event.name
        if kind == "content_block_start":
            self._open = _int(data.get("index")) or 0
        elif kind == "content_block_stop":
            if self._open == (_int(data.get("index")) or 0):
                self._open = None
        elif kind == "message_start":
            self._started = True
            self._count(_obj(data.get("message")).get("usage"))
        elif kind == "message_delta":
            self._delta_sent = True
            self._count(data.get("usage"))
        elif kind in ("message_stop", "error"):
            self.done = True

    def _count(self, usage: Any) -> None:
        n = _int(_obj(usage).get("output_tokens"))
        if n is not None:
            self._output_tokens = n

    def close(self, usage: Usage | None) -> bytes:
        out: list[bytes] = []
        if not self._started:
            message: JsonObj = {
                "id": self._ids.new("msg_"),
                "type": "message",
                "role": "assistant",
                "model": self._model,
                "content": [],
                "stop_reason": None,
                "stop_sequence": None,
                "usage": {"input_tokens": 0, "output_tokens": 0},
            }
            out.append(_named("message_start", message=message))
        if self._open is not None:
            out.append(_named("content_block_stop", index=self._open))
        if not self._delta_sent:
            tokens = usage.output_tokens if usage is not None else self._output_tokens
            out.append(
                _named(
                    "message_delta",
                    delta={"stop_reason": "max_tokens", "stop_sequence": None},
                    usage={"output_tokens": tokens},
                )
            )
        out.append(_named("message_stop"))
        return b"".join(out)


def _named(kind: str, **fields: Any) -> bytes:
    return frame({"type": kind, **fields}, kind)


_RESPONSE_ENDS = ("response.completed", "response.incomplete", "response.failed", "error")


def _may_end(raw: bytes) -> bool:
    return b'completed"' in raw or b'incomplete"' in raw or b'failed"' in raw or b'error"' in raw


class _ResponsesEnd(_End):
    __slots__ = ("_done_items", "_held", "_ids", "_last", "_model", "_open", "_response", "_seq")

    def __init__(self, model: str, ids: Ids) -> None:
        super().__init__()
        self._model = model
        self._ids = ids
        self._response: JsonObj | None = None  # the response.created object
        self._open: dict[int, JsonObj] = {}  # output_index -> item as added
        self._done_items: dict[int, JsonObj] = {}  # output_index -> item as done
        self._held: list[Event] = []  # the events since an item opened (read at close)
        self._last: Event | None = None  # the last event (its sequence_number, read at close)
        self._seq: int | None = None

    def see(self, event: Event) -> None:
        raw = event.raw
        self._last = event
        if self._open:
            self._held.append(event)
            if raw.startswith(b"event: response.") and raw.find(b".delta\n", 16, 64) > 0:
                return  # a delta (most events): skipped at a glance
        if b'.output_item.added"' in raw:
            data = _load(event)
            if data.get("type") == "response.output_item.added":
                self._open[_int(data.get("output_index")) or 0] = _obj(data.get("item"))
        elif b'.output_item.done"' in raw:
            data = _load(event)
            if data.get("type") == "response.output_item.done":
                index = _int(data.get("output_index")) or 0
                self._done_items[index] = _obj(data.get("item"))
                self._open.pop(index, None)
                if not self._open:
                    self._held.clear()
        elif self._response is None and b'response.created"' in raw:
            data = _load(event)
            if data.get("type") == "response.created":
                self._response = _obj(data.get("response"))
        elif _may_end(raw) and _load(event).get("type") in _RESPONSE_ENDS:
            self.done = True

    def close(self, usage: Usage | None) -> bytes:
        out: list[bytes] = []
        response = self._response
        if response is None:
            self._seq = 0
            response = response_object(
                self._ids.new("resp_"), self._ids.now(), self._model, [], None, None, "in_progress"
            )
            out.append(self._event("response.created", response=response))
            out.append(self._event("response.in_progress", response=response))
        elif self._last is not None:
            seq = _int(_load(self._last).get("sequence_number"))
            self._seq = None if seq is None else seq + 1
        for index in sorted(self._open):
            out.extend(self._finish_item(index, self._open[index]))
        final = dict(response)
        final["status"] = "incomplete"
        final["incomplete_details"] = {"reason": "max_output_tokens"}
        final["output"] = [self._done_items[i] for i in sorted(self._done_items)]
        if usage is not None:
            final["usage"] = responses_usage(usage)
        out.append(self._event("response.incomplete", response=final))
        return b"".join(out)

    def _event(self, kind: str, **fields: Any) -> bytes:
        payload: JsonObj = {"type": kind}
        if self._seq is not None:
            payload["sequence_number"] = self._seq
            self._seq += 1
        payload.update(fields)
        return frame(payload, kind)

    def _finish_item(self, index: int, added: JsonObj) -> list[bytes]:
        """The done events of an item still open, from what its events said so far."""
        parts: dict[int, JsonObj] = {}  # content_index -> the part so far
        pieces: dict[int, list[str]] = {}  # content_index -> its text since, in pieces
        texts_done: set[int] = set()  # parts whose text done event came
        parts_done: set[int] = set()
        summary: dict[int, list[str]] = {}  # summary_index -> its text, in pieces
        summary_done: set[int] = set()
        arguments: list[str] | None = None  # the arguments so far, when any came
        arguments_done = False
        for event in self._held:
            data = _load(event)
            if _int(data.get("output_index")) != index:
                continue
            kind = _str(data.get("type"))
            ci = _int(data.get("content_index")) or 0
            si = _int(data.get("summary_index")) or 0
            if kind == "response.content_part.added":
                parts[ci] = dict(_obj(data.get("part")))
            elif kind in _PART_DELTAS:
                parts.setdefault(ci, _empty_part(_PART_DELTAS[kind]))
                pieces.setdefault(ci, []).append(_str(data.get("delta")))
            elif kind in _PART_TEXT_DONE:
                part = parts.setdefault(ci, _empty_part(_PART_TEXT_DONE[kind]))
                part[_text_key(part)] = ""
                pieces[ci] = [_str(data.get(_text_key(part)))]
                texts_done.add(ci)
            elif kind == "response.content_part.done":
                parts[ci] = dict(_obj(data.get("part")))
                pieces.pop(ci, None)
                parts_done.add(ci)
            elif kind == "response.function_call_arguments.delta":
                arguments = arguments or []
                arguments.append(_str(data.get("delta")))
            elif kind == "response.function_call_arguments.done":
                arguments, arguments_done = [_str(data.get("arguments"))], True
            elif kind == "response.reasoning_summary_part.added":
                summary.setdefault(si, [])
            elif kind == "response.reasoning_summary_text.delta":
                summary.setdefault(si, []).append(_str(data.get("delta")))
            elif kind == "response.reasoning_summary_text.done":
                summary[si] = [_str(data.get("text"))]
            elif kind == "response.reasoning_summary_part.done":
                summary_done.add(si)
        for ci, texts in pieces.items():
            part = parts[ci]
            key = _text_key(part)
            part[key] = _str(part.get(key)) + "".join(texts)
        at: JsonObj = {"item_id": _str(added.get("id")), "output_index": index}
        out: list[bytes] = []
        item = dict(added)
        for ci in sorted(parts):
            part = parts[ci]
            if ci in parts_done:
                continue
            if ci not in texts_done:
                out.extend(self._text_done(part, at, ci))
            out.append(self._event("response.content_part.done", **at, content_index=ci, part=part))
        if parts:
            item["content"] = [parts[ci] for ci in sorted(parts)]
        summary_texts = {si: "".join(texts) for si, texts in summary.items()}
        for si in sorted(summary_texts):
            if si in summary_done:
                continue
            text = summary_texts[si]
            out.append(
                self._event(
                    "response.reasoning_summary_text.done", **at, summary_index=si, text=text
                )
            )
            part = {"type": "summary_text", "text": text}
            out.append(
                self._event(
                    "response.reasoning_summary_part.done", **at, summary_index=si, part=part
                )
            )
        if summary_texts:
            texts = [summary_texts[si] for si in sorted(summary_texts)]
            item["summary"] = [{"type": "summary_text", "text": text} for text in texts]
        if arguments is not None:
            args = "".join(arguments)
            if not arguments_done:
                args = _str(added.get("arguments")) + args
                done = "response.function_call_arguments.done"
                out.append(self._event(done, **at, arguments=args))
            item["arguments"] = args
        if item.get("type") in ("message", "function_call", "reasoning"):
            item["status"] = "incomplete"
        out.append(self._event("response.output_item.done", output_index=index, item=item))
        self._done_items[index] = item
        return out

    def _text_done(self, part: JsonObj, at: JsonObj, ci: int) -> list[bytes]:
        """A content part's text done event (output_text, refusal, reasoning_text)."""
        part_type = _str(part.get("type"))
        if part_type == "output_text":
            text = _str(part.get("text"))
            done = "response.output_text.done"
            return [self._event(done, **at, content_index=ci, text=text, logprobs=[])]
        if part_type == "refusal":
            refusal = _str(part.get("refusal"))
            return [self._event("response.refusal.done", **at, content_index=ci, refusal=refusal)]
        if part_type == "reasoning_text":
            text = _str(part.get("text"))
            return [self._event("response.reasoning_text.done", **at, content_index=ci, text=text)]
        return []


# a content part's delta or text done event -> the part's type
_PART_DELTAS = {
    "response.output_text.delta": "output_text",
    "response.refusal.delta": "refusal",
    "response.reasoning_text.delta": "reasoning_text",
}
_PART_TEXT_DONE = {
    "response.output_text.done": "output_text",
    "response.refusal.done": "refusal",
    "response.reasoning_text.done": "reasoning_text",
}


def _text_key(part: JsonObj) -> str:
    """The field holding a content part's text (its done event names it the same)."""
    return "refusal" if part.get("type") == "refusal" else "text"


def _empty_part(part_type: str) -> JsonObj:
    if part_type == "output_text":
        return {"type": "output_text", "text": "", "annotations": []}
    if part_type == "refusal":
        return {"type": "refusal", "refusal": ""}
    return {"type": part_type, "text": ""}


class _GeminiEnd(_End):
    __slots__ = ("_ids", "_model", "_model_version", "_response_id", "_started")

    def __init__(self, model: str, ids: Ids) -> None:
        super().__init__()
        self._model = model
        self._ids = ids
        self._started = False
        self._model_version = ""
        self._response_id = ""

    def see(self, event: Event) -> None:
        raw = event.raw
        if not self._started:
            self._started = True
            chunk = _load(event)
            self._model_version = _str(chunk.get("modelVersion"))
            self._response_id = _str(chunk.get("responseId"))
        if b'"finishReason"' in raw or b'"error"' in raw:
            chunk = _load(event)
            candidates = chunk.get("candidates")
            if isinstance(chunk.get("error"), dict) or (
                isinstance(candidates, list)
                and any(_obj(c).get("finishReason") for c in candidates)
            ):
                self.done = True

    def close(self, usage: Usage | None) -> bytes:
        candidate = {
            "content": {"role": "model", "parts": [{"text": ""}]},
            "finishReason": "MAX_TOKENS",
            "index": 0,
        }
        chunk: JsonObj = {"candidates": [candidate]}
        if usage is not None:
            chunk["usageMetadata"] = gemini_usage(usage)
        chunk["modelVersion"] = self._model_version or self._model
        chunk["responseId"] = self._response_id or self._ids.new("", 22)
        return frame(chunk)
