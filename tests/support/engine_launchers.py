"""Gateway launchers that put every gateway on one store engine, and a row reader for both.

:class:`EngineInprocLauncher` and :class:`EngineAgwdLauncher` start a gateway as their bases do
(tests/support/inproc.py, tests/support/agwd.py), on a fresh PostgreSQL database when their
engine is ``postgresql`` and the caller names no store; ``close`` stops the gateways, then drops
their databases. ``start(store=gateway.store)`` starts another gateway on an existing store
(a restart), on either engine. :func:`store_rows` reads rows from a SQLite file or a PostgreSQL
URL with the same SQLite-dialect statement.

A new PostgreSQL store is a copy of a template this process migrates once (sealed with
:data:`tests.support.engines.STORE_KEY`, dropped when the process exits): ``CREATE DATABASE
... TEMPLATE`` takes about 0.1 s where creating and migrating a database takes 0.5 to 0.7 s, and
the admin tests start a gateway on a new store for most of their tests."""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import functools
import secrets
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql as pgsql
from psycopg.rows import dict_row

from agw.store.engine import open_store
from tests.support.agwd import Agwd, AgwdLauncher
from tests.support.engines import (
    POSTGRES_URL,
    STORE_KEY,
    need_postgres,
    store_env,
    store_settings,
    url_of,
)
from tests.support.inproc import InprocGateway, InprocLauncher


def _server() -> psycopg.Connection[tuple[object, ...]]:
    return psycopg.connect(POSTGRES_URL, autocommit=True, connect_timeout=3)


def _url(dbname: str) -> str:
    info = psycopg.conninfo.conninfo_to_dict(POSTGRES_URL)
    info["dbname"] = dbname
    return url_of(psycopg.conninfo.make_conninfo("", **info))


def _drop(dbname: str) -> None:
    with _server() as conn:
        conn.execute(
            pgsql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(pgsql.Identifier(dbname))
        )


@functools.cache
def _template() -> str:
    """The name of this process's migrated template database."""
    name = f"agw_tmpl_{secrets.token_hex(6)}"
    with _server() as conn:
        conn.execute(pgsql.SQL("CREATE DATABASE {}").format(pgsql.Identifier(name)))
    atexit.register(_drop, name)

    async def migrate() -> None:
        store = await open_store(_url(name), secret_key=STORE_KEY)
        await store.close()

    asyncio.run(migrate())
    return name


@contextlib.contextmanager
def new_store(engine: str, directory: Path) -> Iterator[Path | str]:
    """A new, migrated store on ``engine``: a file in ``directory`` (created by the first
    gateway), or the URL of a copy of the template database, dropped afterwards."""
    if engine == "sqlite":
        yield directory / "configstore.db"
        return
    need_postgres()
    name = f"agw_test_{secrets.token_hex(6)}"
    with _server() as conn:
        conn.execute(
            pgsql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
                pgsql.Identifier(name), pgsql.Identifier(_template())
            )
        )
    try:
        yield _url(name)
    finally:
        _drop(name)


class EngineInprocLauncher(InprocLauncher):
    """In-process gateways on ``engine``."""

    def __init__(self, base: Path, admin_hash: str, engine: str) -> None:
        super().__init__(base, admin_hash)
        self.engine = engine
        self._stores = contextlib.ExitStack()

    def start(self, *, store: Path | str | None = None, **kwargs: Any) -> InprocGateway:
        """As :meth:`InprocLauncher.start`; ``store``: an existing store (a file or a URL)."""
        if (
            store is None
            and self.engine == "postgresql"
            and not {"db_path", "store_url"} & set(kwargs)
        ):
            store = self._stores.enter_context(new_store(self.engine, self.base))
        if store is not None:
            kwargs.update(store_settings(store))
        return super().start(**kwargs)

    def close(self) -> None:
        try:
            super().close()
        finally:
            self._stores.close()  # after the gateways: a database is dropped once closed


class EngineAgwdLauncher(AgwdLauncher):
    """agwd processes on ``engine``."""

    def __init__(self, base: Path, admin_hash: str, engine: str) -> None:
        super().__init__(base, admin_hash)
        self.engine = engine
        self._stores = contextlib.ExitStack()

    def start(self, *args: str, store: Path | str | None = None, **kwargs: Any) -> Agwd:
        """As :meth:`AgwdLauncher.start`; ``store``: an existing store (a file or a URL)."""
        if (
            store is None
            and self.engine == "postgresql"
            and not {"db_path", "store_url"} & set(kwargs)
        ):
            store = self._stores.enter_context(new_store(self.engine, self.base))
        if isinstance(store, str):
            kwargs["store_url"] = store
            kwargs["env"] = {**store_env(store), **(kwargs.get("env") or {})}
        elif store is not None:
            kwargs["db_path"] = store
        return super().start(*args, **kwargs)

    def close(self) -> None:
        try:
            super().close()
        finally:
            self._stores.close()


def store_of(agwd: Agwd) -> Path | str:
    """The store ``agwd`` was started on: its file, or its PostgreSQL URL."""
    args = [str(a) for a in agwd.proc.args]  # type: ignore[union-attr]
    target = args[args.index("--config-store") + 1]
    return target if target.startswith(("postgresql://", "postgres://")) else Path(target)


def store_rows(store: Path | str, sql: str, args: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
    """The rows of ``sql`` (SQLite's dialect, ``?`` placeholders) on ``store``, as dicts."""
    if isinstance(store, Path):
        with contextlib.closing(sqlite3.connect(store, timeout=30)) as db:
            db.row_factory = sqlite3.Row
            return [dict(r) for r in db.execute(sql, args)]
    with psycopg.connect(store, connect_timeout=5, row_factory=dict_row) as conn:
        return list(conn.execute(sql.replace("?", "%s"), args))


def store_execute(store: Path | str, statements: list[tuple[str, tuple[Any, ...]]]) -> None:
    """Run each ``(sql, args)`` (SQLite's dialect) in one transaction (booleans bind as 0/1,
    as agw stores them)."""
    if isinstance(store, Path):
        with contextlib.closing(sqlite3.connect(store, timeout=30)) as db, db:
            for sql, args in statements:
                db.execute(sql, args)
        return
    with psycopg.connect(store, connect_timeout=5) as conn:
        for sql, args in statements:
            values = tuple(int(v) if isinstance(v, bool) else v for v in args)
            conn.execute(sql.replace("?", "%s"), values)


def usage_rows(
    store: Path | str, table: str, where: str, count: int = 1, args: tuple[Any, ...] = ()
) -> list[dict[str, Any]]:
    """:func:`tests.support.agwd.usage_rows` on either engine: rows of a usage table matching
    ``where``, oldest first, waiting (at most 10 s) until ``count`` are there."""
    deadline = time.monotonic() + 10
    sql = f"SELECT * FROM {table} WHERE {where} ORDER BY started_at"
    found: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        found = store_rows(store, sql, args)
        if len(found) >= count:
            break
        time.sleep(0.05)
    return found
