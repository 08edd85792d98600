"""Permission requests of ACP agents (``session/request_permission``), fail-closed.

The answer on the wire is ACP's nested shape: ``{"outcome": {"outcome": "selected", "optionId":
"..."}}`` or ``{"outcome": {"outcome": "cancelled"}}``; anything but an explicit selection of one
of the offered options is sent as cancelled.

Modes (``permission_mode`` of the service):

- ``deny`` (the default): always cancelled.
- ``auto_approve``: the first option whose ``kind`` or ``name`` contains "allow" or "approve"
  (case-insensitive; the id from ``optionId``, or the legacy ``id``); none: cancelled.
- ``interactive``: while a turn streams on the instance, the request becomes a pending entry
  ``perm-<32 hex>`` shown to that turn's client as a ``permission`` event; the decision comes
  back through ``POST <route>/permission`` (only for the route's own service, and only from the
  route and principal, virtual key or anonymous, of the turn that asked) or the admin API.
  Entries are one-shot. No decision within the timeout (60 s; ``AGW_ACP_PERMISSION_TIMEOUT_S``),
  no client to ask, or the turn ending first: cancelled, and the entry is gone (a late answer
  finds nothing). Transient connections (session list, transcript) have no client: deny.

The :class:`PermissionRegistry` is shared by the data plane and the admin API.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from agw.clock import rfc3339_ms
from agw.errors import InvalidRequest
from agw.types import JsonObj

log = logging.getLogger(__name__)

Outcome = Literal["selected", "cancelled"]

DEFAULT_TIMEOUT_S = 60.0
TIMEOUT_ENV = "AGW_ACP_PERMISSION_TIMEOUT_S"
_APPROVING = ("allow", "approve")


def cancelled() -> JsonObj:
    return {"outcome": {"outcome": "cancelled"}}


def selected(option_id: str) -> JsonObj:
    return {"outcome": {"outcome": "selected", "optionId": option_id}}


def _option_id(option: Mapping[str, Any]) -> str:
    for key in ("optionId", "id"):
        value = option.get(key)
        if isinstance(value, str) and value:
            return value
    return ""


def offered_options(params: Mapping[str, Any]) -> list[str]:
    """The option ids a request offers, in order."""
    options = params.get("options")
    if not isinstance(options, list):
        return []
    return [oid for o in options if isinstance(o, dict) and (oid := _option_id(o))]


def auto_approve(params: Mapping[str, Any]) -> JsonObj:
    """The first approving option of the request, else cancelled."""
    options = params.get("options")
    for option in options if isinstance(options, list) else []:
        if not isinstance(option, dict):
            continue
        words = " ".join(str(option.get(k) or "") for k in ("kind", "name")).lower()
        option_id = _option_id(option)
        if option_id and any(w in words for w in _APPROVING):
            return selected(option_id)
    return cancelled()


def timeout_from_env(env: Mapping[str, str] | None = None) -> float:
    """The interactive timeout in seconds: ``AGW_ACP_PERMISSION_TIMEOUT_S`` (a positive number)
    or 60. A value that is not a positive finite number is ignored (logged)."""
    raw = (os.environ if env is None else env).get(TIMEOUT_ENV, "").strip()
    if not raw:
        return DEFAULT_TIMEOUT_S
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value <= 0:
        log.warning("acp_permission_timeout_invalid", extra={"value": raw})
        return DEFAULT_TIMEOUT_S
    return value


@dataclass(slots=True)
class PendingPermission:
    request_id: str
    service_id: str
    session_id: str
    created_at_ms: int
    data: JsonObj  # the raw request_permission params
    future: asyncio.Future[JsonObj] = field(repr=False)
    owner: object = None  # the turn that asked (its pending entries end with it)
    principal: str = ""  # who may answer on a route: the route and principal of that turn

    def view(self) -> JsonObj:
        return {
            "request_id": self.request_id,
            "service_id": self.service_id,
            "session_id": self.session_id,
            "created_at": rfc3339_ms(self.created_at_ms),
            "data": self.data,
        }


class PermissionRegistry:
    """Pending interactive permission requests by id (``perm-<32 hex>``, passed through
    ``label``: agw.acp.replica tags it with the replica's name)."""

    def __init__(
        self, timeout_s: float = DEFAULT_TIMEOUT_S, label: Callable[[str], str] = str
    ) -> None:
        self.timeout_s = timeout_s
        self.label = label
        self._pending: dict[str, PendingPermission] = {}

    def __len__(self) -> int:
        return len(self._pending)

    def open(
        self,
        service_id: str,
        session_id: str,
        data: JsonObj,
        owner: object = None,
        *,
        principal: str = "",
    ) -> PendingPermission:
        """A new pending entry; await :meth:`wait` for its decision. ``principal``: who may
        answer it through a route (see :meth:`resolve`)."""
        request_id = self.label("perm-" + secrets.token_hex(16))
        entry = PendingPermission(
            request_id,
            service_id,
            session_id,
            time.time_ns() // 1_000_000,
            data,
            asyncio.get_running_loop().create_future(),
            owner,
            principal,
        )
        self._pending[request_id] = entry
        return entry

    async def wait(self, entry: PendingPermission) -> JsonObj:
        """The decision (the ACP result), or cancelled after the timeout; the entry is removed
        either way."""
        try:
            return await asyncio.wait_for(asyncio.shield(entry.future), self.timeout_s)
        except TimeoutError:
            log.info(
                "acp_permission_timed_out",
                extra={"request_id": entry.request_id, "service_id": entry.service_id},
            )
            return cancelled()
        finally:
            self._pending.pop(entry.request_id, None)
            if not entry.future.done():
                entry.future.set_result(cancelled())

    def get(self, request_id: str) -> PendingPermission | None:
        return self._pending.get(request_id)

    def pending(self) -> list[JsonObj]:
        """``[{request_id, service_id, session_id, created_at, data}]``, oldest first."""
        return [e.view() for e in self._pending.values()]

    def resolve(
        self,
        request_id: str,
        outcome: str,
        option_id: str | None = None,
        *,
        service_id: str | None = None,
        principal: str | None = None,
    ) -> bool:
        """Answer a pending request once. False when it is unknown, expired, already answered,
        (``service_id`` given) another service's, or (``principal`` given: a route's caller)
        asked by another principal's turn; the admin API gives neither. Raises
        :class:`InvalidRequest` for an outcome other than ``selected``/``cancelled``,
        ``selected`` without ``option_id``, or an option the request did not offer (the entry
        then stays pending)."""
        if outcome not in ("selected", "cancelled"):
            raise InvalidRequest('outcome must be "selected" or "cancelled"')
        if outcome == "selected" and not option_id:
            raise InvalidRequest('option_id is required for outcome "selected"')
        entry = self._pending.get(request_id)
        if entry is None or entry.future.done():
            return False
        if service_id is not None and entry.service_id != service_id:
            return False
        if principal is not None and entry.principal != principal:
            return False
        if outcome == "selected":
            assert option_id is not None
            offered = offered_options(entry.data)
            if option_id not in offered:
                raise InvalidRequest(
                    f'option_id "{option_id}" is not one of the offered options: '
                    + ", ".join(offered)
                )
            result = selected(option_id)
        else:
            result = cancelled()
        del self._pending[request_id]
        entry.future.set_result(result)
        return True

    def cancel_owned(self, owner: object) -> int:
        """Cancel every pending entry opened by ``owner`` (a turn that ended or lost its
        client); returns how many."""
        n = 0
        for request_id, entry in list(self._pending.items()):
            if entry.owner is owner:
                del self._pending[request_id]
                if not entry.future.done():
                    entry.future.set_result(cancelled())
                n += 1
        return n

    def close(self) -> None:
        """Cancel everything (shutdown)."""
        for entry in self._pending.values():
            if not entry.future.done():
                entry.future.set_result(cancelled())
        self._pending.clear()
