"""``agwctl gateway migrate-store``: move a deployment's SQLite store into PostgreSQL.

Works on the stores themselves, not through the admin API (agw.store.migrate): stop agwd first.
The source's key is its key file beside it when there is one, else ``AGW_SECRET_KEY``; the
target's is ``AGW_SECRET_KEY`` (a PostgreSQL store has no key file).
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from agwctl.client import CliError

if TYPE_CHECKING:
    from agw.store.migrate import Moved


def migrate_store(
    source: Annotated[
        str,
        typer.Option("--from", metavar="sqlite:PATH", help="The SQLite store to move from."),
    ],
    target: Annotated[
        str,
        typer.Option(
            "--to", metavar="postgresql://...", help="The empty PostgreSQL store to move to."
        ),
    ],
) -> None:
    """Copy a SQLite store (configuration, usage rows, limit counters) into an empty PostgreSQL
    store, re-sealing its secrets with AGW_SECRET_KEY. Stop agwd first."""
    from agw.errors import AgwError
    from agw.store.engine import is_postgres
    from agw.store.secrets import KEY_ENV, key_file, parse_key

    path = Path(source.removeprefix("sqlite:"))
    if not path.is_file():
        raise CliError(f"--from: no SQLite store at {path}")
    if not is_postgres(target):
        raise CliError("--to: a postgresql:// URL")
    env_key = os.environ.get(KEY_ENV, "")
    if not env_key:
        raise CliError(f"{KEY_ENV} must hold the key of the PostgreSQL store")
    try:
        key = parse_key(env_key)
        moved = asyncio.run(_move(path, None if key_file(path).exists() else key, target, key))
    except AgwError as exc:
        raise CliError(str(exc)) from None
    rows = ", ".join(f"{table} {n}" for table, n in sorted(moved.rows.items()))
    typer.echo(f"moved {moved.objects} objects; rows: {rows}")


async def _move(path: Path, source_key: bytes | None, target: str, key: bytes) -> Moved:
    from agw.store.engine import open_store
    from agw.store.migrate import copy_store

    source = await open_store(path, secret_key=source_key)
    try:
        sink = await open_store(target, secret_key=key)
        try:
            return await copy_store(source, sink)
        finally:
            await sink.close()
    finally:
        await source.close()


def register(gateway: typer.Typer) -> None:
    gateway.command("migrate-store")(migrate_store)
