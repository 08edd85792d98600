"""Limits on ACP routes (docs/limits.md, "Limits on MCP and ACP"): each prompt turn is admitted
against the limits that apply to it, before any agent starts, as an LLM call is
(agw.policy.limits).

- **What counts**: a prompt turn (``POST <route>/turn``, or ``session/prompt`` on
  ``<route>/acp``) takes one request and one request in flight; no dollars or tokens (what the
  agent spends on LLM and MCP calls counts on those calls). Nothing else of the route counts.
- **Which limits**: :func:`agw.policy.limits.matching` with the ``acp`` variable of the
  authorization rules (``{"service_id", "method": "session/prompt"}``); a ``subject: session``
  limit counts the turn under the ACP session it names (the ``/turn`` body's ``session_id``,
  ``<route>/acp``'s ``Acp-Session-Id``), else the session the dispatcher attributed.
- **Refused**: the 429 of the ACP plane, ``{"error": "<message>", "limit": {...}}``, with
  ``Retry-After`` and the ``RateLimit`` headers; the row says ``limit_action: refused``.
- **Settled** with nothing used when the turn ends, however it ends; the admission's headers go
  on the turn's answer (the SSE stream's, or ``<route>/acp``'s ``202``).
"""

from __future__ import annotations

from typing import Final

from agw.policy.limits import Limiter, admit_request, settle_request
from agw.request import Request

PROMPT: Final = "session/prompt"


async def admit_prompt(limiter: Limiter, req: Request, session_id: str | None) -> None:
    """Reserve one turn on every limit that applies (``req.admission``), or raise the 429
    :class:`~agw.errors.Refusal` (``req.limit_id``, ``req.limit_action`` say which)."""
    service_id: str = req.route.config.service_id
    await admit_request(
        limiter, req, session_id, {"acp": {"service_id": service_id, "method": PROMPT}}
    )


settle_prompt = settle_request  # the turn ended (any way): its hold is released
