"""Anthropic Messages (``/v1/messages``) <-> the canonical model."""

from __future__ import annotations

import re
from typing import Any

from agw.errors import InvalidRequest
from agw.llm.providers.anthropic import messages_usage
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
    unwrap_signature,
)
from agw.llm.translate.reader import Reader

DEFAULT_MAX_TOKENS = 4096  # max_tokens is required here; what we send when the source had none
_DEFAULT_BUDGET = 8192  # thinking asked for without a size
_MIN_BUDGET = 1024

_REQUEST_FIELDS = {
    "model",
    "max_tokens",
    "messages",
    "system",
    "tools",
    "tool_choice",
    "temperature",
    "top_p",
    "top_k",
    "stop_sequences",
    "stream",
    "metadata",
    "thinking",
    "output_config",
    "output_format",
}

_ID_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")


def tool_id(call_id: str) -> str:
    """A tool_use id Anthropic accepts (``^[a-zA-Z0-9_-]+$``); others' ids may hold ``.:``."""
    return _ID_UNSAFE.sub("_", call_id)


STOP_REASONS: dict[str, StopReason] = {
    "end_turn": "end_turn",
    "max_tokens": "max_tokens",
    "model_context_window_exceeded": "max_tokens",
    "stop_sequence": "stop_sequence",
    "tool_use": "tool_use",
    "pause_turn": "pause_turn",
    "refusal": "refusal",
}


def render_stop_reason(reason: StopReason | None) -> str:
    """The agent-gateway mapping: a content filter ends the turn; errors too."""
    if reason in (None, "content_filter", "error"):
        return "end_turn"
    return reason


# --- request ------------------------------------------------------------------------------


def parse_request(body: Any) -> Request:
    r = Reader(body, "", strict=True)
    req = Request(model=r.text("model") or "")
    req.dropped = [k for k in r.data if k not in _REQUEST_FIELDS]
    system = r.raw("system")
    if isinstance(system, str):
        req.system = [system] if system else []
    elif system is not None:
        if not isinstance(system, list):
            raise InvalidRequest("system must be a string or an array of text blocks")
        for b in r.objects("system"):
            text = b.text("text")
            if b.text("type") != "text" or text is None:
                raise InvalidRequest(f"{b.where} must be a text block")
            if text:
                req.system.append(text)
    if not isinstance(r.raw("messages"), list):
        raise InvalidRequest("messages must be an array")
    for m in r.objects("messages"):
        role = m.text("role")
        if role not in ("user", "assistant"):
            raise InvalidRequest(f"{m.path('role')} must be user or assistant")
        req.messages.append(Message(role, _parse_blocks(m, req)))  # type: ignore[arg-type]
    for t in r.objects("tools"):
        kind = t.text("type")
        if kind not in (None, "custom"):
            req.dropped.append(f"{t.where} (type {kind})")
            continue
        name = t.text("name")
        if not name:
            raise InvalidRequest(f"{t.path('name')} must be a non-empty string")
        req.tools.append(
            Tool(
                name,
                t.text("description"),
                t.object_value("input_schema") or {"type": "object", "properties": {}},
                t.flag("strict"),
            )
        )
    _parse_tool_choice(r.obj("tool_choice"), req)
    req.max_tokens = r.integer("max_tokens")
    req.temperature = r.number("temperature")
    req.top_p = r.number("top_p")
    req.top_k = r.integer("top_k")
    req.stop = r.strings("stop_sequences")
    req.stream = bool(r.flag("stream"))
    metadata = r.obj("metadata")
    req.user = metadata.text("user_id")
    req.dropped.extend(f"metadata.{k}" for k in metadata.data if k != "user_id")
    output = r.obj("output_config")
    thinking = r.obj("thinking")
    kind = thinking.text("type")
    if kind in ("enabled", "adaptive"):
        req.reasoning = Reasoning(
            effort=output.text("effort"), budget_tokens=thinking.integer("budget_tokens")
        )
    elif output.text("effort"):
        req.reasoning = Reasoning(effort=output.text("effort"))
    fmt = output.obj("format") if output.has("format") else r.obj("output_format")
    if fmt.text("type") == "json_schema":
        req.response_format = ResponseFormat("json_schema", schema=fmt.object_value("schema"))
    return req


def _parse_tool_choice(c: Reader, req: Request) -> None:
    if not c.data:
        return
    kind = c.text("type")
    if kind in ("auto", "none"):
        req.tool_choice = ToolChoice(kind)  # type: ignore[arg-type]
    elif kind == "any":
        req.tool_choice = ToolChoice("required")
    elif kind == "tool":
        name = c.text("name")
        if not name:
            raise InvalidRequest("tool_choice.name must be a non-empty string")
        req.tool_choice = ToolChoice("tool", name)
    else:
        raise InvalidRequest("tool_choice.type must be auto, any, tool or none")
    if c.flag("disable_parallel_tool_use") is not None:
        req.parallel_tool_calls = not c.flag("disable_parallel_tool_use")


