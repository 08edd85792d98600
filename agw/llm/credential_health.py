"""Runtime health of managed credentials: quota backoff after a 429, auth failures.

In memory, per gateway process (as in the Go project). A credential that was rate limited is
skipped until its backoff ends (the upstream's ``Retry-After`` when it sent one, else 1, 2, 4 ...
seconds up to 5 minutes); one the upstream refused (401/403) is skipped for 5 minutes. A success
clears both. ``GET /admin/credentials`` shows the state.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from agw.clock import rfc3339
from agw.types import JsonObj

MAX_BACKOFF_S = 300.0
AUTH_COOLDOWN_S = 300.0


def _rfc3339(ts: float) -> str | None:
    return rfc3339(ts) if ts else None


def retry_after_seconds(value: str | None) -> float | None:
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None
    return min(max(seconds, 0.0), MAX_BACKOFF_S)


@dataclass
class CredentialState:
    unavailable_until: float = 0.0  # unix seconds
    backoff_level: int = 0
    quota_exceeded: bool = False
    reason: str = ""
    last_error: str = ""
    auth_invalid: bool = False
    updated_at: float = 0.0


class CredentialHealth:
    def __init__(self) -> None:
        self._states: dict[str, CredentialState] = {}

    def available(self, credential_id: str, now: float | None = None) -> bool:
        state = self._states.get(credential_id)
        return state is None or state.unavailable_until <= (now or time.time())

    def next_available(self, credential_ids: list[str]) -> float | None:
        """When the first of these credentials comes back (unix seconds)."""
        times = [
            s.unavailable_until
            for cid in credential_ids
            if (s := self._states.get(cid)) is not None
        ]
        return min(times) if times else None

    def succeeded(self, credential_id: str) -> None:
        if credential_id in self._states:
            del self._states[credential_id]

    def failed(
        self, credential_id: str, status: int, message: str, retry_after: str | None
    ) -> None:
        now = time.time()
        state = self._states.setdefault(credential_id, CredentialState())
        state.last_error = message[:300]
        state.updated_at = now
        if status == 429:
            delay = retry_after_seconds(retry_after)
            if delay is None:
                delay = min(2.0**state.backoff_level, MAX_BACKOFF_S)
            state.backoff_level += 1
            state.quota_exceeded = True
            state.reason = "rate limited by the upstream (429)"
            state.unavailable_until = now + delay
        elif status in (401, 403):
            state.auth_invalid = True
            state.reason = f"refused by the upstream ({status})"
            state.unavailable_until = now + AUTH_COOLDOWN_S

    def view(self, credential_id: str) -> JsonObj:
        state = self._states.get(credential_id) or CredentialState()
        unavailable = state.unavailable_until > time.time()
        return {
            "unavailable": unavailable,
            "next_retry_after": _rfc3339(state.unavailable_until) if unavailable else None,
            "quota": {
                "exceeded": state.quota_exceeded and unavailable,
                "reason": state.reason,
                "next_recover_at": _rfc3339(state.unavailable_until) if unavailable else None,
                "backoff_level": state.backoff_level,
            },
            "last_error": state.last_error,
            "auth_invalid": state.auth_invalid,
            "state_updated_at": _rfc3339(state.updated_at),
        }
