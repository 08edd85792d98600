"""Google Gemini ``generateContent`` <-> the canonical model.

The model and streaming live in the URL (``models/{model}:streamGenerateContent?alt=sse``),
not in the body: ``parse_request`` takes them as arguments and ``render_request`` leaves
them out. Field names are the REST API's camelCase.

Gemini function calls often carry no id; calls get generated ids and each
``functionResponse`` takes the id of the oldest unanswered call of the same name. Gemini 3
rejects a history function call without a ``thoughtSignature``: calls that come from
another format get Google's documented placeholder, ``skip_thought_signature_validator``.
"""

from __future__ import annotations

import mimetypes
from collections import defaultdict, deque
from typing import Any

from agw import jsonfast
from agw.errors import InvalidRequest
from agw.llm.providers.gemini import gemini_usage
from agw.llm.translate.canonical import (
    Ids,
    Image,
    Message,
    Part,
    Reasoning,
    Request,
    Response,
    ResponseFormat,
    StopReason,
    Text,
    Thinking,
    Tool,
    ToolCall,
    ToolChoice,
    ToolResult,
    Usage,
    dumps,
    effort_to_budget,
)
from agw.llm.translate.reader import Reader

SKIP_SIGNATURE = "skip_thought_signature_validator"

_REQUEST_FIELDS = {
    "contents",
    "systemInstruction",
    "tools",
    "toolConfig",
    "generationConfig",
    "model",
}
_GENERATION_FIELDS = {
    "temperature",
    "topP",
    "topK",
    "maxOutputTokens",
    "stopSequences",
    "responseMimeType",
    "responseSchema",
    "responseJsonSchema",
    "thinkingConfig",
}

FINISH_TO_STOP: dict[str, StopReason] = {
    "STOP": "end_turn",
    "MAX_TOKENS": "max_tokens",
    "SAFETY": "content_filter",
    "RECITATION": "content_filter",
    "BLOCKLIST": "content_filter",
    "PROHIBITED_CONTENT": "content_filter",
    "SPII": "content_filter",
    "IMAGE_SAFETY": "content_filter",
    "LANGUAGE": "content_filter",
}

STOP_TO_FINISH: dict[str, str] = {
    "max_tokens": "MAX_TOKENS",
    "content_filter": "SAFETY",
    "refusal": "SAFETY",
    "error": "OTHER",
}


def finish_reason(reason: StopReason | None) -> str:
    return STOP_TO_FINISH.get(reason or "end_turn", "STOP")


# --- request ------------------------------------------------------------------------------


class _CallIds:
    """Ids for calls that have none, and the matching id for each response (by name)."""

    def __init__(self, ids: Ids) -> None:
        self._ids = ids
        self._open: dict[str, deque[str]] = defaultdict(deque)

    def call(self, name: str, given: str | None) -> str:
        call_id = given or self._ids.new("call_")
        self._open[name].append(call_id)
        return call_id

    def result(self, name: str, given: str | None) -> str:
        pending = self._open[name]
        if given:
            if given in pending:
                pending.remove(given)
            return given
        return pending.popleft() if pending else self._ids.new("call_")


def parse_request(
    body: Any, *, model: str | None = None, stream: bool = False, ids: Ids | None = None
) -> Request:
    r = Reader(body, "", strict=True)
    req = Request(model=model or (r.text("model") or "").removeprefix("models/"), stream=stream)
    req.dropped = [k for k in r.data if k not in _REQUEST_FIELDS]
    req.system = [
        p.text("text") or "" for p in r.obj("systemInstruction").objects("parts") if p.text("text")
    ]
    if not isinstance(r.raw("contents"), list):
        raise InvalidRequest("contents must be an array")
    calls = _CallIds(ids or Ids())
    for c in r.objects("contents"):
        role = c.text("role") or "user"
        if role not in ("user", "model", "function"):
            raise InvalidRequest(f"{c.path('role')} must be user or model")
        parts = [p for p in (_parse_part(p, calls, req) for p in c.objects("parts")) if p]
        req.messages.append(Message("assistant" if role == "model" else "user", parts))
    for t in r.objects("tools"):
        for f in t.objects("functionDeclarations"):
            req.tools.append(_parse_function(f))
        req.dropped.extend(f"{t.where}.{k}" for k in t.data if k != "functionDeclarations")
    fc = r.obj("toolConfig").obj("functionCallingConfig")
    mode = (fc.text("mode") or "").upper()
    allowed = fc.strings("allowedFunctionNames")
    if mode == "ANY":
        one = len(allowed) == 1
        req.tool_choice = ToolChoice("tool", allowed[0]) if one else ToolChoice("required")
    elif mode == "NONE":
        req.tool_choice = ToolChoice("none")
    elif mode in ("AUTO", "VALIDATED"):
        req.tool_choice = ToolChoice("auto")
    _parse_generation(r.obj("generationConfig"), req)
    return req


