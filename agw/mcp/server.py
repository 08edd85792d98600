"""The MCP server every MCP route presents: its methods, over the route's
:class:`~agw.mcp.mux.Multiplexer` and the pool's upstreams.

Each method takes the :class:`~agw.mcp.exchange.Exchange` of the POST, the request's params,
its usage row (:class:`~agw.mcp.exchange.Call`) and its in-flight entry, and returns the
result (an :class:`~agw.mcp.jsonrpc.RpcError` for an error answer). The handshake era has
``initialize``, ``ping``, ``logging/setLevel`` and the resource subscriptions; the stateless
era (2026-07-28) has ``server/discover`` instead. The route's authorization rules hold every
use of a tool, prompt or resource, filter the lists and may refuse the session requests
(agw.mcp.authorization).

A call is meant to be short: the session's multiplexer is built once per session and config,
a known tool name is found without a lock, and a ready upstream without a lock or a timer.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from agw.config.mcp import McpRoute
from agw.mcp import jsonrpc as rpc
from agw.mcp.authorization import PROMPT, RESOURCE, TOOL, check_session, check_use, list_filter
from agw.mcp.exchange import Call, Exchange, Method
from agw.mcp.inflight import InFlight
from agw.mcp.jsonrpc import RpcError
from agw.mcp.limits import admit_tool_call, settle_tool_call
from agw.mcp.mux import Multiplexer, has_policy, tool_allowed
from agw.mcp.pool import SessionBackend
from agw.mcp.protocol import (
    HANDSHAKE_VERSIONS,
    LATEST_HANDSHAKE,
    META_PREFIX,
    SERVER_INFO,
    SUPPORTED_VERSIONS,
)
from agw.mcp.relay import Relay
from agw.mcp.sessions import RELAYED
from agw.mcp.state import McpState
from agw.mcp.upstream import Upstream, UpstreamError
from agw.policy.limits import Limiter
from agw.types import JsonObj

CLIENT_INFO_FIELDS = ("name", "title", "version")
CLIENT_INFO_CHARS = 200


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


def client_info(info: Any) -> JsonObj | None:
    """What a session keeps of the client's ``clientInfo`` (shown in the admin views): its
    name, title and version, each cut to 200 characters."""
    if not isinstance(info, dict):
        return None
    return {
        k: v[:CLIENT_INFO_CHARS] for k in CLIENT_INFO_FIELDS if isinstance(v := info.get(k), str)
    }


def upstream_params(params: JsonObj, key: str = "", value: Any = None) -> JsonObj:
    """The client's params as an upstream gets them (``key`` set to ``value``, the original
    name or URI, when given): without the 2026-07-28 envelope keys (the progress token goes
    up unchanged; the transport maps its own)."""
    out = dict(params)
    if key:
        out[key] = value
    meta = out.get("_meta")
    if isinstance(meta, dict):
        meta = {k: v for k, v in meta.items() if not k.startswith(META_PREFIX)}
        if meta:
            out["_meta"] = meta
        else:
            del out["_meta"]
    return out


class McpServer:
    """The methods (see the module docstring)."""

    def __init__(self, state: McpState, relay: Relay, limiter: Limiter | None = None) -> None:
        self.state = state
        self.relay = relay
        self.limiter = limiter or Limiter()  # the gateway's limit counters (agw.mcp.limits)
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
        self.handshake_methods: dict[str, Method] = common | {"initialize": self._initialize}
        removed = ("ping", "logging/setLevel", "resources/subscribe", "resources/unsubscribe")
        self.modern_methods: dict[str, Method] = {
            k: v for k, v in common.items() if k not in removed
        }
        self.modern_methods["server/discover"] = self._discover

    def _mux(self, ex: Exchange) -> Multiplexer:
        """The route's multiplexer as the session reaches it (built once per config)."""
        session, snapshot = ex.session, ex.req.snapshot
        mux = session.mux
        if mux is None or session.mux_snapshot is not snapshot:
            route: McpRoute = ex.req.route.config
            state = self.state
            backend = SessionBackend(
                state.pool, state.registry, session, snapshot.mcp_services, route.id
            )
            names, locks = state.names(ex.req.route.id)
            mux = Multiplexer(route, backend, names, locks)
            session.mux, session.mux_snapshot = mux, snapshot
        return mux

    # ------------------------------------------------------------------------ session setup

    async def _initialize(self, ex: Exchange, params: JsonObj, call: Call, entry: InFlight) -> Any:
        session = ex.session
        if session.protocol_version:
            raise RpcError(rpc.INVALID_REQUEST, "the session is already initialized")
        check_session(ex.req, call, "initialize")
        requested = params.get("protocolVersion")
        session.protocol_version = (
            requested if requested in HANDSHAKE_VERSIONS else LATEST_HANDSHAKE
        )
        caps = params.get("capabilities")
        # kept per session for as long as it lives: only what the gateway reads, bounded
        caps = caps if isinstance(caps, dict) else {}
        session.client_capabilities = {k: {} for k in RELAYED.values() if k in caps}
        session.client_info = client_info(params.get("clientInfo"))
        capabilities, instructions = await self._merged(ex)
        out: JsonObj = {
            "protocolVersion": session.protocol_version,
            "capabilities": capabilities,
            "serverInfo": SERVER_INFO,
        }
        if instructions:
            out["instructions"] = instructions
        return out

    async def _discover(self, ex: Exchange, params: JsonObj, call: Call, entry: InFlight) -> Any:
        check_session(ex.req, call, "server/discover")
        capabilities, instructions = await self._merged(ex)
        out: JsonObj = {
            "supportedVersions": SUPPORTED_VERSIONS,
            "capabilities": capabilities,
            "serverInfo": SERVER_INFO,
        }
        if instructions:
            out["instructions"] = instructions
        return out

    async def _merged(self, ex: Exchange) -> tuple[JsonObj, str]:
        """Capabilities and instructions of the route's services (each connected now)."""
        mux = self._mux(ex)
        backend = mux.backend
        assert isinstance(backend, SessionBackend)

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

    async def _ping(self, ex: Exchange, params: JsonObj, call: Call, entry: InFlight) -> Any:
        check_session(ex.req, call, "ping")
        return {}

    async def _list(self, ex: Exchange, params: JsonObj, call: Call, entry: InFlight) -> Any:
        method = call.method
        assert method is not None
        return await self._mux(ex).list_page(
            method, params.get("cursor"), list_filter(ex.req, method)
        )

    async def _tools_call(self, ex: Exchange, params: JsonObj, call: Call, entry: InFlight) -> Any:
        name = _name(params, "name", "tools/call")
        call.tool_name = name
        args = _arguments(params, "tools/call")
        call.arg_count = len(args) if args else 0
        mux = self._mux(ex)
        route = mux.route
        if has_policy(route):
            if not tool_allowed(route, name):
                call.policy_action = "deny"
                call.error_type = "policy_denied"
                raise RpcError(rpc.INVALID_PARAMS, f'tool "{name}" is denied by route policy')
            call.policy_action = "allow"
        owner = mux.known("tools", name) or await mux.resolve("tools", name)
        if owner is None:
            raise RpcError(rpc.INVALID_PARAMS, f'unknown tool "{name}"')
        sid, original = owner
        call.service_id = sid
        check_use(ex.req, call, TOOL, name, service=sid, tool=original)
        call.executed_tool_name = original
        service = ex.req.snapshot.mcp_services.get(sid)
        if service is not None and service.audit.capture_tool_args:
            call.tool_args = args or {}
        await admit_tool_call(self.limiter, ex.req, call, sid, original)
        answered = False
        try:
            upstream = await self._upstream(ex, mux, call, sid)
            result = await self._forward(
                ex, mux, upstream, entry, call, "tools/call", params, "name", original
            )
            answered = True
        finally:  # on errors and cancellations too
            settle_tool_call(call, answered)
        if isinstance(result, dict) and result.get("isError") is True:
            call.result_status = "error"
        return mux.present_content(sid, result)

    async def _prompts_get(self, ex: Exchange, params: JsonObj, call: Call, entry: InFlight) -> Any:
        name = _name(params, "name", "prompts/get")
        call.prompt_name = name
        call.arg_count = len(_arguments(params, "prompts/get") or {})
        mux = self._mux(ex)
        owner = mux.known("prompts", name) or await mux.resolve("prompts", name)
        if owner is None:
            raise RpcError(rpc.INVALID_PARAMS, f'unknown prompt "{name}"')
        sid, original = owner
        call.service_id = sid
        check_use(ex.req, call, PROMPT, name, service=sid, prompt=original)
        upstream = await self._upstream(ex, mux, call, sid)
        result = await self._forward(
            ex, mux, upstream, entry, call, "prompts/get", params, "name", original
        )
        return mux.present_content(sid, result)

    async def _resource_call(
        self, ex: Exchange, params: JsonObj, call: Call, entry: InFlight
    ) -> Any:
        method = call.method
        assert method is not None
        uri = _name(params, "uri", method)
        call.resource_uri = uri
        mux = self._mux(ex)
        sid, original = mux.owner_of_uri(uri)
        call.service_id = sid
        check_use(ex.req, call, RESOURCE, uri, service=sid, uri=original)
        upstream = await self._upstream(ex, mux, call, sid)
        result = await self._forward(
            ex, mux, upstream, entry, call, method, params, "uri", original
        )
        return mux.present_content(sid, result)

    async def _complete(self, ex: Exchange, params: JsonObj, call: Call, entry: InFlight) -> Any:
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
        mux = self._mux(ex)
        if kind == "ref/prompt":
            name = _name(ref, "name", "completion/complete ref")
            call.prompt_name = name
            owner = await mux.resolve("prompts", name)
            if owner is None:
                raise RpcError(rpc.INVALID_PARAMS, f'unknown prompt "{name}"')
            sid, original = owner
            check_use(ex.req, call, PROMPT, name, service=sid, prompt=original)
            new_ref = {**ref, "name": original}
        elif kind == "ref/resource":
            uri = _name(ref, "uri", "completion/complete ref")
            call.resource_uri = uri
            sid, original = mux.owner_of_uri(uri)
            check_use(ex.req, call, RESOURCE, uri, service=sid, uri=original)
            new_ref = {**ref, "uri": original}
        else:
            raise RpcError(rpc.INVALID_PARAMS, f"unknown completion ref type {kind!r}")
        call.service_id = sid
        upstream = await self._upstream(ex, mux, call, sid)
        return await self._forward(
            ex, mux, upstream, entry, call, "completion/complete", params, "ref", new_ref
        )

    async def _set_level(self, ex: Exchange, params: JsonObj, call: Call, entry: InFlight) -> Any:
        check_session(ex.req, call, "logging/setLevel")
        mux = self._mux(ex)
        backend = mux.backend

        async def one(sid: str) -> None:
            try:
                if "logging" in await backend.capabilities(sid):
                    await backend.request(sid, "logging/setLevel", upstream_params(params))
            except (UpstreamError, RpcError) as exc:
                backend.failed(sid, "logging/setLevel", exc.message)

        await asyncio.gather(*(one(sid) for sid in mux.services))
        return {}

    # ---------------------------------------------------------------------- the upstream call

    @staticmethod
    async def _upstream(ex: Exchange, mux: Multiplexer, call: Call, sid: str) -> Upstream:
        """The upstream serving this session for ``sid``: the ready one at once, else
        connected now (that wait counts as the upstream's)."""
        backend = mux.backend
        assert isinstance(backend, SessionBackend)
        try:
            service = backend.service(sid)
            upstream = backend.pool.ready(ex.session, service)
            if upstream is not None:
                return upstream
            since = time.perf_counter_ns()
            try:
                return await backend.pool.upstream(ex.session, service)
            finally:
                call.waited(since)
        except UpstreamError as exc:
            call.error_type = "upstream_failed"
            raise RpcError(
                rpc.UPSTREAM_FAILED, f"mcp service {sid} failed: {exc.message}"
            ) from None

    async def _forward(
        self,
        ex: Exchange,
        mux: Multiplexer,
        upstream: Upstream,
        entry: InFlight,
        call: Call,
        method: str,
        params: JsonObj,
        key: str,
        value: Any,
    ) -> Any:
        """``method`` to the upstream, with ``params[key]`` set to ``value`` (the original name,
        URI or completion ref)."""
        on_message = self.relay.call_listener(ex, mux, upstream, entry, params)
        since = time.perf_counter_ns()
        try:
            return await upstream.request(
                method, upstream_params(params, key, value), on_message=on_message
            )
        except UpstreamError as exc:
            call.error_type = "upstream_failed"
            raise RpcError(
                rpc.UPSTREAM_FAILED, f"mcp service {upstream.service.id} failed: {exc.message}"
            ) from None
        except RpcError:
            call.error_type = "upstream_error"
            raise
        finally:
            call.waited(since)
