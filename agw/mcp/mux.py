"""The multiplexer: one MCP server made of the services of a route.

What a client sees, and how it maps back:

- **Names** (tools, prompts). Each upstream name becomes a *presented* name by the route's prefix
  mode: ``always`` ``<service_id>_<name>``, ``never`` the name itself, ``conditional`` the prefix
  only on names that more than one service lists. Characters outside ``[A-Za-z0-9_.-]`` become
  ``_``; a name still longer than 64, empty, or claimed by two tools is cut to 55 characters +
  ``_`` + the first 8 hex digits of ``sha256(service_id + "/" + original name)`` (every claimant
  is cut, so the outcome does not depend on list order). A :class:`NameMap` per route and kind
  keeps presented -> (service, original); it is built from the full lists of every service.
- **Resource URIs**, on a route with several services: ``agw://<service_id>/<uri>`` with the
  original URI percent-encoded as one path segment (``quote(uri, safe="")``); templates keep
  ``{`` and ``}`` unencoded so their variables still expand (``res://{name}/readme`` becomes
  ``agw://svc/res%3A%2F%2F{name}%2Freadme``). Reading reverses it. One service: URIs pass through.
- **Pagination**: a composite cursor, base64url of ``{"s": service index, "c": upstream cursor or
  null, "v": 1}``: "resume at this service with this cursor". A page takes one upstream page,
  then, when that upstream has no more, the first pages of the following services until one of
  them paginates; services that do not paginate thus merge into one page.
- **Failures**: a service that fails a list is skipped and reported to the backend (fail-open);
  ``fail_closed`` routes fail the whole call with -32001 naming the service.
- **Tool policy**: ``allow`` / ``deny`` globs (``fnmatch.fnmatchcase``) on presented names; deny
  wins; an empty allow list allows everything.
- **Authorization rules** (CEL, per caller): :meth:`Multiplexer.list_page` keeps the items its
  ``visible`` predicate allows, given the upstream's own item (agw.mcp.authorization).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import fnmatch
import hashlib
import json
import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import quote, unquote

from agw.config.mcp import McpRoute
from agw.mcp.jsonrpc import (
    INVALID_PARAMS,
    METHOD_NOT_FOUND,
    RESOURCE_NOT_FOUND,
    UPSTREAM_FAILED,
    RpcError,
)
from agw.mcp.upstream import UpstreamError
from agw.types import JsonObj

Visible = Callable[[str, JsonObj], bool]
"""(service id, an upstream's list item) -> may the caller see it (agw.mcp.authorization)."""

MAX_NAME = 64
CUT_TO = 55
MAX_PAGES_PER_SERVICE = 100  # a full list (name map) stops there
URI_SCHEME = "agw://"
_BAD_CHARS = re.compile(r"[^A-Za-z0-9_.-]")
_VALID = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


@dataclass(frozen=True)
class ListKind:
    method: str
    capability: str  # the server capability that announces it
    key: str  # the result's list field
    named: str  # "tools" | "prompts" (a NameMap kind) or "" (resources: URIs)
    uri_field: str = ""  # resources: "uri", templates: "uriTemplate"


LIST_KINDS: dict[str, ListKind] = {
    "tools/list": ListKind("tools/list", "tools", "tools", "tools"),
    "prompts/list": ListKind("prompts/list", "prompts", "prompts", "prompts"),
    "resources/list": ListKind("resources/list", "resources", "resources", "", "uri"),
    "resources/templates/list": ListKind(
        "resources/templates/list", "resources", "resourceTemplates", "", "uriTemplate"
    ),
}
NAMED_LISTS = {"tools": LIST_KINDS["tools/list"], "prompts": LIST_KINDS["prompts/list"]}


# ------------------------------------------------------------------------------------ names


def sanitize(name: str) -> str:
    return _BAD_CHARS.sub("_", name)


def cut(name: str, service_id: str, original: str) -> str:
    digest = hashlib.sha256(f"{service_id}/{original}".encode()).hexdigest()[:8]
    return f"{name[:CUT_TO]}_{digest}"


def present_names(entries: Sequence[tuple[str, str]], mode: str) -> dict[tuple[str, str], str]:
    """Presented names for ``(service_id, original)`` pairs (in route order) by prefix mode."""
    unique = list(dict.fromkeys(entries))
    bare = {key: sanitize(key[1]) for key in unique}
    owners: dict[str, set[str]] = {}
    for (sid, _), name in bare.items():
        owners.setdefault(name, set()).add(sid)
    wanted: dict[tuple[str, str], str] = {}
    for key, name in bare.items():
        prefixed = mode == "always" or (mode == "conditional" and len(owners[name]) > 1)
        wanted[key] = f"{sanitize(key[0])}_{name}" if prefixed else name
    counts = Counter(wanted.values())
    out: dict[tuple[str, str], str] = {}
    for key, name in wanted.items():
        ok = counts[name] == 1 and _VALID.match(name) is not None
        out[key] = name if ok else cut(name, key[0], key[1])
    return out


@dataclass
class NameMap:
    """Presented name <-> (service id, original name) for one route and kind."""

    route: McpRoute
    forward: dict[str, tuple[str, str]] = field(default_factory=dict)
    backward: dict[tuple[str, str], str] = field(default_factory=dict)

    @classmethod
    def build(cls, route: McpRoute, entries: Sequence[tuple[str, str]]) -> NameMap:
        backward = present_names(entries, route.effective_prefix_mode)
        return cls(route, {v: k for k, v in backward.items()}, backward)


# -------------------------------------------------------------------------------- policies


def tool_allowed(route: McpRoute, presented: str) -> bool:
    policy = route.tool_policy
    if any(fnmatch.fnmatchcase(presented, p) for p in policy.deny):
        return False
    return not policy.allow or any(fnmatch.fnmatchcase(presented, p) for p in policy.allow)


def has_policy(route: McpRoute) -> bool:
    return bool(route.tool_policy.allow or route.tool_policy.deny)


# --------------------------------------------------------------------------------- cursors


def encode_cursor(service_index: int, upstream_cursor: str | None) -> str:
    raw = json.dumps({"s": service_index, "c": upstream_cursor, "v": 1}, separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_cursor(cursor: Any, services: int) -> tuple[int, str | None]:
    bad = RpcError(INVALID_PARAMS, "invalid cursor")
    if not isinstance(cursor, str) or not cursor or len(cursor) > 8192:
        raise bad
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        data = json.loads(raw)
    except (binascii.Error, ValueError):
        raise bad from None
    if not isinstance(data, dict) or data.get("v") != 1:
        raise bad
    index, upstream = data.get("s"), data.get("c")
    if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < services:
        raise bad
    if upstream is not None and not isinstance(upstream, str):
        raise bad
    return index, upstream


# ------------------------------------------------------------------------------------ URIs


def namespace_uri(service_id: str, uri: str, *, template: bool = False) -> str:
    encoded = quote(uri, safe="{}" if template else "")
    return f"{URI_SCHEME}{quote(service_id, safe='')}/{encoded}"


def split_uri(uri: str) -> tuple[str, str] | None:
    """``agw://<service_id>/<encoded uri>`` -> (service id, original uri); None otherwise."""
    if not uri.startswith(URI_SCHEME):
        return None
    sid, sep, encoded = uri[len(URI_SCHEME) :].partition("/")
    if not sep or not sid or not encoded:
        return None
    return unquote(sid), unquote(encoded)


def rewrite_content_uris(value: Any, service_id: str) -> Any:
    """Namespace the URIs inside tool results and prompt messages (resource links, embedded
    resources, read contents), so the client can read them back through the gateway."""
    if isinstance(value, list):
        return [rewrite_content_uris(v, service_id) for v in value]
    if not isinstance(value, dict):
        return value
    out = {}
    for key, item in value.items():
        if key == "uri" and isinstance(item, str):
            out[key] = namespace_uri(service_id, item)
        elif key in ("content", "contents", "messages", "resource"):
            out[key] = rewrite_content_uris(item, service_id)
        else:
            out[key] = item
    return out


# -------------------------------------------------------------------------- the multiplexer


class Backend(Protocol):
    """The upstreams of one route as seen by one client (session)."""

    async def capabilities(self, service_id: str) -> JsonObj:
        """The service's server capabilities (connecting first); raises UpstreamError/RpcError."""
        ...

    async def request(self, service_id: str, method: str, params: JsonObj | None) -> Any:
        """One request to the service; raises UpstreamError / RpcError."""
        ...

    def failed(self, service_id: str, method: str, error: str) -> None:
        """A service was skipped (fail-open)."""
        ...


@dataclass
class Page:
    items: list[JsonObj]
    next_cursor: str | None


class Multiplexer:
    """The merged server of one route, over a :class:`Backend`. ``names`` is the route's name
    map cache (kind -> NameMap), shared by every client of the route."""

    def __init__(
        self,
        route: McpRoute,
        backend: Backend,
        names: dict[str, NameMap],
        locks: dict[str, asyncio.Lock],
    ) -> None:
        self.route = route
        self.services = route.services
        self.backend = backend
        self.names = names
        self.locks = locks
        self.multi = len(self.services) > 1

    # ------------------------------------------------------------------------- upstream pages

    def _failure(self, service_id: str, method: str, exc: Exception, closed: bool) -> None:
        message = exc.message if isinstance(exc, UpstreamError | RpcError) else str(exc)
        if closed:
            raise RpcError(UPSTREAM_FAILED, f"mcp service {service_id} failed: {message}")
        self.backend.failed(service_id, method, message)

    async def _page(
        self, index: int, kind: ListKind, cursor: str | None, closed: bool | None = None
    ) -> Page | None:
        """One upstream page; None when the service was skipped (failed, or lacks the kind).
        ``closed``: a failure fails the call (default: the route's ``fail_closed``)."""
        sid = self.services[index]
        if closed is None:
            closed = self.route.fail_closed
        try:
            caps = await self.backend.capabilities(sid)
        except (UpstreamError, RpcError) as exc:
            self._failure(sid, kind.method, exc, closed)
            return None
        if kind.capability not in caps:
            return Page([], None)
        params: JsonObj | None = {"cursor": cursor} if cursor is not None else None
        try:
            result = await self.backend.request(sid, kind.method, params)
        except RpcError as exc:
            if exc.code == METHOD_NOT_FOUND:
                return Page([], None)
            if exc.code == INVALID_PARAMS and cursor is not None:
                raise RpcError(INVALID_PARAMS, "invalid cursor") from None
            self._failure(sid, kind.method, exc, closed)
            return None
        except UpstreamError as exc:
            self._failure(sid, kind.method, exc, closed)
            return None
        if not isinstance(result, dict):
            self._failure(
                sid, kind.method, UpstreamError(f"malformed {kind.method} result"), closed
            )
            return None
        raw = result.get(kind.key)
        items = [i for i in raw if isinstance(i, dict)] if isinstance(raw, list) else []
        nxt = result.get("nextCursor")
        return Page(items, nxt if isinstance(nxt, str) and nxt else None)

    async def _full(
        self, index: int, kind: ListKind, closed: bool | None = None
    ) -> list[JsonObj] | None:
        items: list[JsonObj] = []
        cursor: str | None = None
        for _ in range(MAX_PAGES_PER_SERVICE):
            page = await self._page(index, kind, cursor, closed)
            if page is None:
                return None
            items += page.items
            if page.next_cursor is None:
                break
            cursor = page.next_cursor
        return items

    # ----------------------------------------------------------------------------- name maps

    async def name_map(
        self, named: str, *, refresh: bool = False, stale: NameMap | None = None
    ) -> NameMap:
        """The route's map for ``named`` (tools|prompts), built from the full lists when missing,
        stale (route changed) or ``refresh`` (unless another request refreshed it meanwhile)."""
        lock = self.locks.setdefault(named, asyncio.Lock())
        async with lock:
            current = self.names.get(named)
            fresh = current is not None and (
                current.route is self.route or current.route == self.route
            )
            if fresh and current is not None and not (refresh and current is stale):
                current.route = self.route  # the same route: found by identity from now on
                return current
            kind = NAMED_LISTS[named]
            # Always fail-open: fail_closed is about list answers; a call to one service's tool
            # must not fail because another service of the route is down.
            lists = await asyncio.gather(
                *(self._full(i, kind, closed=False) for i in range(len(self.services)))
            )
            entries: list[tuple[str, str]] = []
            for sid, items in zip(self.services, lists, strict=True):
                for item in items or ():
                    name = item.get("name")
                    if isinstance(name, str):
                        entries.append((sid, name))
            built = NameMap.build(self.route, entries)
            self.names[named] = built
            return built

    def known(self, named: str, presented: str) -> tuple[str, str] | None:
        """(service id, original name) of a presented tool/prompt name when the route's map is
        built and current: no lock, no await (:meth:`resolve` when this is None)."""
        current = self.names.get(named)
        if current is None or current.route is not self.route:
            return None
        return current.forward.get(presented)

    async def resolve(self, named: str, presented: str) -> tuple[str, str] | None:
        """(service id, original name) of a presented tool/prompt name; the lists are read again
        once when the name is unknown."""
        current = await self.name_map(named)
        hit = current.forward.get(presented)
        if hit is None:
            current = await self.name_map(named, refresh=True, stale=current)
            hit = current.forward.get(presented)
        return hit

    # -------------------------------------------------------------------------------- lists

    async def list_page(self, method: str, cursor: Any, visible: Visible | None = None) -> JsonObj:
        """One page of a list; ``visible`` (the route's authorization rules, per caller) keeps
        the items it is true for, given the service id and the upstream's item."""
        kind = LIST_KINDS[method]
        n = len(self.services)
        start, upstream_cursor = (0, None) if cursor is None else decode_cursor(cursor, n)
        collected: list[tuple[int, Page]] = []
        next_cursor: str | None = None
        first = await self._page(start, kind, upstream_cursor)
        if first is not None:
            collected.append((start, first))
        if first is not None and first.next_cursor is not None:
            next_cursor = encode_cursor(start, first.next_cursor)
        elif start + 1 < n:
            rest = await asyncio.gather(*(self._page(i, kind, None) for i in range(start + 1, n)))
            for i, page in zip(range(start + 1, n), rest, strict=True):
                if page is None:
                    continue
                collected.append((i, page))
                if page.next_cursor is not None:
                    next_cursor = encode_cursor(i, page.next_cursor)
                    break
        if visible is not None:
            for i, page in collected:
                sid = self.services[i]
                page.items = [item for item in page.items if visible(sid, item)]
        items = await self._present(kind, collected)
        out: JsonObj = {kind.key: items}
        if next_cursor is not None:
            out["nextCursor"] = next_cursor
        return out

    async def _present(self, kind: ListKind, pages: list[tuple[int, Page]]) -> list[JsonObj]:
        out: list[JsonObj] = []
        if kind.named:
            current = await self.name_map(kind.named)
            keys = [
                (self.services[i], item["name"])
                for i, page in pages
                for item in page.items
                if isinstance(item.get("name"), str)
            ]
            if any(k not in current.backward for k in keys):
                current = await self.name_map(kind.named, refresh=True, stale=current)
            for i, page in pages:
                sid = self.services[i]
                for item in page.items:
                    name = item.get("name")
                    presented = current.backward.get((sid, name)) if isinstance(name, str) else None
                    if presented is None:
                        continue  # nameless, or gone from the lists meanwhile
                    if kind.named == "tools" and not tool_allowed(self.route, presented):
                        continue
                    out.append({**item, "name": presented})
            return out
        for i, page in pages:
            sid = self.services[i]
            for item in page.items:
                uri = item.get(kind.uri_field)
                if self.multi and isinstance(uri, str):
                    template = kind.uri_field == "uriTemplate"
                    item = {**item, kind.uri_field: namespace_uri(sid, uri, template=template)}
                out.append(item)
        return out

    # --------------------------------------------------------------------------- ownership

    def owner_of_uri(self, uri: str) -> tuple[str, str]:
        """(service id, original URI) of a presented resource URI."""
        if not self.multi:
            return self.services[0], uri
        split = split_uri(uri)
        if split is None or split[0] not in self.services:
            raise RpcError(
                RESOURCE_NOT_FOUND,
                f"resource {uri} not found: this route serves several services, so its URIs "
                "read agw://<service_id>/<urlencoded uri>",
                {"uri": uri},
            )
        return split

    def present_uri(self, service_id: str, uri: str) -> str:
        return namespace_uri(service_id, uri) if self.multi else uri

    def present_content(self, service_id: str, value: Any) -> Any:
        return rewrite_content_uris(value, service_id) if self.multi else value
