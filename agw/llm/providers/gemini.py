"""Google Gemini: the ``gemini`` wire (generateContent; the model and streaming are in the
URL, not the body), its key header, and its usage parser."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from agw.config.llm import Provider
from agw.llm.providers.base import ListedModel, ProviderKind, WireFormat, objects
from agw.llm.providers.tokens import Usage, count
from agw.types import JsonObj


def gemini_usage(meta: Mapping[str, Any]) -> Usage:
    """A ``usageMetadata`` object. Thoughts are output; tool-use prompt tokens are input."""
    thoughts = count(meta.get("thoughtsTokenCount"))
    return Usage(
        input_tokens=count(meta.get("promptTokenCount"))
        + count(meta.get("toolUsePromptTokenCount")),
        output_tokens=count(meta.get("candidatesTokenCount")) + thoughts,
        cached_input_tokens=count(meta.get("cachedContentTokenCount")),
        reasoning_tokens=thoughts,
    )


class GeminiWire(WireFormat):
    name = "gemini"

    def prepare(self, body: JsonObj, model: str, *, stream: bool, own: bool) -> bool:
        body.pop("model", None)  # both are in the URL
        body.pop("stream", None)
        return False


class Gemini(ProviderKind):
    chat_wire = "gemini"

    def url(self, provider: Provider, wire: str, model: str, *, stream: bool) -> str:
        base = provider.effective_base_url.rstrip("/")
        prefix = base if base.endswith(("/v1beta", "/v1")) else base + "/v1beta"
        if wire == "models":
            return prefix + "/models"
        action = "streamGenerateContent?alt=sse" if stream else "generateContent"
        return f"{prefix}/models/{model}:{action}"

    def key_headers(self, provider: Provider, wire: str, key: str) -> dict[str, str]:
        return {"x-goog-api-key": key} if key else {}

    def listed_models(self, body: Any) -> list[ListedModel]:
        """Gemini's ``models`` list: ``models/<name>``, with its limits and methods."""
        out: list[ListedModel] = []
        for m in objects(body.get("models") if isinstance(body, dict) else None):
            methods = m.get("supportedGenerationMethods") or []
            caps: JsonObj = {"streaming": "streamGenerateContent" in methods}
            if isinstance(m.get("inputTokenLimit"), int):
                caps["context_window"] = m["inputTokenLimit"]
            if isinstance(m.get("outputTokenLimit"), int):
                caps["max_output_tokens"] = m["outputTokenLimit"]
            if "embedContent" in methods:
                caps["embeddings"] = True
            name = str(m.get("name", "")).removeprefix("models/")
            out.append(
                ListedModel(
                    name, str(m.get("displayName", "")), str(m.get("description", "")), caps
                )
            )
        return out
