"""The PostgreSQL config store: the SQLite store's tables and statements on a shared database.

Several agwd replicas share one database (docs/scale-out.md, "PostgreSQL store"). The driver is
psycopg 3 (async). The statements stay in SQLite's dialect, written once in the repositories;
:func:`translate` turns one into PostgreSQL's (``?`` placeholders to ``%s``, no unary ``+`` on a
grouped column, the column ``window`` quoted: a keyword there) and
:func:`translate_migration` does the same for the numbered migrations (``INTEGER`` columns hold
unix milliseconds: ``BIGINT``; ``REAL``: ``DOUBLE PRECISION``; no ``WITHOUT ROWID``), so both
engines run the same files. Sums of integer columns come back as
``int`` and averages as ``float``, as from SQLite; a ``bool`` is stored as 0/1.

Bookkeeping SQLite keeps in ``PRAGMA user_version`` lives in the table ``agw_store``: the schema
version and a configuration version, which every configuration write increments in its
transaction while it sends ``NOTIFY agw_config``. Each replica ``LISTEN``s and reloads its
snapshot on a notice from another replica, and compares the version every
:data:`VERSION_CHECK_S` seconds (a notice sent while its listening connection was down is lost).
Migrations run under an advisory lock, so replicas starting together migrate once. The secret
key must come from ``AGW_SECRET_KEY`` (the same on every replica): there is no file beside the
store to keep it in.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import secrets as random
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import asynccontextmanager
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psycopg
from aiosqlite.context import Result
from psycopg.adapt import Dumper, Loader

from agw.errors import StoreError, StoreUnavailable
from agw.store import secrets
from agw.store.db import migration_files, split_statements, supported_version

if TYPE_CHECKING:
    from agw.store.engine import Conn

log = logging.getLogger(__name__)

CHANNEL = "agw_config"
VERSION_CHECK_S = 5.0
RECONNECT_MAX_S = 5.0
_MIGRATION_LOCK = 0x616777  # pg_advisory_xact_lock key: "agw"
_READ = re.compile(r"[\s(]*SELECT\b", re.IGNORECASE)
_TOKEN = re.compile(r"'[^']*'|--[^\n]*|\?|%|\+(?=[a-z_])|\bwindow\b")
_MIGRATION_TYPES = (
    (re.compile(r"\bINTEGER\b"), "BIGINT"),
    (re.compile(r"\bREAL\b"), "DOUBLE PRECISION"),
    (re.compile(r"\)\s*WITHOUT ROWID"), ")"),
    (re.compile(r"^\s*--[^\n]*\n", re.MULTILINE), ""),  # comments (they may hold a ?)
)
_BOOTSTRAP = (
    "CREATE TABLE IF NOT EXISTS agw_store (id INTEGER PRIMARY KEY CHECK (id = 1), "
    "schema_version BIGINT NOT NULL, config_version BIGINT NOT NULL)"
)


def _swap(match: re.Match[str]) -> str:
    token = match.group(0)
    return {"?": "%s", "%": "%%", "+": "", "window": '"window"'}.get(token, token)


def translate(sql: str) -> str:
    """One statement from SQLite's dialect to PostgreSQL's (see the module doc): ``?`` to
    ``%s``, no unary ``+``, the column ``window`` (a keyword there) quoted. String literals and
    comments are kept as written."""
    return _TOKEN.sub(_swap, sql)


def translate_migration(statement: str) -> str:
    for pattern, replacement in _MIGRATION_TYPES:
        statement = pattern.sub(replacement, statement)
    return statement


class _NumericLoader(Loader):
    """``numeric`` (what PostgreSQL's SUM of a BIGINT is) as an int when whole, else a float."""

    def load(self, data: Any) -> int | float:
        value = Decimal(bytes(data).decode())
        return int(value) if value == value.to_integral_value() else float(value)


class _BoolDumper(Dumper):
    """A bool as the 0/1 BIGINT the tables hold (SQLite stores it so)."""

    oid = psycopg.adapters.types["int8"].oid

    def dump(self, obj: bool) -> bytes:
        return b"1" if obj else b"0"


class PgCursor:
    """A psycopg cursor with the shape the repositories use (aiosqlite's)."""

    def __init__(self, cursor: psycopg.AsyncCursor[Any]) -> None:
        self._cursor = cursor

    @property
    def rowcount(self) -> int:
        return self._cursor.rowcount

    @property
    def description(self) -> Any:
        return [(c.name,) for c in self._cursor.description or ()]

    async def fetchone(self) -> Any:
        return await self._cursor.fetchone() if self._cursor.description else None

    async def fetchall(self) -> list[Any]:
        return await self._cursor.fetchall() if self._cursor.description else []

    async def __aiter__(self) -> AsyncIterator[Any]:
        for row in await self.fetchall():
            yield row

    async def close(self) -> None:
        await self._cursor.close()


class PgConn:
    """One psycopg connection speaking the repositories' statements (:func:`translate`).

    A ``SELECT`` outside a transaction on a connection the server closed (a restart: the
    client learns it at its next statement) is sent again on a new connection (:meth:`reopen`),
    once: a read has no effect to repeat. Within a transaction (:attr:`in_transaction`, set by
    :meth:`PgDatabase.transaction`) nothing is sent again: a lost connection fails it."""

    def __init__(self, conn: psycopg.AsyncConnection[Any], url: str) -> None:
        self.raw = conn
        self.url = url
        self.in_transaction = False
        self._reopening = asyncio.Lock()

    async def reopen(self) -> None:
        """Close this connection and open another to the same server in its place (once when
        several tasks find it closed together)."""
        stale = self.raw
        async with self._reopening:
            if self.raw is not stale and not self.raw.closed:
                return
            with contextlib.suppress(psycopg.Error, OSError):
                await self.raw.close()
            self.raw = await _open(self.url)

    def execute(self, sql: str, parameters: Iterable[Any] | None = None) -> Result[PgCursor]:
        return Result(self._execute(sql, list(parameters or ())))

    def executemany(self, sql: str, parameters: Iterable[Iterable[Any]]) -> Result[PgCursor]:
        return Result(self._executemany(sql, [list(p) for p in parameters]))

    async def _execute(self, sql: str, parameters: list[Any]) -> PgCursor:
        retry = not self.in_transaction and _READ.match(sql) is not None
        if retry and self.raw.closed:
            await self.reopen()
        try:
            return await self._send(sql, parameters)
        except psycopg.OperationalError:
            if not (retry and self.raw.closed):
                raise
        await self.reopen()
        return await self._send(sql, parameters)

    async def _send(self, sql: str, parameters: list[Any]) -> PgCursor:
        cursor = self.raw.cursor()
        try:
            await cursor.execute(translate(sql), parameters)
        except BaseException:
            await cursor.close()
            raise
        return PgCursor(cursor)

    async def _executemany(self, sql: str, parameters: list[list[Any]]) -> PgCursor:
        cursor = self.raw.cursor()
        await cursor.executemany(translate(sql), parameters)
        return PgCursor(cursor)


async def _open(url: str) -> psycopg.AsyncConnection[Any]:
    try:
        raw = await psycopg.AsyncConnection.connect(url, autocommit=True)
    except psycopg.Error as exc:
        raise StoreUnavailable(f"cannot connect to the config store: {exc}") from exc
    raw.adapters.register_loader("numeric", _NumericLoader)
    raw.adapters.register_dumper(bool, _BoolDumper)
    return raw


async def _connect(url: str) -> PgConn:
    return PgConn(await _open(url), url)


async def _reload(changed: Callable[[], Awaitable[None]]) -> None:
    """``changed()``; a configuration that does not load here (this replica's static config
    collides with it...) is logged, and the running one kept. A store that cannot be read is
    raised: the version seen is then not moved, and the watcher tries again when it is back."""
    try:
        await changed()
    except (psycopg.OperationalError, StoreUnavailable):
        raise
    except Exception as exc:
        log.error("config_reload_failed", extra={"error": str(exc)[:500]})


def redact(url: str) -> str:
    """The URL without its password (for logs and errors)."""
    return re.sub(r"(://[^:/@]+):[^@]*@", r"\1:***@", url)


class PgDatabase:
    """A PostgreSQL config store: a write connection (one transaction at a time), a reader for
    the metrics queries and a listening connection (see the module doc)."""

    dialect = "postgresql"

    def __init__(self, url: str, conn: PgConn) -> None:
        self.url = url
        self.path = Path(redact(url))  # what messages name the store by
        self._conn = conn
        self._reader: PgConn | None = None
        self._write_lock = asyncio.Lock()
        self._box: secrets.SecretBox | None = None
        self._token = random.token_hex(8)  # this replica's notices carry it
        self._watcher: asyncio.Task[None] | None = None
        self._seen: int | None = None  # the config version as of the last reload
        self.last_failure: str | None = None

    @property
    def conn(self) -> PgConn:
        return self._conn

    @property
    def box(self) -> secrets.SecretBox:
        if self._box is None:
            raise StoreError("config store opened without its secret key")
        return self._box

    @property
    def row_errors(self) -> tuple[type[Exception], ...]:
        return (psycopg.DataError, psycopg.IntegrityError, psycopg.ProgrammingError, ValueError)

    @classmethod
    async def open(cls, url: str, *, secret_key: bytes | None = None) -> PgDatabase:
        """Connect, unlock the secrets and apply pending migrations."""
        if secret_key is None:
            raise StoreError(
                f"a PostgreSQL config store needs {secrets.KEY_ENV} (the same key on every "
                "replica): there is no key file beside it"
            )
        db = cls(url, await _connect(url))
        try:
            await db._prepare(secret_key)
        except BaseException:
            await db.close()
            raise
        return db

    async def _prepare(self, secret_key: bytes) -> None:
        """Check the key and migrate, in one transaction under an advisory lock: replicas
        starting together take turns, and the second finds the first's work done."""
        async with self.transaction() as conn:
            await conn.execute("SELECT pg_advisory_xact_lock(?)", (_MIGRATION_LOCK,))
            await conn.execute(_BOOTSTRAP)
            version = await self.check_version()
            self._box = await secrets.unlock(conn, self.path, secret_key, version)
            log.info(
                "store_secret_key", extra={"source": self._box.source, "key_id": self._box.key_id}
            )
            await self._migrate(conn, version)

    async def _versions(self, conn: PgConn) -> tuple[int, int]:
        async with conn.execute("SELECT schema_version, config_version FROM agw_store") as cur:
            row = await cur.fetchone()
        return (int(row[0]), int(row[1])) if row else (0, 0)

    async def user_version(self) -> int:
        return (await self._versions(self.conn))[0]

    async def check_version(self) -> int:
        return supported_version(self.path, await self.user_version())

    async def _migrate(self, conn: PgConn, current: int) -> None:
        files = migration_files()
        for number, path in files:
            if number <= current:
                continue
            for statement in split_statements(path.read_text()):
                await conn.execute(translate_migration(statement))
            if number == secrets.SEALING_MIGRATION:
                await secrets.record_key(conn, self.box)
            log.info("store_migrated", extra={"version": number, "migration": path.name})
        await conn.execute(
            "INSERT INTO agw_store (id, schema_version, config_version) VALUES (1, ?, 0) "
            "ON CONFLICT (id) DO UPDATE SET schema_version = excluded.schema_version",
            (files[-1][0],),
        )

    def problem(self) -> str | None:
        return "the connection to PostgreSQL is closed" if self._conn.raw.closed else None

    async def _begin(self, stack: contextlib.AsyncExitStack) -> PgConn:
        """A transaction begun on the write connection. A connection the server closed since
        its last use (a restart) fails at ``BEGIN``, before anything was done: it is opened
        again and the transaction begun there, once."""
        conn = self._conn
        if not conn.raw.closed:
            try:
                await stack.enter_async_context(conn.raw.transaction())
                return conn
            except psycopg.OperationalError:
                if not conn.raw.closed:
                    raise
        await conn.reopen()
        await stack.enter_async_context(conn.raw.transaction())
        return conn

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[PgConn]:
        """One transaction on the write connection, one at a time (:meth:`_begin`); a
        connection lost within it, or a server that does not answer, is reported as
        :class:`StoreUnavailable`."""
        async with self._write_lock:
            try:
                async with contextlib.AsyncExitStack() as stack:
                    conn = await self._begin(stack)
                    conn.in_transaction = True
                    stack.callback(setattr, conn, "in_transaction", False)
                    yield conn
            except (psycopg.OperationalError, StoreUnavailable) as exc:
                self.last_failure = str(exc)
                if isinstance(exc, StoreUnavailable):
                    raise
                raise StoreUnavailable(f"config store unavailable: {exc}") from exc
            self.last_failure = None

    async def reader(self) -> PgConn:
        if self._reader is None:
            self._reader = await _connect(self.url)
        elif self._reader.raw.closed:
            await self._reader.reopen()
        return self._reader

    async def config_written(self, conn: Conn) -> None:
        await conn.execute("UPDATE agw_store SET config_version = config_version + 1")
        await conn.execute("SELECT pg_notify(?, ?)", (CHANNEL, self._token))

    async def watch(self, changed: Callable[[], Awaitable[None]]) -> None:
        if self._watcher is None:
            self._watcher = asyncio.create_task(self._watch(changed))

    async def _watch(self, changed: Callable[[], Awaitable[None]]) -> None:
        delay = 0.1
        while True:
            try:
                listener = await _connect(self.url)
                try:
                    await listener.raw.execute(f"LISTEN {CHANNEL}")
                    delay = 0.1
                    await self._follow(listener, changed)
                finally:
                    await listener.raw.close()
            except (psycopg.Error, StoreError, OSError) as exc:
                log.warning("store_listen_failed", extra={"error": str(exc), "retry_s": delay})
                await asyncio.sleep(delay)
                delay = min(delay * 2, RECONNECT_MAX_S)

    async def _follow(self, listener: PgConn, changed: Callable[[], Awaitable[None]]) -> None:
        """Reload on each notice from another replica, and whenever the version moved since
        the last look (the first look only remembers it)."""
        while True:
            version = (await self._versions(await self.reader()))[1]
            if self._seen is not None and version != self._seen:
                await _reload(changed)
            self._seen = version
            async for notice in listener.raw.notifies(timeout=VERSION_CHECK_S):
                if notice.payload != self._token:
                    version = (await self._versions(await self.reader()))[1]
                    await _reload(changed)
                    self._seen = version

    async def close(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
            self._watcher = None
        for conn in (self._reader, self._conn):
            if conn is not None:
                await conn.raw.close()
        self._reader = None
