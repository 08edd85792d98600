"""The operations of an ACP route, one per path under its prefix, and what they share: the
checks of a request, its refusals (:func:`refuse`) and its JSON answers.

| path | method | answer |
|---|---|---|
| ``/turn`` | POST | a turn on a pooled agent, as SSE (:mod:`agw.acp.turn`) |
| ``/permission`` | POST | the decision of a pending interactive permission request |
| ``/sessions`` | GET | the agent's sessions (``?cwd=&cursor=``), from a transient process |
| ``/sessions/{id}/transcript`` | GET | a session's messages (``?cwd=``), from a transient process |
| ``/acp`` | POST, GET, DELETE | the ACP Streamable HTTP transport (:mod:`agw.acp.http_transport`) |

A turn: pre-stream checks (400 ``decode request: ...``, ``thread_id is required``, ``input is
required``), then always 200 SSE (:class:`~agw.acp.turn.TurnStream`). A ``POST`` without
``Content-Type: application/json``: 415 (:func:`require_json`); bodies over 4 MiB: 413.

Sessions, threads and permission requests belong to the route and principal of the request
that opened them (:func:`owner_of`): another caller's ``session_id`` or permission request id
gets the answer of an unknown one (docs/acp.md#who-a-session-belongs-to).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from urllib.parse import parse_qs, unquote

from agw.acp.connection import AcpError
from agw.acp.events import Event
from agw.acp.history import list_sessions, load_transcript
from agw.acp.limits import admit_prompt, settle_prompt
from agw.acp.permissions import PermissionRegistry
from agw.acp.pool import TurnRequest, owner_key, principal_of
from agw.acp.record import (
    CLIENT_ERROR,
    INVALID,
    PERMISSION_NOT_FOUND,
    SERVICE_NOT_FOUND,
    Op,
    error_type_of,
)
from agw.acp.replica import Replica
from agw.acp.runtime import AcpRuntime
from agw.acp.turn import SEND_STALL_S, TurnStream
from agw.config.acp import AcpService
from agw.errors import InvalidRequest, Refusal
from agw.jsonfast import loads
from agw.policy.limits import Limiter
from agw.request import Request
from agw.types import Headers, JsonObj

BODY_LIMIT = 4 * 1024 * 1024
NOT_JSON = "Content-Type must be application/json"
MAX_ID = 1024  # characters of a client's thread_id, session_id or permission request_id
NOT_FOUND_PERMISSION = "permission request not found (already answered or expired)"
SSE_HEADERS: Headers = [
    (b"content-type", b"text/event-stream"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]


def refuse(status: int, message: str, code: str = INVALID) -> Refusal:
    """A request an ACP route refuses before any streaming; ``code`` is its row's error type."""
    return Refusal(status, code, message)


def operation_of(path: str) -> str | None:
    if path == "/turn":
        return "turn"
    if path == "/permission":
        return "permission"
    if path == "/sessions":
        return "sessions"
    if path.startswith("/sessions/") and path.endswith("/transcript"):
        return "transcript"
    if path == "/acp":
        return "acp"  # the HTTP transport names the operation of each request
    return None


def transcript_session_id(req: Request) -> str | None:
    """The ``{session_id}`` of ``/sessions/{session_id}/transcript``: one raw path segment,
    URL-unescaped (so an id may hold an escaped ``/``); None when the path is not that."""
    path = req.path
    if not (path.startswith("/sessions/") and path.endswith("/transcript")):
        return None
    raw = req.scope.get("raw_path")
    if isinstance(raw, bytes | bytearray) and raw:
        segments = bytes(raw).split(b"?", 1)[0].decode("latin-1").split("/")
        if len(segments) >= 3 and segments[-1] == "transcript" and segments[-3] == "sessions":
            return unquote(segments[-2])
        return None
    middle = path[len("/sessions/") : -len("/transcript")]
    return None if "/" in middle else middle


def require_json(req: Request) -> None:
    """415 unless the request says ``Content-Type: application/json``: a browser cannot send
    that cross-site without a CORS preflight (a ``text/plain`` form post can)."""
    if req.media_type != "application/json":
        raise refuse(415, NOT_JSON)


def owner_of(req: Request) -> str:
    """The owner of what a request opens: its route and principal (:func:`principal_of`)."""
    return owner_key(req.route.id, principal_of(req.owner_id))


def check_id(key: str, value: str) -> None:
    """An id a client sends: bounded, and without NUL (the scope's separator)."""
    if len(value) > MAX_ID or "\x00" in value:
        raise refuse(400, f"decode request: {key} must be at most {MAX_ID} characters, no NUL")


