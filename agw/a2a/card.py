"""The remote agent's card: fetched, cached, read for its interfaces, and rewritten so that
every client of the route talks to the gateway (docs/a2a.md#the-agent-card).

- :class:`CardCache` fetches a service's ``card_url`` (with the service's own credentials, no
  redirects, at most :data:`CARD_LIMIT` bytes, :data:`CARD_TIMEOUT_S`) and keeps it for the
  service's ``card_refresh_interval``. A refresh that fails keeps the card it had (retried every
  :data:`RETRY_S`); with none yet, the request is refused (502 ``card_unavailable``).
- :func:`interfaces_of` reads what the agent serves where: 1.0 ``supportedInterfaces``, else 0.3
  ``url`` / ``preferredTransport`` / ``additionalInterfaces``. Only JSON-RPC and HTTP+JSON
  interfaces on the card's own origin are used: the service's credentials go nowhere else.
- :func:`rewrite` is the card a client sees: every interface URL is the route's own URL, the
  agent's security schemes and requirements are replaced by the route's (a bearer scheme when it
  needs a credential, none when it is open), and ``signatures`` are dropped (they signed the
  agent's URLs and schemes, which the gateway changed).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import urlsplit

import aiohttp

from agw import jsonfast
from agw.a2a.protocol import BINDINGS, JSONRPC, V03, V1
from agw.a2a.upstream import Upstream, auth_headers, origin_of, read_limited
from agw.config.a2a import A2aService
from agw.errors import Refusal
from agw.types import JsonObj

log = logging.getLogger(__name__)

CARD_LIMIT: Final = 1024 * 1024
CARD_TIMEOUT_S: Final = 10.0
RETRY_S: Final = 10.0
SCHEME: Final = "agw"  # the security scheme's name in a rewritten card
_SCHEME_ABOUT: Final = "the credential this agw route takes: a virtual key or a JWT, as a bearer"
_SECURITY_KEYS: Final = ("securitySchemes", "securityRequirements", "security")


@dataclass(frozen=True, slots=True)
class Interface:
    """One interface of the agent: a binding (``JSONRPC``, ``HTTP+JSON``), a protocol version
    (``1.0``, ``0.3``: major.minor), its URL, and the 1.0 tenant it names, if any."""

    binding: str
    version: str
    url: str
    tenant: str = ""


def _version(value: object, default: str) -> str:
    if not isinstance(value, str) or not value:
        return default
    return ".".join(value.split(".")[:2])


def interfaces_of(card: JsonObj, card_url: str) -> tuple[Interface, ...]:
    """The interfaces of ``card`` the gateway may call, in the card's order."""
    found: list[Interface] = []
    modern = card.get("supportedInterfaces")
    if isinstance(modern, list):
        for item in modern:
            if isinstance(item, dict):
                tenant = item.get("tenant")
                found.append(
                    Interface(
                        str(item.get("protocolBinding") or ""),
                        _version(item.get("protocolVersion"), V1),
                        str(item.get("url") or ""),
                        tenant if isinstance(tenant, str) else "",
                    )
                )
    elif isinstance(card.get("url"), str):
        version = _version(card.get("protocolVersion"), V03)
        found.append(
            Interface(str(card.get("preferredTransport") or JSONRPC), version, card["url"])
        )
        extra = card.get("additionalInterfaces")
        for item in extra if isinstance(extra, list) else ():
            if isinstance(item, dict):
                found.append(
                    Interface(str(item.get("transport") or ""), version, str(item.get("url") or ""))
                )
    origin = origin_of(card_url)
    usable = []
    for interface in found:
        if interface.binding in BINDINGS and origin_of(interface.url) == origin:
            usable.append(interface)
        else:
            log.info(
                "a2a_interface_skipped",
                extra={"binding": interface.binding, "host": urlsplit(interface.url).hostname},
            )
    return tuple(dict.fromkeys(usable))


def pick(interfaces: tuple[Interface, ...], binding: str, version: str) -> Interface | None:
    """The interface a request of ``binding`` and ``version`` goes to: one that says both, else
    the first of the binding (the agent then answers for the version as it can)."""
    first = None
    for interface in interfaces:
        if interface.binding == binding:
            if interface.version == version:
                return interface
            first = first or interface
    return first


def rewrite(
    card: JsonObj, interfaces: tuple[Interface, ...], route_url: str, needs_credential: bool
) -> JsonObj:
    """The card a client of the route sees (see the module doc); ``card`` is not changed."""
    out = {k: v for k, v in card.items() if k != "signatures" and k not in _SECURITY_KEYS}
    if isinstance(card.get("supportedInterfaces"), list):
        modern = []
        for interface in interfaces:
            item = {
                "url": route_url,
                "protocolBinding": interface.binding,
                "protocolVersion": interface.version,
            }
            if interface.tenant:
                item["tenant"] = interface.tenant
            if item not in modern:
                modern.append(item)
        out["supportedInterfaces"] = modern
    if "url" in card:
        _rewrite_legacy(card, out, interfaces, route_url)
    skills = card.get("skills")
    if isinstance(skills, list):
        out["skills"] = [
            {k: v for k, v in s.items() if k not in _SECURITY_KEYS} if isinstance(s, dict) else s
            for s in skills
        ]
    if needs_credential:
        _gateway_security(out)
    return out


