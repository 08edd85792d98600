"""OpenAI Chat Completions (``/v1/chat/completions``) <-> the canonical model.

Reasoning text travels as ``reasoning_content`` (DeepSeek, and what most OpenAI-compatible
servers emit); OpenRouter's ``reasoning`` string is read too. Only ``choices[0]`` of an answer
is translated.
"""

from __future__ import annotations

from typing import Any

from agw.errors import InvalidRequest
from agw.llm.providers.openai import chat_usage
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
    budget_to_effort,
    dumps,
)
from agw.llm.translate.reader import Reader

_REQUEST_FIELDS = {
    "model",
    "messages",
    "tools",
    "functions",
    "tool_choice",
    "function_call",
    "parallel_tool_calls",
    "max_tokens",
    "max_completion_tokens",
    "temperature",
    "top_p",
    "top_k",
    "stop",
    "stream",
    "stream_options",
    "user",
    "metadata",
    "reasoning_effort",
    "reasoning",
    "response_format",
}

FINISH_TO_STOP: dict[str, StopReason] = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
    "content_filter": "content_filter",
}

STOP_TO_FINISH: dict[str, str] = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "tool_use": "tool_calls",
    "content_filter": "content_filter",
    "refusal": "content_filter",
    "error": "stop",
}


# --- request ------------------------------------------------------------------------------


def parse_request(body: Any) -> Request:
    r = Reader(body, "", strict=True)
    req = Request(model=r.text("model") or "")
    req.dropped = [k for k in r.data if k not in _REQUEST_FIELDS]
    if not isinstance(r.raw("messages"), list):
        raise InvalidRequest("messages must be an array")
    for m in r.objects("messages"):
        _parse_message(m, req)
    for t in r.objects("tools"):
        if (t.text("type") or "function") != "function":
            req.dropped.append(f"{t.where} (type {t.text('type')})")
            continue
        req.tools.append(_parse_function(t.obj("function")))
    for f in r.objects("functions"):
        req.tools.append(_parse_function(f))
    req.tool_choice = _parse_tool_choice(r, req)
    req.parallel_tool_calls = r.flag("parallel_tool_calls")
    req.max_tokens = r.integer("max_completion_tokens") or r.integer("max_tokens")
    req.temperature = r.number("temperature")
    req.top_p = r.number("top_p")
    req.top_k = r.integer("top_k")
    req.stop = r.strings("stop")
    req.stream = bool(r.flag("stream"))
    req.user = r.text("user")
    metadata = r.object_value("metadata")
    if metadata:
        req.metadata = {str(k): str(v) for k, v in metadata.items()}
    effort = r.text("reasoning_effort")
    reasoning = r.obj("reasoning")
    if effort or reasoning.data:
        req.reasoning = Reasoning(
            effort=effort or reasoning.text("effort"),
            budget_tokens=reasoning.integer("max_tokens"),
        )
    fmt = r.obj("response_format")
    if fmt.data:
        req.response_format = parse_response_format(fmt)
    return req


def _parse_function(f: Reader) -> Tool:
    name = f.text("name")
    if not name:
        raise InvalidRequest(f"{f.path('name')} must be a non-empty string")
    return Tool(
        name=name,
        description=f.text("description"),
        parameters=f.object_value("parameters") or {"type": "object", "properties": {}},
        strict=f.flag("strict"),
    )


