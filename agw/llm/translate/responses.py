"""OpenAI Responses (``/v1/responses``) <-> the canonical model.

Function tools grouped in a ``namespace`` tool (Codex sends MCP tools that way) are
flattened to ``<namespace>__<name>``, the name Claude Code gives MCP tools too.
``previous_response_id`` cannot be honoured by another format: it is dropped, and the
client's ``input`` must then carry the whole conversation (Codex does, with ``store:false``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from agw.errors import InvalidRequest
from agw.llm.providers.openai import responses_usage
from agw.llm.translate.canonical import (
    Format,
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
    unwrap_signature,
    wrap_signature,
)
from agw.llm.translate.reader import Reader

MIN_OUTPUT_TOKENS = 16  # the API rejects a smaller max_output_tokens

_REQUEST_FIELDS = {
    "model",
    "input",
    "instructions",
    "tools",
    "tool_choice",
    "parallel_tool_calls",
    "max_output_tokens",
    "temperature",
    "top_p",
    "stream",
    "user",
    "metadata",
    "reasoning",
    "text",
}

INCOMPLETE_TO_STOP: dict[str, StopReason] = {
    "max_output_tokens": "max_tokens",
    "content_filter": "content_filter",
}


# --- request ------------------------------------------------------------------------------


def parse_request(body: Any) -> Request:
    r = Reader(body, "", strict=True)
    req = Request(model=r.text("model") or "")
    req.dropped = [k for k in r.data if k not in _REQUEST_FIELDS]
    if instructions := r.text("instructions"):
        req.system.append(instructions)
    raw = r.raw("input")
    if isinstance(raw, str):
        req.messages.append(Message("user", [Text(raw)] if raw else []))
    elif isinstance(raw, list):
        for item in r.objects("input"):
            _parse_item(item, req)
    elif raw is not None:
        raise InvalidRequest("input must be a string or an array of input items")
    for t in r.objects("tools"):
        kind = t.text("type")
        if kind == "function":
            req.tools.append(_parse_tool(t, None))
        elif kind == "namespace":
            ns = t.text("name") or ""
            req.tools.extend(_parse_tool(inner, ns) for inner in t.objects("tools"))
        else:
            req.dropped.append(f"{t.where} (type {kind})")
    _parse_tool_choice(r, req)
    req.parallel_tool_calls = r.flag("parallel_tool_calls")
    req.max_tokens = r.integer("max_output_tokens")
    req.temperature = r.number("temperature")
    req.top_p = r.number("top_p")
    req.stream = bool(r.flag("stream"))
    req.user = r.text("user")
    metadata = r.object_value("metadata")
    if metadata:
        req.metadata = {str(k): str(v) for k, v in metadata.items()}
    reasoning = r.obj("reasoning")
    if reasoning.text("effort") or reasoning.text("summary"):
        req.reasoning = Reasoning(
            effort=reasoning.text("effort"), summary=reasoning.text("summary")
        )
    fmt = r.obj("text").obj("format")
    if fmt.data:
        kind = fmt.text("type") or "text"
        if kind not in ("text", "json_object", "json_schema"):
            raise InvalidRequest("text.format.type must be text, json_object or json_schema")
        req.response_format = ResponseFormat(
            kind,  # type: ignore[arg-type]
            name=fmt.text("name"),
            schema=fmt.object_value("schema"),
            strict=fmt.flag("strict"),
            description=fmt.text("description"),
        )
    return req


def _parse_tool(t: Reader, namespace: str | None) -> Tool:
    name = t.text("name")
    if not name:
        raise InvalidRequest(f"{t.path('name')} must be a non-empty string")
    return Tool(
        _flat(namespace, name),
        t.text("description"),
        t.object_value("parameters") or {"type": "object", "properties": {}},
        t.flag("strict"),
    )


def _flat(namespace: str | None, name: str) -> str:
    return f"{namespace}__{name}" if namespace else name


def _parse_tool_choice(r: Reader, req: Request) -> None:
    raw = r.raw("tool_choice")
    if raw is None:
        return
    if isinstance(raw, str):
        if raw not in ("auto", "none", "required"):
            raise InvalidRequest("tool_choice must be auto, none, required or an object")
        req.tool_choice = ToolChoice(raw)  # type: ignore[arg-type]
        return
    c = r.obj("tool_choice")
    kind = c.text("type")
    if kind == "function":
        name = c.text("name")
        if not name:
            raise InvalidRequest("tool_choice.name must be a non-empty string")
        req.tool_choice = ToolChoice("tool", name)
    elif kind == "allowed_tools":
        req.dropped.append("tool_choice.tools")
        req.tool_choice = ToolChoice("required" if c.text("mode") == "required" else "auto")
    else:
        req.dropped.append(f"tool_choice (type {kind})")


def _add(req: Request, role: str, part: Part) -> None:
    """Append to the open turn: an assistant turn gathers its reasoning, text and calls;
    consecutive tool outputs share one user turn."""
    last = req.messages[-1] if req.messages else None
    if (
        last is not None
        and last.role == role
        and (role == "assistant" or all(isinstance(p, ToolResult) for p in last.content))
    ):
        last.content.append(part)
        return
    req.messages.append(Message("assistant" if role == "assistant" else "user", [part]))


def _content(item: Reader, field: str, dropped: list[str] | None = None) -> list[Text | Image]:
    raw = item.raw(field)
    if isinstance(raw, str):
        return [Text(raw)] if raw else []
    if raw is not None and not isinstance(raw, list):
        item.invalid(field, "must be a string or an array of content parts")
    out: list[Text | Image] = []
    for p in item.objects(field):
        kind = p.text("type")
        if kind in ("input_text", "output_text", "text"):
            if text := p.text("text"):
                out.append(Text(text))
        elif kind == "refusal":
            if text := p.text("refusal"):
                out.append(Text(text))
        elif kind == "input_image" and p.text("image_url"):
            out.append(Image.from_url(p.text("image_url") or "", p.text("detail")))
        elif dropped is not None:
            dropped.append(f"{p.where} (type {kind})")
    return out


def _parse_item(item: Reader, req: Request) -> None:
    kind = item.text("type") or ("message" if item.has("role") else None)
    if kind == "message":
        role = item.text("role")
        if role not in ("user", "assistant", "system", "developer"):
            raise InvalidRequest(
                f"{item.path('role')} must be user, assistant, system or developer"
            )
        parts = _content(item, "content", req.dropped)
        if role in ("system", "developer"):
            req.system.extend(p.text for p in parts if isinstance(p, Text))
        elif role == "user":
            req.messages.append(Message("user", list(parts)))
        else:
            for p in parts:
                _add(req, "assistant", p)
    elif kind == "function_call":
        call_id, name = item.text("call_id"), item.text("name")
        if not call_id or not name:
            raise InvalidRequest(f"{item.where} needs a call_id and a name")
        args = item.raw("arguments")
        text = args if isinstance(args, str) else dumps(args or {})
        _add(req, "assistant", ToolCall(call_id, _flat(item.text("namespace"), name), text))
    elif kind == "function_call_output":
        call_id = item.text("call_id")
        if not call_id:
            raise InvalidRequest(f"{item.path('call_id')} must be a non-empty string")
        _add(req, "user", ToolResult(call_id, _content(item, "output", req.dropped)))
    elif kind == "reasoning":
        _add(req, "assistant", parse_reasoning(item))
    else:
        req.dropped.append(f"{item.where} (type {kind})")


def parse_reasoning(item: Reader) -> Thinking:
    texts = [s.text("text") or "" for s in item.objects("summary")]
    if not any(texts):
        texts = [c.text("text") or "" for c in item.objects("content")]
    sig = item.text("encrypted_content")
    origin: Format = "responses"
    if sig:
        origin, sig = unwrap_signature(sig, "responses")
    return Thinking("\n\n".join(t for t in texts if t), sig or None, origin, id=item.text("id"))


def render_request(req: Request) -> dict[str, Any]:
    items: list[dict[str, Any]] = []
    for i, m in enumerate(req.messages):
        if m.role == "user":
            items.extend(_render_user(m))
        else:
            items.extend(_render_assistant(m, req, i))
    out: dict[str, Any] = {"model": req.model}
    if req.system:
        out["instructions"] = "\n\n".join(req.system)
    out["input"] = items
    if req.tools:
        out["tools"] = [_function_tool(t) for t in req.tools]
        if req.tool_choice is not None:
            choice = req.tool_choice
            out["tool_choice"] = (
                {"type": "function", "name": choice.name or ""}
                if choice.mode == "tool"
                else choice.mode
            )
        if req.parallel_tool_calls is not None:
            out["parallel_tool_calls"] = req.parallel_tool_calls
    if req.max_tokens is not None:
        out["max_output_tokens"] = max(req.max_tokens, MIN_OUTPUT_TOKENS)
    if req.temperature is not None:
        out["temperature"] = req.temperature
    if req.top_p is not None:
        out["top_p"] = req.top_p
    if req.top_k is not None:
        req.dropped.append("top_k")
    if req.stop:
        req.dropped.append("stop")
    if req.stream:
        out["stream"] = True
    if req.user:
        out["user"] = req.user
    if req.metadata:
        out["metadata"] = req.metadata
    if req.reasoning is not None:
        r = req.reasoning
        effort = r.effort or (budget_to_effort(r.budget_tokens) if r.budget_tokens else None)
        reasoning: dict[str, Any] = {}
        if effort:
            reasoning["effort"] = effort
        reasoning["summary"] = r.summary or "auto"
        out["reasoning"] = reasoning
    if req.response_format is not None:
        out["text"] = {"format": _render_format(req.response_format)}
    out["store"] = False
    return out


def _function_tool(t: Tool) -> dict[str, Any]:
    out: dict[str, Any] = {"type": "function", "name": t.name}
    if t.description:
        out["description"] = t.description
    out["parameters"] = t.parameters
    out["strict"] = bool(t.strict)  # Responses may default to strict; the source did not ask
    return out


def _render_format(fmt: ResponseFormat) -> dict[str, Any]:
    if fmt.type != "json_schema":
        return {"type": fmt.type}
    out: dict[str, Any] = {"type": "json_schema", "name": fmt.name or "response"}
    if fmt.description:
        out["description"] = fmt.description
    out["schema"] = fmt.schema or {}
    if fmt.strict is not None:
        out["strict"] = fmt.strict
    return out


def _input_part(p: Text | Image) -> dict[str, Any]:
    if isinstance(p, Text):
        return {"type": "input_text", "text": p.text}
    return {"type": "input_image", "image_url": p.as_url(), "detail": p.detail or "auto"}


def _render_user(m: Message) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    rest: list[Text | Image] = []
    for p in m.content:
        if isinstance(p, ToolResult):
            output: Any = p.text()
            if any(isinstance(c, Image) for c in p.content):
                output = [_input_part(c) for c in p.content]
            out.append(
                {"type": "function_call_output", "call_id": p.tool_call_id, "output": output}
            )
        elif isinstance(p, Text | Image):
            rest.append(p)
    if rest:
        content = [_input_part(p) for p in rest]
        out.append({"type": "message", "role": "user", "content": content})
    return out


def _render_assistant(m: Message, req: Request, index: int) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for p in m.content:
        if isinstance(p, Text) and p.text:
            # EasyInputMessage: output_text parts would need the output item's id and status
            if out and out[-1]["type"] == "message":
                out[-1]["content"] += p.text
            else:
                out.append({"type": "message", "role": "assistant", "content": p.text})
        elif isinstance(p, ToolCall):
            out.append(
                {"type": "function_call", "call_id": p.id, "name": p.name, "arguments": p.arguments}
            )
        elif isinstance(p, Thinking):
            if p.origin == "responses" and p.id:
                item: dict[str, Any] = {"type": "reasoning", "id": p.id, "summary": _summary(p)}
                if p.signature:
                    item["encrypted_content"] = p.signature
                out.append(item)
            else:
                req.dropped.append(f"messages[{index}] thinking (not from a Responses upstream)")
    return out


def _output_text(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": []}


def _summary(p: Thinking) -> list[dict[str, Any]]:
    return [{"type": "summary_text", "text": p.text}] if p.text else []


# --- response -----------------------------------------------------------------------------


def render_usage(u: Usage) -> dict[str, Any]:
    return {
        "input_tokens": u.input_tokens,
        "input_tokens_details": {
            "cached_tokens": u.cached_input_tokens,
            "cache_write_tokens": u.cache_creation_input_tokens,
        },
        "output_tokens": u.output_tokens,
        "output_tokens_details": {"reasoning_tokens": u.reasoning_tokens},
        "total_tokens": u.total_tokens,
    }


def parse_output_item(item: Reader) -> list[Part]:
    kind = item.text("type")
    if kind == "message":
        return list(_content(item, "content"))
    if kind == "function_call" and item.text("name"):
        args = item.raw("arguments")
        return [
            ToolCall(
                item.text("call_id") or "",
                _flat(item.text("namespace"), item.text("name") or ""),
                args if isinstance(args, str) else dumps(args or {}),
            )
        ]
    if kind == "reasoning":
        return [parse_reasoning(item)]
    return []


def stop_reason(status: str | None, incomplete: Reader) -> StopReason | None:
    if status == "incomplete":
        return INCOMPLETE_TO_STOP.get(incomplete.text("reason") or "", "max_tokens")
    if status == "failed":
        return "error"
    return "end_turn" if status == "completed" else None


def parse_response(body: Any) -> Response:
    r = Reader(body)
    resp = Response(id=r.text("id") or None, model=r.text("model") or None)
    resp.created = r.integer("created_at") or None
    for item in r.objects("output"):
        resp.content.extend(parse_output_item(item))
    resp.stop_reason = stop_reason(r.text("status"), r.obj("incomplete_details"))
    if r.has("usage"):
        resp.usage = responses_usage(r.obj("usage").data)
    return resp


def reasoning_item(p: Thinking, item_id: str) -> dict[str, Any]:
    item: dict[str, Any] = {"id": item_id, "type": "reasoning", "summary": _summary(p)}
    if p.signature and p.origin is not None:
        own = p.origin == "responses"
        item["encrypted_content"] = p.signature if own else wrap_signature(p.origin, p.signature)
    return item


Namespaces = Mapping[str, tuple[str, str]]


def tool_namespaces(body: Any) -> dict[str, tuple[str, str]]:
    """``<namespace>__<name>`` -> ``(namespace, name)`` for a Responses request's namespace
    tools, so that calls coming back from another format can be split again for the client."""
    out: dict[str, tuple[str, str]] = {}
    for t in Reader(body).objects("tools"):
        if t.text("type") == "namespace" and t.text("name"):
            for inner in t.objects("tools"):
                if name := inner.text("name"):
                    out[_flat(t.text("name"), name)] = (t.text("name") or "", name)
    return out


def call_names(name: str, namespaces: Namespaces | None) -> dict[str, str]:
    """The ``name`` (and ``namespace``) fields of a function_call item."""
    if namespaces and name in namespaces:
        ns, inner = namespaces[name]
        return {"namespace": ns, "name": inner}
    return {"name": name}


def function_call_item(
    call: ToolCall, item_id: str, call_id: str, namespaces: Namespaces | None = None
) -> dict[str, Any]:
    return {
        "id": item_id,
        "type": "function_call",
        "status": "completed",
        "arguments": call.arguments,
        "call_id": call_id,
        **call_names(call.name, namespaces),
    }


def message_item(texts: list[str], item_id: str) -> dict[str, Any]:
    return {
        "id": item_id,
        "type": "message",
        "status": "completed",
        "role": "assistant",
        "content": [_output_text(t) for t in texts],
    }


def status_of(reason: StopReason | None) -> tuple[str, dict[str, Any] | None]:
    """The Responses ``status`` and ``incomplete_details`` for a stop reason."""
    if reason == "max_tokens":
        return "incomplete", {"reason": "max_output_tokens"}
    if reason == "content_filter":
        return "incomplete", {"reason": "content_filter"}
    if reason == "error":
        return "failed", None
    return "completed", None


def response_object(
    response_id: str,
    created: int,
    model: str,
    output: list[dict[str, Any]],
    reason: StopReason | None,
    usage: Usage | None,
    status: str | None = None,
) -> dict[str, Any]:
    final_status, incomplete = status_of(reason)
    return {
        "id": response_id,
        "object": "response",
        "created_at": created,
        "status": status or final_status,
        "error": None,
        "incomplete_details": None if status else incomplete,
        "model": model,
        "output": output,
        "parallel_tool_calls": True,
        "tool_choice": "auto",
        "tools": [],
        "usage": None if usage is None else render_usage(usage),
    }


def render_response(
    resp: Response, *, ids: Ids | None = None, namespaces: Namespaces | None = None
) -> dict[str, Any]:
    ids = ids or Ids()
    output: list[dict[str, Any]] = []
    texts: list[str] = []
    for p in resp.content:
        if isinstance(p, Text):
            texts.append(p.text)
            continue
        if texts:
            output.append(message_item(texts, ids.new("msg_")))
            texts = []
        if isinstance(p, ToolCall):
            call_id = p.id or ids.new("call_")
            output.append(function_call_item(p, ids.new("fc_"), call_id, namespaces))
        elif isinstance(p, Thinking) and not p.redacted:
            output.append(reasoning_item(p, p.id or ids.new("rs_")))
    if texts:
        output.append(message_item(texts, ids.new("msg_")))
    return response_object(
        resp.id or ids.new("resp_"),
        resp.created or ids.now(),
        resp.model or "",
        output,
        resp.stop_reason,
        resp.usage or Usage(),
    )
