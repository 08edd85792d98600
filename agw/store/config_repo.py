"""Configuration rows: read everything at start-up, write a change set in one transaction.

Each family keeps its object as JSON beside the columns the store filters on (reference §6).
The runtime keeps the whole configuration in memory, so the data plane never reads here.
Secrets are sealed on the way in and opened on the way out (:mod:`agw.store.secrets`): a
:class:`Row` always holds plaintext.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from agw.config import families as f
from agw.errors import StoreError
from agw.store.engine import Store
from agw.store.secrets import open_row, payload_column, seal_row, vk_where


@dataclass(frozen=True)
class Row:
    family: str
    id: str
    data: dict[str, Any]
    created_at: int
    updated_at: int
    tag: str = ""
    key: str = ""  # virtual keys: the bearer (in the store: its hash, and itself sealed)


async def load_rows(db: Store) -> list[Row]:
    box = db.box
    rows: list[Row] = []
    for family in f.ALL_FAMILIES:
        table = family.table
        if table is None:
            continue
        payload = payload_column(table)
        if table == "model_configs":
            sql = f"SELECT provider_id || '/' || upstream_model, {payload}, created_at, updated_at, '' , '' FROM model_configs"  # noqa: E501
            params: tuple[str, ...] = ()
        elif table == "routes":
            sql = (
                f"SELECT id, {payload}, created_at, updated_at, tag, '' FROM routes WHERE kind = ?"
            )
            params = (family.route_kind or "",)
        elif table == "virtual_keys":
            sql = f"SELECT id, {payload}, created_at, updated_at, tag, key_secret FROM virtual_keys"
            params = ()
        else:
            sql = f"SELECT id, {payload}, created_at, updated_at, tag, '' FROM {table}"
            params = ()
        async with db.conn.execute(sql, params) as cur:
            async for oid, payload_json, created, updated, tag, key in cur:
                data = open_row(box, family, oid, json.loads(payload_json))
                if family is f.VIRTUAL_KEY:
                    if not key:
                        raise StoreError(f'config store: virtual key "{oid}" has no bearer')
                    key = str(box.open(key, vk_where(oid)))
                rows.append(Row(family.name, oid, data, created, updated, tag, key))
    return rows


async def write(db: Store, puts: Sequence[Row], deletes: Sequence[tuple[str, str]]) -> None:
    """Apply a change set atomically: all rows or none."""
    box = db.box
    async with db.transaction() as conn:
        for family_name, oid in deletes:
            family = f.BY_NAME[family_name]
            if family.table == "model_configs":
                provider_id, model = oid.split("/", 1)
                await conn.execute(
                    "DELETE FROM model_configs WHERE provider_id = ? AND upstream_model = ?",
                    (provider_id, model),
                )
            elif family.table is not None:
                await conn.execute(f"DELETE FROM {family.table} WHERE id = ?", (oid,))
        for row in puts:
            family = f.BY_NAME[row.family]
            stored = seal_row(box, family, row.id, row.data)
            payload = json.dumps(stored, sort_keys=True, separators=(",", ":"))
            if family.table == "model_configs":
                await conn.execute(
                    "INSERT INTO model_configs (provider_id, upstream_model, data, created_at, "
                    "updated_at) VALUES (?, ?, ?, ?, ?) ON CONFLICT (provider_id, upstream_model)"
                    " DO UPDATE SET data = excluded.data, updated_at = excluded.updated_at",
                    (
                        row.data["provider_id"],
                        row.data["upstream_model"],
                        payload,
                        row.created_at,
                        row.updated_at,
                    ),
                )
            elif family.table == "routes":
                await conn.execute(
                    "INSERT INTO routes (id, tag, kind, config, created_at, updated_at) "
                    "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET tag = excluded.tag,"
                    " kind = excluded.kind, config = excluded.config, "
                    "updated_at = excluded.updated_at",
                    (row.id, row.tag, family.route_kind, payload, row.created_at, row.updated_at),
                )
            elif family.table == "virtual_keys":
                await conn.execute(
                    "INSERT INTO virtual_keys (id, tag, key, key_secret, config, created_at, "
                    "updated_at) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET "
                    "tag = excluded.tag, config = excluded.config, "
                    "updated_at = excluded.updated_at",
                    (
                        row.id,
                        row.tag,
                        box.lookup_hash(row.key),
                        box.seal(row.key, vk_where(row.id)),
                        payload,
                        row.created_at,
                        row.updated_at,
                    ),
                )
            elif family.table is not None:
                column = payload_column(family.table)
                await conn.execute(
                    f"INSERT INTO {family.table} (id, tag, {column}, created_at, updated_at) "
                    f"VALUES (?, ?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET tag = excluded.tag, "
                    f"{column} = excluded.{column}, updated_at = excluded.updated_at",
                    (row.id, row.tag, payload, row.created_at, row.updated_at),
                )
        await db.config_written(conn)
