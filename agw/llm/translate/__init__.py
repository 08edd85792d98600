"""Translation between LLM wire formats through one canonical model.

Formats: ``"chat"`` (OpenAI Chat Completions), ``"messages"`` (Anthropic Messages),
``"responses"`` (OpenAI Responses), ``"gemini"`` (Google generateContent). Each has a module
with ``parse_request``/``render_request``/``parse_response``/``render_response`` and a
``*_stream`` module with a ``StreamDecoder`` and a ``StreamEncoder``; this package joins them.

Pure functions over JSON values: no I/O. Malformed client requests raise
:class:`agw.errors.InvalidRequest`; upstream answers are read leniently (what cannot be
mapped is skipped). Ids the source lacks are generated (``msg_…``, ``chatcmpl-…``,
``call_…``); pass ``ids=Ids(seed=…, now=…)`` to make them reproducible.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Protocol

from agw.llm.translate import (
    chat,
    chat_stream,
    gemini,
    gemini_stream,
    messages,
    messages_stream,
    responses,
    responses_stream,
)
from agw.llm.translate.canonical import (
    FORMATS,
    Error,
    Event,
    Format,
    Ids,
    MessageDelta,
    MessageStart,
    MessageStop,
    Request,
    Response,
    ToolCall,
    ToolCallStart,
    Usage,
    settle_stop_reason,
)
from agw.llm.translate.responses import tool_namespaces

__all__ = [
    "FORMATS",
    "Format",
    "Ids",
    "StreamTranslator",
    "Usage",
    "check_format",
    "parse_request",
    "parse_response",
    "render_request",
    "render_response",
    "tool_namespaces",
    "translate_request",
    "translate_response",
]


class Decoder(Protocol):
    def feed(self, event: str | None, data: str) -> list[Event]: ...
    def finish(self) -> list[Event]: ...


class Encoder(Protocol):
    def encode(self, events: list[Event]) -> bytes: ...


def check_format(name: str) -> Format:
    for fmt in FORMATS:
        if fmt == name:
            return fmt
    raise ValueError(f"unknown wire format {name!r} (expected one of {', '.join(FORMATS)})")


def parse_request(
    body: Any,
    fmt: str,
    *,
    model: str | None = None,
    stream: bool | None = None,
    ids: Ids | None = None,
) -> Request:
    """A client request as a canonical Request. ``model``/``stream`` override the body's (the
    gemini format carries them in the URL, so they come from there)."""
    fmt = check_format(fmt)
    if fmt == "gemini":
        req = gemini.parse_request(body, model=model, stream=bool(stream), ids=ids)
    else:
        parsers: dict[str, Callable[[Any], Request]] = {
            "chat": chat.parse_request,
            "messages": messages.parse_request,
            "responses": responses.parse_request,
        }
        req = parsers[fmt](body)
        if model is not None:
            req.model = model
        if stream is not None:
            req.stream = stream
    return req


def render_request(req: Request, fmt: str) -> dict[str, Any]:
    """A canonical Request in ``fmt``; what ``fmt`` cannot carry is added to ``req.dropped``."""
    fmt = check_format(fmt)
    renderers: dict[str, Callable[[Request], dict[str, Any]]] = {
        "chat": chat.render_request,
        "messages": messages.render_request,
        "responses": responses.render_request,
        "gemini": gemini.render_request,
    }
    return renderers[fmt](req)


def parse_response(body: Any, fmt: str) -> Response:
    fmt = check_format(fmt)
    parsers: dict[str, Callable[[Any], Response]] = {
        "chat": chat.parse_response,
        "messages": messages.parse_response,
        "responses": responses.parse_response,
        "gemini": gemini.parse_response,
    }
    resp = parsers[fmt](body)
    has_calls = any(isinstance(p, ToolCall) for p in resp.content)
    resp.stop_reason = settle_stop_reason(resp.stop_reason, has_calls)
    return resp


def render_response(
    resp: Response,
    fmt: str,
    *,
    ids: Ids | None = None,
    tool_namespaces: Mapping[str, tuple[str, str]] | None = None,
) -> dict[str, Any]:
    """A canonical Response in ``fmt``. ``tool_namespaces`` (from
    :func:`responses.tool_namespaces` on the client's request) splits flattened tool names
    back into Responses ``namespace`` + ``name``."""
    fmt = check_format(fmt)
    if fmt == "responses":
        return responses.render_response(resp, ids=ids, namespaces=tool_namespaces)
    renderers: dict[str, Callable[..., dict[str, Any]]] = {
        "chat": chat.render_response,
        "messages": messages.render_response,
        "responses": responses.render_response,
        "gemini": gemini.render_response,
    }
    return renderers[fmt](resp, ids=ids)


def translate_request(
    body: Any,
    src: str,
    dst: str,
    *,
    model: str | None = None,
    stream: bool | None = None,
    ids: Ids | None = None,
    dropped: list[str] | None = None,
) -> dict[str, Any]:
    """A client request body in ``src`` as a body in ``dst``.

    Raises InvalidRequest for a malformed body. Fields of the source with no equivalent in
    the target are left out; pass a list as ``dropped`` to learn which.
    """
    req = parse_request(body, src, model=model, stream=stream, ids=ids)
    out = render_request(req, dst)
    if dropped is not None:
        dropped.extend(req.dropped)
    return out


def translate_response(
    body: Any,
    src: str,
    dst: str,
    *,
    model: str | None = None,
    ids: Ids | None = None,
    tool_namespaces: Mapping[str, tuple[str, str]] | None = None,
) -> dict[str, Any]:
    """An upstream (non-streaming) answer in ``src`` as the client's ``dst`` answer.

    ``model``, when given, is the model name reported to the client.
    """
    resp = parse_response(body, src)
    if model:
        resp.model = model
    return render_response(resp, dst, ids=ids, tool_namespaces=tool_namespaces)


def _decoder(fmt: Format) -> Decoder:
    if fmt == "chat":
        return chat_stream.StreamDecoder()
    if fmt == "messages":
        return messages_stream.StreamDecoder()
    if fmt == "responses":
        return responses_stream.StreamDecoder()
    return gemini_stream.StreamDecoder()


def _encoder(
    fmt: Format,
    model: str | None,
    ids: Ids,
    include_usage: bool,
    namespaces: Mapping[str, tuple[str, str]] | None,
) -> Encoder:
    if fmt == "chat":
        return chat_stream.StreamEncoder(model=model, ids=ids, include_usage=include_usage)
    if fmt == "messages":
        return messages_stream.StreamEncoder(model=model, ids=ids)
    if fmt == "responses":
        return responses_stream.StreamEncoder(model=model, ids=ids, namespaces=namespaces)
    return gemini_stream.StreamEncoder(model=model, ids=ids)


class StreamTranslator:
    """An upstream SSE stream in ``src`` re-encoded, event by event, as ``dst``.

    ``feed`` takes one upstream event (its ``event:`` name or None, and its ``data``) and
    returns the client's SSE bytes for it (often b""). Call ``finish`` once the upstream
    body ends: it returns the client's terminator when the upstream never sent its own
    (an error event when the upstream was cut short; the normal end for gemini, whose
    streams have no terminator), else b"". ``usage`` is what the upstream reported so far.

    ``model`` names the model to the client (default: the upstream's); ``include_usage``
    makes a chat client's stream end with the usage chunk; ``tool_namespaces`` (for a
    Responses client, from :func:`tool_namespaces` on its request) splits flattened
    ``<namespace>__<name>`` calls back into ``namespace`` + ``name``.
    """

    def __init__(
        self,
        src: str,
        dst: str,
        *,
        model: str | None = None,
        include_usage: bool = True,
        ids: Ids | None = None,
        tool_namespaces: Mapping[str, tuple[str, str]] | None = None,
    ) -> None:
        self.src = check_format(src)
        self.dst = check_format(dst)
        self._decoder = _decoder(self.src)
        self._encoder = _encoder(
            self.dst, model or None, ids or Ids(), include_usage, tool_namespaces
        )
        self._usage = Usage()
        self._calls = False
        self._finished = False

    @property
    def usage(self) -> Usage:
        return self._usage

    @property
    def finished(self) -> bool:
        """Whether the client's stream has been terminated (normally or with an error)."""
        return self._finished

    def feed(self, event: str | None, data: str) -> bytes:
        if self._finished:
            return b""
        return self._encode(self._decoder.feed(event, data))

    def finish(self) -> bytes:
        if self._finished:
            return b""
        return self._encode(self._decoder.finish())

    def fail(self, message: str) -> bytes:
        """The client's error event for a stream the gateway ends itself (an event over
        :data:`agw.sse.EVENT_LIMIT`), instead of the upstream's own end."""
        if self._finished:
            return b""
        return self._encode([Error(message)])

    def cut(self, usage: Usage | None = None) -> bytes:
        """The client's clean end for a stream the gateway stops itself (a limit with
        ``on_exceed: cut``): the open block closed, the stop reason ``max_tokens`` (chat
        ``finish_reason: "length"``, Responses ``response.incomplete`` with
        ``incomplete_details.reason: "max_output_tokens"``, Gemini ``MAX_TOKENS``), ``usage``
        (when given) merged into what the upstream reported, and the terminator. b"" once the
        stream is finished. A stop reason the upstream already sent stands."""
        if self._finished:
            return b""
        return self._encode([MessageDelta("max_tokens", None, usage), MessageStop()])

    def _encode(self, events: list[Event]) -> bytes:
        for ev in events:
            if isinstance(ev, MessageStart) and ev.usage is not None:
                self._usage.merge(ev.usage)
            elif isinstance(ev, ToolCallStart):
                self._calls = True
            elif isinstance(ev, MessageDelta):
                if ev.usage is not None:
                    self._usage.merge(ev.usage)
                ev.stop_reason = settle_stop_reason(ev.stop_reason, self._calls)
            if isinstance(ev, MessageStop | Error):
                self._finished = True
        return self._encoder.encode(events)
