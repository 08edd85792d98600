"""Move a deployment from a SQLite file to a PostgreSQL database (``agwctl gateway
migrate-store``).

Both stores are opened (created, migrated to this agw's schema) with their own keys; the
configuration is read from the file in plaintext and written to the database sealed with the
database's key (one transaction, as a bundle apply), then every other table (the usage rows, the
saved limit counters) is copied as it is, in chunks of :data:`CHUNK` rows, each chunk its own
transaction. The database must hold no configuration and no usage row yet: a half-copied or
repeated move is refused rather than merged. agwd must not write the file meanwhile (stop it).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from agw.config import families as f
from agw.errors import StoreError
from agw.store import config_repo, usage_sql
from agw.store.engine import Store

CHUNK = 500
_NAME = re.compile(r"^[a-z_][a-z0-9_]*$")
# written by config_repo (configuration) or by each store for itself (its key's check value)
_OWN_TABLES = frozenset({"store_secret_key"})


@dataclass
class Moved:
    objects: int = 0
    rows: dict[str, int] = field(default_factory=dict)


async def _tables(source: Store) -> list[str]:
    async with source.conn.execute(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' "
        "ORDER BY name"
    ) as cur:
        return [str(name) async for (name,) in cur if _NAME.match(str(name))]


async def _count(db: Store, table: str) -> int:
    async with db.conn.execute(f"SELECT COUNT(*) FROM {table}") as cur:
        row = await cur.fetchone()
    return int(row[0]) if row else 0


async def copy_store(source: Store, target: Store) -> Moved:
    """Copy everything of ``source`` (a SQLite store) into the empty ``target``."""
    config_tables = {fam.table for fam in f.ALL_FAMILIES if fam.table is not None}
    data_tables = [
        t for t in await _tables(source) if t not in config_tables and t not in _OWN_TABLES
    ]
    for table in sorted(config_tables) + data_tables:
        if await _count(target, table):
            raise StoreError(
                f"the target store already holds rows in {table}: migrate-store moves a "
                "deployment into an empty store only"
            )
    moved = Moved()
    rows = await config_repo.load_rows(source)
    await config_repo.write(target, rows, [])
    moved.objects = len(rows)
    for table in data_tables:
        moved.rows[table] = await _copy_table(source, target, table)
    if target.dialect == "postgresql":  # statistics for the planner, not left to autovacuum
        await target.conn.execute("ANALYZE")
    return moved


async def _copy_table(source: Store, target: Store, table: str) -> int:
    copied = 0
    async with source.conn.execute(f"SELECT * FROM {table}") as cur:
        columns = tuple(d[0] for d in cur.description)
        chunk: list[tuple[object, ...]] = []
        async for row in cur:
            chunk.append(tuple(row))
            if len(chunk) == CHUNK:
                copied += await _insert(target, table, columns, chunk)
                chunk = []
        if chunk:
            copied += await _insert(target, table, columns, chunk)
    return copied


async def _insert(
    target: Store, table: str, columns: tuple[str, ...], chunk: list[tuple[object, ...]]
) -> int:
    text = usage_sql.insert(table, columns, len(chunk))
    async with target.transaction() as conn:
        await conn.execute(text, [v for row in chunk for v in row])
    return len(chunk)
