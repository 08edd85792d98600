"""OpenAI and the OpenAI-compatible providers (openrouter, deepseek, zhipu, ollama): the
``chat``, ``responses`` and ``embeddings`` wires, their usage parsers, the OpenAI error
object, and each compatible provider's request quirks.

- ``compact: cc`` on OpenAI-compatible chat providers: drop ``metadata`` and ``user``.
- ``deepseek`` / ``zhipu``: ``thinking: {type: <options.thinking_type>}`` (default
  ``disabled``, ``none`` sends nothing); deepseek ``response_format_type`` and tuning options
  fill what the request left unset.
- ``openai``: ``options.organization`` goes up as ``openai-organization``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from agw.config.llm import Provider
from agw.llm.providers.base import ErrorDialect, ProviderKind, WireFormat, error_type
from agw.llm.providers.tokens import Usage, count, counted, obj
from agw.sse import frame
from agw.types import JsonObj

DEEPSEEK_TUNING = (
    "max_tokens",
    "temperature",
    "top_p",
    "presence_penalty",
    "frequency_penalty",
    "log_probs",
    "top_log_probs",
)


# ----------------------------------------------------------------------------------- usage


def chat_usage(usage: Mapping[str, Any]) -> Usage:
    """A chat (or embeddings) ``usage`` object. DeepSeek reports cache hits as
    ``prompt_cache_hit_tokens`` (and the rest as ``prompt_cache_miss_tokens``) instead of
    ``prompt_tokens_details.cached_tokens``."""
    prompt = obj(usage.get("prompt_tokens_details"))
    cached = prompt.get("cached_tokens")
    if not counted(cached):
        cached = usage.get("prompt_cache_hit_tokens")
    inputs = count(usage.get("prompt_tokens")) or count(usage.get("input_tokens"))
    if not inputs:
        inputs = count(usage.get("prompt_cache_hit_tokens")) + count(
            usage.get("prompt_cache_miss_tokens")
        )
    return Usage(
        input_tokens=inputs,
        output_tokens=count(usage.get("completion_tokens")) or count(usage.get("output_tokens")),
        cached_input_tokens=count(cached),
        cache_creation_input_tokens=count(prompt.get("cache_write_tokens")),
        reasoning_tokens=count(obj(usage.get("completion_tokens_details")).get("reasoning_tokens")),
    )


def responses_usage(usage: Mapping[str, Any]) -> Usage:
    """A Responses ``usage`` object."""
    details = obj(usage.get("input_tokens_details"))
    return Usage(
        input_tokens=count(usage.get("input_tokens")),
        output_tokens=count(usage.get("output_tokens")),
        cached_input_tokens=count(details.get("cached_tokens")),
        cache_creation_input_tokens=count(details.get("cache_write_tokens")),
        reasoning_tokens=count(obj(usage.get("output_tokens_details")).get("reasoning_tokens")),
    )


# ------------------------------------------------------------------------------ the wires


class ChatWire(WireFormat):
    name = "chat"
    forwarded_headers = ("openai-organization", "openai-project")
    stream_tail = frame("[DONE]")

    def stream_passes(self, body: Mapping[str, Any]) -> bool:
        return False  # the usage chunk is always asked for (stream_options.include_usage)

    def prepare(self, body: JsonObj, model: str, *, stream: bool, own: bool) -> bool:
        if model:
            body["model"] = model
        if not stream:
            return False
        body["stream"] = True
        opts = body.get("stream_options")
        opts = dict(opts) if isinstance(opts, dict) else {}
        injected = False
        if opts.get("include_usage") is not True:
            opts["include_usage"] = True
            injected = own
        body["stream_options"] = opts
        return injected


class ResponsesWire(WireFormat):
    name = "responses"
    forwarded_headers = ("openai-organization", "openai-project", "openai-beta")


class EmbeddingsWire(WireFormat):
    name = "embeddings"


# -------------------------------------------------------------------------- error dialect


class OpenAiErrors(ErrorDialect):
    """The OpenAI error object; inside a stream, that object in a ``data`` line."""

    def body(
        self,
        status: int,
        message: str,
        code: str | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> bytes:
        error = {"message": message, "type": error_type(status), "param": None, "code": code}
        if extra:
            error.update(extra)
        return json.dumps({"error": error}).encode()

    def stream_frame(self, status: int, message: str) -> bytes:
        return frame(self.body(status, message).decode())


# ------------------------------------------------------------------------ provider kinds


class OpenAiCompatible(ProviderKind):
    """openrouter, ollama, and the base of every OpenAI-style provider below."""

    lists_models = True

    def url(self, provider: Provider, wire: str, model: str, *, stream: bool) -> str:
        base = provider.effective_base_url.rstrip("/")
        if wire in ("responses", "embeddings", "models"):
            return f"{base}/{wire}"
        return base + "/chat/completions"

    def needs_shaping(self, provider: Provider, wire: str) -> bool:
        return provider.options.get("compact") == "cc" and wire == "chat"

    def shape(self, provider: Provider, wire: str, body: JsonObj) -> dict[str, str]:
        if provider.options.get("compact") == "cc" and wire == "chat":
            body.pop("metadata", None)
            body.pop("user", None)
        return {}


class OpenAi(OpenAiCompatible):
    responses_native = True

    def key_headers(self, provider: Provider, wire: str, key: str) -> dict[str, str]:
        headers = {"authorization": f"Bearer {key}"} if key else {}
        if provider.options.get("organization"):
            headers["openai-organization"] = str(provider.options["organization"])
        return headers


class Thinking(OpenAiCompatible):
    """zhipu (and deepseek): ``thinking: {type: <options.thinking_type>}`` on chat."""

    def needs_shaping(self, provider: Provider, wire: str) -> bool:
        return True

    def shape(self, provider: Provider, wire: str, body: JsonObj) -> dict[str, str]:
        super().shape(provider, wire, body)
        if wire == "chat":
            thinking = str(provider.options.get("thinking_type", "disabled"))
            if thinking != "none":
                body["thinking"] = {"type": thinking}
        return {}


class DeepSeek(Thinking):
    """deepseek: thinking, plus ``response_format_type`` and tuning options as defaults."""

    def shape(self, provider: Provider, wire: str, body: JsonObj) -> dict[str, str]:
        super().shape(provider, wire, body)
        if wire == "chat":
            fmt = provider.options.get("response_format_type")
            if fmt in ("text", "json_object"):
                body.setdefault("response_format", {"type": fmt})
            for name in DEEPSEEK_TUNING:
                if name in provider.options:
                    body.setdefault(name, provider.options[name])
        return {}