def string_field(obj: JsonObj, key: str) -> str:
    value = obj.get(key)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise refuse(400, f"decode request: {key} must be a string")
    return value


def parse_turn(body: bytes, op: Op | None = None) -> TurnRequest:
    """The request of a turn; ``op`` gets its thread, session and ``fresh_session`` as soon as
    they are read (a refused request's row still says which thread it was for)."""
    try:
        obj = loads(body)
    except (ValueError, RecursionError) as exc:
        raise refuse(400, f"decode request: {exc}") from None
    if not isinstance(obj, dict):
        raise refuse(400, "decode request: the body must be a JSON object")
    if op is not None:
        for key in ("thread_id", "session_id"):
            if isinstance(obj.get(key), str) and obj[key]:
                setattr(op, key, obj[key][:MAX_ID])
        if isinstance(obj.get("fresh_session"), bool):
            op.fresh_session = obj["fresh_session"]
    fields = {k: string_field(obj, k) for k in ("thread_id", "input", "session_id", "cwd", "model")}
    for key in ("thread_id", "session_id"):
        check_id(key, fields[key])
    fresh = obj.get("fresh_session", False)
    if fresh is None:
        fresh = False
    if not isinstance(fresh, bool):
        raise refuse(400, "decode request: fresh_session must be a boolean")
    overrides = obj.get("config_overrides") or {}
    if not isinstance(overrides, dict) or not all(isinstance(v, str) for v in overrides.values()):
        raise refuse(400, "decode request: config_overrides must be an object of strings")
    if not fields["thread_id"].strip():
        raise refuse(400, "thread_id is required")
    if not fields["input"].strip():
        raise refuse(400, "input is required")
    return TurnRequest(
        thread_id=fields["thread_id"],
        input=fields["input"],
        session_id=fields["session_id"],
        cwd=fields["cwd"],
        model=fields["model"],
        fresh_session=fresh,
        config_overrides=dict(overrides),
    )


def sse_headers(req: Request) -> Headers:
    """The headers of a turn's stream."""
    headers = list(SSE_HEADERS)
    if req.scope.get("http_version") in ("1.0", "1.1"):  # a connection header is an h2 error
        headers.append((b"connection", b"keep-alive"))
    return headers


def query_args(req: Request) -> dict[str, str]:
    return {k: v[-1] for k, v in parse_qs(req.query, keep_blank_values=True).items()}


async def json_reply(
    req: Request, status: int, body: JsonObj, headers: Headers | None = None
) -> None:
    await req.respond(status, json.dumps(body).encode(), headers=headers)


