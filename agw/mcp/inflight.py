"""The calls in flight and what ran: what ``/admin/mcp/runtime`` shows (reference §5.8 shapes).

- :class:`InFlight`: one client request while it runs; cancellable (by the client's
  ``notifications/cancelled``, a disconnect, the session's end, or the admin API);
- :class:`Registry`: the calls in flight (by request key), their progress, a history ring of
  finished requests (1000), and the recent fail-open skips of services (100).

A finished request is kept as its :class:`InFlight` and shown as a dict only when the admin
API asks: the request path builds no view.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any

from agw.clock import now_ms
from agw.types import JsonObj

HISTORY = 1000
FAILURES = 100
PROGRESS = 1000
PROGRESS_MESSAGE_CHARS = 500  # of a progress message, as the admin view keeps it
ERROR_CHARS = 500  # of an error message kept in the history (the client still gets it whole)


class InFlight:
    """One client request while it runs (then, finished, its history entry)."""

    __slots__ = (
        "cancel_reason",
        "cancelled_at",
        "completed_at",
        "error",
        "method",
        "progress_token",
        "request_id",
        "request_key",
        "route_id",
        "session_short",
        "started_at",
        "task",
    )

    def __init__(
        self,
        route_id: str,
        request_id: str,
        request_key: str,
        method: str,
        session_short: str,  # the session as views show it (masked)
        progress_token: Any = None,
    ) -> None:
        self.route_id = route_id
        self.request_id = request_id
        self.request_key = request_key
        self.method = method
        self.session_short = session_short
        self.started_at = now_ms()
        self.progress_token = progress_token
        # the task running it while it can be cancelled (None before and after)
        self.task: asyncio.Task[Any] | None = None
        self.cancelled_at: int | None = None
        self.cancel_reason: str | None = None
        self.completed_at = 0
        self.error: str | None = None

    def cancel(self, reason: str) -> bool:
        task = self.task
        if task is None or task.done() or self.cancelled_at is not None:
            return False
        self.cancelled_at = now_ms()
        self.cancel_reason = reason
        task.cancel()
        return True

    def view(self) -> JsonObj:
        out: JsonObj = {
            "route_id": self.route_id,
            "request_id": self.request_id,
            "request_key": self.request_key,
            "method": self.method,
            "started_at": self.started_at,
        }
        if self.progress_token is not None:
            out["progress_token"] = self.progress_token
            out["progress_token_key"] = f"{self.session_short}:{self.progress_token}"
        if self.cancelled_at is not None:
            out["cancelled_at"] = self.cancelled_at
            out["cancel_reason"] = self.cancel_reason
        return out

    def done_view(self) -> JsonObj:
        out: JsonObj = {
            "route_id": self.route_id,
            "request_id": self.request_id,
            "request_key": self.request_key,
            "method": self.method,
            "started_at": self.started_at,
            "completed_at": self.completed_at,
        }
        if self.cancelled_at is not None:
            out["cancelled"] = True
            out["cancel_reason"] = self.cancel_reason
        if self.error:
            out["error"] = self.error[:ERROR_CHARS]
        return out


def _number(value: Any) -> int | float | None:
    return value if isinstance(value, int | float) and not isinstance(value, bool) else None


class Registry:
    """What runs and what ran."""

    def __init__(self) -> None:
        self._inflight: dict[str, InFlight] = {}  # by request_key
        self._progress: dict[str, JsonObj] = {}
        self._history: deque[InFlight] = deque(maxlen=HISTORY)
        self._failures: deque[JsonObj] = deque(maxlen=FAILURES)
        self._serial = 0

    def begin(
        self,
        route_id: str,
        session_short: str,
        modern: bool,
        request_id: str,
        method: str,
        progress_token: Any,
    ) -> InFlight:
        key = f"{session_short}:{request_id}"
        if modern:
            # Stateless clients sharing one (route, key) session pick their ids independently
            # (small counters): each call gets its own key, and none is findable by its id
            # alone (the modern era cancels by closing the stream, not by notification).
            self._serial += 1
            key = f"{key}#{self._serial}"
        entry = InFlight(route_id, request_id, key, method, session_short, progress_token)
        self._inflight[key] = entry
        return entry

    def end(self, entry: InFlight, error: str | None) -> None:
        entry.task = None
        if self._inflight.get(entry.request_key) is entry:
            del self._inflight[entry.request_key]
        if entry.progress_token is not None:
            self._progress.pop(self._progress_key(entry), None)
        entry.completed_at = now_ms()
        entry.error = error
        self._history.append(entry)

    @staticmethod
    def _progress_key(entry: InFlight) -> str:
        return f"{entry.route_id}\x00{entry.request_key}\x00{entry.progress_token}"

    def progress(self) -> list[JsonObj]:
        return list(self._progress.values())

    def record_progress(self, entry: InFlight, params: JsonObj, method: str) -> None:
        key = self._progress_key(entry)
        if key not in self._progress and len(self._progress) >= PROGRESS:
            self._progress.pop(next(iter(self._progress)))
        item: JsonObj = {
            "route_id": entry.route_id,
            "progress_token": entry.progress_token,
            "progress_token_key": f"{entry.session_short}:{entry.progress_token}",
            "request_id": entry.request_id,
            "request_key": entry.request_key,
            "progress": _number(params.get("progress")),
            "last_method": method,
            "updated_at": now_ms(),
        }
        # kept for the admin view (1000 of them): what the upstream sent, bounded
        total, message = _number(params.get("total")), params.get("message")
        if total is not None:
            item["total"] = total
        if isinstance(message, str):
            item["message"] = message[:PROGRESS_MESSAGE_CHARS]
        self._progress[key] = item

    def inflight(self) -> list[JsonObj]:
        return [e.view() for e in self._inflight.values()]

    def find(self, route_id: str, request_id: str) -> list[InFlight]:
        """In-flight entries of the route whose request id or request key is ``request_id``."""
        return [
            e
            for e in self._inflight.values()
            if e.route_id == route_id and request_id in (e.request_id, e.request_key)
        ]

    def history(self, route_id: str | None = None) -> list[JsonObj]:
        return [e.done_view() for e in self._history if route_id is None or e.route_id == route_id]

    def failed(self, route_id: str, service_id: str, method: str, error: str) -> None:
        self._failures.append(
            {
                "route_id": route_id,
                "service_id": service_id,
                "method": method,
                "error": error[:ERROR_CHARS],
                "at": now_ms(),
            }
        )

    def failures(self) -> list[JsonObj]:
        return list(self._failures)
