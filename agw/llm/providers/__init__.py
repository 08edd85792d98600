"""The providers the LLM plane calls: one module per wire, each with its URLs, auth headers,
usage parser, error dialect and its provider types' quirks (:mod:`.openai`, :mod:`.anthropic`,
:mod:`.claudecode`, :mod:`.codex`, :mod:`.gemini`); the credentials a call carries
(:mod:`.credentials`); the pooled connections and the limits on an answer (:mod:`.pool`).

The plane asks :func:`kind_of` a provider and :func:`wire_format` a wire; it never tests a
provider type by name.
"""

from __future__ import annotations

from agw.config.llm import Provider
from agw.llm.providers.anthropic import Anthropic, AnthropicErrors, MessagesUsage, MessagesWire
from agw.llm.providers.base import ErrorDialect, ProviderKind, WireFormat, error_message
from agw.llm.providers.claudecode import ClaudeCode, restore_event, restore_tool_names
from agw.llm.providers.codex import Codex
from agw.llm.providers.credentials import CredentialPicker, Key
from agw.llm.providers.gemini import Gemini, GeminiErrors, GeminiWire
from agw.llm.providers.openai import (
    ChatWire,
    DeepSeek,
    EmbeddingsWire,
    OpenAi,
    OpenAiCompatible,
    OpenAiErrors,
    ResponsesWire,
    Thinking,
)
from agw.llm.providers.pool import (
    ERROR_BODY_LIMIT,
    RESPONSE_LIMIT,
    BodyTooLarge,
    UpstreamPool,
    limit_text,
    read_capped,
)
from agw.llm.providers.tokens import Usage

__all__ = [
    "ERROR_BODY_LIMIT",
    "RESPONSE_LIMIT",
    "BodyTooLarge",
    "CredentialPicker",
    "ErrorDialect",
    "Key",
    "MessagesUsage",
    "ProviderKind",
    "UpstreamPool",
    "Usage",
    "WireFormat",
    "auth_headers",
    "error_dialect",
    "error_message",
    "kind_of",
    "limit_text",
    "read_capped",
    "restore_event",
    "restore_tool_names",
    "url_for",
    "wire_format",
]

_KINDS: dict[str, ProviderKind] = {
    "openai": OpenAi(),
    "openrouter": OpenAiCompatible(),
    "ollama": OpenAiCompatible(),
    "deepseek": DeepSeek(),
    "zhipu": Thinking(),
    "anthropic": Anthropic(),
    "claudecode": ClaudeCode(),
    "codex": Codex(),
    "gemini": Gemini(),
}
_WIRES: dict[str, WireFormat] = {
    w.name: w for w in (ChatWire(), ResponsesWire(), EmbeddingsWire(), MessagesWire(), GeminiWire())
}
# A client's dialect (its route's protocol) -> how it is told no.
_DIALECTS: dict[str, ErrorDialect] = {
    "openai": OpenAiErrors(),
    "anthropic": AnthropicErrors(),
    "cc": AnthropicErrors(),
    "gemini": GeminiErrors(),
}


def kind_of(provider: Provider) -> ProviderKind:
    return _KINDS[provider.provider_type]


def wire_format(wire: str) -> WireFormat:
    return _WIRES[wire]


def error_dialect(protocol: str) -> ErrorDialect:
    """``protocol``: the route's (openai | anthropic | cc | gemini)."""
    return _DIALECTS.get(protocol) or _DIALECTS["openai"]


def url_for(provider: Provider, wire: str, model: str, *, stream: bool) -> str:
    return _KINDS[provider.provider_type].url(provider, wire, model, stream=stream)


def auth_headers(provider: Provider, wire: str, key: str) -> dict[str, str]:
    return _KINDS[provider.provider_type].auth_headers(provider, wire, key)