def _image(b: Reader) -> Image | None:
    src = b.obj("source")
    kind = src.text("type")
    if kind == "base64":
        return Image(data=src.text("data") or "", media_type=src.text("media_type"))
    if kind == "url" and src.text("url"):
        return Image(url=src.text("url"))
    return None


def _parse_blocks(m: Reader, req: Request | None) -> list[Part]:
    """A message's content: a string or blocks. ``req`` is None for upstream answers."""
    raw = m.raw("content")
    if isinstance(raw, str):
        return [Text(raw)] if raw else []
    if raw is not None and not isinstance(raw, list):
        m.invalid("content", "must be a string or an array of content blocks")
    out: list[Part] = []
    for b in m.objects("content"):
        part = _parse_block(b)
        if part is not None:
            out.append(part)
        elif req is not None and b.text("type") not in ("text",):
            req.dropped.append(f"{b.where} (type {b.text('type')})")
    return out


def _parse_block(b: Reader) -> Part | None:
    kind = b.text("type")
    if kind == "text":
        text = b.text("text")
        if text is None:
            b.invalid("text", "must be a string")
        return Text(text) if text else None
    if kind == "image":
        return _image(b)
    if kind == "tool_use":
        call_id, name = b.text("id"), b.text("name")
        if not call_id or not name:
            b.invalid("id", "and name must be non-empty strings")
            return None
        return ToolCall(call_id, name, dumps(b.object_value("input") or {}))
    if kind == "tool_result":
        call_id = b.text("tool_use_id")
        if not call_id:
            b.invalid("tool_use_id", "must be a non-empty string")
            return None
        content: list[Text | Image] = [
            p for p in _parse_blocks(b, None) if isinstance(p, Text | Image)
        ]
        return ToolResult(call_id, content, is_error=bool(b.flag("is_error")))
    if kind == "thinking":
        sig = b.text("signature")
        origin, sig = unwrap_signature(sig, "messages") if sig else (None, None)
        return Thinking(b.text("thinking") or "", sig, origin)
    if kind == "redacted_thinking":
        return Thinking("", b.text("data") or "", "messages", redacted=True)
    return None


def render_request(req: Request) -> dict[str, Any]:
    messages: list[dict[str, Any]] = []
    for i, m in enumerate(req.messages):
        blocks = _render_blocks(m, req, i)
        if not blocks:
            continue
        if messages and messages[-1]["role"] == m.role:
            messages[-1]["content"].extend(blocks)
        else:
            messages.append({"role": m.role, "content": blocks})
    for msg in messages:
        blocks = msg["content"]
        if msg["role"] == "user":  # tool_result blocks must open the user turn
            blocks.sort(key=lambda b: b["type"] != "tool_result")
        if len(blocks) == 1 and blocks[0]["type"] == "text":
            msg["content"] = blocks[0]["text"]
    budget = _thinking_budget(req)
    max_tokens = req.max_tokens or DEFAULT_MAX_TOKENS + (budget or 0)
    if budget is not None and budget >= max_tokens:
        budget = max_tokens - 1 if max_tokens - 1 >= _MIN_BUDGET else None
        if budget is None:
            req.dropped.append("reasoning (max_tokens below the minimum thinking budget)")
    out: dict[str, Any] = {"model": req.model, "max_tokens": max_tokens, "messages": messages}
    if len(req.system) == 1:
        out["system"] = req.system[0]
    elif req.system:
        out["system"] = [{"type": "text", "text": s} for s in req.system]
    if req.tools:
        out["tools"] = [_render_tool(t) for t in req.tools]
        choice = _render_tool_choice(req)
        if choice is not None:
            out["tool_choice"] = choice
    if req.temperature is not None:
        if budget is not None:
            req.dropped.append("temperature (not allowed with thinking)")
        else:
            out["temperature"] = min(req.temperature, 1.0)
    if req.top_p is not None:
        out["top_p"] = req.top_p
    if req.top_k is not None:
        if budget is not None:
            req.dropped.append("top_k (not allowed with thinking)")
        else:
            out["top_k"] = req.top_k
    if req.stop:
        out["stop_sequences"] = req.stop
    if req.stream:
        out["stream"] = True
    if req.user:
        out["metadata"] = {"user_id": req.user}
    if req.metadata:
        req.dropped.append("metadata")
    if budget is not None:
        out["thinking"] = {"type": "enabled", "budget_tokens": budget}
    fmt = req.response_format
    if fmt is not None and fmt.type == "json_schema":
        out["output_config"] = {"format": {"type": "json_schema", "schema": fmt.schema or {}}}
    elif fmt is not None and fmt.type == "json_object":
        req.dropped.append("response_format (json_object)")
    return out


def _thinking_budget(req: Request) -> int | None:
    r = req.reasoning
    if r is None or r.effort == "none" or r.budget_tokens == 0:
        return None
    budget = r.budget_tokens or (effort_to_budget(r.effort) if r.effort else None)
    return max(budget or _DEFAULT_BUDGET, _MIN_BUDGET)