def _parse_tool_choice(r: Reader, req: Request) -> ToolChoice | None:
    raw = r.raw("tool_choice")
    if raw is None:
        raw = r.raw("function_call")
        if isinstance(raw, dict) and isinstance(raw.get("name"), str):
            return ToolChoice("tool", raw["name"])
    if raw is None:
        return None
    if isinstance(raw, str):
        if raw in ("auto", "none", "required"):
            return ToolChoice(raw)  # type: ignore[arg-type]
        raise InvalidRequest("tool_choice must be one of auto, none, required or an object")
    c = r.obj("tool_choice")
    kind = c.text("type")
    if kind == "function":
        name = c.obj("function").text("name")
        if not name:
            raise InvalidRequest("tool_choice.function.name must be a non-empty string")
        return ToolChoice("tool", name)
    if kind == "allowed_tools":
        req.dropped.append("tool_choice.allowed_tools.tools")
        mode = c.obj("allowed_tools").text("mode")
        return ToolChoice("required" if mode == "required" else "auto")
    raise InvalidRequest(f"tool_choice.type {kind!r} is not supported")


def parse_response_format(fmt: Reader) -> ResponseFormat:
    kind = fmt.text("type") or "text"
    if kind == "json_schema":
        js = fmt.obj("json_schema")
        return ResponseFormat(
            "json_schema",
            name=js.text("name"),
            schema=js.object_value("schema"),
            strict=js.flag("strict"),
            description=js.text("description"),
        )
    if kind in ("text", "json_object"):
        return ResponseFormat(kind)  # type: ignore[arg-type]
    fmt.invalid("type", "must be text, json_object or json_schema")
    return ResponseFormat("text")


def _content_parts(m: Reader, req: Request | None) -> list[Text | Image]:
    """A message's ``content``: a string or an array of text / image_url parts."""
    raw = m.raw("content")
    if raw is None:
        return []
    if isinstance(raw, str):
        return [Text(raw)] if raw else []
    if not isinstance(raw, list):
        m.invalid("content", "must be a string or an array")
        return []
    out: list[Text | Image] = []
    for p in m.objects("content"):
        kind = p.text("type")
        if kind == "text":
            text = p.text("text")
            if text is None:
                p.invalid("text", "must be a string")
            elif text:
                out.append(Text(text))
        elif kind == "refusal":
            if text := p.text("refusal"):
                out.append(Text(text))
        elif kind == "image_url":
            raw_url = p.raw("image_url")
            url = raw_url if isinstance(raw_url, str) else p.obj("image_url").text("url")
            if not url:
                p.invalid("image_url", "must carry a url")
                continue
            detail = None if isinstance(raw_url, str) else p.obj("image_url").text("detail")
            out.append(Image.from_url(url, detail))
        elif req is not None:
            req.dropped.append(f"{p.where} (type {kind})")
    return out


def _parse_message(m: Reader, req: Request) -> None:
    role = m.text("role")
    if role in ("system", "developer"):
        req.system.extend(p.text for p in _content_parts(m, req) if isinstance(p, Text))
    elif role == "user":
        req.messages.append(Message("user", list(_content_parts(m, req))))
    elif role == "assistant":
        parts: list[Part] = []
        reasoning = m.text("reasoning_content") or _str_or_none(m.raw("reasoning"))
        if reasoning:
            parts.append(Thinking(reasoning))
        parts.extend(_content_parts(m, req))
        for c in m.objects("tool_calls"):
            call_id = c.text("id")
            f = c.obj("function")
            name = f.text("name")
            if not call_id or not name:
                raise InvalidRequest(f"{c.where} needs an id and a function.name")
            parts.append(ToolCall(call_id, name, _arguments_text(f)))
        legacy = m.obj("function_call")
        if legacy.text("name"):
            parts.append(
                ToolCall(
                    legacy.text("name") or "", legacy.text("name") or "", _arguments_text(legacy)
                )
            )
        req.messages.append(Message("assistant", parts))
    elif role in ("tool", "function"):
        call_id = m.text("tool_call_id") if role == "tool" else m.text("name")
        if not call_id:
            raise InvalidRequest(f"{m.path('tool_call_id')} must be a non-empty string")
        result = ToolResult(call_id, _content_parts(m, req), name=m.text("name"))
        last = req.messages[-1] if req.messages else None
        if last and last.role == "user" and all(isinstance(p, ToolResult) for p in last.content):
            last.content.append(result)
        else:
            req.messages.append(Message("user", [result]))
    else:
        raise InvalidRequest(f"{m.path('role')} must be system, developer, user, assistant or tool")


