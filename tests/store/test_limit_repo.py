"""The limit backend's saved counters (agw/store/limit_repo.py) against a real store, a SQLite
file and a PostgreSQL database: a round trip, a save that replaces, deletes in the same
transaction, and deletes by limit and subject."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import TypeVar

import psycopg
import pytest

from agw.store.engine import Store, open_store
from agw.store.limit_repo import (
    CounterRow,
    delete_limit_counters,
    load_counters,
    save_counters,
)
from tests.support.engines import ENGINES, secret_key, store_target
from tests.support.usage import NOW_MS, rows

T = TypeVar("T")
DAY_START = NOW_MS  # 2026-01-01T00:00:00Z


def counter(
    limit_id: str,
    subject: str,
    *,
    window: str = "1d",
    window_start: int = DAY_START,
    cost_usd: float = 0.0,
    total_tokens: int = 0,
    input_tokens: int = 0,
    output_tokens: int = 0,
    requests: int = 0,
    updated_at: int = NOW_MS + 1000,
) -> CounterRow:
    return CounterRow(
        limit_id,
        subject,
        window,
        window_start,
        cost_usd,
        total_tokens,
        input_tokens,
        output_tokens,
        requests,
        updated_at,
    )


@pytest.fixture(params=ENGINES)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Path | str]:
    with store_target(request.param, tmp_path) as target:
        yield target


def with_store(path: Path | str, work: Callable[[Store], Awaitable[T]]) -> T:
    async def main() -> T:
        db = await open_store(path, secret_key=secret_key(path))
        try:
            return await work(db)
        finally:
            await db.close()

    return asyncio.run(main())


def test_counters_round_trip_through_the_file(store: Path | str) -> None:
    path = store
    saved = [
        counter(
            "daily-usd",
            "vk-b",
            cost_usd=0.125,
            total_tokens=900,
            input_tokens=700,
            output_tokens=200,
            requests=3,
        ),
        counter("daily-usd", "vk-a", cost_usd=1.5e-06, requests=1),
        counter("forever", "*", window="lifetime", window_start=0, total_tokens=2**40),
    ]

    async def save(db: Store) -> None:
        await save_counters(db, saved)

    with_store(path, save)
    loaded = with_store(path, load_counters)  # another open: what the file holds
    assert loaded == sorted(saved, key=lambda r: (r.limit_id, r.subject))
    assert all(isinstance(r.cost_usd, float) for r in loaded)
    if isinstance(path, Path):
        assert {r["window"] for r in rows(path, "limit_counters", "limit_id")} == {"1d", "lifetime"}


def test_a_save_replaces_the_row_of_its_limit_and_subject(store: Path | str) -> None:
    path = store

    async def work(db: Store) -> list[CounterRow]:
        await save_counters(db, [counter("daily-usd", "vk-a", requests=1, cost_usd=0.5)])
        await save_counters(db, [counter("daily-usd", "vk-b", requests=7)])
        # the next window: every value replaced, not added
        await save_counters(
            db,
            [
                counter(
                    "daily-usd",
                    "vk-a",
                    window="1h",
                    window_start=DAY_START + 3_600_000,
                    requests=2,
                    updated_at=NOW_MS + 3_700_000,
                )
            ],
        )
        return await load_counters(db)

    loaded = with_store(path, work)
    assert loaded == [
        counter(
            "daily-usd",
            "vk-a",
            window="1h",
            window_start=DAY_START + 3_600_000,
            requests=2,
            updated_at=NOW_MS + 3_700_000,
        ),
        counter("daily-usd", "vk-b", requests=7),
    ]


def test_a_save_deletes_then_saves_in_one_transaction(store: Path | str) -> None:
    path = store

    async def work(db: Store) -> list[CounterRow]:
        await save_counters(
            db, [counter("a", "s1", requests=1), counter("a", "s2"), counter("b", "s1")]
        )
        # s2 goes, s1 is reset and counted again before the save: saved; an absent pair is fine
        await save_counters(
            db,
            [counter("a", "s1", requests=9)],
            deleted=[("a", "s2"), ("a", "s1"), ("gone", "x")],
        )
        after = await load_counters(db)
        await save_counters(db, [], deleted=[("b", "s1")])
        await save_counters(db, [])  # nothing to do
        return [*after, *await load_counters(db)]

    assert with_store(path, work) == [
        counter("a", "s1", requests=9),
        counter("b", "s1"),
        counter("a", "s1", requests=9),
    ]


def test_a_failed_save_writes_nothing(store: Path | str) -> None:
    path = store

    async def work(db: Store) -> list[CounterRow]:
        await save_counters(db, [counter("a", "s1", requests=1)])
        bad = counter("a", "s2", window=None)  # type: ignore[arg-type]  # the column is NOT NULL
        with pytest.raises((sqlite3.IntegrityError, psycopg.IntegrityError), match=r"(?i)not.null"):
            await save_counters(db, [counter("b", "s1"), bad], deleted=[("a", "s1")])
        return await load_counters(db)

    assert with_store(path, work) == [counter("a", "s1", requests=1)]


def test_delete_the_counters_of_a_limit_or_of_one_subject(store: Path | str) -> None:
    path = store

    async def work(db: Store) -> list[list[tuple[str, str]]]:
        await save_counters(
            db,
            [counter(lid, s) for lid in ("a", "b") for s in ("s1", "s2", "s3")],
        )
        seen = []
        await delete_limit_counters(db, "a", "s2")
        seen.append([(r.limit_id, r.subject) for r in await load_counters(db)])
        await delete_limit_counters(db, "b")
        seen.append([(r.limit_id, r.subject) for r in await load_counters(db)])
        await delete_limit_counters(db, "nothing")
        await delete_limit_counters(db, "a", "nobody")
        seen.append([(r.limit_id, r.subject) for r in await load_counters(db)])
        return seen

    one, two, three = with_store(path, work)
    assert one == [("a", "s1"), ("a", "s3"), ("b", "s1"), ("b", "s2"), ("b", "s3")]
    assert two == [("a", "s1"), ("a", "s3")]
    assert three == two