def _render_tool(t: Tool) -> dict[str, Any]:
    out: dict[str, Any] = {"name": t.name}
    if t.description:
        out["description"] = t.description
    schema = t.parameters or {}
    out["input_schema"] = schema if schema.get("type") else {"type": "object", **schema}
    if t.strict:  # only when asked: older API versions reject the field
        out["strict"] = True
    return out


def _render_tool_choice(req: Request) -> dict[str, Any] | None:
    choice, parallel = req.tool_choice, req.parallel_tool_calls
    out: dict[str, Any] | None = None
    if choice is not None:
        kinds = {"auto": "auto", "none": "none", "required": "any", "tool": "tool"}
        out = {"type": kinds[choice.mode]}
        if choice.mode == "tool":
            out["name"] = choice.name or ""
    if parallel is False:
        out = out or {"type": "auto"}
        if out["type"] != "none":
            out["disable_parallel_tool_use"] = True
    return out


def _image_block(img: Image) -> dict[str, Any]:
    if img.url is not None:
        return {"type": "image", "source": {"type": "url", "url": img.url}}
    return {
        "type": "image",
        "source": {"type": "base64", "media_type": img.media_type or "", "data": img.data or ""},
    }


def _thinking_block(p: Thinking) -> dict[str, Any] | None:
    """Thinking goes back to Anthropic only with the signature Anthropic gave it."""
    if p.origin != "messages" or not p.signature:
        return None
    if p.redacted:
        return {"type": "redacted_thinking", "data": p.signature}
    return {"type": "thinking", "thinking": p.text, "signature": p.signature}


def _render_blocks(m: Message, req: Request, index: int) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    block: dict[str, Any]
    for p in m.content:
        if isinstance(p, Text):
            if p.text:
                out.append({"type": "text", "text": p.text})
        elif isinstance(p, Image):
            out.append(_image_block(p))
        elif isinstance(p, ToolCall):
            block = {"type": "tool_use", "id": tool_id(p.id), "name": p.name}
            out.append({**block, "input": p.arguments_object()})
        elif isinstance(p, ToolResult):
            block = {"type": "tool_result", "tool_use_id": tool_id(p.tool_call_id)}
            if any(isinstance(c, Image) for c in p.content):
                block["content"] = [
                    {"type": "text", "text": c.text} if isinstance(c, Text) else _image_block(c)
                    for c in p.content
                ]
            elif p.text():
                block["content"] = p.text()
            if p.is_error:
                block["is_error"] = True
            out.append(block)
        elif isinstance(p, Thinking):
            thinking = _thinking_block(p)
            if thinking is not None:
                out.append(thinking)
            else:
                req.dropped.append(f"messages[{index}] thinking (no Anthropic signature)")
    return out


# --- response -----------------------------------------------------------------------------


def render_usage(u: Usage) -> dict[str, Any]:
    uncached = u.input_tokens - u.cached_input_tokens - u.cache_creation_input_tokens
    out: dict[str, Any] = {
        "input_tokens": max(uncached, 0),
        "output_tokens": u.output_tokens,
        "cache_creation_input_tokens": u.cache_creation_input_tokens,
        "cache_read_input_tokens": u.cached_input_tokens,
    }
    if u.reasoning_tokens:
        out["output_tokens_details"] = {"thinking_tokens": u.reasoning_tokens}
    return out


def parse_response(body: Any) -> Response:
    r = Reader(body)
    resp = Response(id=r.text("id") or None, model=r.text("model") or None)
    resp.content = _parse_blocks(r, None)
    reason = r.text("stop_reason")
    resp.stop_reason = STOP_REASONS.get(reason, "end_turn") if reason else None
    resp.stop_sequence = r.text("stop_sequence")
    if r.has("usage"):
        resp.usage = messages_usage(r.obj("usage").data)
    return resp


def response_thinking_block(p: Thinking) -> dict[str, Any] | None:
    """A thinking block for a client: foreign reasoning keeps its text, with no signature."""
    if p.redacted:
        return _thinking_block(p)
    sig = p.signature if p.origin == "messages" and p.signature else ""
    return {"type": "thinking", "thinking": p.text, "signature": sig}


def render_response(resp: Response, *, ids: Ids | None = None) -> dict[str, Any]:
    ids = ids or Ids()
    content: list[dict[str, Any]] = []
    for p in resp.content:
        if isinstance(p, Text):
            content.append({"type": "text", "text": p.text})
        elif isinstance(p, ToolCall):
            content.append(
                {
                    "type": "tool_use",
                    "id": tool_id(p.id) if p.id else ids.new("toolu_"),
                    "name": p.name,
                    "input": p.arguments_object(),
                }
            )
        elif isinstance(p, Thinking):
            block = response_thinking_block(p)
            if block is not None:
                content.append(block)
    return {
        "id": resp.id or ids.new("msg_"),
        "type": "message",
        "role": "assistant",
        "model": resp.model or "",
        "content": content,
        "stop_reason": render_stop_reason(resp.stop_reason),
        "stop_sequence": resp.stop_sequence,
        "usage": render_usage(resp.usage or Usage()),
    }
