"""What the plane asks of a provider type and of a wire format; the defaults every one shares.

A provider is reached in one of four wire formats: OpenAI chat (``chat``), OpenAI Responses
(``responses``), Anthropic Messages (``messages``) or Gemini generateContent (``gemini``), plus
OpenAI ``embeddings``. A :class:`WireFormat` says how a body is prepared for its wire and what
closes a stream of it; a :class:`ProviderKind` says which wire a provider type takes, where its
URLs are, how it is authenticated and which quirks its requests need. The plane asks them; it
never tests a provider type by name (each kind lives in its wire's module of this package).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from agw import jsonfast
from agw.config.llm import Provider
from agw.types import JsonObj

# Status -> the error ``type`` both dialects (OpenAI and Anthropic) answer with.
_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    499: "client_closed_request",
    500: "api_error",
    502: "api_error",
    503: "overloaded_error",
    504: "timeout_error",
}


def error_type(status: int) -> str:
    if status in _ERROR_TYPES:
        return _ERROR_TYPES[status]
    return "invalid_request_error" if 400 <= status < 500 else "api_error"


def error_message(body: bytes) -> str:
    """The message of an upstream error answer: ``error.message`` (OpenAI, Anthropic, Gemini),
    ``error`` as a string, else the body's start."""
    try:
        data = jsonfast.loads(body)
    except ValueError:
        return body[:300].decode("utf-8", "replace")
    err = data.get("error") if isinstance(data, dict) else None
    if isinstance(err, dict) and isinstance(err.get("message"), str):
        return str(err["message"])
    if isinstance(err, str):
        return err
    return body[:300].decode("utf-8", "replace")


class ErrorDialect:
    """How a client of one dialect is told no: an error answer, or an error event inside a
    stream that has already started."""

    def body(
        self,
        status: int,
        message: str,
        code: str | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> bytes:
        """``extra``: more members of the error object (a limit's ``limit``: docs/limits.md)."""
        raise NotImplementedError

    def stream_frame(self, status: int, message: str) -> bytes:
        raise NotImplementedError


class WireFormat:
    """One upstream wire format: what the plane edits in a body bound for it, which client
    headers pass with it, and what ends a stream the gateway cuts."""

    name = ""
    forwarded_headers: tuple[str, ...] = ()  # client headers worth passing (never credentials)
    forwards_query = False  # the client's query string goes up too (passthrough only)
    stream_tail = b""  # after the gateway's own error event in a cut passthrough stream

    def stream_passes(self, body: Mapping[str, Any]) -> bool:
        """Whether a client's streamed request may go up as its bytes came."""
        return body.get("stream") is True

    def prepare(self, body: JsonObj, model: str, *, stream: bool, own: bool) -> bool:
        """Set the upstream model and the stream flag in ``body``. ``own``: the client speaks
        this wire too. True when the gateway asked for a usage chunk the client did not (it is
        then kept from the client)."""
        if model:
            body["model"] = model
        if stream:
            body["stream"] = True
        return False


@dataclass(slots=True)
class ListedModel:
    """One model of a provider's own model list (``GET /models``)."""

    id: str
    display_name: str = ""
    description: str = ""
    capabilities: JsonObj = field(default_factory=dict)


def objects(value: Any) -> list[JsonObj]:
    """The JSON objects of an array (anything else: none)."""
    return [v for v in value if isinstance(v, dict)] if isinstance(value, list) else []


class ProviderKind:
    """What one provider type speaks on the wire. Defaults: an OpenAI-style provider."""

    chat_wire = "chat"  # the format chat-style requests go up in
    responses_native = False  # takes /responses as the client sent it
    lists_models = False  # GET /models is relayed (else the list is its default_model)
    counts_tokens = False  # count_tokens is relayed (else estimated)
    request_headers: ClassVar[Mapping[str, str]] = {}  # sent unless the request sets its own

    def wire_for(self, operation: str) -> str | None:
        """The upstream wire of a client operation; None: this provider has no such API."""
        if operation == "embeddings":
            return "embeddings" if self.chat_wire == "chat" else None
        if operation == "responses" and self.responses_native:
            return "responses"
        return self.chat_wire

    def url(self, provider: Provider, wire: str, model: str, *, stream: bool) -> str:
        """The URL of ``wire`` (or of ``models`` / ``count_tokens``) at this provider."""
        raise NotImplementedError

    def auth_headers(self, provider: Provider, wire: str, key: str) -> dict[str, str]:
        """The key's header and what the provider wants on every call, then the provider's
        ``network.extra_headers``."""
        headers = self.key_headers(provider, wire, key)
        headers.update({k.lower(): v for k, v in provider.network.extra_headers.items()})
        return headers

    def key_headers(self, provider: Provider, wire: str, key: str) -> dict[str, str]:
        return {"authorization": f"Bearer {key}"} if key else {}

    def listed_models(self, body: Any) -> list[ListedModel]:
        """The models of this provider's ``GET /models`` answer (OpenAI's and Anthropic's
        ``data`` list)."""
        out: list[ListedModel] = []
        for m in objects(body.get("data") if isinstance(body, dict) else None):
            model_id = str(m.get("id", ""))
            if model_id:
                out.append(ListedModel(model_id, str(m.get("display_name", ""))))
        return out

    def needs_shaping(self, provider: Provider, wire: str) -> bool:
        """Whether :meth:`shape` may edit a body bound for ``wire`` (else it passes as is)."""
        return False

    def shape(self, provider: Provider, wire: str, body: JsonObj) -> dict[str, str]:
        """This provider's edits of the upstream body, in place. Returns the tool names to
        restore in the answer (upstream name -> the client's), empty when none changed."""
        return {}