def _rewrite_legacy(
    card: JsonObj, out: JsonObj, interfaces: tuple[Interface, ...], route_url: str
) -> None:
    """0.3's connection fields: the main URL and every additional interface at the route."""
    for key in ("url", "preferredTransport", "additionalInterfaces"):
        out.pop(key, None)
    legacy = [i.binding for i in interfaces if i.version == V03] or [i.binding for i in interfaces]
    bindings = list(dict.fromkeys(legacy))
    if not bindings:
        return
    preferred = card.get("preferredTransport") or JSONRPC
    out["url"] = route_url
    out["preferredTransport"] = preferred if preferred in bindings else bindings[0]
    if "additionalInterfaces" in card:
        out["additionalInterfaces"] = [{"url": route_url, "transport": b} for b in bindings]


def _gateway_security(out: JsonObj) -> None:
    """The route's bearer scheme, in the shapes of the versions the card speaks."""
    scheme: JsonObj = {}
    if "supportedInterfaces" in out:
        scheme["httpAuthSecurityScheme"] = {"scheme": "Bearer", "description": _SCHEME_ABOUT}
        out["securityRequirements"] = [{"schemes": {SCHEME: {"list": []}}}]
    if "url" in out:
        scheme |= {"type": "http", "scheme": "bearer", "description": _SCHEME_ABOUT}
        out["security"] = [{SCHEME: []}]
    out["securitySchemes"] = {SCHEME: scheme}


# --------------------------------------------------------------------------------- the cache


class CardError(Exception):
    """The card could not be fetched or is not a card (the message names the host only)."""


@dataclass(slots=True)
class CardEntry:
    card: JsonObj
    interfaces: tuple[Interface, ...]
    fetched_at: float  # monotonic seconds
    service: A2aService  # as configured when fetched: another config fetches anew


class CardCache:
    """The cards of the services, fetched on first use and refreshed after their interval."""

    def __init__(self, upstream: Upstream) -> None:
        self._upstream = upstream
        self._entries: dict[str, CardEntry] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    async def get(self, service: A2aService) -> CardEntry:
        entry = self._fresh(service)
        if entry is not None:
            return entry
        lock = self._locks.setdefault(service.id, asyncio.Lock())
        async with lock:  # one fetch per service at a time: the others wait for it
            entry = self._fresh(service)
            if entry is not None:
                return entry
            return await self._refresh(service)

    def _fresh(self, service: A2aService) -> CardEntry | None:
        entry = self._entries.get(service.id)
        if entry is None or entry.service != service:
            return None
        age_ns = (time.monotonic() - entry.fetched_at) * 1e9
        return entry if age_ns < service.card_refresh_interval else None

    async def _refresh(self, service: A2aService) -> CardEntry:
        old = self._entries.get(service.id)
        try:
            card = await self._fetch(service)
        except CardError as exc:
            log.warning(
                "a2a_card_fetch_failed", extra={"service_id": service.id, "error": str(exc)}
            )
            if old is None or old.service.card_url != service.card_url:
                raise Refusal(
                    502, "card_unavailable", f'the agent card of a2a service "{service.id}": {exc}'
                ) from None
            # the card it had, retried in RETRY_S
            old.fetched_at = time.monotonic() - service.card_refresh_interval / 1e9 + RETRY_S
            old.service = service
            return old
        entry = CardEntry(card, interfaces_of(card, service.card_url), time.monotonic(), service)
        self._entries[service.id] = entry
        return entry

    async def _fetch(self, service: A2aService) -> JsonObj:
        host = urlsplit(service.card_url).hostname or "?"
        headers = {"accept": "application/json", **auth_headers(service)}
        timeout = aiohttp.ClientTimeout(total=CARD_TIMEOUT_S)
        try:
            async with self._upstream.session().get(
                service.card_url, headers=headers, timeout=timeout, allow_redirects=False
            ) as resp:
                if resp.status != 200:
                    raise CardError(f"{host} answered HTTP {resp.status}")
                body = await read_limited(resp, CARD_LIMIT)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise CardError(f"{host} could not be reached ({type(exc).__name__})") from None
        if body is None:
            raise CardError(f"{host} sent a card larger than {CARD_LIMIT} bytes")
        try:
            card: Any = jsonfast.loads(body)
        except (ValueError, RecursionError):
            raise CardError(f"{host} sent a card that is not JSON") from None
        if not isinstance(card, dict):
            raise CardError(f"{host} sent a card that is not a JSON object")
        return card
