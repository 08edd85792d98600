"""The messages that are no request's answer: upstream -> client (progress, logging,
``list_changed``, server->client requests) and the client's notifications and answers.

Messages an upstream sends while a call runs go to that call's answer when the client takes
SSE, else to the session's standalone stream (dropped when none is open). Progress keeps the
client's own token. A server->client request (sampling, elicitation, roots) reaches the client
under a gateway id ``agw-<n>`` when the client declared the capability and a stream to it is
open; the client's answer goes back to the upstream under the upstream's id. Otherwise the
gateway answers the upstream with -32601 ``client does not support <method>`` (always so for
stateless clients: 2026-07-28 has no such requests). Outside calls: messages of a per-session
upstream go to that session's stream; of a shared stdio process only ``list_changed`` goes out,
to every session that used it.

Attribution (docs/mcp.md, "Where they go"): a message reaches a client only when it is that
client's own. Progress is matched by its token; anything else a shared stdio process sends
(logging, a server->client request) names no request, so it is delivered only while that
process has served this one tenant and nobody else (``Upstream.serves_only``; a tenant is a
virtual key, or one session without a key); otherwise it is dropped (a request: refused) and
counted. Every relay to a session spends a token of its bucket (100 a second, 200 saved up);
over it, the message is dropped and counted.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from agw.mcp import jsonrpc as rpc
from agw.mcp.exchange import Exchange
from agw.mcp.inflight import InFlight
from agw.mcp.mux import Multiplexer, namespace_uri
from agw.mcp.protocol import META_LOG_LEVEL
from agw.mcp.sessions import DownstreamSession, RelayedRequest
from agw.mcp.state import McpState
from agw.mcp.upstream import OnMessage, Upstream, UpstreamError
from agw.types import JsonObj

log = logging.getLogger(__name__)

LIST_CHANGED = {
    "notifications/tools/list_changed": "tools",
    "notifications/prompts/list_changed": "prompts",
    "notifications/resources/list_changed": "resources",
}


async def refuse(upstream: Upstream, msg: JsonObj, why: str) -> None:
    """Answer a server->client request the gateway will not relay."""
    try:
        await upstream.reply(
            msg["id"],
            error={"code": rpc.INTERNAL_ERROR, "message": f"cannot relay {msg['method']}: {why}"},
        )
    except UpstreamError as exc:
        log.warning("mcp_relay_failed", extra={"method": msg["method"], "error": exc.message})


class Relay:
    """The relay of one plane (see the module docstring)."""

    def __init__(self, state: McpState) -> None:
        self.state = state
        self.counters = state.counters

    # ------------------------------------------------------------------- upstream -> client

    def call_listener(
        self, ex: Exchange, mux: Multiplexer, upstream: Upstream, entry: InFlight, params: JsonObj
    ) -> OnMessage:
        """What ``upstream`` sends while this call runs, to this call's client."""
        sid = upstream.service.id
        counters = self.counters
        session = ex.session

        async def on_message(msg: JsonObj) -> None:
            try:
                own = msg.get("method") == "notifications/progress" or (
                    upstream.transport != "stdio" or upstream.serves_only(session.tenant)
                )
                if rpc.is_request(msg):
                    if not own:  # a shared process: whose request this is, nobody can tell
                        counters.unattributed += 1
                        await refuse(upstream, msg, "the stdio server is shared")
                        return
                    await self._relay(session, upstream, msg, ex.can_deliver(), ex.emit)
                    return
                if not rpc.is_notification(msg):
                    return
                if not own:
                    counters.unattributed += 1
                    return
                method = msg["method"]
                note = msg.get("params")
                note = note if isinstance(note, dict) else {}
                if method == "notifications/progress":
                    if entry.progress_token is None:
                        return  # the client asked for none
                    self.state.registry.record_progress(entry, note, method)
                elif method == "notifications/message" and session.modern:
                    meta = params.get("_meta")
                    if not (isinstance(meta, dict) and META_LOG_LEVEL in meta):
                        return  # a 2026-07-28 client opts in per request
                elif method in LIST_CHANGED:
                    self.state.invalidate_names(sid, LIST_CHANGED[method])
                elif method == "notifications/resources/updated" and isinstance(
                    note.get("uri"), str
                ):
                    msg = {**msg, "params": {**note, "uri": mux.present_uri(sid, note["uri"])}}
                if not ex.can_deliver():
                    counters.undeliverable += 1
                elif not session.relay_budget.take():
                    counters.rate_limited += 1
                elif await ex.emit(msg):
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
        counters = self.counters
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
                counters.rate_limited += 1
                await refuse(upstream, msg, "too many messages for the client")
                return
            gateway_id = self.state.next_relay_id()
            delivered = False
            if deliverable:
                session.add_relay(gateway_id, RelayedRequest(upstream, msg["id"], method))
                out = {**msg, "id": gateway_id}
                delivered = await emit(out) if emit is not None else session.push(out)
            if delivered:
                counters.relayed += 1
            else:
                counters.undeliverable += 1
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

    def _push(self, session: DownstreamSession, msg: JsonObj) -> None:
        """Onto a session's standalone stream, within its relay budget (counted)."""
        counters = self.counters
        if session.stream is None:
            counters.undeliverable += 1
        elif not session.relay_budget.take():
            counters.rate_limited += 1
        elif session.push(msg):
            counters.relayed += 1

    async def upstream_message(
        self, session: DownstreamSession | None, upstream: Upstream, msg: JsonObj
    ) -> None:
        """A message outside any call: of a session's own upstream (``session``), or of a shared
        stdio process or an admin session (``session`` None)."""
        state = self.state
        counters = self.counters
        sid = upstream.service.id
        shared = session is None and upstream.transport == "stdio"
        if shared and not state.outside_budget(sid).take():
            counters.rate_limited += 1  # before any search for its sessions
            if rpc.is_request(msg):
                await refuse(upstream, msg, "too many messages outside calls")
            return
        # a shared process's own messages go to its one tenant's sessions, when it has one
        owners = state.tenant_sessions(upstream) if shared else []
        if session is not None:
            owners = [session]
        if rpc.is_request(msg):
            if not owners and msg.get("method") != "ping":
                counters.unattributed += 1
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
            state.invalidate_names(sid, kind)
            if shared:  # about the server: every session that may see it
                owners = state.sessions_using(sid)
        if not owners:
            counters.unattributed += 1
            return
        params = msg.get("params")
        for owner in owners:
            out = msg
            if method == "notifications/resources/updated" and isinstance(params, dict):
                route = state.route(owner.route_id)
                uri = params.get("uri")
                if route is not None and len(route.services) > 1 and isinstance(uri, str):
                    out = {**msg, "params": {**params, "uri": namespace_uri(sid, uri)}}
            self._push(owner, out)

    # ------------------------------------------------------------------- client -> gateway

    async def notification(self, ex: Exchange, msg: JsonObj) -> None:
        method = msg["method"]
        params = msg.get("params")
        params = params if isinstance(params, dict) else {}
        session = ex.session
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

    async def response(self, ex: Exchange, msg: JsonObj) -> None:
        rid = msg.get("id")
        relay = ex.session.relays.pop(rid, None) if isinstance(rid, str) else None
        if relay is None:
            log.info("mcp_unmatched_client_response", extra={"route_id": ex.req.route.id})
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
