"""The route's authorization rules (CEL, agw.policy.authz) on MCP: what a caller may see and use.

docs/security.md, "On MCP routes", is the reference. In short:

- **Using an item**: ``tools/call``, ``prompts/get``, ``resources/read`` (and what uses the same
  item: ``resources/subscribe`` / ``unsubscribe`` are evaluated as ``resources/read`` of the URI,
  ``completion/complete`` as ``prompts/get`` of its prompt or ``resources/read`` of its
  resource) are evaluated against every rule, allow and deny. ``mcp.tool.name`` and
  ``mcp.prompt.name`` are the **upstream's** names (``add``, not the presented ``alpha_add``),
  ``mcp.resource.uri`` the upstream's URI (not the ``agw://`` one of a multiplexed route), and
  ``mcp.tool.service`` / ``mcp.prompt.service`` / ``mcp.resource.service`` the service id.
  Denied: the JSON-RPC error :data:`FORBIDDEN` (-32003), in both eras; the usage row says
  ``policy_action: deny`` and the refusal's error type (``forbidden``).
- **Lists** (``tools/list``, ``prompts/list``, ``resources/list``,
  ``resources/templates/list``): each item is evaluated as the operation it would be used with
  and shown only when that is allowed; a template by its ``uriTemplate``.
- **Session requests** (``initialize``, ``server/discover``, ``ping``, ``logging/setLevel``):
  only the deny rules, with ``mcp.method`` the request's method and every item field empty. A
  deny rule on the caller alone (``principal.user == "mallory"``) keeps it out of the route; an
  allow rule about tools (``mcp.tool.name == "add"``) never breaks the handshake.
- Notifications and responses from the client are not evaluated.

A route without rules (``req.route.rules is None``) costs one attribute read per call and per
list, nothing per item; rules that do not name ``mcp`` are evaluated once per list.
"""

from __future__ import annotations

from typing import Final

from agw.errors import Refusal
from agw.mcp import jsonrpc as rpc
from agw.mcp.exchange import Call
from agw.mcp.jsonrpc import RpcError
from agw.mcp.mux import Visible
from agw.policy.authz import authorize, authorize_session, visible_to
from agw.request import Request
from agw.types import JsonObj

FORBIDDEN: Final = rpc.FORBIDDEN

TOOL, PROMPT, RESOURCE = "tools/call", "prompts/get", "resources/read"
# what a listed item would be used with
USE_OF_LIST: Final = {
    "tools/list": TOOL,
    "prompts/list": PROMPT,
    "resources/list": RESOURCE,
    "resources/templates/list": RESOURCE,
}

_KINDS: Final = {TOOL: "tool", PROMPT: "prompt", RESOURCE: "resource"}


def mcp_vars(
    method: str, *, service: str = "", tool: str = "", prompt: str = "", uri: str = ""
) -> JsonObj:
    """The ``mcp`` variable of one evaluation: ``service`` goes to the item's own ``service``
    field (``tool.service``, ``prompt.service`` or ``resource.service``)."""
    return {
        "method": method,
        "tool": {"name": tool, "service": service if tool else ""},
        "prompt": {"name": prompt, "service": service if prompt else ""},
        "resource": {"uri": uri, "service": service if uri else ""},
    }


def _denied(call: Call, refusal: Refusal, what: str) -> RpcError:
    call.policy_action = "deny"
    call.error_type = refusal.code
    return RpcError(FORBIDDEN, f"{what} is forbidden ({refusal.message})")


def check_use(
    req: Request,
    call: Call,
    method: str,
    shown: str,
    *,
    service: str,
    tool: str = "",
    prompt: str = "",
    uri: str = "",
) -> None:
    """Raise the JSON-RPC error of a denied use of an item: ``method`` is ``tools/call``,
    ``prompts/get`` or ``resources/read``; ``shown`` how the client named the item (for the
    message); the rest the upstream's names."""
    if req.route.rules is None:
        return
    item = mcp_vars(method, service=service, tool=tool, prompt=prompt, uri=uri)
    refusal = authorize(req, mcp=item)
    if refusal is not None:
        raise _denied(call, refusal, f'{_KINDS[method]} "{shown}"')
    if call.policy_action is None:
        call.policy_action = "allow"


def check_session(req: Request, call: Call, method: str) -> None:
    """Raise the JSON-RPC error of a session request (``initialize``, ``server/discover``,
    ``ping``, ``logging/setLevel``) that a deny rule refuses."""
    if req.route.rules is None:
        return
    refusal = authorize_session(req, mcp=mcp_vars(method))
    if refusal is not None:
        raise _denied(call, refusal, method)


def _everything(sid: str, item: JsonObj) -> bool:
    return True


def _nothing(sid: str, item: JsonObj) -> bool:
    return False


def list_filter(req: Request, method: str) -> Visible | None:
    """What the caller may see of a list: None (everything) when the route has no rules; one
    evaluation for the whole list when the rules do not name ``mcp``; else one per item."""
    rules = req.route.rules
    if rules is None:
        return None
    use = USE_OF_LIST[method]
    if "mcp" not in rules.variables:  # the same answer for every item
        return _everything if visible_to(req, mcp=mcp_vars(use)) else _nothing
    if use == TOOL:

        def tool(sid: str, item: JsonObj) -> bool:
            name = item.get("name")
            return isinstance(name, str) and visible_to(
                req, mcp=mcp_vars(use, service=sid, tool=name)
            )

        return tool
    if use == PROMPT:

        def prompt(sid: str, item: JsonObj) -> bool:
            name = item.get("name")
            return isinstance(name, str) and visible_to(
                req, mcp=mcp_vars(use, service=sid, prompt=name)
            )

        return prompt
    field = "uriTemplate" if method == "resources/templates/list" else "uri"

    def resource(sid: str, item: JsonObj) -> bool:
        uri = item.get(field)
        return isinstance(uri, str) and visible_to(req, mcp=mcp_vars(use, service=sid, uri=uri))

    return resource
