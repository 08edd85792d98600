"""The route's authorization rules (CEL, agw.policy.authz) on ACP: checked before any agent starts.

docs/security.md, "Authorization rules (CEL)" / "On ACP routes", is the reference. ``acp.method``
is an ACP method name on both surfaces, so one rule covers both:

| request | ``acp.method`` | rules |
|---|---|---|
| ``POST /turn`` | ``session/prompt`` | all |
| ``GET /sessions`` | ``session/list`` | all |
| ``GET /sessions/{id}/transcript`` | ``session/load`` | all |
| ``POST /permission`` | ``session/request_permission`` | deny only |
| ``POST /acp`` ``initialize``, ``session/new``, ``session/prompt``... | its method | all |
| ``POST /acp`` ``session/cancel``, ``session/close`` | its method | deny only |
| ``POST /acp`` a response (a permission answer) | ``session/request_permission`` | deny only |
| ``GET /acp`` (a stream), ``DELETE /acp`` | ``""`` | deny only |

"Deny only": what winds down or answers for a session the caller was already allowed to open is
held to the deny rules alone, so an allow rule about prompts never strands a session. A denied
request is ``403 {"error": ...}`` and its usage row says ``forbidden``.
"""

from __future__ import annotations

from typing import Final

from agw.acp.record import Op
from agw.policy.authz import authorize, authorize_session
from agw.request import Request

# the REST paths' operation -> the ACP method they stand for
REST_METHODS: Final = {
    "turn": "session/prompt",
    "sessions": "session/list",
    "transcript": "session/load",
    "permission": "session/request_permission",
}
DENY_ONLY: Final = frozenset({"session/request_permission", "session/cancel", "session/close", ""})


def check(req: Request, op: Op, method: str) -> None:
    """Raise the 403 of a request the route's rules refuse (a route without rules: nothing)."""
    if req.route.rules is None:
        return
    service_id: str = req.route.config.service_id
    acp = {"service_id": service_id, "method": method}
    decide = authorize_session if method in DENY_ONLY else authorize
    refusal = decide(req, acp=acp)
    if refusal is not None:
        op.service_id = op.service_id or service_id
        raise refusal
