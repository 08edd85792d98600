"""Errors in the caller's own dialect: the OpenAI error object, or Anthropic's error envelope."""

from __future__ import annotations

import json

_TYPES = {
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
    if status in _TYPES:
        return _TYPES[status]
    return "invalid_request_error" if 400 <= status < 500 else "api_error"


def error_body(protocol: str, status: int, message: str, code: str | None = None) -> bytes:
    """``protocol``: the route's (openai | anthropic | cc)."""
    kind = error_type(status)
    if protocol in ("anthropic", "cc"):
        return json.dumps({"type": "error", "error": {"type": kind, "message": message}}).encode()
    return json.dumps(
        {"error": {"message": message, "type": kind, "param": None, "code": code}}
    ).encode()


def stream_error_frame(protocol: str, status: int, message: str) -> bytes:
    """An error inside an already-started stream (Anthropic ``event: error``; OpenAI clients
    read an ``error`` object in a data line)."""
    body = error_body(protocol, status, message).decode()
    if protocol in ("anthropic", "cc"):
        return f"event: error\ndata: {body}\n\n".encode()
    return f"data: {body}\n\n".encode()
