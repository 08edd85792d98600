"""The usage pipeline: handlers emit events, one owned writer task batches them into the store.

``emit`` is for the event loop's thread and costs a queue put (and, with a spool, the ``write``
of one line): it never waits and never raises.
A full queue (or a closed recorder) drops the event and counts it in ``dropped_events``. The
writer takes up to ``batch_size`` events (waiting ``flush_interval`` for a batch to fill when the
queue runs dry), bounds each (:meth:`UsageEvent.bound`: what a client sent can no longer make a
row fail), groups them by table and hands them to the store (:func:`agw.store.usage_repo.insert`),
which inserts each table's rows with one multi-row ``INSERT`` per chunk, all in one call on the
store's thread (:meth:`Database.write`): each statement is its own transaction, checked against
the store's files just before it, so a store changed under agwd is noticed before SQLite
touches it.

One row can still fail (a store's trigger or constraint, an encoding nobody foresaw): when a
chunk fails for a row's sake the writer inserts its rows one by one, writes every good row and
drops the bad ones, counted in ``rejected_events`` (and ``write_failures``) and logged as
``usage_row_rejected``. Rows the store itself refuses (unavailable, read-only, full) are
counted in ``write_failures`` and logged as ``usage_write_failed``; on a PostgreSQL store
that went away the writer waits instead (``usage_write_waiting``) and writes them once it is
back (:meth:`UsageRecorder._insert`). The logs carry counts and the error, never the events
(they can carry tool arguments), at most once per :data:`LOG_INTERVAL_S` (with how many lines
were left out), and the writer goes on.

Two kinds of observers:

- taps (the access log, the Prometheus metrics, the trace exporter) see every event, written or
  not: the writer hands each batch to them as it takes it from the queue (before writing it, so
  a failed write loses no log line or count), and an event dropped at :meth:`UsageRecorder.emit`
  is handed over at once. They run on the event loop, off the request's path: a tap called per
  request cost the data plane several times its microbenchmark (cold caches between requests),
  a tap called over a batch stays warm. A tap must not block; an exception is logged and
  swallowed. An event reaches the taps within ``flush_interval`` of its emit.
- listeners see each event once it is committed.

With a spool (:mod:`agw.usage.spool`, agwd's default), ``emit`` also appends each queued event
to a local file before it returns, and the writer deletes it once written: a ``kill -9`` of the
process loses none of its queued events. The next process on the same spool writes them at its
start (:meth:`UsageRecorder._replay`, before its own events), leaving out the rows already
stored; the taps and listeners do not see them again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable

from agw.errors import StoreUnavailable
from agw.store import usage_repo
from agw.store.engine import Store
from agw.store.usage_repo import TableRows
from agw.usage.events import UsageEvent
from agw.usage.spool import UsageSpool, read_segment

log = logging.getLogger(__name__)

Listener = Callable[[UsageEvent], None]

LOG_INTERVAL_S = 10.0
RETRY_MAX_S = 5.0  # the longest pause before writing again to a PostgreSQL store that went away


class _Throttle:
    """At most one log line per ``interval`` s; counts the ones left out."""

    def __init__(self, interval: float = LOG_INTERVAL_S) -> None:
        self._interval = interval
        self._next = 0.0
        self.suppressed = 0

    def ready(self) -> bool:
        now = time.monotonic()
        if now < self._next:
            self.suppressed += 1
            return False
        self._next = now + self._interval
        return True

    def take(self) -> int:
        n, self.suppressed = self.suppressed, 0
        return n


class UsageRecorder:
    def __init__(
        self,
        db: Store,
        *,
        queue_size: int = 4096,
        batch_size: int = 256,
        flush_interval: float = 0.05,
        listeners: Iterable[Listener] = (),
        spool: UsageSpool | None = None,
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
        self._rejected = 0
        self._written = 0
        self._failed_log = _Throttle()
        self._rejected_log = _Throttle()
        self._spool = spool
        self._spool_log = _Throttle()
        self._replayed = 0

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
    def rejected_events(self) -> int:
        """Events whose own row the store refused (a batch's other rows were written); also
        counted in ``write_failures``."""
        return self._rejected

    @property
    def written_events(self) -> int:
        return self._written

    @property
    def spool_failures(self) -> int:
        """Events queued but not appended to the spool (its disk full, a value JSON cannot
        hold): written as usual, lost only if the process is killed before."""
        return 0 if self._spool is None else self._spool.failures

    @property
    def replayed_events(self) -> int:
        """Rows of a previous process's spool written (or found stored already) at start."""
        return self._replayed

    @property
    def spool(self) -> UsageSpool | None:
        return self._spool

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
                if self._spool is not None and not self._spool.append(event):
                    self._spool_failed()
                return True
        except asyncio.QueueFull:
            pass
        except Exception:  # never let usage accounting break a request
            log.warning("usage_emit_failed", exc_info=False)
        self._dropped += 1
        self._bound((event,))
        self._tap((event,))
        return False

    def _spool_failed(self) -> None:
        if self._spool_log.ready():
            log.warning(
                "usage_spool_failed",
                extra={
                    "spool": str(self._spool.directory) if self._spool else "",
                    "failures": self.spool_failures,
                    "suppressed": self._spool_log.take(),
                },
            )

    @staticmethod
    def _bound(events: Iterable[UsageEvent]) -> None:
        for event in events:
            try:
                event.bound()
            except Exception as exc:  # its row then fails alone, and is counted
                log.warning("usage_bound_failed", extra={"error": type(exc).__name__})

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
                event = self._queue.get_nowait()
                self._bound((event,))
                self._tap((event,))
                self._queue.task_done()
            log.warning(
                "usage_flush_incomplete",
                extra={"events": lost, "timeout_s": timeout, "spooled": self._spool is not None},
            )
        if self._spool is not None:  # what was not written stays for the next start
            self._spool.close(keep=bool(lost))

    async def _run(self) -> None:
        await self._replay()
        while True:
            batch = await self._next_batch()
            try:
                if self._spool is not None:
                    self._spool.rotate()
                self._bound(batch)
                self._tap(batch)
                await self._write(batch)
                if self._spool is not None:  # not when cancelled: the next start replays
                    self._spool.done(len(batch))
            finally:
                for _ in batch:
                    self._queue.task_done()

    async def _replay(self) -> None:
        """Write the segments a previous process left in the spool, oldest first, leaving out
        the rows stored already; each segment is deleted once its rows are. A store that
        refuses them keeps them for the next start (logged)."""
        spool = self._spool
        if spool is None:
            return
        while spool.leftovers:
            path = spool.leftovers[0]
            try:
                segment = await asyncio.to_thread(read_segment, path)
            except OSError as exc:
                log.warning("usage_spool_unreadable", extra={"path": str(path), "error": str(exc)})
                spool.leftovers.pop(0)
                continue
            self._bound(segment.events)
            grouped: dict[type[UsageEvent], TableRows] = {}
            for event in segment.events:
                cls = type(event)
                rows = grouped.get(cls)
                if rows is None:
                    rows = grouped[cls] = TableRows(cls.table, cls.columns())
                try:
                    rows.rows.append((id(event), event.row()))
                except Exception:
                    segment.unreadable += 1
            if not grouped:  # a segment with no event (the killed process's newest, often)
                spool.leftovers.pop(0)
                with contextlib.suppress(OSError):
                    path.unlink()
                continue
            outcome = await self._insert(list(grouped.values()), skip_existing=True)
            if outcome.failed_by is not None:
                log.warning(
                    "usage_spool_replay_failed",
                    extra={
                        "path": str(path),
                        "error": type(outcome.failed_by).__name__,
                        "detail": usage_repo.error_detail(outcome.failed_by),
                    },
                )
                return
            self._replayed += len(outcome.written)
            log.info(
                "usage_spool_replayed",
                extra={
                    "path": str(path),
                    "events": len(outcome.written),
                    "rejected": len(outcome.rejected),
                    "unreadable": segment.unreadable,
                },
            )
            spool.leftovers.pop(0)
            with contextlib.suppress(OSError):
                path.unlink()

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
        grouped: dict[type[UsageEvent], TableRows] = {}
        encoded: list[UsageEvent] = []  # batch order, which the listeners see
        for event in batch:
            try:
                row = event.row()
            except Exception as exc:  # an unencodable payload loses its own event only
                self._rejected_rows(1, exc)
                continue
            cls = type(event)
            rows = grouped.get(cls)
            if rows is None:
                rows = grouped[cls] = TableRows(cls.table, cls.columns())
            rows.rows.append((id(event), row))
            encoded.append(event)
        if not encoded:
            self._in_flight = 0
            return
        try:
            outcome = await self._insert(list(grouped.values()))
        except Exception as exc:  # the store refused before the first statement
            self._lost(len(encoded), exc)
            return
        if outcome.rejected:
            assert outcome.rejected_by is not None
            self._rejected_rows(
                len(outcome.rejected), outcome.rejected_by, written=len(outcome.written)
            )
        lost = len(encoded) - len(outcome.written) - len(outcome.rejected)
        if outcome.failed_by is not None and lost:
            self._lost(lost, outcome.failed_by)
        written = [event for event in encoded if id(event) in outcome.written]
        self._in_flight = 0
        self._written += len(written)
        for event in written:
            for listener in self._listeners:
                try:
                    listener(event)
                except Exception as exc:
                    log.warning("usage_listener_failed", extra={"error": type(exc).__name__})

    async def _insert(
        self, parts: list[TableRows], *, skip_existing: bool = False
    ) -> usage_repo.InsertOutcome:
        """Insert ``parts``; on a PostgreSQL store that went away, insert what is left again
        after a pause (0.1 s doubling up to :data:`RETRY_MAX_S`) until it is written (or
        :meth:`close`'s time is up: then counted as dropped). The batch waits meanwhile and new
        events wait in the bounded queue (dropped and counted when it is full). A SQLite file
        that fails (read-only, deleted, full) is not waited for: its rows are lost at once,
        counted."""
        total = usage_repo.InsertOutcome()
        delay = 0.1
        while True:
            try:
                outcome = await usage_repo.insert(self._db, parts, skip_existing=skip_existing)
            except StoreUnavailable as exc:
                outcome = usage_repo.InsertOutcome(failed_by=exc)
            total.written |= outcome.written
            total.rejected |= outcome.rejected
            total.rejected_by = outcome.rejected_by or total.rejected_by
            total.failed_by = outcome.failed_by
            done = total.written | total.rejected
            retry = self._db.dialect == "postgresql"
            if not isinstance(outcome.failed_by, StoreUnavailable) or not retry:
                return total
            if self._failed_log.ready():
                log.warning(
                    "usage_write_waiting",
                    extra={
                        "error": usage_repo.error_detail(outcome.failed_by),
                        "retry_s": delay,
                        "suppressed": self._failed_log.take(),
                    },
                )
            await asyncio.sleep(delay)
            delay = min(delay * 2, RETRY_MAX_S)
            parts = [
                TableRows(p.table, p.columns, [r for r in p.rows if r[0] not in done])
                for p in parts
            ]

    def _rejected_rows(self, count: int, exc: Exception, written: int = 0) -> None:
        self._rejected += count
        self._write_failures += count
        self._in_flight = max(0, self._in_flight - count)
        if self._rejected_log.ready():
            log.warning(
                "usage_row_rejected",
                extra={
                    "events": count,
                    "written": written,
                    "error": type(exc).__name__,
                    "detail": usage_repo.error_detail(exc),
                    "suppressed": self._rejected_log.take(),
                },
            )

    def _lost(self, count: int, exc: Exception) -> None:
        self._write_failures += count
        self._in_flight = max(0, self._in_flight - count)
        if self._failed_log.ready():
            log.warning(
                "usage_write_failed",
                extra={
                    "events": count,
                    "error": type(exc).__name__,
                    "detail": usage_repo.error_detail(exc),
                    "suppressed": self._failed_log.take(),
                },
            )