class Operations:
    """``/turn``, ``/permission``, ``/sessions`` and ``/sessions/{id}/transcript`` of every ACP
    route (module docstring); each fills the request's :class:`~agw.acp.record.Op`."""

    def __init__(
        self,
        runtime: AcpRuntime,
        permissions: PermissionRegistry,
        limiter: Limiter | None = None,
        replica: Replica | None = None,
    ) -> None:
        self.runtime = runtime
        self.permissions = permissions
        self.limiter = limiter or Limiter()  # the gateway's limit counters (agw.acp.limits)
        self.replica = replica or Replica("agw", tagged=False)  # whose ids (agw.acp.replica)

    @staticmethod
    def method(req: Request, method: str) -> None:
        if req.method != method:
            raise refuse(405, "method not allowed")

    @staticmethod
    def service(req: Request, op: Op) -> AcpService:
        service_id: str = req.route.config.service_id
        op.service_id = service_id
        service: AcpService | None = req.snapshot.acp_services.get(service_id)
        if service is None:
            raise refuse(404, f'acp service "{service_id}" not found', SERVICE_NOT_FOUND)
        op.agent_type = service.agent_type
        return service

    # ----------------------------------------------------------------------------- /turn

    async def turn(self, req: Request, op: Op) -> None:
        self.method(req, "POST")
        require_json(req)
        body = await req.read_body(BODY_LIMIT)
        turn = parse_turn(body, op)
        turn.session_id = self.replica.local(turn.session_id, "acp session")
        turn.route_id = req.route.id
        turn.principal = principal_of(req.owner_id)
        op.fresh_session = turn.fresh_session
        service_id: str = req.route.config.service_id
        op.service_id = service_id
        service: AcpService | None = req.snapshot.acp_services.get(service_id)
        await admit_prompt(self.limiter, req, turn.session_id or None)  # a 429 refuses it here
        try:
            await self._stream(req, op, turn, service_id, service)
        finally:
            settle_prompt(req)

    async def _stream(
        self,
        req: Request,
        op: Op,
        turn: TurnRequest,
        service_id: str,
        service: AcpService | None,
    ) -> None:
        await req.start(200, sse_headers(req))
        op.status = 200
        if service is None:
            message = f'acp service "{service_id}" not found'
            await req.body(Event("error", {"message": message}).frame(), True)
            op.fail(SERVICE_NOT_FOUND)
            op.event_counts = {"error": 1}
        else:
            op.agent_type = service.agent_type
            runner = TurnStream(self.runtime, self.permissions, req, op, service, owner_of(req))
            runner.label = self.replica.tag
            await runner.run(turn)
            if runner.stalled:
                return  # the stream is left unfinished: the server drops the connection
        with contextlib.suppress(Exception):
            async with asyncio.timeout(SEND_STALL_S):
                await req.body(b"", False)

    # ----------------------------------------------------------------------- /permission

    async def permission(self, req: Request, op: Op) -> None:
        self.method(req, "POST")
        require_json(req)
        body = await req.read_body(BODY_LIMIT)
        try:
            obj = loads(body)
        except (ValueError, RecursionError) as exc:
            raise refuse(400, f"decode request: {exc}") from None
        if not isinstance(obj, dict):
            raise refuse(400, "decode request: the body must be a JSON object")
        fields = {k: string_field(obj, k) for k in ("request_id", "outcome", "option_id")}
        request_id = fields["request_id"].strip()
        op.permission_request_id = request_id[:MAX_ID] or None
        check_id("request_id", request_id)
        self.replica.local(request_id, "acp permission request")  # 421: another replica's
        service_id: str = req.route.config.service_id
        op.service_id = service_id
        service = req.snapshot.acp_services.get(service_id)
        op.agent_type = service.agent_type if service is not None else None
        if not request_id:
            raise refuse(400, "request_id is required")
        owner = owner_of(req)
        entry = self.permissions.get(request_id)
        if entry is not None and entry.service_id == service_id and entry.principal == owner:
            op.session_id = entry.session_id or None
        try:
            ok = self.permissions.resolve(
                request_id,
                fields["outcome"],
                fields["option_id"] or None,
                service_id=service_id,
                principal=owner,
            )
        except InvalidRequest as exc:
            raise refuse(400, exc.message) from None
        if not ok:
            raise refuse(404, NOT_FOUND_PERMISSION, PERMISSION_NOT_FOUND)
        op.result_status = "success"
        op.status = 200
        await json_reply(req, 200, {"status": "resolved"})

    # ------------------------------------------------------------------------- /sessions

    def _transient_service(self, req: Request, op: Op) -> tuple[AcpService, str]:
        service = self.service(req, op)
        if service.disabled:
            raise refuse(400, f'acp service "{service.id}" is disabled', CLIENT_ERROR)
        try:
            cwd = self.runtime.resolve_cwd(service, query_args(req).get("cwd", ""))
        except AcpError as exc:
            raise refuse(exc.status, exc.message, error_type_of(exc)) from None
        return service, cwd

    async def sessions(self, req: Request, op: Op) -> None:
        self.method(req, "GET")
        service, cwd = self._transient_service(req, op)
        try:
            out = await list_sessions(self.runtime, service, cwd, query_args(req).get("cursor", ""))
        except AcpError as exc:
            raise refuse(exc.status, exc.message, error_type_of(exc)) from None
        owner = owner_of(req)  # only the sessions this caller opened on this route
        out["sessions"] = [s for s in out["sessions"] if self.runtime.owns(owner, s["session_id"])]
        for entry in out["sessions"]:
            entry["session_id"] = self.replica.tag(entry["session_id"])
        op.result_status = "success"
        op.status = 200
        await json_reply(req, 200, out)

    async def transcript(self, req: Request, op: Op) -> None:
        session_id = transcript_session_id(req)
        if session_id is None:
            op.operation = None
            raise refuse(404, f"not found: {req.path}")
        self.method(req, "GET")
        op.session_id = session_id[:MAX_ID] or None
        if not session_id.strip():
            self.service(req, op)
            raise refuse(400, "session id is required", CLIENT_ERROR)
        session_id = self.replica.local(session_id, "acp session")
        service, cwd = self._transient_service(req, op)
        try:
            self.runtime.check_owner(owner_of(req), session_id)
            out = await load_transcript(self.runtime, service, session_id, cwd)
        except AcpError as exc:
            raise refuse(exc.status, exc.message, error_type_of(exc)) from None
        op.result_status = "success"
        op.status = 200
        await json_reply(req, 200, out)
