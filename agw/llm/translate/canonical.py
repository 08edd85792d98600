"""The canonical model every wire format is translated through.

A format module parses its JSON into these values and renders them back; no format module
knows another. The model carries what at least two formats can express; what only one can
is dropped at parse time and named in ``Request.dropped``.

Conventions that every format module follows:

* ``Usage`` (:mod:`agw.llm.providers.tokens`, with each wire's one usage parser):
  ``input_tokens`` counts *all* prompt tokens, cached ones included (the OpenAI and Gemini
  convention); ``cached_input_tokens`` and ``cache_creation_input_tokens`` are parts of it.
  ``output_tokens`` includes ``reasoning_tokens``.
* ``ToolCall.arguments`` is the JSON text of the arguments object, as chat and responses
  carry it; messages and gemini parse it into an object.
* A ``Thinking`` signature is opaque and only valid for the format named by ``origin``;
  renderers drop (or, where a format carries an opaque field of its own, wrap) foreign ones.
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import dataclass, field
from typing import Any, Literal

from agw.llm.providers.tokens import Usage as Usage  # re-exported: the canonical counts

Format = Literal["chat", "messages", "responses", "gemini"]
FORMATS: tuple[Format, ...] = ("chat", "messages", "responses", "gemini")

Role = Literal["user", "assistant"]

StopReason = Literal[
    "end_turn",
    "max_tokens",
    "stop_sequence",
    "tool_use",
    "content_filter",
    "refusal",
    "pause_turn",
    "error",
]


# --- content parts ------------------------------------------------------------------------


@dataclass(slots=True)
class Text:
    text: str


@dataclass(slots=True)
class Image:
    """An image by URL, or inline as base64 ``data`` with its ``media_type``."""

    url: str | None = None
    data: str | None = None
    media_type: str | None = None
    detail: str | None = None

    @classmethod
    def from_url(cls, url: str, detail: str | None = None) -> Image:
        """Split a ``data:<type>;base64,<data>`` URL; keep any other URL as it is."""
        if url.startswith("data:") and ";base64," in url:
            head, data = url[5:].split(";base64,", 1)
            return cls(data=data, media_type=head or None, detail=detail)
        return cls(url=url, detail=detail)

    def as_url(self) -> str:
        if self.url is not None:
            return self.url
        return f"data:{self.media_type or 'application/octet-stream'};base64,{self.data or ''}"


@dataclass(slots=True)
class ToolCall:
    id: str
    name: str
    arguments: str = "{}"
    signature: str | None = None  # Gemini thoughtSignature of the functionCall part

    def arguments_object(self) -> dict[str, Any]:
        """The arguments as an object; text that is not a JSON object becomes ``{}``."""
        return arguments_object(self.arguments)


@dataclass(slots=True)
class ToolResult:
    tool_call_id: str
    content: list[Text | Image] = field(default_factory=list)
    is_error: bool = False
    name: str | None = None  # the called tool's name, where the source says it

    def text(self) -> str:
        return "\n".join(p.text for p in self.content if isinstance(p, Text))


@dataclass(slots=True)
class Thinking:
    text: str = ""
    signature: str | None = None
    origin: Format | None = None  # the format whose upstream issued ``signature``
    redacted: bool = False  # Anthropic redacted_thinking: ``signature`` holds its data
    id: str | None = None  # Responses reasoning item id


Part = Text | Image | ToolCall | ToolResult | Thinking


@dataclass(slots=True)
class Message:
    role: Role
    content: list[Part] = field(default_factory=list)


# --- request ------------------------------------------------------------------------------


@dataclass(slots=True)
class Tool:
    name: str
    description: str | None = None
    parameters: dict[str, Any] = field(default_factory=dict)
    strict: bool | None = None


ToolChoiceMode = Literal["auto", "none", "required", "tool"]


@dataclass(slots=True)
class ToolChoice:
    mode: ToolChoiceMode
    name: str | None = None  # for mode "tool"


@dataclass(slots=True)
class Reasoning:
    """How much the model should think: an OpenAI-style ``effort`` and/or a token budget."""

    effort: str | None = None
    budget_tokens: int | None = None
    summary: str | None = None  # Responses reasoning.summary ("auto", "concise", "detailed")


@dataclass(slots=True)
class ResponseFormat:
    type: Literal["text", "json_object", "json_schema"]
    name: str | None = None
    schema: dict[str, Any] | None = None
    strict: bool | None = None
    description: str | None = None


@dataclass(slots=True)
class Request:
    model: str = ""
    system: list[str] = field(default_factory=list)
    messages: list[Message] = field(default_factory=list)
    tools: list[Tool] = field(default_factory=list)
    tool_choice: ToolChoice | None = None
    parallel_tool_calls: bool | None = None
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    stop: list[str] = field(default_factory=list)
    stream: bool = False
    user: str | None = None
    metadata: dict[str, str] | None = None
    reasoning: Reasoning | None = None
    response_format: ResponseFormat | None = None
    dropped: list[str] = field(default_factory=list)  # source fields with no canonical home


# --- response -----------------------------------------------------------------------------


@dataclass(slots=True)
class Response:
    id: str | None = None
    model: str | None = None
    content: list[Part] = field(default_factory=list)
    stop_reason: StopReason | None = None
    stop_sequence: str | None = None
    usage: Usage | None = None
    created: int | None = None


def settle_stop_reason(reason: StopReason | None, has_tool_calls: bool) -> StopReason:
    """``tool_use`` exactly when a tool call was produced; a missing reason is ``end_turn``.

    Some OpenAI-compatible servers answer ``stop`` next to tool calls; an Anthropic client
    then would not run the tools. A tool reason without any call would leave it waiting.
    """
    if has_tool_calls and reason in (None, "end_turn", "stop_sequence"):
        return "tool_use"
    if not has_tool_calls and reason == "tool_use":
        return "end_turn"
    return reason or "end_turn"


# --- stream events ------------------------------------------------------------------------
#
# A stream is MessageStart, then blocks, then MessageDelta and MessageStop. A block is opened
# implicitly by the first TextDelta / ThinkingDelta after a different block, or by
# ToolCallStart; BlockStop closes the open block. Encoders tolerate a missing BlockStop.


@dataclass(slots=True)
class MessageStart:
    id: str | None = None
    model: str | None = None
    created: int | None = None
    usage: Usage | None = None


@dataclass(slots=True)
class TextDelta:
    text: str


@dataclass(slots=True)
class ThinkingDelta:
    text: str = ""
    signature: str | None = None
    origin: Format | None = None
    redacted: bool = False


@dataclass(slots=True)
class ToolCallStart:
    id: str
    name: str
    signature: str | None = None


@dataclass(slots=True)
class ToolCallArgsDelta:
    arguments: str


@dataclass(slots=True)
class BlockStop:
    pass


@dataclass(slots=True)
class MessageDelta:
    stop_reason: StopReason | None = None
    stop_sequence: str | None = None
    usage: Usage | None = None


@dataclass(slots=True)
class MessageStop:
    pass


@dataclass(slots=True)
class Error:
    message: str
    type: str = "api_error"


Event = (
    MessageStart
    | TextDelta
    | ThinkingDelta
    | ToolCallStart
    | ToolCallArgsDelta
    | BlockStop
    | MessageDelta
    | MessageStop
    | Error
)


# --- ids, clocks and small shared conversions ---------------------------------------------

_ALNUM = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"


class Ids:
    """Where generated ids and timestamps come from; seed it to make outputs reproducible."""

    __slots__ = ("_now", "_rng")

    def __init__(self, seed: int | None = None, now: int | None = None) -> None:
        self._rng: random.Random = random.SystemRandom() if seed is None else random.Random(seed)
        self._now = now

    def new(self, prefix: str, length: int = 24) -> str:
        return prefix + "".join(self._rng.choice(_ALNUM) for _ in range(length))

    def now(self) -> int:
        return int(time.time()) if self._now is None else self._now


def arguments_object(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text) if text.strip() else {}
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def dumps(value: Any) -> str:
    """Compact JSON the way OpenAI writes tool arguments."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


_EFFORT_BUDGET = {"minimal": 1024, "low": 2048, "medium": 8192, "high": 16384, "xhigh": 32768}


def effort_to_budget(effort: str) -> int | None:
    """A thinking budget for an OpenAI reasoning effort; ``None`` for "none" or unknown."""
    if effort == "max":
        return 32768
    return _EFFORT_BUDGET.get(effort)


def budget_to_effort(budget: int) -> str:
    if budget <= 2048:
        return "low"
    if budget <= 8192:
        return "medium"
    return "high"


# A signature travels inside another format's opaque field as "agw:<origin>:<signature>",
# so that (for example) Anthropic thinking survives a round trip through a Responses client.
_WRAP = "agw:"


def wrap_signature(origin: Format, signature: str) -> str:
    return f"{_WRAP}{origin}:{signature}"


def unwrap_signature(value: str, own: Format) -> tuple[Format, str]:
    """The origin and signature of an opaque value found in format ``own``."""
    if value.startswith(_WRAP):
        origin, _, sig = value[len(_WRAP) :].partition(":")
        for fmt in FORMATS:
            if fmt == origin:
                return fmt, sig
    return own, value
