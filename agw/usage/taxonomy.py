"""The closed error taxonomy: whose fault a failed request was, from its usage event.

Five values, a Prometheus label and an access-log field:

- ``none``: the request succeeded;
- ``client``: the caller's fault (malformed JSON, unknown method or model, oversized body, a
  client that went away, a 4xx the gateway itself answered);
- ``policy``: the gateway refused by policy (virtual key, disabled route, agent depth, tool
  policy, capacity and concurrency limits);
- ``provider``: the upstream failed (provider or MCP server unreachable, 5xx, broken stream, an
  agent process that failed or died);
- ``gateway``: agw's own fault (an internal error, a provider the configuration lacks).
"""

from __future__ import annotations

from typing import Final

from agw.usage.events import UsageEvent

ERROR_CLASSES: Final = ("none", "client", "policy", "provider", "gateway")

_BY_TYPE: Final[dict[str, str]] = {
    # the dispatcher's and every plane's policy refusals
    "virtual_key_rejected": "policy",
    "route_disabled": "policy",
    "agent_depth_exceeded": "policy",
    "policy_denied": "policy",
    "forbidden": "policy",  # a route's authorization rules (agw/policy/authz.py)
    "capacity_exceeded": "policy",
    "scope_busy": "policy",
    "rate_limited": "policy",
    "limit_backend_unavailable": "gateway",  # the shared limit counters did not answer
    "budget_exceeded": "policy",
    "service_disabled": "policy",  # an A2A route whose service is disabled
    # the caller's fault
    "protocol_validation_failed": "client",
    "route_not_found": "client",
    "method_not_found": "client",
    "invalid_params": "client",
    "invalid_request": "client",
    "resource_not_found": "client",
    "service_not_found": "client",
    "permission_not_found": "client",
    "client_cancelled": "client",
    "model_not_found": "client",
    # A2A: the agent's own refusals of what the caller asked (docs/a2a.md#errors)
    "task_not_found": "client",
    "task_not_cancelable": "client",
    "push_notification_not_supported": "client",
    "unsupported_operation": "client",
    "content_type_not_supported": "client",
    "extended_agent_card_not_configured": "client",
    "extension_support_required": "client",
    "version_not_supported": "client",
    # the upstream's fault
    "provider_request_failed": "provider",
    "provider_stream_failed": "provider",
    "upstream_failed": "provider",
    "upstream_error": "provider",
    "agent_exited": "provider",
    "request_failed": "provider",
    "invalid_agent_response": "provider",
    "upstream_auth_failed": "provider",  # the remote agent refused the service's credentials
    "card_unavailable": "provider",  # an A2A agent's card could not be fetched
    "upstream_timeout": "provider",
    # ours
    "internal_error": "gateway",
    "provider_not_configured": "gateway",
}


def error_class(event: UsageEvent) -> str:
    """One of :data:`ERROR_CLASSES` for ``event``; unknown error types fall back on the status:
    4xx the client's, 5xx the provider's when an upstream answered it, else the gateway's."""
    if event.success:
        return "none"
    known = _BY_TYPE.get(event.error_type or "")
    if known is not None:
        return known
    status = event.status_code or 500
    if 400 <= status < 500:
        return "client"
    return "provider" if status in (502, 503, 504) or event.error_type else "gateway"
