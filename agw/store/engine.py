"""What the repositories need of a config store, whichever engine holds it.

Two engines implement it: SQLite (:class:`agw.store.db.Database`, the embedded default, a file
path) and PostgreSQL (:class:`agw.store.pg.PgDatabase`, a ``postgresql://`` URL, for several
replicas). The repositories (``config_repo``, ``usage_repo``, ``limit_repo``, ``secrets``) write
one statement text per operation, in SQLite's dialect with ``?`` placeholders; the PostgreSQL
store translates it (:func:`agw.store.pg.translate`), so each operation has one code path.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any, Protocol

from aiosqlite.context import Result

from agw.store import secrets

POSTGRES_SCHEMES = ("postgresql://", "postgres://")


def is_postgres(target: str | Path) -> bool:
    """Whether ``--config-store`` names a PostgreSQL database rather than a SQLite file."""
    return str(target).startswith(POSTGRES_SCHEMES)


class Cursor(Protocol):
    """The answer of one statement: its rows and how many it changed."""

    @property
    def rowcount(self) -> int: ...

    @property
    def description(self) -> Any: ...

    async def fetchone(self) -> Any: ...

    async def fetchall(self) -> Iterable[Any]: ...

    def __aiter__(self) -> AsyncIterator[Any]: ...

    async def close(self) -> None: ...


class Conn(Protocol):
    """A connection's statements: ``await conn.execute(...)`` or ``async with conn.execute(...)
    as cursor``."""

    def execute(self, sql: str, parameters: Iterable[Any] | None = None) -> Result[Any]: ...

    def executemany(self, sql: str, parameters: Iterable[Iterable[Any]]) -> Result[Any]: ...


class Store(Protocol):
    """A config store as the layers above ``agw/store`` use it."""

    dialect: str
    """``"sqlite"`` or ``"postgresql"``."""
    last_failure: str | None

    @property
    def conn(self) -> Conn: ...

    @property
    def box(self) -> secrets.SecretBox: ...

    @property
    def row_errors(self) -> tuple[type[Exception], ...]:
        """What one row of a usage insert can make a statement raise (the others fail the
        batch)."""
        ...

    def problem(self) -> str | None: ...

    def transaction(self) -> AbstractAsyncContextManager[Conn]: ...

    async def reader(self) -> Conn: ...

    async def config_written(self, conn: Conn) -> None:
        """Called in a configuration write's transaction: tell the other replicas."""

    async def watch(self, changed: Callable[[], Awaitable[None]]) -> None:
        """Call ``changed`` whenever another replica wrote the configuration (until close)."""

    async def close(self) -> None: ...


async def open_store(target: str | Path, *, secret_key: bytes | None = None) -> Store:
    """Open (create, migrate) the store ``target`` names: a ``postgresql://`` URL or a SQLite
    file."""
    if is_postgres(target):
        from agw.store.pg import PgDatabase

        return await PgDatabase.open(str(target), secret_key=secret_key)
    from agw.store.db import Database

    return await Database.open(target, secret_key=secret_key)
