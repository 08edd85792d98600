"""What a listener trusts in the request itself: the ``Host`` it names and the ``Origin`` a
browser sends (docs/security.md, "Browsers and DNS rebinding").

A page in the operator's browser can post to a loopback listener (a "simple" request needs no
CORS preflight), and a DNS-rebinding page reaches it as its *own* origin: its name now resolves to
127.0.0.1, so the browser sends ``Host: attacker.example:8080`` and
``Origin: http://attacker.example:8080``. Comparing ``Origin`` with ``Host`` therefore proves
nothing; the ``Host`` must name something the operator trusts:

- an IP literal (a browser only sends one when the page itself was loaded from that address, so
  no rebinding name can produce it), ``localhost``, or the name the listener was bound to;
- or a name the operator listed (``--allowed-host``, ``--admin-host``; ``*`` trusts every name).

An ``Origin``, when present, must be listed by the operator, or be exactly the request's own
origin on a trusted ``Host``; ``null`` (sandboxed frames, files) is never trusted. Requests
without ``Origin`` are not from a browser page and pass this check.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from agw.errors import Refusal
from agw.settings import split_host_port

ANY_HOST = "*"


def host_name(host_header: str) -> str | None:
    """The host of a ``Host`` header without its port, lower-case and without IPv6 brackets;
    None when it does not parse."""
    value = host_header.strip()
    if not value:
        return None
    try:
        parts = urlsplit("//" + value)
        name = parts.hostname
        parts.port  # noqa: B018  (raises ValueError on a malformed port)
    except ValueError:
        return None
    if not name or any(c in value for c in "/?#@ \t"):
        return None
    name = name.lower()
    if name.startswith(".") or ".." in name:  # an empty label names no host
        return None
    return name.rstrip(".")


def is_ip_literal(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def normalize_origin(origin: str) -> str | None:
    """``scheme://host[:port]`` as a browser serializes it, lower-case, default ports dropped;
    None for ``null`` or anything that is not an http(s) origin."""
    try:
        parts = urlsplit(origin.strip())
        port = parts.port
    except ValueError:
        return None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return None
    if parts.path not in ("", "/") or parts.query or parts.fragment or parts.username:
        return None
    host = parts.hostname.lower()
    if ":" in host:
        host = f"[{host}]"
    default = 80 if parts.scheme == "http" else 443
    return f"{parts.scheme}://{host}" + (f":{port}" if port and port != default else "")


@dataclass(frozen=True, slots=True)
class HostPolicy:
    """The trusted ``Host`` names and ``Origin`` values of one listener."""

    listen_host: str = "127.0.0.1"
    allowed_hosts: frozenset[str] = frozenset()  # lower-case names, or "*"
    allowed_origins: frozenset[str] = frozenset()  # normalized origins

    @classmethod
    def for_listener(
        cls, addr: str, hosts: tuple[str, ...] = (), origins: tuple[str, ...] = ()
    ) -> HostPolicy:
        """``addr`` as given to ``--addr``/``--admin-addr``; ``hosts`` and ``origins`` as the
        operator listed them (validated by :func:`check_host_entry`, :func:`check_origin_entry`)."""
        listen = split_host_port(addr)[0].lower()
        allowed_origins = frozenset(o for o in (normalize_origin(x) for x in origins) if o)
        return cls(listen, frozenset(h.lower().rstrip(".") for h in hosts), allowed_origins)

    def host_allowed(self, host_header: str) -> bool:
        """No ``Host`` (HTTP/1.0, not a browser) passes; so do IP literals, ``localhost``, the
        bound name and the listed names."""
        if not host_header:
            return True
        name = host_name(host_header)
        if name is None:
            return False
        if ANY_HOST in self.allowed_hosts or name in self.allowed_hosts:
            return True
        if is_ip_literal(name) or name == "localhost" or name.endswith(".localhost"):
            return True
        return bool(self.listen_host) and name == self.listen_host

    def origin_allowed(self, origin: str | None, host_header: str, scheme: str = "http") -> bool:
        if origin is None:
            return True
        normalized = normalize_origin(origin)
        if normalized is None:
            return False
        if normalized in self.allowed_origins:
            return True
        own = normalize_origin(f"{scheme}://{host_header.strip()}") if host_header else None
        return own is not None and own == normalized and self.host_allowed(host_header)

    def cors_origin(self, origin: str | None) -> str | None:
        """The ``Access-Control-Allow-Origin`` to answer with: only a listed origin, as the
        operator listed it, never an echo of an unlisted one."""
        if origin is None:
            return None
        normalized = normalize_origin(origin)
        return normalized if normalized in self.allowed_origins else None


def check_host_entry(value: str) -> str:
    """An operator's ``--allowed-host``/``--admin-host`` entry: a host name or IP without port,
    or ``*``. Raises ValueError with the reason."""
    entry = value.strip().lower().rstrip(".")
    if entry == ANY_HOST:
        return entry
    if not entry or host_name(entry) != entry.strip("[]"):
        raise ValueError(f"{value!r} is not a host name (no scheme, port or path)")
    return entry.strip("[]")


def check_origin_entry(value: str) -> str:
    """An operator's ``--allowed-origin``/``--admin-cors-origin`` entry: ``scheme://host[:port]``."""
    normalized = normalize_origin(value)
    if normalized is None:
        raise ValueError(f"{value!r} is not an origin (scheme://host[:port], no path)")
    return normalized


