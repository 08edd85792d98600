"""Usage retention: delete events older than N days, at startup and every few hours."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from agw.clock import now_ms as current_ms
from agw.store import usage_repo
from agw.store.engine import Store
from agw.usage.events import USAGE_TABLES

log = logging.getLogger(__name__)

DAY_MS = 86_400_000
DEFAULT_RETENTION_DAYS = 30
DEFAULT_INTERVAL_S = 6 * 3600.0


async def purge_older_than(db: Store, days: int, now_ms: int | None = None) -> int:
    """Delete the usage rows of every usage table whose ``started_at`` is before
    ``now - days``, in one transaction; returns how many rows went."""
    if days < 0:
        raise ValueError("days must not be negative")
    cutoff = (current_ms() if now_ms is None else now_ms) - days * DAY_MS
    return await usage_repo.delete_before(db, USAGE_TABLES, cutoff)


class RetentionJanitor:
    """Runs :func:`purge_older_than` when started and then every ``interval_s`` seconds.

    ``days`` 0 means the default of 30 days, as ``metrics { retention_days }`` does.
    """

    def __init__(self, db: Store, days: int, interval_s: float = DEFAULT_INTERVAL_S) -> None:
        if days < 0:
            raise ValueError("retention days must not be negative")
        if interval_s <= 0:
            raise ValueError("interval_s must be positive")
        self._db = db
        self.days = days or DEFAULT_RETENTION_DAYS
        self.interval_s = interval_s
        self._task: asyncio.Task[None] | None = None
        self.runs = 0
        self.purged_rows = 0

    def start(self) -> None:
        """Start the owned purge task (in the running loop). Starting twice is a no-op."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="usage-retention")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        while True:
            try:
                deleted = await purge_older_than(self._db, self.days)
            except Exception as exc:
                log.warning("usage_retention_failed", extra={"error": type(exc).__name__})
            else:
                self.purged_rows += deleted
                if deleted:
                    log.info(
                        "usage_retention_purged", extra={"deleted": deleted, "days": self.days}
                    )
            self.runs += 1
            await asyncio.sleep(self.interval_s)
