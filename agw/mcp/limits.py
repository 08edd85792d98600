"""Limits on MCP routes (docs/limits.md, "Limits on MCP and ACP"): each ``tools/call`` is admitted
against the limits that apply to it, as an LLM call is (agw.policy.limits).

- **What counts**: a ``tools/call`` the gateway is about to send to its service (after the route's
  tool policy and authorization rules allowed it), each request of a batch on its own. It takes
  one request, one request in flight, and its price (the service's ``tool_prices`` entry for the
  upstream tool, else its ``price_per_call``; $0 unpriced). Other methods (``initialize``, the
  lists, ``prompts/get``, ``resources/read``, ...) count nothing.
- **Which limits**: :func:`agw.policy.limits.matching` with the same ``mcp`` variable the
  authorization rules see; a ``subject: session`` limit counts the call under the session its
  usage row records: the dispatcher's (the session headers) if any, else the request's
  ``params._meta["agent-session-id"]``.
- **Refused**: the JSON-RPC error :data:`RATE_LIMITED` (-32029), the refusal's message, ``data:
  {"limit": {...}}``; the HTTP status is that of every JSON-RPC answer (200), with
  ``Retry-After`` and the ``RateLimit`` headers on a plain JSON answer.
- **Settled** when the call ends: its price if the service answered (a tool's own ``isError``
  result included), $0 if it failed or was cancelled.

Each request of a POST keeps its own hold on its :class:`~agw.mcp.exchange.Call` (its usage row),
not on the shared :class:`~agw.request.Request`.
"""

from __future__ import annotations

from typing import Final

from agw.config.mcp import McpService
from agw.errors import Refusal
from agw.mcp import jsonrpc as rpc
from agw.mcp.authorization import TOOL, mcp_vars
from agw.mcp.exchange import Call
from agw.mcp.jsonrpc import RpcError
from agw.policy.limits import Limiter, matching
from agw.request import Request
from agw.types import Headers

RATE_LIMITED: Final = rpc.RATE_LIMITED
_NO_OUTPUT: Final = (0.0, 0.0, 0.0, 0.0, 0.0, 0.0)


def tool_price(service: McpService | None, tool: str) -> float | None:
    """USD of one call of the upstream tool ``tool``: its ``tool_prices`` entry, else the
    service's ``price_per_call``; None when unpriced."""
    if service is None:
        return None
    price: float | None = service.tool_prices.get(tool, service.price_per_call)
    return price


async def admit_tool_call(
    limiter: Limiter, req: Request, call: Call, service_id: str, tool: str
) -> None:
    """Reserve the call on every limit that applies, or raise the -32029 error (the call's row
    says ``limit_action: refused``). ``tool``: the upstream's name."""
    table = req.snapshot.limits
    if req.route.id not in table.by_route:  # a route no limit names: one lookup
        return
    attributed = req.session_id
    req.session_id = attributed or call.agent_session  # the session the row records
    try:
        matched = matching(req, table, plane={"mcp": mcp_vars(TOOL, service=service_id, tool=tool)})
    finally:
        req.session_id = attributed
    if not matched:
        return
    price = tool_price(req.snapshot.mcp_services.get(service_id), tool) or 0.0
    try:
        admission = await limiter.admit(
            req, matched, [price, 0.0, 0.0, 0.0, 1.0, 1.0], list(_NO_OUTPUT), 0
        )
    except Refusal as refusal:
        # the request's fields are per POST, the row's per call: moved to the call
        call.limit_id, call.limit_action = req.limit_id, req.limit_action
        req.limit_id = req.limit_action = None
        call.limit_refusal = refusal
        call.error_type = refusal.code
        raise RpcError(RATE_LIMITED, refusal.message, refusal.detail) from None
    req.admission = None
    call.admission = admission
    call.limit_price = price
    if admission.action is not None:  # shadow: a limit that does not enforce would refuse
        call.limit_id, call.limit_action = admission.limit_id, admission.action


def settle_tool_call(call: Call, answered: bool) -> None:
    """The call ended: its price if its service answered, else nothing (failed, cancelled)."""
    admission = call.admission
    if admission is None:
        return
    call.admission = None
    admission.settle(call.limit_price if answered else 0.0, 0, 0)
    if admission.action is not None:
        call.limit_id, call.limit_action = admission.limit_id, admission.action


def answer_headers(calls: list[Call]) -> Headers | None:
    """The headers of a refusal among ``calls`` (the first: ``Retry-After`` and the
    ``RateLimit`` headers), for the POST's answer; None when none was refused."""
    for call in calls:
        refusal = call.limit_refusal
        if refusal is not None:
            return refusal.answer_headers()
    return None
