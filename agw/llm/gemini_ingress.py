"""Gemini ingress: Google's generateContent API on ``protocol: gemini`` routes.

The paths after the route prefix, under ``/v1beta`` or ``/v1`` (google-genai for Python calls
``/v1`` by default; Google's JavaScript SDK and the Gemini CLI call ``/v1beta``):

- ``POST .../models/{model}:generateContent`` and ``:streamGenerateContent?alt=sse``: operation
  ``generate_content``, answered like the other dialects' chat calls (:mod:`agw.llm.forward`):
  passed through to ``gemini`` providers, translated for the others;
- ``POST .../models/{model}:countTokens``: ``count_tokens``, relayed to a ``gemini`` provider,
  else estimated here;
- ``GET .../models`` and ``GET .../models/{model}``: ``models``, the route's models in Gemini's
  shape (a ``gemini`` provider's own list passed through).

The model and streaming are in the URL, not the body: :func:`route` reads them into the
:class:`Call`, and :func:`request_of` names the model in the body (``model``, where the
translator and the passthrough check read it; the gemini wire takes it out again, the upstream
URL names the upstream model). The caller's credentials (``x-goog-api-key``, ``?key=``) never go
upstream: the provider's own key does, and no client query parameter is forwarded but a model
list's paging.
"""

from __future__ import annotations

import json
from urllib.parse import parse_qsl, urlencode

from agw.errors import Refusal
from agw.llm.call import Call
from agw.llm.discovery import DiscoveryFailed, ModelCatalog
from agw.llm.observe import estimate_tokens
from agw.llm.providers import (
    CredentialPicker,
    UpstreamPool,
    kind_of,
)
from agw.llm.providers.base import ListedModel
from agw.llm.relay import relay_once
from agw.llm.routing import Target
from agw.types import JsonObj

_VERSIONS = ("/v1beta/", "/v1/")
_ACTIONS = {
    "generateContent": "generate_content",
    "streamGenerateContent": "generate_content",
    "countTokens": "count_tokens",
}
_METHODS = ["generateContent", "streamGenerateContent", "countTokens"]
_PAGING = ("pageSize", "pageToken")  # the only client query parameters sent upstream
INVALID = "protocol_validation_failed"
_JSON = {"content-type": "application/json"}


def route(call: Call) -> None:
    """The operation, model and streaming of the request's path and method (404 for a path
    this surface lacks, 405 for the wrong method, 400 for a stream not asked as SSE)."""
    req = call.req
    path = req.path
    rest = next((path[len(v) :] for v in _VERSIONS if path.startswith(v)), "")
    model, action = "", ""
    if rest.startswith("models/"):
        model, colon, action = rest[len("models/") :].rpartition(":")
        if not colon:
            model, action = action, ""
    if (rest != "models" and not model) or "/" in model or (action and action not in _ACTIONS):
        raise Refusal(404, "route_not_found", f"no gemini endpoint at {path}")
    call.operation = _ACTIONS[action] if action else "models"
    call.path_model = model
    want = "POST" if action else "GET"
    if req.method != want:
        raise Refusal(405, INVALID, f"method {req.method} not allowed on {path}")
    if action == "streamGenerateContent":
        if ("alt", "sse") not in parse_qsl(req.query):
            raise Refusal(
                400,
                INVALID,
                "streamGenerateContent is served as server-sent events only: add ?alt=sse",
            )
        call.stream = True


def request_of(call: Call, body: JsonObj, raw: bytes) -> tuple[str, bytes]:
    """Checks a ``generateContent`` or ``countTokens`` body. Returns the model (the URL's) and
    the client's bytes when they may go upstream as they came (else b"")."""
    if call.operation == "count_tokens":
        contents = body.get("contents")
        request = body.get("generateContentRequest")
        if not isinstance(contents, list) and not isinstance(request, dict):
            raise Refusal(
                400,
                INVALID,
                "countTokens needs contents (an array) or generateContentRequest (an object)",
            )
        return call.path_model, raw
    contents = body.get("contents")
    if contents is None:
        raise Refusal(400, INVALID, "contents is required")
    if not isinstance(contents, list):
        raise Refusal(400, INVALID, "contents must be an array")
    if "model" in body:
        raw = b""  # the URL names the model: the body goes up re-encoded, without its own
    body["model"] = call.path_model
    return call.path_model, raw


# ---------------------------------------------------------------------- countTokens, models


async def count_tokens(
    call: Call, pool: UpstreamPool, picker: CredentialPicker, body: JsonObj, target: Target
) -> None:
    """``countTokens``: relayed to a ``gemini`` provider for the upstream model, else
    ``{"totalTokens": N}`` estimated here (characters / 4 of the request's text)."""
    req = call.req
    call.target = target
    provider = target.provider
    kind = kind_of(provider)
    if kind.chat_wire == "gemini":
        request = body.get("generateContentRequest")
        if isinstance(request, dict) and "model" in request:
            request["model"] = f"models/{target.upstream_model}"
        url = kind.url(provider, "count_tokens", target.upstream_model, stream=False)
        data = json.dumps(body).encode()
        await relay_once(call, pool, picker, "count_tokens", _JSON, data, url=url)
        return
    await req.respond(200, json.dumps({"totalTokens": estimate_tokens(body)}).encode())
    call.status = 200


async def models(
    call: Call, pool: UpstreamPool, picker: CredentialPicker, catalog: ModelCatalog
) -> None:
    """``GET models`` (the list) or ``GET models/{model}`` (one entry): a logical-model route's
    model names; a ``gemini`` provider's own answer, passed through; another provider's list
    (discovered from it when it has one, else its ``default_model``) in Gemini's shape."""
    req = call.req
    name = call.path_model
    tp = req.route.config.target_policy
    if tp.type == "logical-model":
        listed = [ListedModel(t.name) for t in tp.model_targets]
    else:
        provider = req.snapshot.providers[tp.provider_id]
        call.target = Target(provider, name)
        kind = kind_of(provider)
        if kind.chat_wire == "gemini":
            paging = urlencode([(k, v) for k, v in parse_qsl(req.query) if k in _PAGING])
            url = kind.url(provider, "models", name, stream=False)
            paged = url + ("?" + paging if paging else "")
            await relay_once(call, pool, picker, "models", {}, url=paged)
            return
        if kind.lists_models:
            try:
                found = await catalog.refresh(req.snapshot, provider.id)
            except DiscoveryFailed as exc:
                raise Refusal(502, "provider_request_failed", str(exc)) from None
            listed = [
                ListedModel(m.upstream_model, m.display_name, m.description, m.capabilities)
                for m in found
            ]
        else:
            listed = [ListedModel(provider.default_model)] if provider.default_model else []
    if not name:
        answer: JsonObj = {"models": [_entry(m) for m in listed]}
    else:
        match = next((m for m in listed if m.id == name), None)
        if match is None:
            raise Refusal(404, "model_not_found", f"models/{name} is not found on this route")
        answer = _entry(match)
    await req.respond(200, json.dumps(answer).encode())
    call.status = 200


def _entry(model: ListedModel) -> JsonObj:
    """One model as Gemini's ``models`` list shows it."""
    out: JsonObj = {"name": f"models/{model.id}", "displayName": model.display_name or model.id}
    if model.description:
        out["description"] = model.description
    caps = model.capabilities
    if isinstance(caps.get("context_window"), int):
        out["inputTokenLimit"] = caps["context_window"]
    if isinstance(caps.get("max_output_tokens"), int):
        out["outputTokenLimit"] = caps["max_output_tokens"]
    out["supportedGenerationMethods"] = _METHODS
    return out