def _parse_function(f: Reader) -> Tool:
    name = f.text("name")
    if not name:
        raise InvalidRequest(f"{f.path('name')} must be a non-empty string")
    schema = f.object_value("parametersJsonSchema")
    if schema is None:
        schema = _json_schema(f.object_value("parameters") or {"type": "object", "properties": {}})
    return Tool(name, f.text("description"), schema)


def _json_schema(schema: Any) -> Any:
    """Gemini's OpenAPI-style schema (``"type": "OBJECT"``) as JSON Schema (``"object"``)."""
    if isinstance(schema, list):
        return [_json_schema(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key == "type" and isinstance(value, str):
            out[key] = value.lower()
        elif key == "properties" and isinstance(value, dict):
            out[key] = {k: _json_schema(v) for k, v in value.items()}
        elif key in ("items", "anyOf"):
            out[key] = _json_schema(value)
        else:
            out[key] = value
    return out


def _parse_part(p: Reader, calls: _CallIds, req: Request | None) -> Part | None:
    if p.has("text"):
        text = p.text("text") or ""
        if p.flag("thought"):
            sig = p.text("thoughtSignature")
            return Thinking(text, sig, "gemini" if sig else None)
        return Text(text) if text else None
    if p.has("inlineData"):
        d = p.obj("inlineData")
        return Image(data=d.text("data") or "", media_type=d.text("mimeType"))
    if p.has("fileData"):
        d = p.obj("fileData")
        return Image(url=d.text("fileUri") or "", media_type=d.text("mimeType"))
    if p.has("functionCall"):
        f = p.obj("functionCall")
        name = f.text("name")
        if not name:
            f.invalid("name", "must be a non-empty string")
            return None
        call_id = calls.call(name, f.text("id"))
        args = dumps(f.object_value("args") or {})
        return ToolCall(call_id, name, args, p.text("thoughtSignature"))
    if p.has("functionResponse"):
        f = p.obj("functionResponse")
        name = f.text("name") or ""
        response = f.object_value("response") or {}
        error = "error" in response and len(response) == 1
        return ToolResult(
            calls.result(name, f.text("id")), [Text(_response_text(response))], error, name
        )
    if req is not None:
        req.dropped.append(f"{p.where} ({', '.join(p.data) or 'empty'})")
    return None


def _response_text(response: dict[str, Any]) -> str:
    """The text of a functionResponse: a lone output/result/error string as it is, else JSON."""
    if len(response) == 1:
        value = next(iter(response.values()))
        if next(iter(response)) in ("output", "result", "content", "error"):
            return value if isinstance(value, str) else dumps(value)
    return dumps(response)


def _parse_generation(g: Reader, req: Request) -> None:
    req.dropped.extend(f"generationConfig.{k}" for k in g.data if k not in _GENERATION_FIELDS)
    req.temperature = g.number("temperature")
    req.top_p = g.number("topP")
    req.top_k = g.integer("topK")
    req.max_tokens = g.integer("maxOutputTokens")
    req.stop = g.strings("stopSequences")
    thinking = g.obj("thinkingConfig")
    budget = thinking.integer("thinkingBudget")
    level = thinking.text("thinkingLevel")
    if level or (budget is not None and budget != 0) or thinking.flag("includeThoughts"):
        req.reasoning = Reasoning(
            effort=level.lower() if level else None,
            budget_tokens=budget if budget and budget > 0 else None,
        )
    if g.text("responseMimeType") == "application/json":
        schema = g.object_value("responseJsonSchema")
        if schema is None and g.has("responseSchema"):
            schema = _json_schema(g.object_value("responseSchema"))
        if schema is not None:
            req.response_format = ResponseFormat("json_schema", name="response", schema=schema)
        else:
            req.response_format = ResponseFormat("json_object")


def render_request(req: Request) -> dict[str, Any]:
    names = {p.id: p.name for m in req.messages for p in m.content if isinstance(p, ToolCall)}
    contents: list[dict[str, Any]] = []
    for i, m in enumerate(req.messages):
        role = "model" if m.role == "assistant" else "user"
        parts = _render_parts(m, names, req, i)
        if not parts:
            continue
        if contents and contents[-1]["role"] == role:
            contents[-1]["parts"].extend(parts)
        else:
            contents.append({"role": role, "parts": parts})
    out: dict[str, Any] = {"contents": contents}
    if req.system:
        out["systemInstruction"] = {"parts": [{"text": s} for s in req.system]}
    if req.tools:
        decls = []
        for t in req.tools:
            decl: dict[str, Any] = {"name": t.name}
            if t.description:
                decl["description"] = t.description
            decl["parametersJsonSchema"] = t.parameters
            decls.append(decl)
        out["tools"] = [{"functionDeclarations": decls}]
        config = _function_calling_config(req.tool_choice)
        if config is not None:
            out["toolConfig"] = {"functionCallingConfig": config}
    if req.parallel_tool_calls is not None:
        req.dropped.append("parallel_tool_calls")
    gen = _generation_config(req)
    if gen:
        out["generationConfig"] = gen
    if req.user:
        req.dropped.append("user")
    if req.metadata:
        req.dropped.append("metadata")
    return out


def _function_calling_config(choice: ToolChoice | None) -> dict[str, Any] | None:
    if choice is None:
        return None
    if choice.mode == "tool":
        return {"mode": "ANY", "allowedFunctionNames": [choice.name or ""]}
    return {"mode": {"auto": "AUTO", "none": "NONE", "required": "ANY"}[choice.mode]}


def _generation_config(req: Request) -> dict[str, Any]:
    gen: dict[str, Any] = {}
    if req.temperature is not None:
        gen["temperature"] = req.temperature
    if req.top_p is not None:
        gen["topP"] = req.top_p
    if req.top_k is not None:
        gen["topK"] = req.top_k
    if req.max_tokens is not None:
        gen["maxOutputTokens"] = req.max_tokens
    if req.stop:
        gen["stopSequences"] = req.stop
    fmt = req.response_format
    if fmt is not None and fmt.type != "text":
        gen["responseMimeType"] = "application/json"
        if fmt.type == "json_schema" and fmt.schema is not None:
            gen["responseJsonSchema"] = fmt.schema
    r = req.reasoning
    if r is not None and r.effort != "none" and r.budget_tokens != 0:
        thinking: dict[str, Any] = {"includeThoughts": True}
        budget = r.budget_tokens or (effort_to_budget(r.effort) if r.effort else None)
        if budget:
            thinking["thinkingBudget"] = budget
        gen["thinkingConfig"] = thinking
    return gen


def _image_part(img: Image) -> dict[str, Any]:
    if img.url is not None:
        mime = img.media_type or mimetypes.guess_type(img.url)[0] or "image/jpeg"
        return {"fileData": {"mimeType": mime, "fileUri": img.url}}
    return {"inlineData": {"mimeType": img.media_type or "image/jpeg", "data": img.data or ""}}


def _render_parts(
    m: Message, names: dict[str, str], req: Request, index: int
) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    images: list[dict[str, Any]] = []
    for p in m.content:
        if isinstance(p, Text):
            if p.text:
                out.append({"text": p.text})
        elif isinstance(p, Image):
            out.append(_image_part(p))
        elif isinstance(p, ToolCall):
            call = {"id": p.id, "name": p.name, "args": p.arguments_object()}
            out.append({"functionCall": call, "thoughtSignature": p.signature or SKIP_SIGNATURE})
        elif isinstance(p, ToolResult):
            key = "error" if p.is_error else "output"
            name = p.name or names.get(p.tool_call_id) or p.tool_call_id
            response = {"id": p.tool_call_id, "name": name, "response": {key: p.text()}}
            out.append({"functionResponse": response})
            images.extend(_image_part(c) for c in p.content if isinstance(c, Image))
        elif isinstance(p, Thinking):
            if p.origin == "gemini" and p.signature and not p.redacted:
                out.append({"text": p.text, "thought": True, "thoughtSignature": p.signature})
            else:
                req.dropped.append(f"messages[{index}] thinking (not from a Gemini upstream)")
    return out + images


# --- response -----------------------------------------------------------------------------


def render_usage(u: Usage) -> dict[str, Any]:
    out: dict[str, Any] = {
        "promptTokenCount": u.input_tokens,
        "candidatesTokenCount": max(u.output_tokens - u.reasoning_tokens, 0),
        "totalTokenCount": u.total_tokens,
    }
    if u.cached_input_tokens:
        out["cachedContentTokenCount"] = u.cached_input_tokens
    if u.reasoning_tokens:
        out["thoughtsTokenCount"] = u.reasoning_tokens
    return out


def parse_candidate_parts(c: Reader) -> list[Part]:
    """The parts of an answer; calls keep their id when Gemini gave one ("" otherwise)."""
    out: list[Part] = []
    for p in c.obj("content").objects("parts"):
        if p.has("functionCall"):
            f = p.obj("functionCall")
            if f.text("name"):
                args = dumps(f.object_value("args") or {})
                call = ToolCall(f.text("id") or "", f.text("name") or "", args)
                call.signature = p.text("thoughtSignature")
                out.append(call)
            continue
        part = _parse_part(p, _CallIds(Ids()), None)
        if part is not None:
            out.append(part)
    return out


def parse_response(body: Any) -> Response:
    r = Reader(body)
    resp = Response(id=r.text("responseId") or None, model=r.text("modelVersion") or None)
    candidates = r.objects("candidates")
    if candidates:
        resp.content = parse_candidate_parts(candidates[0])
        finish = candidates[0].text("finishReason")
        resp.stop_reason = FINISH_TO_STOP.get(finish, "end_turn") if finish else None
    elif r.obj("promptFeedback").text("blockReason"):
        resp.stop_reason = "content_filter"
    if r.has("usageMetadata"):
        resp.usage = gemini_usage(r.obj("usageMetadata").data)
    return resp


def render_part(p: Part) -> dict[str, Any] | None:
    if isinstance(p, Text):
        return {"text": p.text}
    if isinstance(p, Thinking):
        if p.redacted:
            return None
        part: dict[str, Any] = {"text": p.text, "thought": True}
        if p.origin == "gemini" and p.signature:
            part["thoughtSignature"] = p.signature
        return part
    if isinstance(p, ToolCall):
        call: dict[str, Any] = {"name": p.name, "args": p.arguments_object()}
        if p.id:
            call = {"id": p.id, **call}
        part = {"functionCall": call}
        if p.signature:
            part["thoughtSignature"] = p.signature
        return part
    return None


def render_response(resp: Response, *, ids: Ids | None = None) -> dict[str, Any]:
    ids = ids or Ids()
    parts = [q for q in (render_part(p) for p in resp.content) if q is not None]
    out: dict[str, Any] = {
        "candidates": [
            {
                "content": {"role": "model", "parts": parts},
                "finishReason": finish_reason(resp.stop_reason),
                "index": 0,
            }
        ],
    }
    if resp.usage is not None:
        out["usageMetadata"] = render_usage(resp.usage)
    out["modelVersion"] = resp.model or ""
    out["responseId"] = resp.id or ids.new("", 22)
    return out


def loads_or_none(data: str) -> Any:
    try:
        return jsonfast.loads(data)
    except ValueError:
        return None
