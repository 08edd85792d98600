"""The usage pipeline: handlers emit events, one owned writer task batches them into SQLite.

``emit`` is for the event loop's thread and costs a queue put: it never waits and never raises.
A full queue (or a closed recorder) drops the event and counts it in ``dropped_events``. The
writer takes up to ``batch_size`` events (waiting ``flush_interval`` for a batch to fill when the
queue runs dry), groups them by table and inserts them with ``executemany`` in one transaction.
A batch that fails is counted in ``write_failures`` and logged as ``usage_write_failed`` (with
counts and the error, never the events: they can carry tool arguments), and the writer goes on.

Two kinds of observers:

- taps (the access log, the Prometheus metrics, the trace exporter) see every event, written or
  not: the writer hands each batch to them as it takes it from the queue (before writing it, so
  a failed write loses no log line or count), and an event dropped at :meth:`UsageRecorder.emit`
  is handed over at once. They run on the event loop, off the request's path: a tap called per
  request cost the data plane several times its microbenchmark (cold caches between requests),
  a tap called over a batch stays warm. A tap must not block; an exception is logged and
  swallowed. An event reaches the taps within ``flush_interval`` of its emit.
- listeners see each event once it is committed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
from collections.abc import Callable, Iterable

from agw.store.db import Database
from agw.usage.events import UsageEvent

log = logging.getLogger(__name__)

Listener = Callable[[UsageEvent], None]


class UsageRecorder:
    def __init__(
        self,
        db: Database,
        *,
        queue_size: int = 4096,
        batch_size: int = 256,
        flush_interval: float = 0.05,
        listeners: Iterable[Listener] = (),
    ) -> None:
        if queue_size < 1 or batch_size < 1:
            raise ValueError("queue_size and batch_size must be at least 1")
        if flush_interval < 0:
            raise ValueError("flush_interval must not be negative")
        self._db = db
        self._queue: asyncio.Queue[UsageEvent] = asyncio.Queue(maxsize=queue_size)
        self._batch_size = batch_size
        self._flush_interval = flush_interval
        self._listeners = list(listeners)
        self._taps: list[Listener] = []
        self._task: asyncio.Task[None] | None = None
        self._closing = asyncio.Event()
        self._accepting = True
        self._closed = False
        self._in_flight = 0  # events taken from the queue, not yet committed or counted as lost
        self._dropped = 0
        self._write_failures = 0
        self._written = 0

    @property
    def dropped_events(self) -> int:
        """Events never written because the queue was full, the recorder closed, or close()
        ran out of time."""
        return self._dropped

    @property
    def write_failures(self) -> int:
        """Events lost because their batch (or their own encoding) failed."""
        return self._write_failures

    @property
    def written_events(self) -> int:
        return self._written

    @property
    def queue_depth(self) -> int:
        return self._queue.qsize()

    def add_listener(self, listener: Listener) -> None:
        """Call ``listener(event)`` for each event once it is committed; errors are logged."""
        self._listeners.append(listener)

    def add_tap(self, tap: Listener) -> None:
        """Call ``tap(event)`` for every emitted event (dropped ones too), see the module doc."""
        self._taps.append(tap)

    def start(self) -> None:
        """Start the writer task (in the running loop). Starting twice is a no-op."""
        if self._closed:
            raise RuntimeError("usage recorder is closed")
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="usage-recorder")

    def emit(self, event: UsageEvent) -> bool:
        """Queue ``event`` for writing; False (and counted as dropped) when it cannot be."""
        try:
            if self._accepting:
                self._queue.put_nowait(event)
                return True
        except asyncio.QueueFull:
            pass
        except Exception:  # never let usage accounting break a request
            log.warning("usage_emit_failed", exc_info=False)
        self._dropped += 1
        self._tap((event,))
        return False

    def _tap(self, events: Iterable[UsageEvent]) -> None:
        for tap in self._taps:
            for event in events:
                try:
                    tap(event)
                except Exception as exc:  # an observer never breaks the pipeline
                    log.warning("usage_tap_failed", extra={"error": type(exc).__name__})

    # A shutdown budget, not a cancellation scope: the flush must not be cut by the caller's.
    async def close(self, timeout: float = 5.0) -> None:  # noqa: ASYNC109
        """Stop accepting, write what is queued (for at most ``timeout`` s), stop the writer.

        Events still unwritten when the time is up are counted in ``dropped_events``.
        """
        if self._closed:
            return
        self._closed = True
        self._accepting = False
        self._closing.set()
        if self._task is None and not self._queue.empty():
            self._task = asyncio.get_running_loop().create_task(self._run(), name="usage-recorder")
        if self._task is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._queue.join(), timeout)
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        lost = self._queue.qsize() + self._in_flight
        if lost:
            self._dropped += lost
            self._in_flight = 0
            while not self._queue.empty():
                self._tap((self._queue.get_nowait(),))
                self._queue.task_done()
            log.warning("usage_flush_incomplete", extra={"events": lost, "timeout_s": timeout})

    async def _run(self) -> None:
        while True:
            batch = await self._next_batch()
            try:
                self._tap(batch)
                await self._write(batch)
            finally:
                for _ in batch:
                    self._queue.task_done()

    async def _next_batch(self) -> list[UsageEvent]:
        batch = [await self._queue.get()]
        self._in_flight = 1
        if (
            self._queue.qsize() < self._batch_size - 1
            and self._flush_interval > 0
            and not self._closing.is_set()
        ):
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._flush_interval):
                    await self._closing.wait()
        while len(batch) < self._batch_size and not self._queue.empty():
            batch.append(self._queue.get_nowait())
        self._in_flight = len(batch)
        return batch

    async def _write(self, batch: list[UsageEvent]) -> None:
        grouped: dict[type[UsageEvent], list[tuple[object, ...]]] = {}
        written: list[UsageEvent] = []
        for event in batch:
            try:
                row = event.row()
            except Exception as exc:  # an unencodable payload loses its own event only
                self._lost(1, exc)
                continue
            grouped.setdefault(type(event), []).append(row)
            written.append(event)
        if not written:
            self._in_flight = 0
            return
        try:
            async with self._db.transaction() as conn:
                for cls, rows in grouped.items():
                    await conn.executemany(cls.insert_sql(), rows)
        except Exception as exc:
            self._lost(len(written), exc)
            return
        self._in_flight = 0
        self._written += len(written)
        for event in written:
            for listener in self._listeners:
                try:
                    listener(event)
                except Exception as exc:
                    log.warning("usage_listener_failed", extra={"error": type(exc).__name__})

    def _lost(self, count: int, exc: Exception) -> None:
        self._write_failures += count
        self._in_flight = max(0, self._in_flight - count)
        # SQLite's messages name tables and constraints, never bound values; other errors
        # (a payload that JSON cannot encode) are named by type only.
        detail = str(exc) if isinstance(exc, sqlite3.Error) else ""
        log.warning(
            "usage_write_failed",
            extra={"events": count, "error": type(exc).__name__, "detail": detail},
        )
