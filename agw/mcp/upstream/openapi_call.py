"""One ``tools/call`` of an OpenAPI tool as HTTP, both ways (docs/openapi-mcp.md, "Calls").

:func:`http_request` turns the call's arguments into the request: path parameters put into the
path template percent-encoded (``/`` included, and a value of ``.`` or ``..`` too, so no value
adds or climbs a path segment), query parameters as the parameter's ``style`` and ``explode``
say (``form`` by default; ``spaceDelimited``, ``pipeDelimited``, ``deepObject``), header
parameters as text, and the JSON body (the flattened properties, or the ``body`` argument). An
argument the tool does not take, or a required one missing, is an :class:`ArgumentError`.

:func:`tool_result` turns the answer into the ``CallToolResult``: a 2xx JSON answer is its text
plus ``structuredContent`` (an object as it is, any other JSON value as ``{"result": value}``),
an image an image content, other text as text; a non-2xx answer is ``isError`` with its status
and body.
"""

from __future__ import annotations

import base64
import contextlib
import json
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from agw import jsonfast
from agw.config.openapi_tools import Operation, Param
from agw.mcp.jsonrpc import encode
from agw.types import JsonObj

_TEXTUAL = frozenset(
    {
        "application/javascript",
        "application/x-www-form-urlencoded",
        "application/xml",
        "application/yaml",
        "application/x-yaml",
        "application/graphql",
    }
)
_BAD_HEADER = frozenset("\r\n\x00")


class ArgumentError(ValueError):
    """The arguments do not make a request of the tool: the model is told and may retry."""


@dataclass(frozen=True)
class HttpRequest:
    method: str
    target: str  # path and query, the base URL's path before it
    headers: dict[str, str]
    body: bytes | None


def http_request(op: Operation, args: JsonObj, prefix: str, base_query: str) -> HttpRequest:
    """The request a call with ``args`` makes; ``prefix`` and ``base_query``: the path and
    query of the base URL."""
    takes = [p.arg for p in op.params]
    if op.body is not None:
        takes += [arg for arg, _ in op.body.fields] if op.body.flat else ["body"]
    unknown = sorted(set(args) - set(takes))
    if unknown:
        listed = ", ".join(takes) or "none"
        raise ArgumentError(f"unknown argument {unknown[0]!r} (this tool takes: {listed})")
    missing = [arg for arg in op.required if args.get(arg) is None]
    if missing:
        raise ArgumentError(f"missing required argument {missing[0]!r}")
    path = op.path
    query: list[tuple[str, str]] = []
    headers: dict[str, str] = {}
    for p in op.params:
        value = args.get(p.arg)
        if value is None:
            continue
        if p.location == "path":
            path = path.replace("{" + p.name + "}", _path_value(p, value))
        elif p.location == "query":
            query += _query_pairs(p, value)
        else:
            headers[p.name.lower()] = _header_value(p, value)
    parts = [base_query] if base_query else []
    parts += [f"{quote(k, safe='')}={quote(v, safe='')}" for k, v in query]
    target = prefix + path + ("?" + "&".join(parts) if parts else "")
    body = _body(op, args)
    if body is not None and op.body is not None:
        headers["content-type"] = op.body.media_type
    return HttpRequest(op.method, target, headers, body)


def _body(op: Operation, args: JsonObj) -> bytes | None:
    spec = op.body
    if spec is None:
        return None
    if not spec.flat:
        value = args.get("body")
        return None if value is None else encode(value)
    found = {prop: args[arg] for arg, prop in spec.fields if arg in args}
    return encode(found) if found or spec.required else None


def _text(value: Any) -> str:
    """A scalar as parameter text: JSON's spelling for booleans, null and numbers; a nested
    value as JSON."""
    return value if isinstance(value, str) else _json(value)


def _parts(p: Param, value: Any) -> list[str]:
    """The parts of a value that ``simple`` style joins with commas."""
    if isinstance(value, list):
        return [_text(v) for v in value]
    if isinstance(value, dict):
        if p.explode:
            return [f"{k}={_text(v)}" for k, v in value.items()]
        return [s for k, v in value.items() for s in (k, _text(v))]
    return [_text(value)]


def _path_value(p: Param, value: Any) -> str:
    if p.as_json:
        text = _quote(_json(value))
    else:
        text = ",".join(_quote(part) for part in _parts(p, value))
    if not text:
        raise ArgumentError(f"path parameter {p.arg!r} must not be empty")
    if p.style == "label":
        return "." + text
    if p.style == "matrix":
        return f";{_quote(p.name)}={text}"
    return text


def _json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def _quote(text: str) -> str:
    """Percent-encoded for a path segment: ``/`` too, and ``.``/``..`` as a whole."""
    out = quote(text, safe="")
    return out.replace(".", "%2E") if out in (".", "..") else out


def _query_pairs(p: Param, value: Any) -> list[tuple[str, str]]:
    if p.as_json:
        return [(p.name, _json(value))]
    if isinstance(value, dict):
        if p.style == "deepObject":
            return [(f"{p.name}[{k}]", _text(v)) for k, v in value.items()]
        if p.explode:
            return [(k, _text(v)) for k, v in value.items()]
        return [(p.name, ",".join(s for k, v in value.items() for s in (k, _text(v))))]
    if isinstance(value, list):
        if p.explode and p.style == "form":
            return [(p.name, _text(v)) for v in value]
        sep = {"spaceDelimited": " ", "pipeDelimited": "|"}.get(p.style, ",")
        return [(p.name, sep.join(_text(v) for v in value))]
    return [(p.name, _text(value))]


def _header_value(p: Param, value: Any) -> str:
    text = _json(value) if p.as_json else ",".join(_parts(p, value))
    if not _BAD_HEADER.isdisjoint(text):
        raise ArgumentError(f"header argument {p.arg!r} has a line break or NUL")
    return text


# ---------------------------------------------------------------------------- the answer


def media_type(headers: dict[str, str]) -> str:
    return headers.get("content-type", "").split(";", 1)[0].strip().lower()


def is_json(media: str) -> bool:
    return media == "application/json" or media.endswith("+json")


def tool_result(status: int, headers: dict[str, str], data: bytes) -> JsonObj:
    """The ``CallToolResult`` of an HTTP answer (see the module docstring)."""
    media = media_type(headers)
    value: Any = None
    parsed = False
    if is_json(media) and data.strip():
        with contextlib.suppress(ValueError):  # said JSON, is not: shown as the text it is
            value, parsed = jsonfast.loads(data), True
    if not 200 <= status < 300:
        body: Any = value if parsed else _shown(data, media)
        return {
            "content": [{"type": "text", "text": f"HTTP {status}: {_shown(data, media)}"}],
            "structuredContent": {"status": status, "body": body},
            "isError": True,
        }
    if parsed:
        structured = value if isinstance(value, dict) else {"result": value}
        text = data.decode("utf-8", "replace")
        return {"content": [{"type": "text", "text": text}], "structuredContent": structured}
    if media.startswith("image/") and data:
        image = base64.b64encode(data).decode()
        return {"content": [{"type": "image", "data": image, "mimeType": media}]}
    text = _shown(data, media) if data else f"HTTP {status}, no content"
    return {"content": [{"type": "text", "text": text}]}


def _shown(data: bytes, media: str) -> str:
    """An answer body as text: decoded when it is text, else said what it is."""
    textual = not media or media.startswith("text/") or media in _TEXTUAL or is_json(media)
    textual = textual or media.endswith(("+xml", "+yaml"))
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        if textual:
            return data.decode("utf-8", "replace")
    return f"{len(data)} bytes of {media or 'binary data'} (not shown)"
