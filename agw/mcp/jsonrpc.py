"""JSON-RPC 2.0 as MCP uses it: message shapes, error codes, the error type a handler raises, and
the encoder of the messages the gateway writes."""

from __future__ import annotations

import json
from typing import Any

import orjson

from agw.rpcids import ID_MAX_CHARS as ID_MAX_CHARS  # the bounds live in agw.rpcids
from agw.rpcids import METHOD_MAX_CHARS as METHOD_MAX_CHARS
from agw.rpcids import valid_id as valid_id
from agw.types import JsonObj

PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603
# MCP's own codes
REQUEST_CANCELLED = -32000  # implementation-defined range: the gateway's "request cancelled"
UPSTREAM_FAILED = -32001  # implementation-defined range: an upstream could not be reached/used
RESOURCE_NOT_FOUND = -32002
FORBIDDEN = -32003  # implementation-defined range: the route's authorization rules deny it
RATE_LIMITED = -32029  # implementation-defined range: a limit refuses the call (docs/limits.md)
HEADER_MISMATCH = -32020
MISSING_CLIENT_CAPABILITY = -32021
UNSUPPORTED_PROTOCOL_VERSION = -32022

RequestId = str | int


def encode(msg: Any) -> bytes:
    """A message as JSON bytes: orjson (compact, UTF-8); what it refuses (integers beyond 64
    bits, keys that are not strings, lone surrogates) goes through :func:`json.dumps`."""
    try:
        return orjson.dumps(msg)
    except TypeError:
        return json.dumps(msg).encode()


class RpcError(Exception):
    """A JSON-RPC error object, raised by whoever decided the request fails."""

    def __init__(self, code: int, message: str, data: Any = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.data = data

    def to_obj(self) -> JsonObj:
        return {"code": self.code, "message": self.message, "data": self.data}

    @classmethod
    def from_obj(cls, error: Any) -> RpcError:
        if not isinstance(error, dict):
            return cls(INTERNAL_ERROR, f"malformed error from upstream: {error!r}"[:300])
        code = error.get("code")
        message = error.get("message")
        return cls(
            code if isinstance(code, int) else INTERNAL_ERROR,
            message if isinstance(message, str) else "upstream error",
            error.get("data"),
        )


def result(msg_id: RequestId | None, value: Any) -> JsonObj:
    return {"jsonrpc": "2.0", "id": msg_id, "result": value}


def error(msg_id: RequestId | None, exc: RpcError) -> JsonObj:
    return {"jsonrpc": "2.0", "id": msg_id, "error": exc.to_obj()}


def request(msg_id: RequestId, method: str, params: JsonObj | None = None) -> JsonObj:
    out: JsonObj = {"jsonrpc": "2.0", "id": msg_id, "method": method}
    if params is not None:
        out["params"] = params
    return out


def notification(method: str, params: JsonObj | None = None) -> JsonObj:
    out: JsonObj = {"jsonrpc": "2.0", "method": method}
    if params is not None:
        out["params"] = params
    return out


def is_request(msg: JsonObj) -> bool:
    return "method" in msg and "id" in msg and msg["id"] is not None


def is_notification(msg: JsonObj) -> bool:
    return "method" in msg and ("id" not in msg or msg["id"] is None)


def is_response(msg: JsonObj) -> bool:
    return "method" not in msg and "id" in msg and ("result" in msg or "error" in msg)


BAD_ID = f"id must be a string of at most {ID_MAX_CHARS} characters or an integer"


def check_message(msg: Any) -> JsonObj:
    """A well-formed single message, or RpcError(-32600) saying what is wrong with it."""
    if not isinstance(msg, dict):
        raise RpcError(INVALID_REQUEST, "a JSON-RPC message must be a JSON object")
    version = msg.get("jsonrpc", "2.0")
    if version != "2.0":
        raise RpcError(INVALID_REQUEST, f'jsonrpc must be "2.0" (got {version!r})')
    if "method" in msg:
        method = msg["method"]
        if not isinstance(method, str) or not method or len(method) > METHOD_MAX_CHARS:
            raise RpcError(
                INVALID_REQUEST,
                f"method must be a non-empty string of at most {METHOD_MAX_CHARS} characters",
            )
        if "id" in msg and msg["id"] is not None and not valid_id(msg["id"]):
            raise RpcError(INVALID_REQUEST, BAD_ID)
        params = msg.get("params")
        if params is not None and not isinstance(params, dict):
            raise RpcError(INVALID_REQUEST, "params must be an object")
        meta = params.get("_meta") if params is not None else None
        if (
            isinstance(meta, dict)
            and "progressToken" in meta
            and not valid_id(meta["progressToken"])
        ):
            raise RpcError(
                INVALID_REQUEST,
                f"params._meta.progressToken must be a string of at most {ID_MAX_CHARS} "
                "characters or an integer",
            )
        return msg
    if "id" in msg and ("result" in msg or "error" in msg):
        if msg["id"] is not None and not valid_id(msg["id"]):
            raise RpcError(INVALID_REQUEST, BAD_ID)
        return msg
    raise RpcError(INVALID_REQUEST, "a message needs a method (request) or a result (response)")
