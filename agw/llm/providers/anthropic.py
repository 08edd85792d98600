"""Anthropic: the ``messages`` wire (and ``count_tokens``), its usage parser, and the Anthropic
error envelope. Claude Code's provider builds on this one (:mod:`.claudecode`)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from agw.config.llm import Provider
from agw.llm.providers.base import ErrorDialect, ProviderKind, WireFormat, error_type
from agw.llm.providers.tokens import Usage, count, obj
from agw.sse import frame
from agw.types import JsonObj

ANTHROPIC_VERSION = "2023-06-01"

# ----------------------------------------------------------------------------------- usage

_USAGE_FIELDS = (
    "input_tokens",
    "output_tokens",
    "cache_creation_input_tokens",
    "cache_read_input_tokens",
    "output_tokens_details",
)
# In a message_delta, a zero for these means "not reported here", not "none".
_KEPT_IF_ZERO = ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens")


def messages_usage(usage: Mapping[str, Any]) -> Usage:
    """A Messages ``usage`` object. Anthropic's ``input_tokens`` leaves out cache reads and
    writes: they are added back (see :mod:`agw.llm.providers.tokens`)."""
    cached = count(usage.get("cache_read_input_tokens"))
    creation = count(usage.get("cache_creation_input_tokens"))
    return Usage(
        input_tokens=count(usage.get("input_tokens")) + cached + creation,
        output_tokens=count(usage.get("output_tokens")),
        cached_input_tokens=cached,
        cache_creation_input_tokens=creation,
        reasoning_tokens=count(obj(usage.get("output_tokens_details")).get("thinking_tokens")),
    )


class MessagesUsage:
    """A Messages stream's usage: ``message_start``'s report, then ``message_delta``'s
    cumulative ones (a field a delta leaves out, or reports as zero, keeps its value)."""

    __slots__ = ("_fields",)

    def __init__(self) -> None:
        self._fields: JsonObj = {}

    def take(self, usage: Mapping[str, Any], *, delta: bool) -> None:
        for name in _USAGE_FIELDS:
            value = usage.get(name)
            if value is None or (delta and name in _KEPT_IF_ZERO and not count(value)):
                continue
            self._fields[name] = value

    def usage(self) -> Usage:
        return messages_usage(self._fields)


# ------------------------------------------------------------------------------ the wire


class MessagesWire(WireFormat):
    name = "messages"
    forwarded_headers = ("anthropic-version", "anthropic-beta")
    forwards_query = True


# -------------------------------------------------------------------------- error dialect


class AnthropicErrors(ErrorDialect):
    """``{"type": "error", "error": {...}}``; inside a stream, an ``error`` event."""

    def body(
        self,
        status: int,
        message: str,
        code: str | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> bytes:
        error: dict[str, Any] = {"type": error_type(status), "message": message}
        if extra:
            error.update(extra)
        return json.dumps({"type": "error", "error": error}).encode()

    def stream_frame(self, status: int, message: str) -> bytes:
        return frame(self.body(status, message).decode(), "error")


# ------------------------------------------------------------------------- provider kind


def _v1(base: str, path: str) -> str:
    """``base`` + ``/v1`` + ``path``, unless ``base`` already ends in ``/v1``."""
    return base + (path if base.endswith("/v1") else "/v1" + path)


class Anthropic(ProviderKind):
    chat_wire = "messages"
    counts_tokens = True

    def url(self, provider: Provider, wire: str, model: str, *, stream: bool) -> str:
        base = provider.effective_base_url.rstrip("/")
        if wire == "models":
            return _v1(base, "/models")
        if wire == "count_tokens":
            return _v1(base, "/messages/count_tokens")
        return _v1(base, "/messages")

    def auth_headers(self, provider: Provider, wire: str, key: str) -> dict[str, str]:
        headers = self.key_headers(provider, wire, key)
        headers["anthropic-version"] = ANTHROPIC_VERSION
        headers.update({k.lower(): v for k, v in provider.network.extra_headers.items()})
        return headers

    def key_headers(self, provider: Provider, wire: str, key: str) -> dict[str, str]:
        return {"x-api-key": key} if key else {}
