"""What the A2A plane knows of the protocol: its two versions, the methods it relays, the
HTTP+JSON paths, the task states, the error codes, and the error bodies of each binding.

Versions are those of the official SDKs (docs/a2a.md#methods): **1.0** (PascalCase JSON-RPC
methods, ``A2A-Version: 1.0``, HTTP+JSON paths ``/message:send``, ``/tasks/{id}``... optionally
under a ``/{tenant}`` segment) and **0.3** (``message/send``-style methods, HTTP+JSON paths
under ``/v1/``). A JSON-RPC method names its version; an HTTP+JSON path does (``/v1/`` is
0.3). Each operation of the HTTP+JSON binding is recorded under the JSON-RPC name of the same
operation in its version, so one ``method`` column covers both bindings.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

import orjson

from agw.types import JsonObj

V1: Final = "1.0"
V03: Final = "0.3"
JSONRPC: Final = "JSONRPC"  # a card's binding names
HTTP_JSON: Final = "HTTP+JSON"
BINDINGS: Final = (JSONRPC, HTTP_JSON)
ROW_BINDING: Final = {JSONRPC: "jsonrpc", HTTP_JSON: "http_json"}  # the usage rows' names
CARD_METHOD: Final = "agent-card"  # the row of a card request


@dataclass(frozen=True, slots=True)
class Method:
    """One operation the plane relays: its JSON-RPC name, its version, whether it answers with
    a stream, and whether its answer is an agent card (rewritten like the public one)."""

    name: str
    version: str
    stream: bool = False
    card: bool = False


_V1_METHODS = (
    Method("SendMessage", V1),
    Method("SendStreamingMessage", V1, stream=True),
    Method("GetTask", V1),
    Method("ListTasks", V1),
    Method("CancelTask", V1),
    Method("SubscribeToTask", V1, stream=True),
    Method("CreateTaskPushNotificationConfig", V1),
    Method("GetTaskPushNotificationConfig", V1),
    Method("ListTaskPushNotificationConfigs", V1),
    Method("DeleteTaskPushNotificationConfig", V1),
    Method("GetExtendedAgentCard", V1, card=True),
)
_V03_METHODS = (
    Method("message/send", V03),
    Method("message/stream", V03, stream=True),
    Method("tasks/get", V03),
    Method("tasks/cancel", V03),
    Method("tasks/resubscribe", V03, stream=True),
    Method("tasks/pushNotificationConfig/set", V03),
    Method("tasks/pushNotificationConfig/get", V03),
    Method("tasks/pushNotificationConfig/list", V03),
    Method("tasks/pushNotificationConfig/delete", V03),
    Method("agent/getAuthenticatedExtendedCard", V03, card=True),
)
METHODS: Final = {m.name: m for m in (*_V1_METHODS, *_V03_METHODS)}

# HTTP+JSON: (version, HTTP method, path shape) -> the JSON-RPC method of the same operation.
# In a shape, "{id}" is one path segment (the task id) and "{cfg}" a push config id.
_REST: Final = {
    V1: {
        ("POST", "/message:send"): "SendMessage",
        ("POST", "/message:stream"): "SendStreamingMessage",
        ("GET", "/tasks"): "ListTasks",
        ("GET", "/tasks/{id}"): "GetTask",
        ("POST", "/tasks/{id}:cancel"): "CancelTask",
        ("GET", "/tasks/{id}:subscribe"): "SubscribeToTask",
        ("POST", "/tasks/{id}:subscribe"): "SubscribeToTask",
        ("POST", "/tasks/{id}/pushNotificationConfigs"): "CreateTaskPushNotificationConfig",
        ("GET", "/tasks/{id}/pushNotificationConfigs"): "ListTaskPushNotificationConfigs",
        ("GET", "/tasks/{id}/pushNotificationConfigs/{cfg}"): "GetTaskPushNotificationConfig",
        ("DELETE", "/tasks/{id}/pushNotificationConfigs/{cfg}"): (
            "DeleteTaskPushNotificationConfig"
        ),
        ("GET", "/extendedAgentCard"): "GetExtendedAgentCard",
    },
    V03: {
        ("POST", "/message:send"): "message/send",
        ("POST", "/message:stream"): "message/stream",
        ("GET", "/tasks/{id}"): "tasks/get",
        ("POST", "/tasks/{id}:cancel"): "tasks/cancel",
        ("GET", "/tasks/{id}:subscribe"): "tasks/resubscribe",
        ("POST", "/tasks/{id}:subscribe"): "tasks/resubscribe",
        ("POST", "/tasks/{id}/pushNotificationConfigs"): "tasks/pushNotificationConfig/set",
        ("GET", "/tasks/{id}/pushNotificationConfigs"): "tasks/pushNotificationConfig/list",
        ("GET", "/tasks/{id}/pushNotificationConfigs/{cfg}"): "tasks/pushNotificationConfig/get",
        ("DELETE", "/tasks/{id}/pushNotificationConfigs/{cfg}"): (
            "tasks/pushNotificationConfig/delete"
        ),
        ("GET", "/card"): "agent/getAuthenticatedExtendedCard",
    },
}
_FIRST_SEGMENTS: Final = frozenset({"message:send", "message:stream", "tasks", "extendedAgentCard"})
_TASK_PATH = re.compile(
    r"/tasks/(?P<id>[^/:]+)(?P<rest>:cancel|:subscribe|/pushNotificationConfigs(?P<cfg>/[^/]+)?)?"
)


class RestMiss(Exception):
    """No HTTP+JSON operation at this path (``allowed`` empty), or not with this HTTP method
    (``allowed``: the methods that path takes)."""

    def __init__(self, allowed: tuple[str, ...] = ()) -> None:
        super().__init__("no A2A operation here")
        self.allowed = allowed


@dataclass(frozen=True, slots=True)
class RestCall:
    method: Method
    task_id: str | None


def rest_call(http_method: str, path: str) -> RestCall:
    """The operation of an HTTP+JSON request (``path`` under the route, decoded), or
    :class:`RestMiss`. A path with an empty, ``.`` or ``..`` segment is none: what is sent
    upstream stays under the interface's URL."""
    segments = path.split("/")[1:]
    if any(s in ("", ".", "..") for s in segments):
        raise RestMiss
    version = V1
    if segments[:1] == ["v1"]:
        version, segments = V03, segments[1:]
    elif segments and segments[0] not in _FIRST_SEGMENTS:
        segments = segments[1:]  # a 1.0 tenant
    shape, task_id = "/" + "/".join(segments), None
    match = _TASK_PATH.fullmatch(shape)
    if match is not None:
        rest = match.group("rest") or ""
        if match.group("cfg"):
            rest = "/pushNotificationConfigs/{cfg}"
        shape, task_id = "/tasks/{id}" + rest, match.group("id")
    table = _REST[version]
    name = table.get((http_method, shape))
    if name is None:
        raise RestMiss(tuple(sorted(m for m, s in table if s == shape)))
    return RestCall(METHODS[name], task_id)


