"""The variables of a CEL evaluation over one request: authorization rules (authz.py) and the
``when`` of limits (limits.py) see the same ones (docs/security.md, "Authorization rules (CEL)").
Only the variables an expression names are built, once per request."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from agw.auth.principal import Principal
from agw.config import families as f

if TYPE_CHECKING:  # the request imports the snapshot, which compiles limits: no cycle at run time
    from agw.policy.rules import RuleSet
    from agw.request import Request
    from agw.runtime.snapshot import Snapshot

# What the planes a request is not on look like (read-only by convention: never mutated)
EMPTY_PLANES: Mapping[str, Mapping[str, object]] = {
    "llm": {"model": "", "provider_id": "", "stream": False},
    "mcp": {
        "method": "",
        "tool": {"name": "", "service": ""},
        "resource": {"uri": "", "service": ""},
        "prompt": {"name": "", "service": ""},
    },
    "acp": {"service_id": "", "method": ""},
    "a2a": {"service_id": "", "method": ""},
}
# headers a rule never sees: the caller's credentials
CREDENTIAL_HEADERS = frozenset(
    {"authorization", "proxy-authorization", "x-api-key", "cookie", "x-goog-api-key"}
)
_NO_KEY: Mapping[str, object] = {"id": "", "tags": []}
_ANONYMOUS: Mapping[str, object] = {
    "kind": "anonymous",
    "user": "",
    "org": "",
    "groups": [],
    "key_id": "",
    "provider_id": "",
    "scopes": [],
}
_VARS_KEY = "authz_vars"  # Request.extra: this request's variables, built once


def principal_vars(principal: Principal | None) -> Mapping[str, object]:
    if principal is None:
        return _ANONYMOUS
    return {
        "kind": principal.kind,
        "user": principal.user or "",
        "org": principal.org or "",
        "groups": list(principal.groups),
        "key_id": principal.key_id or "",
        "provider_id": principal.provider_id or "",
        "scopes": sorted(principal.scopes),
    }


def key_vars(snapshot: Snapshot, principal: Principal | None) -> Mapping[str, object]:
    key_id = principal.key_id if principal is not None else None
    if not key_id:
        return _NO_KEY
    rec = snapshot.state.get(f.VIRTUAL_KEY, key_id)
    tag = rec.obj.tag if rec is not None else ""
    return {"id": key_id, "tags": [tag] if tag else []}


def request_variables(
    names: frozenset[str],
    snapshot: Snapshot,
    principal: Principal | None,
    *,
    method: str,
    path: str,
    headers: Mapping[str, str],
    session_id: str | None,
) -> dict[str, object]:
    """The variables of ``names`` that do not depend on the plane, the empty planes included."""
    out: dict[str, object] = {}
    for name in names:
        if name == "principal":
            out[name] = principal_vars(principal)
        elif name == "jwt":
            out[name] = dict(principal.claims) if principal is not None else {}
        elif name == "key":
            out[name] = key_vars(snapshot, principal)
        elif name == "request":
            kept = {k: v for k, v in headers.items() if k not in CREDENTIAL_HEADERS}
            out[name] = {"method": method, "path": path, "headers": kept}
        elif name == "session":
            out[name] = {"id": session_id or ""}
        elif name in EMPTY_PLANES:
            out[name] = EMPTY_PLANES[name]
    return out


def variables_of(
    req: Request, rules: RuleSet, plane: dict[str, Mapping[str, object]]
) -> dict[str, object]:
    """The variables ``rules`` name for ``req`` (each built once per request, whichever rules
    asked first: a route's authorization and a limit's ``when`` may name different ones) and
    the plane's. ``session`` follows ``req.session_id``, which an MCP message may set."""
    base: dict[str, object] | None = req.extra.get(_VARS_KEY)
    names = rules.variables
    if base is not None:
        session = base.get("session")
        if isinstance(session, Mapping) and session.get("id") != (req.session_id or ""):
            base = {k: v for k, v in base.items() if k != "session"}  # rebuilt below
    if base is None or not names <= base.keys():
        built = request_variables(
            names if base is None else names - base.keys(),
            req.snapshot,
            req.principal,
            method=req.method,
            path=req.scope["path"],
            headers=req.headers,
            session_id=req.session_id,
        )
        base = built if base is None else {**base, **built}
        req.extra[_VARS_KEY] = base
    return base | plane if plane else base
