"""The whole configuration in memory: every object of every family, stored and static.

A :class:`ConfigState` is never changed in place: a write builds a new one, which is validated and
compiled before it is committed and swapped in (see ``manager.py``).
"""

from __future__ import annotations

import base64
import os
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import Any

from pydantic import BaseModel

from agw.clock import now_ms
from agw.config import families as f
from agw.config.base import FROM_STORE
from agw.store.config_repo import Row


def new_virtual_key() -> str:
    """``vk-`` + base64url (no padding) of 32 random bytes: 43 characters."""
    return "vk-" + base64.urlsafe_b64encode(os.urandom(32)).rstrip(b"=").decode()


def dump(obj: BaseModel) -> dict[str, Any]:
    return obj.model_dump(mode="json")


@dataclass(frozen=True)
class Record:
    obj: Any
    created_at: int
    updated_at: int
    static: bool = False
    key: str = ""  # virtual keys: the bearer, generated server-side and immutable

    def same_config(self, obj: BaseModel) -> bool:
        return bool(dump(self.obj) == dump(obj))


@dataclass(frozen=True)
class ConfigState:
    objects: dict[str, dict[str, Record]] = field(
        default_factory=lambda: {fam.name: {} for fam in f.ALL_FAMILIES}
    )

    def get(self, family: f.Family, oid: str) -> Record | None:
        return self.objects[family.name].get(oid)

    def records(self, family: f.Family) -> list[tuple[str, Record]]:
        return sorted(self.objects[family.name].items())

    def put(self, family: f.Family, record: Record) -> ConfigState:
        objects = dict(self.objects)
        objects[family.name] = {**objects[family.name], family.id_of(record.obj): record}
        return ConfigState(objects)

    def delete(self, family: f.Family, oid: str) -> ConfigState:
        objects = dict(self.objects)
        objects[family.name] = {k: v for k, v in objects[family.name].items() if k != oid}
        return ConfigState(objects)

    def catalog(self) -> dict[str, list[tuple[str, Any]]]:
        return {
            name: [(f'{name} "{oid}"', rec.obj) for oid, rec in sorted(recs.items())]
            for name, recs in self.objects.items()
        }

    def route_ids(self) -> set[str]:
        return {oid for fam in f.ROUTE_FAMILIES for oid in self.objects[fam.name]}

    def __iter__(self) -> Iterator[tuple[f.Family, str, Record]]:
        for fam in f.ALL_FAMILIES:
            for oid, rec in sorted(self.objects[fam.name].items()):
                yield fam, oid, rec


def from_rows(rows: list[Row]) -> ConfigState:
    state = ConfigState()
    for row in rows:
        family = f.BY_NAME[row.family]
        obj = family.model.model_validate(row.data, context=FROM_STORE)
        state.objects[family.name][row.id] = Record(
            obj, row.created_at, row.updated_at, key=row.key
        )
    return state


def to_row(family: f.Family, oid: str, record: Record) -> Row:
    return Row(
        family.name,
        oid,
        dump(record.obj),
        record.created_at,
        record.updated_at,
        tag=family.tag_of(record.obj),
        key=record.key,
    )


def diff(old: ConfigState, new: ConfigState) -> tuple[list[Row], list[tuple[str, str]]]:
    """Rows to write and rows to delete to turn the stored part of ``old`` into ``new``."""
    puts: list[Row] = []
    deletes: list[tuple[str, str]] = []
    for family in f.ALL_FAMILIES:
        if family.table is None:
            continue
        before, after = old.objects[family.name], new.objects[family.name]
        for oid, rec in sorted(before.items()):
            if not rec.static and (oid not in after or after[oid].static):
                deletes.append((family.name, oid))
        for oid, rec in sorted(after.items()):
            if rec.static:
                continue
            prev = before.get(oid)
            if prev is None or prev.static or prev != rec:
                puts.append(to_row(family, oid, rec))
    return puts, deletes


def touched(record: Record | None, obj: Any, *, key: str = "") -> Record:
    """The record for ``obj`` after a write: keeps created_at (and the key) of the old one."""
    now = now_ms()
    if record is None:
        return Record(obj, now, now, key=key)
    if record.same_config(obj):
        return record
    return replace(record, obj=obj, updated_at=max(now, record.updated_at))
