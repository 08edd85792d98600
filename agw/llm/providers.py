"""What each provider type speaks on the wire: format, URLs, auth headers, request edits.

A provider is reached in one of four wire formats: OpenAI chat (``chat``), OpenAI Responses
(``responses``), Anthropic Messages (``messages``) or Gemini generateContent (``gemini``).
When the client's format equals the provider's, the request and the answer pass through.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Iterator
from dataclasses import dataclass

from agw.config.llm import Credential, Provider
from agw.llm.credential_health import CredentialHealth
from agw.runtime.snapshot import Snapshot, credential_priority

ANTHROPIC_VERSION = "2023-06-01"

# Client headers worth passing upstream (never the client's own credentials).
FORWARDED_HEADERS = {
    "messages": ("anthropic-version", "anthropic-beta"),
    "chat": ("openai-organization", "openai-project"),
    "responses": ("openai-organization", "openai-project", "openai-beta"),
    "gemini": (),
}


def chat_wire(provider: Provider) -> str:
    """The format a provider takes chat-style requests in."""
    if provider.provider_type in ("anthropic", "claudecode"):
        return "messages"
    if provider.provider_type == "gemini":
        return "gemini"
    if provider.provider_type == "codex":
        return "responses"
    return "chat"


def responses_native(provider: Provider) -> bool:
    return provider.provider_type in ("openai", "codex")


def url_for(provider: Provider, wire: str, model: str, *, stream: bool) -> str:
    base = provider.effective_base_url.rstrip("/")
    if wire == "messages":
        return base + ("/messages" if base.endswith("/v1") else "/v1/messages")
    if wire == "gemini":
        prefix = base if base.endswith(("/v1beta", "/v1")) else base + "/v1beta"
        action = "streamGenerateContent?alt=sse" if stream else "generateContent"
        return f"{prefix}/models/{model}:{action}"
    if wire == "responses":
        return base + "/responses"
    if wire == "embeddings":
        return base + "/embeddings"
    if wire == "models":
        if provider.provider_type in ("anthropic", "claudecode"):
            return base + ("/models" if base.endswith("/v1") else "/v1/models")
        if provider.provider_type == "gemini":
            return (base if base.endswith(("/v1beta", "/v1")) else base + "/v1beta") + "/models"
        return base + "/models"
    if wire == "count_tokens":
        return base + (
            "/messages/count_tokens" if base.endswith("/v1") else "/v1/messages/count_tokens"
        )
    return base + "/chat/completions"


def auth_headers(provider: Provider, wire: str, key: str) -> dict[str, str]:
    headers: dict[str, str] = {}
    if key:
        if provider.provider_type == "gemini":
            headers["x-goog-api-key"] = key
        elif provider.provider_type == "anthropic":
            headers["x-api-key"] = key
        elif provider.provider_type == "claudecode":
            if provider.options.get("api_key_header") == "x-api-key" and not key.startswith(
                "sk-ant-oat"
            ):
                headers["x-api-key"] = key
            else:
                headers["authorization"] = f"Bearer {key}"
        else:
            headers["authorization"] = f"Bearer {key}"
    if wire in ("messages", "count_tokens") or (
        wire == "models" and provider.provider_type in ("anthropic", "claudecode")
    ):
        headers["anthropic-version"] = ANTHROPIC_VERSION
    if provider.provider_type == "openai" and provider.options.get("organization"):
        headers["openai-organization"] = str(provider.options["organization"])
    headers.update({k.lower(): v for k, v in provider.network.extra_headers.items()})
    return headers


@dataclass(frozen=True, slots=True)
class Key:
    value: str
    # api_key (managed credential) | static (the provider's own api_key) | none (no key at all)
    # | cooling (every managed credential is backing off; credential_id lists them)
    source: str
    credential_id: str = ""


class CredentialPicker:
    """Managed ``api_key`` credentials for a provider, by scope order, selector and priority;
    the provider's own ``api_key`` last. Round-robin state lives across requests."""

    def __init__(self) -> None:
        self._counters: dict[str, itertools.count[int]] = {}
        self._lock = threading.Lock()

    def keys(
        self,
        snapshot: Snapshot,
        provider_id: str,
        scope_order: list[str],
        selector: str,
        custom_scope: str = "",
        health: CredentialHealth | None = None,
    ) -> Iterator[Key]:
        """Keys to try in order. Credentials cooling down (``health``) are skipped; when only
        those remain and the provider has no key of its own, one ``cooling`` key says so."""
        provider = snapshot.providers[provider_id]
        if not snapshot.credentials:  # no managed credentials at all: the provider's own key
            yield Key(provider.api_key, "static") if provider.api_key else Key("", "none")
            return
        seen: set[str] = set()
        cooling: list[str] = []
        for scope_kind in scope_order:
            if scope_kind == "provider_id":
                scope = f"id:{provider_id}"
            elif scope_kind == "provider_type":
                scope = f"type:{provider.provider_type}"
            else:
                scope = custom_scope
            if not scope:
                continue
            tier: list[Credential] = [
                c for c in snapshot.credentials.get(scope, ()) if c.id not in seen
            ]
            if selector == "round_robin" and len(tier) > 1:
                best = credential_priority(tier[0])
                top = [c for c in tier if credential_priority(c) == best]
                with self._lock:
                    n = next(self._counters.setdefault(f"{provider_id}|{scope}", itertools.count()))
                start = n % len(top)
                tier = top[start:] + top[:start] + tier[len(top) :]
            for cred in tier:
                seen.add(cred.id)
                if health is not None and not health.available(cred.id):
                    cooling.append(cred.id)
                    continue
                yield Key(str(cred.attributes.get("api_key", "")), "api_key", cred.id)
        if provider.api_key:
            yield Key(provider.api_key, "static")
        elif cooling and len(cooling) == len(seen):
            yield Key("", "cooling", ",".join(cooling))
        elif not seen:
            yield Key("", "none")