def _arguments_text(f: Reader) -> str:
    raw = f.raw("arguments")
    if raw is None:
        return "{}"
    return raw if isinstance(raw, str) else dumps(raw)


def _str_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def render_request(req: Request, *, max_tokens_key: str = "max_tokens") -> dict[str, Any]:
    """A chat body. ``max_tokens_key`` may be ``max_completion_tokens`` for OpenAI o-series."""
    messages: list[dict[str, Any]] = [{"role": "system", "content": s} for s in req.system]
    for i, m in enumerate(req.messages):
        if m.role == "assistant":
            messages.extend(_render_assistant(m, req, i))
        else:
            messages.extend(_render_user(m))
    out: dict[str, Any] = {"model": req.model, "messages": messages}
    if req.tools:
        out["tools"] = [{"type": "function", "function": _function(t)} for t in req.tools]
        if req.tool_choice is not None:
            out["tool_choice"] = _render_tool_choice(req.tool_choice)
        if req.parallel_tool_calls is not None:
            out["parallel_tool_calls"] = req.parallel_tool_calls
    if req.max_tokens is not None:
        out[max_tokens_key] = req.max_tokens
    if req.temperature is not None:
        out["temperature"] = req.temperature
    if req.top_p is not None:
        out["top_p"] = req.top_p
    if req.top_k is not None:
        req.dropped.append("top_k")
    if req.stop:
        out["stop"] = req.stop
    if req.stream:
        out["stream"] = True
        out["stream_options"] = {"include_usage": True}
    if req.user:
        out["user"] = req.user
    if req.metadata:
        out["metadata"] = req.metadata
    if req.reasoning is not None:
        effort = req.reasoning.effort
        if effort is None and req.reasoning.budget_tokens:
            effort = budget_to_effort(req.reasoning.budget_tokens)
        if effort:
            out["reasoning_effort"] = effort
    if req.response_format is not None:
        out["response_format"] = render_response_format(req.response_format)
    return out


def _function(t: Tool) -> dict[str, Any]:
    f: dict[str, Any] = {"name": t.name}
    if t.description:
        f["description"] = t.description
    f["parameters"] = t.parameters
    if t.strict is not None:
        f["strict"] = t.strict
    return f


def _render_tool_choice(choice: ToolChoice) -> Any:
    if choice.mode == "tool":
        return {"type": "function", "function": {"name": choice.name or ""}}
    return choice.mode


def render_response_format(fmt: ResponseFormat) -> dict[str, Any]:
    if fmt.type != "json_schema":
        return {"type": fmt.type}
    js: dict[str, Any] = {"name": fmt.name or "response"}
    if fmt.description:
        js["description"] = fmt.description
    js["schema"] = fmt.schema or {}
    if fmt.strict is not None:
        js["strict"] = fmt.strict
    return {"type": "json_schema", "json_schema": js}


def _image_part(img: Image) -> dict[str, Any]:
    url: dict[str, Any] = {"url": img.as_url()}
    if img.detail:
        url["detail"] = img.detail
    return {"type": "image_url", "image_url": url}


def _user_content(parts: list[Text | Image]) -> Any:
    if len(parts) == 1 and isinstance(parts[0], Text):
        return parts[0].text
    return [
        {"type": "text", "text": p.text} if isinstance(p, Text) else _image_part(p) for p in parts
    ]


def _render_user(m: Message) -> list[dict[str, Any]]:
    """Tool results become ``tool`` messages, first (they must follow the assistant's calls);
    the rest of the turn, and any images the tools returned, one ``user`` message after."""
    out: list[dict[str, Any]] = []
    rest: list[Text | Image] = []
    for p in m.content:
        if isinstance(p, ToolResult):
            out.append({"role": "tool", "tool_call_id": p.tool_call_id, "content": p.text()})
            rest.extend(c for c in p.content if isinstance(c, Image))
        elif isinstance(p, Text | Image):
            rest.append(p)
    if rest:
        out.append({"role": "user", "content": _user_content(rest)})
    return out


