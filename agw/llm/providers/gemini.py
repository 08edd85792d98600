"""Google Gemini: the ``gemini`` wire (generateContent; the model and streaming are in the
URL, not the body), its key header, its usage parser, and Google's error body."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

from agw.config.llm import Provider
from agw.llm.providers.base import ErrorDialect, ListedModel, ProviderKind, WireFormat, objects
from agw.llm.providers.tokens import Usage, count
from agw.sse import frame
from agw.types import JsonObj

# HTTP status -> the google.rpc code name Google's APIs answer with (``error.status``)
_RPC_STATUS = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    409: "ABORTED",
    429: "RESOURCE_EXHAUSTED",
    499: "CANCELLED",
    500: "INTERNAL",
    501: "UNIMPLEMENTED",
    502: "UNAVAILABLE",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}
_RPC = "type.googleapis.com/google.rpc."


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

    def stream_passes(self, body: Mapping[str, Any]) -> bool:
        return True  # streaming is in the URL: the body is the same either way

    def prepare(self, body: JsonObj, model: str, *, stream: bool, own: bool) -> bool:
        body.pop("model", None)  # both are in the URL
        body.pop("stream", None)
        return False


class Gemini(ProviderKind):
    chat_wire = "gemini"

    def url(self, provider: Provider, wire: str, model: str, *, stream: bool) -> str:
        base = provider.effective_base_url.rstrip("/")
        prefix = base if base.endswith(("/v1beta", "/v1")) else base + "/v1beta"
        name = quote(model, safe="")  # a name never adds a path, query or fragment
        if wire == "models":  # the list, or one model's entry
            return f"{prefix}/models/{name}" if model else prefix + "/models"
        if wire == "count_tokens":
            action = "countTokens"
        else:
            action = "streamGenerateContent?alt=sse" if stream else "generateContent"
        return f"{prefix}/models/{name}:{action}"

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


class GeminiErrors(ErrorDialect):
    """Google's error body, ``{"error": {"code", "message", "status"}}``, which Google's SDKs
    raise as their own errors; inside a stream, that object in a ``data`` line. A limit's
    refusal (``extra["limit"]``) also carries ``details``: a ``google.rpc.ErrorInfo`` naming the
    limit (its fields as strings, domain ``agw``) and, when it resets, a
    ``google.rpc.RetryInfo`` with the delay (docs/llm.md, "Gemini")."""

    def body(
        self,
        status: int,
        message: str,
        code: str | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> bytes:
        rpc = _RPC_STATUS.get(status) or ("INVALID_ARGUMENT" if status < 500 else "INTERNAL")
        error: dict[str, Any] = {"code": status, "message": message, "status": rpc}
        limit = extra.get("limit") if extra else None
        if isinstance(limit, dict):
            info = {k: str(v) for k, v in limit.items() if v is not None}
            details: list[JsonObj] = [
                {
                    "@type": _RPC + "ErrorInfo",
                    "reason": (code or "rate_limit_exceeded").upper(),
                    "domain": "agw",
                    "metadata": info,
                }
            ]
            retry = limit.get("retry_after_s")
            if isinstance(retry, int | float) and not isinstance(retry, bool):
                details.append({"@type": _RPC + "RetryInfo", "retryDelay": f"{math.ceil(retry)}s"})
            error["details"] = details
        return json.dumps({"error": error}).encode()

    def stream_frame(self, status: int, message: str) -> bytes:
        return frame(self.body(status, message).decode())