# ------------------------------------------------------------------------------ task states

TASK_STATES: Final = frozenset(
    {
        "submitted",
        "working",
        "input-required",
        "auth-required",
        "completed",
        "canceled",
        "failed",
        "rejected",
        "unknown",
    }
)


def task_state(value: object) -> str | None:
    """A task state in one spelling (0.3 JSON-RPC's: ``input-required``, ``canceled``)
    whichever binding named it (1.0's ``TASK_STATE_INPUT_REQUIRED``, 0.3 HTTP+JSON's
    ``TASK_STATE_CANCELLED``); anything else is ``unknown``."""
    if not isinstance(value, str) or not value:
        return None
    state = value.removeprefix("TASK_STATE_").lower().replace("_", "-")
    if state == "cancelled":
        state = "canceled"
    return state if state in TASK_STATES else "unknown"


def observe(obj: object) -> tuple[str | None, str | None, str | None]:
    """The task id, context id and task state an answer (a JSON-RPC result, an HTTP+JSON body,
    one stream event) names: a task, a message, a status or artifact update, a push config,
    in either version's shape."""
    if not isinstance(obj, dict):
        return None, None, None
    inner: JsonObj = obj
    wrapper = ""
    for key in ("task", "message", "statusUpdate", "artifactUpdate"):
        value = obj.get(key)
        if isinstance(value, dict):
            inner, wrapper = value, key
            break
    status = inner.get("status")
    is_task = wrapper == "task" or inner.get("kind") == "task"
    if not wrapper and "kind" not in inner and isinstance(status, dict) and "taskId" not in inner:
        is_task = "id" in inner  # a 1.0 Task answered bare (GetTask, CancelTask)
    task_id = inner.get("taskId")
    if task_id is None and is_task:
        task_id = inner.get("id")
    context_id = inner.get("contextId")
    state = task_state(status.get("state")) if isinstance(status, dict) else None
    return _text(task_id), _text(context_id), state


