"""One SQLite file: connection with its pragmas, and the numbered migration runner.

Writes go through :meth:`Database.transaction` (``BEGIN IMMEDIATE`` on the one write connection);
the file is created mode 0600 because it holds provider keys and virtual keys.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import aiosqlite

from agw.errors import SchemaTooNew, StoreError

log = logging.getLogger(__name__)

BUSY_TIMEOUT_MS = 60_000
_MIGRATION_NAME = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")


def migrations_dir() -> Path:
    here = Path(__file__).resolve().parent.parent
    for candidate in (here.parent / "migrations", here / "_migrations"):
        if candidate.is_dir():
            return candidate
    raise StoreError("migrations directory not found")


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
    def __init__(self, conn: aiosqlite.Connection, path: Path) -> None:
        self.conn = conn
        self.path = path
        # One write connection: transactions from different tasks (config writes, the usage
        # writer) take turns instead of nesting.
        self._write_lock = asyncio.Lock()
        self._reader: aiosqlite.Connection | None = None
        self._reader_lock = asyncio.Lock()

    @classmethod
    async def open(cls, path: str | Path) -> Database:
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
            await db.check_version()  # before any pragma that writes the file header
            await db._configure()
            await db.migrate()
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
        files = migration_files()
        latest = files[-1][0] if files else 0
        current = await self.user_version()
        if current > latest:
            raise SchemaTooNew(
                f"config store {self.path} has schema version {current}, newer than this "
                f"agw supports ({latest}); upgrade agw or use another --config-store"
            )
        return current

    async def migrate(self) -> None:
        files = migration_files()
        current = await self.check_version()
        for number, path in files:
            if number <= current:
                continue
            async with self.transaction():
                for statement in split_statements(path.read_text()):
                    await self.conn.execute(statement)
                await self.conn.execute(f"PRAGMA user_version = {number}")
            log.info("store_migrated", extra={"version": number, "migration": path.name})

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[aiosqlite.Connection]:
        async with self._write_lock:
            await self.conn.execute("BEGIN IMMEDIATE")
            try:
                yield self.conn
            except BaseException:
                await self.conn.execute("ROLLBACK")
                raise
            else:
                await self.conn.execute("COMMIT")

    async def reader(self) -> aiosqlite.Connection:
        """A second, read-only connection for long reads (the metrics queries), opened on first
        use. It has its own thread, and WAL lets it read while the writer writes, so a query
        aggregating a million usage rows holds up neither the usage writer nor config reads.
        An in-memory store has no second connection: its reads share the main one."""
        if str(self.path) == ":memory:":
            return self.conn
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
        if self._reader is not None:
            await self._reader.close()
            self._reader = None
        await self.conn.close()
