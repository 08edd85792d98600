"""The MCP plane: the server every MCP route presents (the methods, over the multiplexer and the
runtime's upstreams), the relay of upstream messages to clients, and one usage row per client
request.

Messages an upstream sends while a call runs (progress, logging, ``list_changed``) go to that
call's answer when the client takes SSE, else to the session's standalone stream (dropped when
none is open). Progress keeps the client's own token. A server->client request (sampling,
elicitation, roots) reaches the client under a gateway id ``agw-<n>`` when the client declared
the capability and a stream to it is open; the client's answer goes back to the upstream under
the upstream's id. Otherwise the gateway answers the upstream with -32601 ``client does not
support <method>`` (always so for stateless clients: 2026-07-28 has no such requests).
Outside calls: messages of a per-session upstream go to that session's stream; of a shared stdio
process only ``list_changed`` goes out, to every session that used it.

Attribution (docs/mcp.md, "Where they go"): a message reaches a client only when it is that
client's own. Progress is matched by its token; anything else a shared stdio process sends
(logging, a server->client request) names no request, so it is delivered only while that
process has served this one tenant and nobody else (``Upstream.serves_only``; a tenant is a
virtual key, or one session without a key); otherwise it is dropped (a request: refused) and
counted. Every relay to a session spends a token of its bucket
(100 a second, 200 saved up); over it, the message is dropped and counted.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from agw.clock import now_ms
from agw.config.mcp import McpRoute
from agw.errors import Refusal
from agw.mcp import jsonrpc as rpc
from agw.mcp.ingress import HANDSHAKE_VERSIONS, LATEST_HANDSHAKE, SUPPORTED_VERSIONS, Ingress
from agw.mcp.jsonrpc import RpcError
from agw.mcp.mux import LIST_KINDS, Multiplexer, has_policy, namespace_uri, tool_allowed
from agw.mcp.runtime import McpRuntime, SessionBackend
from agw.mcp.sessions import RELAYED, Call, Context, DownstreamSession, InFlight, Relay
from agw.mcp.upstream import CLIENT_INFO, Upstream, UpstreamError
from agw.request import Request
from agw.runtime.attribution import SessionDirectory, attribute
from agw.types import JsonObj
from agw.usage.events import McpUsageEvent
from agw.usage.recorder import UsageRecorder

log = logging.getLogger(__name__)

SERVER_INFO: JsonObj = {"name": "agw", "version": CLIENT_INFO["version"]}
SERVER_INFO_META = "io.modelcontextprotocol/serverInfo"
META_LOG_LEVEL = "io.modelcontextprotocol/logLevel"
LIST_CHANGED = {
    "notifications/tools/list_changed": "tools",
    "notifications/prompts/list_changed": "prompts",
    "notifications/resources/list_changed": "resources",
}
Method = Callable[[Context, JsonObj, Call, InFlight], Awaitable[Any]]


def _name(params: JsonObj, key: str, method: str) -> str:
    value = params.get(key)
    if not isinstance(value, str) or not value:
        raise RpcError(rpc.INVALID_PARAMS, f"{method} needs params.{key} (a string)")
    return value


def _arguments(params: JsonObj, method: str) -> JsonObj | None:
    args = params.get("arguments")
    if args is not None and not isinstance(args, dict):
        raise RpcError(rpc.INVALID_PARAMS, f"{method}: params.arguments must be an object")
    return args


CLIENT_INFO_FIELDS = ("name", "title", "version")
CLIENT_INFO_CHARS = 200


def client_info(info: Any) -> JsonObj | None:
    """What a session keeps of the client's ``clientInfo`` (shown in the admin views): its
    name, title and version, each cut to 200 characters."""
    if not isinstance(info, dict):
        return None
    return {
        k: v[:CLIENT_INFO_CHARS] for k in CLIENT_INFO_FIELDS if isinstance(v := info.get(k), str)
    }


def upstream_params(params: JsonObj) -> JsonObj:
    """The client's params as an upstream gets them: without the 2026-07-28 envelope keys (the
    progress token goes up unchanged; the transport maps its own)."""
    out = dict(params)
    meta = out.get("_meta")
    if isinstance(meta, dict):
        meta = {k: v for k, v in meta.items() if not k.startswith("io.modelcontextprotocol/")}
        if meta:
            out["_meta"] = meta
        else:
            del out["_meta"]
    return out


class McpServer:
    """The methods (ingress :class:`~agw.mcp.ingress.Handler`)."""

    def __init__(
        self,
        runtime: McpRuntime,
        recorder: UsageRecorder | None,
        directory: SessionDirectory | None = None,
    ) -> None:
        self.runtime = runtime
        self.recorder = recorder
        self.directory = directory  # ACP sessions, for attribution (agw/runtime/attribution.py)
        common: dict[str, Method] = {
            "ping": self._ping,
            "tools/list": self._list,
            "prompts/list": self._list,
            "resources/list": self._list,
            "resources/templates/list": self._list,
            "tools/call": self._tools_call,
            "prompts/get": self._prompts_get,
            "resources/read": self._resource_call,
            "resources/subscribe": self._resource_call,
            "resources/unsubscribe": self._resource_call,
            "completion/complete": self._complete,
            "logging/setLevel": self._set_level,
        }
        self._handshake = common | {"initialize": self._initialize}
        removed = ("ping", "logging/setLevel", "resources/subscribe", "resources/unsubscribe")
        self._modern = {k: v for k, v in common.items() if k not in removed}
        self._modern["server/discover"] = self._discover
        self.modern_methods = frozenset(self._modern)

    # -------------------------------------------------------------------------------- entry

    async def request(self, ctx: Context, msg: JsonObj, call: Call, entry: InFlight) -> JsonObj:
        method = msg["method"]
        params = msg.get("params") or {}
        modern = ctx.session.era == "modern"
        try:
            fn = (self._modern if modern else self._handshake).get(method)
            if fn is None:
                raise RpcError(rpc.METHOD_NOT_FOUND, f"Method not found: {method}")
            result = await fn(ctx, params, call, entry)
            if modern:
                result = self._modern_result(method, result)
            return rpc.result(msg["id"], result)
        except RpcError as exc:
            call.fail(exc)
            return rpc.error(msg["id"], exc)
        except Exception:
            log.exception("mcp_request_failed", extra={"route_id": ctx.req.route.id})
            internal = RpcError(rpc.INTERNAL_ERROR, "internal gateway error")
            call.fail(internal, "internal_error")
            return rpc.error(msg["id"], internal)

    @staticmethod
    def _modern_result(method: str, result: Any) -> Any:
        if not isinstance(result, dict):
            return result
        out = dict(result)
        out.setdefault("resultType", "complete")
        if method in LIST_KINDS or method == "server/discover":
            out.setdefault("ttlMs", 0)
            out.setdefault("cacheScope", "private")
        meta = out.get("_meta")
        out["_meta"] = {**(meta if isinstance(meta, dict) else {}), SERVER_INFO_META: SERVER_INFO}
        return out

    def _mux(self, ctx: Context) -> tuple[Multiplexer, SessionBackend]:
        route: McpRoute = ctx.req.route.config
        backend = self.runtime.backend(ctx.session, ctx.req.snapshot.mcp_services, route.id)
        names, locks = self.runtime.names(ctx.req.route.id)
        return Multiplexer(route, backend, names, locks), backend

    # ------------------------------------------------------------------------ session setup

    async def _initialize(self, ctx: Context, params: JsonObj, call: Call, entry: InFlight) -> Any:
        session = ctx.session
        if session.protocol_version:
            raise RpcError(rpc.INVALID_REQUEST, "the session is already initialized")
        requested = params.get("protocolVersion")
        session.protocol_version = (
            requested if requested in HANDSHAKE_VERSIONS else LATEST_HANDSHAKE
        )
        caps = params.get("capabilities")
        # kept per session for as long as it lives: only what the gateway reads, bounded
        caps = caps if isinstance(caps, dict) else {}
        session.client_capabilities = {k: {} for k in RELAYED.values() if k in caps}
        session.client_info = client_info(params.get("clientInfo"))
        capabilities, instructions = await self._merged(ctx, call)
        out: JsonObj = {
            "protocolVersion": session.protocol_version,
            "capabilities": capabilities,
            "serverInfo": SERVER_INFO,
        }
        if instructions:
            out["instructions"] = instructions
        return out

    async def _discover(self, ctx: Context, params: JsonObj, call: Call, entry: InFlight) -> Any:
        capabilities, instructions = await self._merged(ctx, call)
        out: JsonObj = {
            "supportedVersions": SUPPORTED_VERSIONS,
            "capabilities": capabilities,
            "serverInfo": SERVER_INFO,
        }
        if instructions:
            out["instructions"] = instructions
        return out

    async def _merged(self, ctx: Context, call: Call) -> tuple[JsonObj, str]:
        """Capabilities and instructions of the route's services (each connected now)."""
        mux, backend = self._mux(ctx)

        async def connect(sid: str) -> JsonObj | Exception:
            try:
                upstream = await backend.get(sid)
            except (UpstreamError, RpcError) as exc:
                return exc
            return upstream.init_result or {}

        results = await asyncio.gather(*(connect(sid) for sid in mux.services))
        caps: JsonObj = {}
        texts: list[tuple[str, str]] = []
        ready = 0
        for sid, res in zip(mux.services, results, strict=True):
            if isinstance(res, Exception):  # skipped even on fail_closed routes: the session
                # still serves the other services, and the lists fail closed later
                backend.failed(sid, "initialize", getattr(res, "message", str(res)))
                continue
            ready += 1
            theirs = res.get("capabilities")
            theirs = theirs if isinstance(theirs, dict) else {}
            for name in ("tools", "prompts"):
                if name in theirs:
                    caps[name] = {"listChanged": True}
            if "resources" in theirs:
                resources = caps.setdefault("resources", {"listChanged": True})
                sub = theirs["resources"]
                if isinstance(sub, dict) and sub.get("subscribe"):
                    resources["subscribe"] = True
            for name in ("logging", "completions"):
                if name in theirs:
                    caps[name] = {}
            text = res.get("instructions")
            if isinstance(text, str) and text.strip():
                texts.append((sid, text.strip()))
        if not ready:  # none answered now: announce the lists, they may come back
            caps = {k: {"listChanged": True} for k in ("tools", "prompts", "resources")}
        if len(mux.services) == 1:
            return caps, texts[0][1] if texts else ""
        return caps, "\n\n".join(f"{sid}: {text}" for sid, text in texts)

    # ------------------------------------------------------------------------------ methods

    async def _ping(self, ctx: Context, params: JsonObj, call: Call, entry: InFlight) -> Any:
        return {}

    async def _list(self, ctx: Context, params: JsonObj, call: Call, entry: InFlight) -> Any:
        assert call.method is not None
        mux, _ = self._mux(ctx)
        return await mux.list_page(call.method, params.get("cursor"))

    async def _tools_call(self, ctx: Context, params: JsonObj, call: Call, entry: InFlight) -> Any:
        name = _name(params, "name", "tools/call")
        call.tool_name = name
        args = _arguments(params, "tools/call")
        call.arg_count = len(args or {})
        mux, backend = self._mux(ctx)
        if has_policy(mux.route):
            if not tool_allowed(mux.route, name):
                call.policy_action = "deny"
                call.error_type = "policy_denied"
                raise RpcError(rpc.INVALID_PARAMS, f'tool "{name}" is denied by route policy')
            call.policy_action = "allow"
        owner = await mux.resolve("tools", name)
        if owner is None:
            raise RpcError(rpc.INVALID_PARAMS, f'unknown tool "{name}"')
        sid, original = owner
        call.service_id, call.executed_tool_name = sid, original
        service = ctx.req.snapshot.mcp_services.get(sid)
        if service is not None and service.audit.capture_tool_args:
            call.tool_args = args or {}
        result = await self._forward(
            ctx, mux, backend, entry, call, sid, "tools/call", {**params, "name": original}
        )
        if isinstance(result, dict) and result.get("isError") is True:
            call.result_status = "error"
        return mux.present_content(sid, result)

    async def _prompts_get(self, ctx: Context, params: JsonObj, call: Call, entry: InFlight) -> Any:
        name = _name(params, "name", "prompts/get")
        call.prompt_name = name
        call.arg_count = len(_arguments(params, "prompts/get") or {})
        mux, backend = self._mux(ctx)
        owner = await mux.resolve("prompts", name)
        if owner is None:
            raise RpcError(rpc.INVALID_PARAMS, f'unknown prompt "{name}"')
        sid, original = owner
        call.service_id = sid
        result = await self._forward(
            ctx, mux, backend, entry, call, sid, "prompts/get", {**params, "name": original}
        )
        return mux.present_content(sid, result)

    async def _resource_call(
        self, ctx: Context, params: JsonObj, call: Call, entry: InFlight
    ) -> Any:
        assert call.method is not None
        uri = _name(params, "uri", call.method)
        call.resource_uri = uri
        mux, backend = self._mux(ctx)
        sid, original = mux.owner_of_uri(uri)
        call.service_id = sid
        result = await self._forward(
            ctx, mux, backend, entry, call, sid, call.method, {**params, "uri": original}
        )
        return mux.present_content(sid, result)

    async def _complete(self, ctx: Context, params: JsonObj, call: Call, entry: InFlight) -> Any:
        ref = params.get("ref")
        argument = params.get("argument")
        if not isinstance(ref, dict) or not isinstance(argument, dict):
            raise RpcError(
                rpc.INVALID_PARAMS, "completion/complete needs params.ref and params.argument"
            )
        kind = ref.get("type")
        call.completion_ref_type = kind if isinstance(kind, str) else None
        arg_name = argument.get("name")
        call.completion_argument = arg_name if isinstance(arg_name, str) else None
        mux, backend = self._mux(ctx)
        if kind == "ref/prompt":
            name = _name(ref, "name", "completion/complete ref")
            call.prompt_name = name
            owner = await mux.resolve("prompts", name)
            if owner is None:
                raise RpcError(rpc.INVALID_PARAMS, f'unknown prompt "{name}"')
            sid, original = owner
            new_ref = {**ref, "name": original}
        elif kind == "ref/resource":
            uri = _name(ref, "uri", "completion/complete ref")
            call.resource_uri = uri
            sid, original = mux.owner_of_uri(uri)
            new_ref = {**ref, "uri": original}
        else:
            raise RpcError(rpc.INVALID_PARAMS, f"unknown completion ref type {kind!r}")
        call.service_id = sid
        return await self._forward(
            ctx, mux, backend, entry, call, sid, "completion/complete", {**params, "ref": new_ref}
        )

    async def _set_level(self, ctx: Context, params: JsonObj, call: Call, entry: InFlight) -> Any:
        mux, backend = self._mux(ctx)

        async def one(sid: str) -> None:
            try:
                if "logging" in await backend.capabilities(sid):
                    await backend.request(sid, "logging/setLevel", upstream_params(params))
            except (UpstreamError, RpcError) as exc:
                backend.failed(sid, "logging/setLevel", exc.message)

        await asyncio.gather(*(one(sid) for sid in mux.services))
        return {}

    # ---------------------------------------------------------------------- the upstream call

    async def _forward(
        self,
        ctx: Context,
        mux: Multiplexer,
        backend: SessionBackend,
        entry: InFlight,
        call: Call,
        sid: str,
        method: str,
        params: JsonObj,
    ) -> Any:
        since = time.perf_counter_ns()
        try:
            upstream = await backend.get(sid)
        except UpstreamError as exc:
            call.error_type = "upstream_failed"
            raise RpcError(
                rpc.UPSTREAM_FAILED, f"mcp service {sid} failed: {exc.message}"
            ) from None
        finally:
            call.waited(since)
        meta = params.get("_meta")
        logs = ctx.session.era != "modern" or (isinstance(meta, dict) and META_LOG_LEVEL in meta)
        on_message = self._call_listener(ctx, mux, upstream, entry, logs)
        since = time.perf_counter_ns()
        try:
            return await upstream.request(method, upstream_params(params), on_message=on_message)
        except UpstreamError as exc:
            call.error_type = "upstream_failed"
            raise RpcError(
                rpc.UPSTREAM_FAILED, f"mcp service {sid} failed: {exc.message}"
            ) from None
        except RpcError:
            call.error_type = "upstream_error"
            raise
        finally:
            call.waited(since)

    def _call_listener(
        self, ctx: Context, mux: Multiplexer, upstream: Upstream, entry: InFlight, logs: bool
    ) -> Callable[[JsonObj], Awaitable[None]]:
        sid = upstream.service.id
        counters = self.runtime.counters

        async def on_message(msg: JsonObj) -> None:
            try:
                own = msg.get("method") == "notifications/progress" or (
                    upstream.transport != "stdio" or upstream.serves_only(ctx.session.tenant)
                )
                if rpc.is_request(msg):
                    if not own:  # a shared process: whose request this is, nobody can tell
                        counters.unattributed += 1
                        await self._refuse(upstream, msg, "the stdio server is shared")
                        return
                    await self._relay(
                        ctx.session, upstream, msg, ctx.exchange.can_deliver(), ctx.exchange.emit
                    )
                    return
                if not rpc.is_notification(msg):
                    return
                if not own:
                    counters.unattributed += 1
                    return
                method = msg["method"]
                params = msg.get("params")
                params = params if isinstance(params, dict) else {}
                if method == "notifications/progress":
                    if entry.progress_token is None:
                        return  # the client asked for none
                    self.runtime.registry.record_progress(entry, params, method)
                elif method == "notifications/message" and not logs:
                    return  # a 2026-07-28 client opts in per request
                elif method in LIST_CHANGED:
                    self.runtime.invalidate_names(sid, LIST_CHANGED[method])
                elif method == "notifications/resources/updated" and isinstance(
                    params.get("uri"), str
                ):
                    msg = {**msg, "params": {**params, "uri": mux.present_uri(sid, params["uri"])}}
                if not ctx.exchange.can_deliver():
                    counters.undeliverable += 1
                elif not ctx.session.relay_budget.take():
                    counters.rate_limited += 1
                elif await ctx.exchange.emit(msg):
                    counters.relayed += 1
                else:
                    counters.undeliverable += 1
            except Exception:
                log.exception("mcp_upstream_message_failed", extra={"service_id": sid})

        return on_message

    async def _relay(
        self,
        session: DownstreamSession | None,
        upstream: Upstream,
        msg: JsonObj,
        deliverable: bool,
        emit: Callable[[JsonObj], Awaitable[bool]] | None,
    ) -> None:
        """A server->client request: to the client, or answered here with an error."""
        method = msg["method"]
        try:
            if method == "ping":
                await upstream.reply(msg["id"], result={})
                return
            if session is None or not session.supports(method):
                await upstream.reply(
                    msg["id"],
                    error={
                        "code": rpc.METHOD_NOT_FOUND,
                        "message": f"client does not support {method}",
                    },
                )
                return
            if deliverable and not session.relay_budget.take():
                self.runtime.counters.rate_limited += 1
                await self._refuse(upstream, msg, "too many messages for the client")
                return
            gateway_id = self.runtime.next_relay_id()
            delivered = False
            if deliverable:
                session.add_relay(gateway_id, Relay(upstream, msg["id"], method))
                out = {**msg, "id": gateway_id}
                delivered = await emit(out) if emit is not None else session.push(out)
            if delivered:
                self.runtime.counters.relayed += 1
            else:
                self.runtime.counters.undeliverable += 1
                session.relays.pop(gateway_id, None)
                await upstream.reply(
                    msg["id"],
                    error={
                        "code": rpc.INTERNAL_ERROR,
                        "message": f"no stream to the client is open to relay {method}",
                    },
                )
        except UpstreamError as exc:
            log.warning("mcp_relay_failed", extra={"method": method, "error": exc.message})

    @staticmethod
    async def _refuse(upstream: Upstream, msg: JsonObj, why: str) -> None:
        """Answer a server->client request the gateway will not relay."""
        try:
            await upstream.reply(
                msg["id"],
                error={
                    "code": rpc.INTERNAL_ERROR,
                    "message": f"cannot relay {msg['method']}: {why}",
                },
            )
        except UpstreamError as exc:
            log.warning("mcp_relay_failed", extra={"method": msg["method"], "error": exc.message})

    def _push(self, session: DownstreamSession, msg: JsonObj) -> None:
        """Onto a session's standalone stream, within its relay budget (counted)."""
        counters = self.runtime.counters
        if session.stream is None:
            counters.undeliverable += 1
        elif not session.relay_budget.take():
            counters.rate_limited += 1
        elif session.push(msg):
            counters.relayed += 1

    # ------------------------------------------------------------------- client -> gateway

    async def notification(self, ctx: Context, msg: JsonObj) -> None:
        method = msg["method"]
        params = msg.get("params")
        params = params if isinstance(params, dict) else {}
        session = ctx.session
        if method == "notifications/cancelled":
            rid = params.get("requestId")
            entry = session.inflight.get(str(rid)) if rpc.valid_id(rid) else None
            if entry is not None:
                reason = params.get("reason")
                entry.cancel(
                    "client cancelled" + (f": {reason}" if isinstance(reason, str) else "")
                )
        elif method == "notifications/roots/list_changed":
            await asyncio.gather(
                *(u.notify(method) for u in list(session.upstreams.values())),
                return_exceptions=True,
            )

    async def response(self, ctx: Context, msg: JsonObj) -> None:
        rid = msg.get("id")
        relay = ctx.session.relays.pop(rid, None) if isinstance(rid, str) else None
        if relay is None:
            log.info("mcp_unmatched_client_response", extra={"route_id": ctx.req.route.id})
            return
        error = msg.get("error")
        try:
            await relay.upstream.reply(
                relay.upstream_id,
                result=msg.get("result") if error is None else None,
                error=error if isinstance(error, dict) else None,
            )
        except UpstreamError as exc:
            log.warning("mcp_relay_failed", extra={"method": relay.method, "error": exc.message})

    # ---------------------------------------------------------- upstream -> gateway, no call

    async def upstream_message(
        self, session: DownstreamSession | None, upstream: Upstream, msg: JsonObj
    ) -> None:
        """A message outside any call: of a session's own upstream (``session``), or of a shared
        stdio process or an admin session (``session`` None)."""
        sid = upstream.service.id
        shared = session is None and upstream.transport == "stdio"
        if shared and not self.runtime.outside_budget(sid).take():
            self.runtime.counters.rate_limited += 1  # before any search for its sessions
            if rpc.is_request(msg):
                await self._refuse(upstream, msg, "too many messages outside calls")
            return
        # a shared process's own messages go to its one tenant's sessions, when it has one
        owners = self.runtime.tenant_sessions(upstream) if shared else []
        if session is not None:
            owners = [session]
        if rpc.is_request(msg):
            if not owners and msg.get("method") != "ping":
                self.runtime.counters.unattributed += 1
            streaming = [s for s in owners if s.stream is not None]
            target = max(streaming or owners, key=lambda s: s.last_used_at_ms, default=None)
            deliverable = target is not None and target.stream is not None
            await self._relay(target, upstream, msg, deliverable, None)
            return
        if not rpc.is_notification(msg):
            return
        method = msg["method"]
        kind = LIST_CHANGED.get(method)
        if kind is not None:
            self.runtime.invalidate_names(sid, kind)
            if shared:  # about the server: every session that may see it
                owners = self.runtime.sessions_using(sid)
        if not owners:
            self.runtime.counters.unattributed += 1
            return
        params = msg.get("params")
        for owner in owners:
            out = msg
            if method == "notifications/resources/updated" and isinstance(params, dict):
                route = self._route(owner.route_id)
                uri = params.get("uri")
                if route is not None and len(route.services) > 1 and isinstance(uri, str):
                    out = {**msg, "params": {**params, "uri": namespace_uri(sid, uri)}}
            self._push(owner, out)

    def _route(self, route_id: str) -> McpRoute | None:
        manager = self.runtime.manager
        if manager is None:
            return None
        for route in manager.snapshot.routes:
            if route.id == route_id and route.kind == "mcp":
                config: McpRoute = route.config
                return config
        return None

    # -------------------------------------------------------------------------------- usage

    def record(self, req: Request, call: Call) -> None:
        if self.recorder is None:
            return
        status = call.status_code or req.status or 500
        session_id, acp_session_id = attribute(req.headers, self.directory)
        self.recorder.emit(
            McpUsageEvent(
                trace_id=req.trace.trace_id,
                span_id=req.trace.span_id,
                parent_span_id=req.trace.parent_span_id,
                agent_depth=req.trace.depth,
                started_at=call.started_ms,
                finished_at=now_ms(),
                route_id=req.route.id,
                route_protocol=req.route.protocol,
                virtual_key_id=req.virtual_key_id,
                success=status < 400 and call.error_type is None,
                status_code=status,
                error_type=call.error_type,
                request_id=call.request_id,
                service_id=call.service_id,
                method=call.method,
                tool_name=call.tool_name,
                presented_tool_name=call.tool_name,
                executed_tool_name=call.executed_tool_name,
                policy_action=call.policy_action,
                resource_uri=call.resource_uri,
                prompt_name=call.prompt_name,
                completion_ref_type=call.completion_ref_type,
                completion_argument=call.completion_argument,
                arg_count=call.arg_count,
                result_status=call.result_status or ("error" if call.error_type else "success"),
                cancelled=call.cancelled,
                tool_args_json=call.tool_args,
                mcp_session_id=call.session,
                session_id=session_id or call.agent_session,
                acp_session_id=acp_session_id,
                agent_id=req.route.agent_id,
                http_method=req.method,
                http_path=req.scope["path"],
                overhead_ms=call.overhead_ms(),
            )
        )


class McpPlane:
    """The data plane's handler of ``mcp`` routes."""

    edge_always = True  # a browser may hold an MCP session

    def __init__(
        self,
        recorder: UsageRecorder | None,
        runtime: McpRuntime,
        directory: SessionDirectory | None = None,
    ) -> None:
        self.runtime = runtime
        self.server = McpServer(runtime, recorder, directory)
        self.ingress = Ingress(runtime, self.server)
        runtime.bind(self.server.upstream_message)

    async def handle(self, req: Request, rejection: Refusal | None) -> None:
        await self.ingress.handle(req, rejection)

    async def close(self) -> None:
        await self.runtime.close()
