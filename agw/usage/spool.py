"""The usage spool: every queued event also appended to a local file, so that ``kill -9`` of
agwd loses no row it had not yet written (docs/observability.md, "The usage spool").

One spool is one directory, held by one process (``fcntl.flock`` on its ``lock`` file, released
by the kernel when the process dies, ``kill -9`` included). :meth:`UsageSpool.append` runs on
the event loop's thread at :meth:`UsageRecorder.emit`: one ``os.write`` of one line (compact
JSON: the table and the event's column values, before :meth:`UsageEvent.bound`) on an
``O_APPEND`` descriptor. A write that returned is in the kernel: it survives the process, not a
crash of the machine (no ``fsync``). The lines go into numbered segment files; the writer
starts a new segment each time it takes a batch (:meth:`UsageSpool.rotate`) and deletes a
segment once every event of it is done (:meth:`UsageSpool.done`: written, or counted as lost),
so the spool holds about the events not yet written. The events of a segment are the ones the
recorder queued while it was current, in queue order; the queue is FIFO, so counting the
events done is enough to know which segments are finished.

At start-up the recorder replays the segments a previous process left (:meth:`leftovers`,
:func:`read_segment`) with ``ON CONFLICT (event_id) DO NOTHING``: rows that process had
committed but not yet deleted from its spool are not written twice.

A spool that cannot be opened (no permission, disk full) or written is never a request's
failure: the recorder runs without it, or counts the line (``spool_failures``) and logs.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import operator
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import orjson

from agw.settings import Settings
from agw.usage.events import EVENT_TYPES, UsageEvent

log = logging.getLogger(__name__)

OFF = "off"
LOCK = "lock"
SEGMENT_PREFIX = "segment-"
SEGMENT_SUFFIX = ".jsonl"
MAX_SLOTS = 64  # name, name.1 ... name.63: the spools one name can have on one directory
_TABLES: dict[str, type[UsageEvent]] = {cls.table: cls for cls in EVENT_TYPES}
_GETTERS: dict[str, Callable[[UsageEvent], tuple[object, ...]]] = {
    cls.table: operator.attrgetter(*cls.columns()) for cls in EVENT_TYPES
}
_NEWLINE = orjson.OPT_APPEND_NEWLINE
_HEADER = orjson.dumps(
    {"agw_usage_spool": 1, "columns": {c.table: c.columns() for c in EVENT_TYPES}}
)


def spool_base(usage_spool: str, config_store: Path) -> Path | None:
    """The directory that holds the spools: ``--usage-spool``, else ``usage-spool`` beside the
    SQLite store (for a PostgreSQL store, beside the default store path: ``./data``); None
    with ``--usage-spool off``."""
    if usage_spool == OFF:
        return None
    return Path(usage_spool) if usage_spool else config_store.parent / "usage-spool"


def spool_name(replica_id: str, worker: int | None) -> str:
    """This process's spool in the base directory: its replica id (``agwd`` without one), then
    ``-worker-<index>`` with ``--workers``."""
    name = replica_id or "agwd"
    return name if worker is None else f"{name}-worker-{worker}"


@dataclass(slots=True)
class _Closed:
    path: Path
    end: int  # the queue position after its last event


@dataclass
class UsageSpool:
    """One process's spool directory, locked; see the module doc."""

    directory: Path
    _lock_fd: int
    leftovers: list[Path]  # segments of a previous process, oldest first
    _next_seq: int
    _fd: int = -1
    _path: Path | None = None
    _count: int = 0  # events queued so far (spooled or not: the queue position)
    _segment_start: int = 0
    _closed: list[_Closed] = field(default_factory=list)
    _done: int = 0
    failures: int = 0  # lines not spooled (their events are still queued)

    @classmethod
    def open(cls, base: Path, name: str) -> UsageSpool:
        """Lock the first free spool of ``name`` under ``base`` (``name``, else ``name.1``...:
        another live process holds it) and start a new segment. Raises OSError when none
        can be made or locked."""
        base.mkdir(parents=True, exist_ok=True, mode=0o700)
        for slot in range(MAX_SLOTS):
            directory = base / (name if slot == 0 else f"{name}.{slot}")
            fd = lock(directory)
            if fd is None:
                continue
            if slot:
                log.warning(
                    "usage_spool_in_use",
                    extra={"spool": str(base / name), "using": str(directory)},
                )
            segments = sorted(_segments(directory))
            seq = _seq(segments[-1]) + 1 if segments else 1
            spool = cls(directory, fd, segments, seq)
            try:
                spool._start_segment()
            except OSError:
                spool.close()
                raise
            return spool
        raise OSError(f"every usage spool {name}[.1-{MAX_SLOTS - 1}] under {base} is in use")

    def _start_segment(self) -> None:
        path = self.directory / f"{SEGMENT_PREFIX}{self._next_seq:012d}{SEGMENT_SUFFIX}"
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, _HEADER + b"\n")
        except OSError:
            os.close(fd)
            with contextlib.suppress(OSError):
                path.unlink()
            raise
        self._next_seq += 1
        self._fd, self._path, self._segment_start = fd, path, self._count

    def append(self, event: UsageEvent) -> bool:
        """Append ``event`` (just queued) as one line; False when it could not be (counted)."""
        self._count += 1
        try:
            line = orjson.dumps((event.table, _GETTERS[event.table](event)), option=_NEWLINE)
        except TypeError:  # a value JSON cannot hold (a lone surrogate, a 65-bit integer)
            try:
                event.bound()
                line = orjson.dumps((event.table, _GETTERS[event.table](event)), option=_NEWLINE)
            except Exception:
                self.failures += 1
                return False
        try:
            os.write(self._fd, line)
        except OSError:  # disk full, the file gone: the event still goes to the store
            self.failures += 1
            return False
        return True

    def rotate(self) -> None:
        """The writer took a batch: the current segment (when it holds events) is closed and
        a new one started (if that fails, the current one stays in use)."""
        if self._count == self._segment_start or self._path is None:
            return
        fd, path = self._fd, self._path
        try:
            self._start_segment()
        except OSError:  # appends go on into the current segment
            return
        os.close(fd)
        self._closed.append(_Closed(path, self._segment_start))

    def done(self, count: int) -> None:
        """``count`` more events, in queue order, are written or counted as lost: delete the
        closed segments all of whose events are."""
        self._done += count
        while self._closed and self._closed[0].end <= self._done:
            with contextlib.suppress(OSError):
                self._closed.pop(0).path.unlink()

    def close(self, *, keep: bool = False) -> None:
        """Stop: the segments go (unless ``keep``: events in them were not written, the next
        start replays them) and the lock is released."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        if not keep:
            for closed in self._closed:
                with contextlib.suppress(OSError):
                    closed.path.unlink()
            if self._path is not None:
                with contextlib.suppress(OSError):
                    self._path.unlink()
        self._closed.clear()
        if self._lock_fd >= 0:
            os.close(self._lock_fd)  # releases the flock
            self._lock_fd = -1


def lock(directory: Path) -> int | None:
    """An fd holding ``directory``'s lock (created with it), or None: another process holds it."""
    directory.mkdir(exist_ok=True, mode=0o700)
    fd = os.open(directory / LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    except OSError:
        os.close(fd)
        raise
    return fd


def _segments(directory: Path) -> Iterator[Path]:
    for path in directory.iterdir():
        if path.name.startswith(SEGMENT_PREFIX) and path.name.endswith(SEGMENT_SUFFIX):
            yield path


def _seq(path: Path) -> int:
    digits = path.name.removeprefix(SEGMENT_PREFIX).removesuffix(SEGMENT_SUFFIX)
    return int(digits) if digits.isdigit() else 0


@dataclass
class Segment:
    """A leftover segment read back: its events, and how many lines could not be read."""

    events: list[UsageEvent]
    unreadable: int = 0


def read_segment(path: Path) -> Segment:
    """The events of a leftover segment, each built again from its line (a line cut short by
    a full disk, or of a table this agw does not know, is counted as unreadable)."""
    out = Segment([])
    columns: dict[str, list[str]] = {t: list(c.columns()) for t, c in _TABLES.items()}
    with path.open("rb") as f:
        for raw in f:
            try:
                value = orjson.loads(raw)
                if isinstance(value, dict):  # the header: the columns it was written with
                    columns = {str(t): list(c) for t, c in value["columns"].items()}
                    continue
                table, values = value
                cls = _TABLES[table]
                known = set(cls.columns())
                kwargs = {c: v for c, v in zip(columns[table], values, strict=True) if c in known}
                out.events.append(cls(**kwargs))
            except Exception:
                out.unreadable += 1
    return out


def open_spool(settings: Settings, worker: int | None = None) -> UsageSpool | None:
    """This process's spool (:func:`spool_base`, :func:`spool_name`), or None: ``off``, or it
    cannot be opened (logged; the recorder then runs without one, as before)."""
    base = spool_base(settings.usage_spool, settings.config_store)
    if base is None:
        return None
    try:
        return UsageSpool.open(base, spool_name(settings.replica_id, worker))
    except OSError as exc:
        log.error("usage_spool_unavailable", extra={"spool": str(base), "error": str(exc)})
        return None
