"""The store engines the tests run on: SQLite files and PostgreSQL databases.

PostgreSQL comes from ``AGW_TEST_POSTGRES_URL`` (default
``postgresql://postgres@127.0.0.1:5432/test``); each test (or module) gets a database of its
own, created from that one and dropped after. A test that needs it skips, with the reason, when
the server does not answer. :func:`store_target` gives a test's store on an engine: a file path
on SQLite, a URL on PostgreSQL; the fixtures that open a store (tests/admin, tests/metrics,
tests/store) take an ``engine`` parameter (``ENGINES``) to run the same tests on both.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

POSTGRES_URL = os.environ.get("AGW_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
ENGINES = ("sqlite", "postgresql")
STORE_KEY = secrets.token_bytes(32)
"""The secret key of the tests' PostgreSQL stores (it has no key file)."""
STORE_KEY_ENV = {"AGW_SECRET_KEY": base64.b64encode(STORE_KEY).decode()}


@functools.cache
def postgres_unreachable() -> str | None:
    """Why PostgreSQL cannot be used here, or None."""
    try:
        with psycopg.connect(POSTGRES_URL, connect_timeout=3) as conn:
            conn.execute("SELECT 1")
    except psycopg.Error as exc:
        return f"PostgreSQL at {POSTGRES_URL} unreachable: {str(exc).strip()[:200]}"
    return None


def need_postgres() -> None:
    reason = postgres_unreachable()
    if reason is not None:
        pytest.skip(reason)


def _admin() -> psycopg.Connection[tuple[object, ...]]:
    return psycopg.connect(POSTGRES_URL, autocommit=True, connect_timeout=3)


@contextlib.contextmanager
def fresh_postgres() -> Iterator[str]:
    """The URL of a new, empty database on the test server, dropped afterwards (with the
    connections still open to it)."""
    need_postgres()
    name = f"agw_test_{secrets.token_hex(6)}"
    with _admin() as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    info = psycopg.conninfo.conninfo_to_dict(POSTGRES_URL)
    info["dbname"] = name
    try:
        yield psycopg.conninfo.make_conninfo("", **info)
    finally:
        with _admin() as conn:
            conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))


def url_of(conninfo: str) -> str:
    """A conninfo string as the ``postgresql://`` URL ``--config-store`` takes."""
    info = psycopg.conninfo.conninfo_to_dict(conninfo)
    user = f"{info['user']}@" if info.get("user") else ""
    where = f"{info.get('host', '127.0.0.1')}:{info.get('port', 5432)}"
    return f"postgresql://{user}{where}/{info['dbname']}"


@contextlib.contextmanager
def store_target(engine: str, directory: Path) -> Iterator[str | Path]:
    """A new store on ``engine``: a file in ``directory``, or a fresh database's URL."""
    if engine == "sqlite":
        yield directory / "configstore.db"
        return
    with fresh_postgres() as conninfo:
        yield url_of(conninfo)


def secret_key(target: str | Path) -> bytes | None:
    """The key to open the store ``target`` with (None: a SQLite file's key file)."""
    return STORE_KEY if isinstance(target, str) else None


def postgres_rows(url: str) -> dict[str, bytes]:
    """Every row of every table of the store at ``url``, in order: what a test compares to
    see that nothing was written."""
    out: dict[str, bytes] = {}
    with psycopg.connect(url, connect_timeout=3) as conn:
        tables = conn.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY 1"
        ).fetchall()
        for (table,) in tables:
            query = sql.SQL("SELECT * FROM {} ORDER BY 1").format(sql.Identifier(str(table)))
            out[str(table)] = repr(conn.execute(query).fetchall()).encode()
    return out


def store_settings(target: str | Path) -> dict[str, Any]:
    """``InprocLauncher.start``'s arguments for a store (its :class:`agw.settings.Settings`
    fields for a PostgreSQL one)."""
    if isinstance(target, str):
        return {"store_url": target, "secret_key": STORE_KEY}
    return {"db_path": target}


def store_env(target: str | Path) -> dict[str, str]:
    """The environment agwd needs for a store (the secret key of a PostgreSQL one)."""
    return dict(STORE_KEY_ENV) if isinstance(target, str) else {}


REDIS_URL = os.environ.get("AGW_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
# For tests of exactness under load (not of the outage timeout): Redis URL options win over
# agw's 0.5 s, and a loaded machine may lag that long without any outage.
PATIENT_REDIS_URL = (
    REDIS_URL + ("&" if "?" in REDIS_URL else "?") + "socket_timeout=10&socket_connect_timeout=10"
)


@functools.cache
def redis_unreachable() -> str | None:
    """Why Redis cannot be used here, or None."""
    import redis

    client = redis.Redis.from_url(REDIS_URL, socket_timeout=3, socket_connect_timeout=3)
    try:
        client.ping()
    except (redis.RedisError, OSError) as exc:
        return f"Redis at {REDIS_URL} unreachable: {str(exc).strip()[:200]}"
    finally:
        client.close()
    return None


def need_redis() -> None:
    reason = redis_unreachable()
    if reason is not None:
        pytest.skip(reason)


@contextlib.contextmanager
def redis_prefix() -> Iterator[str]:
    """A key prefix of its own for one test on the test Redis; its keys are deleted after."""
    import redis

    need_redis()
    prefix = f"agwtest:{secrets.token_hex(6)}:"
    try:
        yield prefix
    finally:
        client = redis.Redis.from_url(REDIS_URL)
        keys = list(client.scan_iter(match=prefix + "*", count=500))
        if keys:
            client.delete(*keys)
        client.close()
