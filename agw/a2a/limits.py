"""Limits on A2A routes (docs/limits.md, "Limits on MCP, ACP and A2A"): each message sent to
a remote agent is admitted against the limits that apply to it before it is relayed, as an
LLM call is (agw.policy.limits).

- **What counts**: a message (``SendMessage``, ``SendStreamingMessage``, 0.3's
  ``message/send`` and ``message/stream``, on either binding) takes one request and one request
  in flight until its answer (or its stream) ends; no dollars or tokens. Reading, cancelling or
  subscribing to a task and the push-notification configs are not counted: an agent polling a
  task it started is not spending anything new.
- **Which limits**: :func:`agw.policy.limits.matching` with the ``a2a`` variable of the
  authorization rules (``{"service_id", "method"}``); a ``subject: session`` limit counts the
  message under the A2A ``contextId`` it names (the row's session), else the session the
  dispatcher attributed.
- **Refused**: 429 in the caller's binding (JSON-RPC error -32029 with ``data: {"limit":
  {...}}``; the HTTP+JSON error object with ``RESOURCE_EXHAUSTED``), with ``Retry-After`` and
  the ``RateLimit`` headers; the row says ``limit_action: refused``.
"""

from __future__ import annotations

from typing import Final

from agw.policy.limits import Limiter, admit_request, settle_request
from agw.request import Request

COUNTED: Final = frozenset(
    {"SendMessage", "SendStreamingMessage", "message/send", "message/stream"}
)
RATE_LIMITED: Final = -32029  # the JSON-RPC code MCP routes use for the same refusal


async def admit_message(
    limiter: Limiter, req: Request, service_id: str, method: str, context_id: str | None
) -> None:
    """Reserve one message on every limit that applies (``req.admission``), or raise the 429
    :class:`~agw.errors.Refusal` (``req.limit_id``, ``req.limit_action`` say which)."""
    if method in COUNTED:
        a2a = {"service_id": service_id, "method": method}
        await admit_request(limiter, req, context_id, {"a2a": a2a})


settle_message = settle_request  # the answer or stream ended (any way): the hold is released