def _render_assistant(m: Message, req: Request, index: int) -> list[dict[str, Any]]:
    text = "".join(p.text for p in m.content if isinstance(p, Text))
    calls = [p for p in m.content if isinstance(p, ToolCall)]
    if any(isinstance(p, Thinking) for p in m.content):
        req.dropped.append(f"messages[{index}] thinking (chat requests carry no reasoning)")
    if not text and not calls:
        return []
    msg: dict[str, Any] = {"role": "assistant", "content": text or None}
    if calls:
        msg["tool_calls"] = [
            {
                "id": c.id,
                "type": "function",
                "function": {"name": c.name, "arguments": c.arguments},
            }
            for c in calls
        ]
    return [msg]


# --- response -----------------------------------------------------------------------------


def render_usage(u: Usage) -> dict[str, Any]:
    prompt_details: dict[str, Any] = {"cached_tokens": u.cached_input_tokens}
    if u.cache_creation_input_tokens:
        prompt_details["cache_write_tokens"] = u.cache_creation_input_tokens
    return {
        "prompt_tokens": u.input_tokens,
        "completion_tokens": u.output_tokens,
        "total_tokens": u.total_tokens,
        "prompt_tokens_details": prompt_details,
        "completion_tokens_details": {"reasoning_tokens": u.reasoning_tokens},
    }


def parse_response(body: Any) -> Response:
    r = Reader(body)
    choices = r.objects("choices")
    resp = Response(id=r.text("id") or None, model=r.text("model") or None)
    resp.created = r.integer("created") or None
    if r.has("usage"):
        resp.usage = chat_usage(r.obj("usage").data)
    if not choices:
        return resp
    choice = choices[0]
    msg = choice.obj("message")
    reasoning = msg.text("reasoning_content") or _str_or_none(msg.raw("reasoning"))
    if reasoning:
        resp.content.append(Thinking(reasoning))
    resp.content.extend(_content_parts(msg, None))
    if refusal := msg.text("refusal"):
        resp.content.append(Text(refusal))
    for c in msg.objects("tool_calls"):
        f = c.obj("function")
        if f.text("name"):
            resp.content.append(
                ToolCall(c.text("id") or "", f.text("name") or "", _arguments_text(f))
            )
    finish = choice.text("finish_reason")
    resp.stop_reason = FINISH_TO_STOP.get(finish, "end_turn") if finish else None
    return resp


def render_response(resp: Response, *, ids: Ids | None = None) -> dict[str, Any]:
    ids = ids or Ids()
    text = "".join(p.text for p in resp.content if isinstance(p, Text))
    thinking = "".join(p.text for p in resp.content if isinstance(p, Thinking))
    calls = [p for p in resp.content if isinstance(p, ToolCall)]
    message: dict[str, Any] = {"role": "assistant", "content": text or None}
    if thinking:
        message["reasoning_content"] = thinking
    if calls:
        message["tool_calls"] = [
            {
                "id": c.id or ids.new("call_"),
                "type": "function",
                "function": {"name": c.name, "arguments": c.arguments},
            }
            for c in calls
        ]
    message["refusal"] = None
    out: dict[str, Any] = {
        "id": resp.id or ids.new("chatcmpl-"),
        "object": "chat.completion",
        "created": resp.created or ids.now(),
        "model": resp.model or "",
        "choices": [
            {
                "index": 0,
                "message": message,
                "logprobs": None,
                "finish_reason": STOP_TO_FINISH.get(resp.stop_reason or "end_turn", "stop"),
            }
        ],
    }
    if resp.usage is not None:
        out["usage"] = render_usage(resp.usage)
    return out