def _text(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


# ----------------------------------------------------------------------------------- errors

# JSON-RPC codes (A2A's and JSON-RPC's) and HTTP+JSON reasons -> the rows' error types
RPC_ERRORS: Final = {
    -32001: "task_not_found",
    -32002: "task_not_cancelable",
    -32003: "push_notification_not_supported",
    -32004: "unsupported_operation",
    -32005: "content_type_not_supported",
    -32006: "invalid_agent_response",
    -32007: "extended_agent_card_not_configured",
    -32008: "extension_support_required",
    -32009: "version_not_supported",
    -32600: "invalid_request",
    -32601: "method_not_found",
    -32602: "invalid_params",
    -32603: "upstream_error",
    -32700: "protocol_validation_failed",
}
REASONS: Final = frozenset(RPC_ERRORS.values()) - {"upstream_error", "protocol_validation_failed"}
PARSE_ERROR: Final = -32700
INVALID_REQUEST: Final = -32600
METHOD_NOT_FOUND: Final = -32601
INTERNAL_ERROR: Final = -32603
UNSUPPORTED_OPERATION: Final = -32004


def rpc_error_type(error: object) -> str:
    """The row's error type of a JSON-RPC ``error`` an agent answered."""
    code = error.get("code") if isinstance(error, dict) else None
    found = RPC_ERRORS.get(code) if isinstance(code, int) else None
    return found or "upstream_error"


def rest_error_type(body: object, status: int) -> str:
    """The row's error type of an HTTP+JSON error answer: the A2A reason it names
    (``TASK_NOT_FOUND``), else by its status."""
    error = body.get("error") if isinstance(body, dict) else None
    details = error.get("details") if isinstance(error, dict) else None
    for detail in details if isinstance(details, list) else ():
        reason = detail.get("reason") if isinstance(detail, dict) else None
        if isinstance(reason, str) and reason.lower() in REASONS:
            return reason.lower()
    return "invalid_request" if status < 500 else "upstream_error"


def rpc_error_body(msg_id: object, code: int, message: str) -> bytes:
    """A JSON-RPC error answer of the gateway's own."""
    return orjson.dumps(
        {"jsonrpc": "2.0", "id": msg_id, "error": {"code": code, "message": message}}
    )


_GRPC_STATUS: Final = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    405: "UNIMPLEMENTED",
    409: "ABORTED",
    413: "INVALID_ARGUMENT",
    415: "INVALID_ARGUMENT",
    421: "FAILED_PRECONDITION",  # a Host this gateway does not serve
    429: "RESOURCE_EXHAUSTED",
    499: "CANCELLED",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}


def rest_error(status: int, message: str, reason: str) -> JsonObj:
    """The HTTP+JSON binding's error object (``google.rpc.Status`` as JSON, with an
    ``ErrorInfo`` naming ``reason`` in agw's domain)."""
    info = {
        "@type": "type.googleapis.com/google.rpc.ErrorInfo",
        "reason": reason.upper(),
        "domain": "agw",
    }
    return {
        "error": {
            "code": status,
            "status": _GRPC_STATUS.get(status, "INTERNAL" if status >= 500 else "UNKNOWN"),
            "message": message,
            "details": [info],
        }
    }
