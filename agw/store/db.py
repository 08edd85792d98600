"""One SQLite file: connection with its pragmas, and the numbered migration runner.

Writes go through :meth:`Database.transaction` (``BEGIN IMMEDIATE`` on the one write connection)
or, for the usage writer, :meth:`Database.write` (statements in autocommit, in one call on the
connection's thread); the file is created mode 0600. The secrets in it are sealed with the
store's key (:mod:`agw.store.secrets`), which :meth:`Database.open` unlocks before migrating:
:attr:`Database.box`.

The files can change under a running agwd. Deleted or replaced, the open connection would go on
writing into a file nobody will read again; made read-only, or with its WAL index (``-shm``,
which SQLite maps into memory) truncated, the next write through the mapping kills the process
with SIGBUS. So before every transaction and every statement of :meth:`Database.write`, and on
each health check, :meth:`Database.problem` compares the files with the ones opened (device and
inode of the database, ``-wal`` and ``-shm``, the sizes of the database and ``-shm``, which
only grow while agwd runs (no VACUUM, no auto_vacuum), write access to the database and
``-shm``: five system calls) and refuses with
:class:`~agw.errors.StoreUnavailable` (503) when they differ. A deleted, replaced or truncated
file stays refused until agwd restarts; a read-only one is accepted again once writable. The
check narrows the SIGBUS window to a change that lands while SQLite runs a statement; it cannot
close it (docs/security.md, "Usage rows and the store").
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import aiosqlite

from agw.errors import SchemaTooNew, StoreError, StoreUnavailable
from agw.store import secrets

if TYPE_CHECKING:
    from agw.store.engine import Conn

log = logging.getLogger(__name__)
T = TypeVar("T")

BUSY_TIMEOUT_MS = 60_000
_MIGRATION_NAME = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")
# SQLite's primary result codes that mean the file, not the statement, failed: PERM, READONLY,
# IOERR, CORRUPT, FULL, CANTOPEN, NOTADB.
_STORE_FAILURES = frozenset({3, 8, 10, 11, 13, 14, 26})
# What one row of a usage insert can make a statement raise: a constraint or trigger
# (IntegrityError), a value SQLite refuses (DataError: too big), a value sqlite3 cannot bind
# (InterfaceError, OverflowError, UnicodeEncodeError, a ValueError). Anything else is the
# store's and fails the whole batch.
_ROW_ERRORS = (
    sqlite3.IntegrityError,
    sqlite3.DataError,
    sqlite3.InterfaceError,
    sqlite3.ProgrammingError,
    OverflowError,
    ValueError,
    TypeError,
)


def migrations_dir() -> Path:
    here = Path(__file__).resolve().parent.parent
    for candidate in (here.parent / "migrations", here / "_migrations"):
        if candidate.is_dir():
            return candidate
    raise StoreError("migrations directory not found")


def supported_version(store: object, current: int) -> int:
    """``current``, the schema version of ``store``, unless it is newer than this agw knows
    (:class:`SchemaTooNew`): both engines check it before migrating."""
    files = migration_files()
    latest = files[-1][0] if files else 0
    if current > latest:
        raise SchemaTooNew(
            f"config store {store} has schema version {current}, newer than this "
            f"agw supports ({latest}); upgrade agw or use another --config-store"
        )
    return current


def migration_files() -> list[tuple[int, Path]]:
    found = []
    for path in sorted(migrations_dir().iterdir()):
        match = _MIGRATION_NAME.match(path.name)
        if match:
            found.append((int(match.group(1)), path))
    numbers = [n for n, _ in found]
    if numbers != list(range(1, len(numbers) + 1)):
        raise StoreError(f"migrations must be numbered 1..N without gaps, found {numbers}")
    return found


def split_statements(script: str) -> list[str]:
    statements, current = [], ""
    for line in script.splitlines(keepends=True):
        current += line
        if sqlite3.complete_statement(current):
            if current.strip():
                statements.append(current.strip())
            current = ""
    if current.strip() and not all(
        ln.strip().startswith("--") or not ln.strip() for ln in current.splitlines()
    ):
        raise StoreError(f"incomplete SQL statement at end of migration: {current.strip()[:60]}")
    return statements


class Database:
    dialect = "sqlite"

    def __init__(self, conn: aiosqlite.Connection, path: Path) -> None:
        self.conn = conn
        self.path = path
        self._box: secrets.SecretBox | None = None  # set by open(), before the migrations
        # One write connection: transactions from different tasks (config writes, the usage
        # writer) take turns instead of nesting.
        self._write_lock = asyncio.Lock()
        self._reader: aiosqlite.Connection | None = None
        self._reader_lock = asyncio.Lock()
        self._identity: dict[Path, tuple[int, int]] = {}  # database, -wal, -shm as opened
        self._sizes: dict[Path, int] = {}  # the database's and -shm's, as last seen
        self._lost: str | None = None  # a problem no later check can clear
        self._problem: str | None = None  # the last problem reported (logged on change)
        self.last_failure: str | None = None
        """SQLite's error when the last write failed because of the file (read-only, I/O, disk
        full, corrupt); None once a write succeeds. ``/admin/health`` reports it."""

    @property
    def _shm(self) -> Path:
        return self.path.with_name(self.path.name + "-shm")

    @property
    def _wal(self) -> Path:
        return self.path.with_name(self.path.name + "-wal")

    def _watch(self) -> None:
        """Remember the files as opened (after the migrations: WAL mode has made -wal and
        -shm)."""
        if str(self.path) == ":memory:":
            return
        for path in (self.path, self._wal, self._shm):
            try:
                st = os.stat(path)
            except FileNotFoundError:
                continue
            self._identity[path] = (st.st_dev, st.st_ino)
            if path != self._wal:  # these two only grow while agwd runs; SQLite rewinds the WAL
                self._sizes[path] = st.st_size

    def problem(self) -> str | None:
        """Why the store cannot be written now, or None (see the module doc). Logs
        ``store_unavailable`` (error) when a problem appears, ``store_available`` when a
        passing one clears."""
        problem = self._lost or self._probe()
        if problem != self._problem:
            self._problem = problem
            if problem is None:
                log.info("store_available", extra={"path": str(self.path)})
            else:
                log.error("store_unavailable", extra={"path": str(self.path), "reason": problem})
        return problem

    def _probe(self) -> str | None:
        for path, identity in self._identity.items():
            try:
                st = os.stat(path)
            except OSError as exc:
                if isinstance(exc, FileNotFoundError):
                    self._lost = f"{path.name} was deleted"
                    return self._lost
                return f"{path.name} cannot be read: {exc.strerror}"
            if (st.st_dev, st.st_ino) != identity:
                self._lost = f"{path.name} was replaced by another file"
                return self._lost
            size = self._sizes.get(path)
            if size is not None:
                if st.st_size < size:
                    self._lost = f"{path.name} was truncated"
                    return self._lost
                self._sizes[path] = st.st_size
        for path in (self._shm, self.path):
            if path in self._identity and not os.access(path, os.W_OK):
                return f"{path.name} is read-only"
        return None

    def _check(self) -> None:
        problem = self.problem()
        if problem is not None:
            raise StoreUnavailable(f"config store unavailable: {problem}")

    @property
    def row_errors(self) -> tuple[type[Exception], ...]:
        return _ROW_ERRORS

    async def config_written(self, conn: Conn) -> None:
        """One process writes and reads the file: nobody else to tell."""

    async def watch(self, changed: Callable[[], Awaitable[None]]) -> None:
        """Nobody else writes the configuration (see :meth:`config_written`)."""

    @property
    def box(self) -> secrets.SecretBox:
        """Seals and opens the stored secrets (:mod:`agw.store.secrets`)."""
        if self._box is None:
            raise StoreError("config store opened without its secret key")
        return self._box

    @classmethod
    async def open(cls, path: str | Path, *, secret_key: bytes | None = None) -> Database:
        """Open (create) the store, unlock its secrets and apply pending migrations.
        ``secret_key``: the key from ``AGW_SECRET_KEY``; None: the key file beside the store
        (:func:`agw.store.secrets.unlock`)."""
        path = Path(path)
        if str(path) != ":memory:":
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o600)
            os.close(fd)
        try:
            conn = await aiosqlite.connect(path, isolation_level=None)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open config store {path}: {exc}") from exc
        db = cls(conn, path)
        try:
            await db.conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
            version = await db.check_version()  # before any pragma that writes the file header
            await db._configure()
            db._box = await secrets.unlock(db.conn, path, secret_key, version)
            log.info(
                "store_secret_key",
                extra={"source": db._box.source, "key_id": db._box.key_id},
            )
            await db.migrate()
            db._watch()
        except BaseException:
            await conn.close()
            raise
        return db

    async def _configure(self) -> None:
        for pragma in (
            "PRAGMA journal_mode=WAL",
            "PRAGMA synchronous=NORMAL",
            "PRAGMA foreign_keys=ON",
            f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}",
        ):
            await self.conn.execute(pragma)

    async def user_version(self) -> int:
        async with self.conn.execute("PRAGMA user_version") as cur:
            row = await cur.fetchone()
        return int(row[0]) if row else 0

    async def check_version(self) -> int:
        return supported_version(self.path, await self.user_version())

    async def migrate(self) -> None:
        files = migration_files()
        current = await self.check_version()
        for number, path in files:
            if number <= current:
                continue
            async with self.transaction():
                for statement in split_statements(path.read_text()):
                    await self.conn.execute(statement)
                if number == secrets.SEALING_MIGRATION:  # a step SQL cannot do
                    await secrets.seal_plaintext_rows(self.conn, self.box)
                await self.conn.execute(f"PRAGMA user_version = {number}")
            log.info("store_migrated", extra={"version": number, "migration": path.name})
        if 0 < current < secrets.SEALING_MIGRATION and str(self.path) != ":memory:":
            await self._scrub()

    async def _scrub(self) -> None:
        """Once, after migration 6 sealed a store that held secrets in clear: rewrite the file
        (``VACUUM``: no free page or freed cell keeps an old value) and empty the WAL into it,
        so a copy of the files taken from here on holds no plaintext secret, not even one
        deleted or replaced before the upgrade."""
        started = time.monotonic()
        await self.conn.execute("VACUUM")
        await self.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        log.info(
            "store_scrubbed",
            extra={"path": str(self.path), "seconds": round(time.monotonic() - started, 3)},
        )

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[aiosqlite.Connection]:
        """``BEGIN IMMEDIATE`` ... ``COMMIT`` on the write connection, one at a time. Raises
        :class:`StoreUnavailable` without touching SQLite when :meth:`problem` finds one, and
        in place of SQLite's error when the file itself fails (read-only, I/O, full)."""
        async with self._write_lock:
            self._check()
            try:
                await self.conn.execute("BEGIN IMMEDIATE")
                try:
                    yield self.conn
                except BaseException:
                    if self.conn.in_transaction:
                        await self.conn.execute("ROLLBACK")
                    raise
                else:
                    await self.conn.execute("COMMIT")
            except sqlite3.Error as exc:
                if exc.sqlite_errorcode & 0xFF not in _STORE_FAILURES:
                    raise
                self.last_failure = str(exc)
                raise StoreUnavailable(f"config store unavailable: {exc}") from exc
            self.last_failure = None

    async def write(self, work: Callable[[Statements], T]) -> T:
        """``work(statements)`` in one call on the write connection's thread, in autocommit:
        each statement is its own transaction, and the files are checked (:meth:`problem`)
        right before each one, on that thread. The usage writer's path: a change to ``-shm``
        can then only kill the process while SQLite runs one statement, never while a
        transaction waits for the interpreter between statements (an explicit transaction
        waits for the GIL at each, up to the switch interval while the event loop is busy)."""
        async with self._write_lock:
            self._check()  # on the loop: logs and raises here, as transaction() does
            # aiosqlite has no public way to run a function on its thread; _execute is how
            # its own methods do it.
            run = self.conn._execute
            statements = Statements(self, self.conn._conn)
            try:
                result: T = await run(work, statements)  # type: ignore[no-untyped-call]
            except sqlite3.Error as exc:
                if exc.sqlite_errorcode & 0xFF not in _STORE_FAILURES:
                    raise
                raise StoreUnavailable(f"config store unavailable: {exc}") from exc
            return result

    async def reader(self) -> aiosqlite.Connection:
        """A second, read-only connection for long reads (the metrics queries), opened on first
        use. It has its own thread, and WAL lets it read while the writer writes, so a query
        aggregating a million usage rows holds up neither the usage writer nor config reads.
        An in-memory store has no second connection: its reads share the main one."""
        if str(self.path) == ":memory:":
            return self.conn
        self._check()  # a read maps -shm too
        async with self._reader_lock:
            if self._reader is None:
                uri = f"{self.path.resolve().as_uri()}?mode=ro"
                try:
                    conn = await aiosqlite.connect(uri, uri=True, isolation_level=None)
                    await conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
                except sqlite3.Error as exc:
                    raise StoreError(f"cannot open config store {self.path}: {exc}") from exc
                self._reader = conn
            return self._reader

    async def close(self) -> None:
        """Close both connections. A truncated ``-shm`` is first given back its size (zeros,
        which SQLite then rebuilds from the WAL), as closing the last connection writes to it."""
        shm = self._identity.get(self._shm)
        if shm is not None:
            with contextlib.suppress(OSError):
                st = os.stat(self._shm)
                size = self._sizes.get(self._shm, 0)
                if (st.st_dev, st.st_ino) == shm and st.st_size < size:
                    os.truncate(self._shm, size)
        if self._reader is not None:
            await self._reader.close()
            self._reader = None
        await self.conn.close()


class Statements:
    """The write connection as :meth:`Database.write` lends it to its work, on its thread:
    statements in autocommit, each after a check of the files."""

    def __init__(self, db: Database, conn: sqlite3.Connection) -> None:
        self._db = db
        self._conn = conn

    def execute(self, sql: str, params: Sequence[object] = ()) -> None:
        problem = self._db._lost or self._db._probe()
        if problem is not None:
            raise StoreUnavailable(f"config store unavailable: {problem}")
        try:
            self._conn.execute(sql, params).close()
        except sqlite3.Error as exc:
            if exc.sqlite_errorcode & 0xFF in _STORE_FAILURES:
                self._db.last_failure = str(exc)
            raise
        self._db.last_failure = None

    @property
    def row_errors(self) -> tuple[type[Exception], ...]:
        return _ROW_ERRORS

    def max_params(self) -> int:
        """How many ``?`` one statement may hold (SQLite's limit, 32766 by default)."""
        return self._conn.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER)