class EdgeCheck:
    """The data listener's ``Host`` and ``Origin`` rules (:class:`HostPolicy`), for the routes
    a browser page could use: every open route (no virtual key), and every route of a plane
    where a browser may hold a session (MCP, ACP). A keyed LLM route is not checked: a page
    cannot supply the key.

    A route's own match host is trusted for that route. The answers are memoized per header
    value (bounded), so a request pays a dict lookup, not a parse."""

    MEMO_MAX = 1024

    __slots__ = ("_hosts", "_origins", "_policies", "policy")

    def __init__(self, policy: HostPolicy) -> None:
        self.policy = policy
        self._policies: dict[str, HostPolicy] = {"": policy}
        self._hosts: dict[str, bool] = {}
        self._origins: dict[tuple[str, str, str, str], bool] = {}

    def _for_route(self, route_host: str) -> HostPolicy:
        policy = self._policies.get(route_host)
        if policy is None:  # route hosts come from the config: bounded
            hosts = self.policy.allowed_hosts | {route_host}
            policy = self._policies[route_host] = dataclasses.replace(
                self.policy, allowed_hosts=hosts
            )
        return policy

    def refusal(self, route_host: str, headers: Mapping[str, str], scheme: str) -> Refusal | None:
        """Why a request to a route whose match host is ``route_host`` ("" for any) is refused
        here, or None."""
        host = headers.get("host", "")
        if not route_host:  # a route with a match host only matched a Host naming it
            trusted = self._hosts.get(host)
            if trusted is None:
                if len(self._hosts) >= self.MEMO_MAX:
                    self._hosts.clear()
                trusted = self._hosts[host] = self.policy.host_allowed(host)
            if not trusted:
                return Refusal(
                    421,
                    "host_not_allowed",
                    f"Host {host[:100]!r} is not served here (see --allowed-host)",
                )
        origin = headers.get("origin")
        if origin is None:
            return None
        key = (route_host, origin, host, scheme)
        allowed = self._origins.get(key)
        if allowed is None:
            if len(self._origins) >= self.MEMO_MAX:
                self._origins.clear()
            policy = self._for_route(route_host)
            allowed = self._origins[key] = policy.origin_allowed(origin, host, scheme)
        if allowed:
            return None
        return Refusal(
            403,
            "origin_not_allowed",
            f"Origin {origin[:100]!r} is not allowed (see --allowed-origin)",
        )


# ------------------------------------------------------------------------------- WebSockets

WEBSOCKET_REFUSAL = (
    b'{"error": {"message": "agw serves no WebSocket: send the request as plain HTTP", '
    b'"type": "invalid_request_error", "code": "websocket_not_supported"}}'
)


def refuse_websockets(app: Any) -> Any:
    """``app`` behind a refusal of every WebSocket handshake, for hypercorn (the admin
    listener, and the data listener with ``--data-server hypercorn``), which takes them on its
    own: no route of agw speaks WebSocket, and a handshake must not reach an app that would
    fail on it (a 500 and a traceback per request). Answered ``400`` with a JSON error (the
    ASGI denial response), or closed (hypercorn then answers ``403``) by a server without it.
    uvicorn's data listener runs without WebSocket support instead (agw/server.py)."""

    async def guarded(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "websocket":
            await app(scope, receive, send)
            return
        await receive()  # websocket.connect
        if "websocket.http.response" not in scope.get("extensions", {}):
            await send({"type": "websocket.close", "code": 1008})
            return
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(WEBSOCKET_REFUSAL)).encode()),
            (b"connection", b"close"),
        ]
        await send({"type": "websocket.http.response.start", "status": 400, "headers": headers})
        await send({"type": "websocket.http.response.body", "body": WEBSOCKET_REFUSAL})

    return guarded
