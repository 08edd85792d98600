"""The PostgreSQL store (agw/store/pg.py) beside the SQLite one: each migration gives both
engines the same tables; the secret key is required and checked; usage batches with a bad row,
retention; a configuration write on one replica reloads the others (LISTEN/NOTIFY), in process
and between two agwd processes. The suites of tests/store, tests/admin and tests/metrics run
on both engines through their fixtures (tests/support/engines.py)."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from agw.config import families as f
from agw.errors import StoreError
from agw.runtime.manager import ConfigManager
from agw.runtime.state import touched
from agw.store import config_repo
from agw.store.config_repo import Row
from agw.store.db import migration_files, split_statements
from agw.store.engine import open_store
from agw.store.pg import translate, translate_migration
from agw.usage.events import LlmUsageEvent
from agw.usage.recorder import UsageRecorder
from agw.usage.retention import purge_older_than
from tests.support.admin import bundle, created, llm_route_body, make_provider, provider_body
from tests.support.agwctl import assert_one_line_error, run_agwctl
from tests.support.agwd import AgwdLauncher, base_env
from tests.support.engines import STORE_KEY, STORE_KEY_ENV, fresh_postgres, url_of
from tests.support.inproc import InprocLauncher
from tests.support.metrics import generate, seed
from tests.support.usage import NOW_MS, wait_until

Columns = dict[str, list[str]]


def apply_bundle(client: httpx.Client, body: dict[str, Any]) -> httpx.Response:
    return client.post("/admin/gateway/apply", json={"bundle": body})


def ok(response: httpx.Response) -> None:
    assert response.status_code == 200, response.text


@pytest.fixture
def pg_url() -> Iterator[str]:
    with fresh_postgres() as conninfo:
        yield url_of(conninfo)


def sqlite_tables(conn: sqlite3.Connection) -> Columns:
    names = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
    return {
        name: sorted(r[1] for r in conn.execute(f"PRAGMA table_info({name})"))
        for name in sorted(names)
    }


def postgres_tables(conn: psycopg.Connection[tuple[object, ...]]) -> Columns:
    found: Columns = {}
    for table, column in conn.execute(
        "SELECT table_name, column_name FROM information_schema.columns "
        "WHERE table_schema = 'public' AND table_name <> 'agw_store' ORDER BY 1, 2"
    ):
        found.setdefault(str(table), []).append(str(column))
    return found


def test_each_migration_gives_both_engines_the_same_tables(pg_url: str) -> None:
    with closing(sqlite3.connect(":memory:")) as lite, psycopg.connect(pg_url) as pg:
        for number, path in migration_files():
            for statement in split_statements(path.read_text()):
                lite.execute(statement)
                pg.execute(translate(translate_migration(statement)), [])  # as PgConn runs it
            pg.commit()
            assert postgres_tables(pg) == sqlite_tables(lite), f"after migration {number}"


def test_the_store_needs_its_secret_key_and_refuses_another(pg_url: str) -> None:
    async def main() -> None:
        with pytest.raises(StoreError, match="AGW_SECRET_KEY"):
            await open_store(pg_url)
        db = await open_store(pg_url, secret_key=STORE_KEY)
        await db.close()
        with pytest.raises(StoreError, match="another secret key") as refused:
            await open_store(pg_url, secret_key=bytes(32))
        assert "key file" not in str(refused.value)  # a database has none: only AGW_SECRET_KEY
        db = await open_store(pg_url, secret_key=STORE_KEY)  # migrated once: opens again
        await db.close()

    asyncio.run(main())


def llm_event(n: int, **kw: object) -> LlmUsageEvent:
    return LlmUsageEvent(started_at=NOW_MS + n, finished_at=NOW_MS + n + 10, **kw)  # type: ignore[arg-type]


def test_usage_batches_leave_out_a_bad_row_and_retention_deletes(pg_url: str) -> None:
    async def main() -> tuple[int, int, int]:
        db = await open_store(pg_url, secret_key=STORE_KEY)
        try:
            recorder = UsageRecorder(db, batch_size=256)
            recorder.start()
            events = [llm_event(n, event_id=f"e{n}", success=n % 2 == 0) for n in range(300)]
            events.append(llm_event(400, event_id="e7"))  # the same id: refused alone
            for event in events:
                assert recorder.emit(event)
            await recorder.close()
            async with (await db.reader()).execute(
                "SELECT COUNT(*), SUM(success) FROM llm_usage_events"
            ) as cur:
                total, succeeded = await cur.fetchone()
            assert (total, succeeded) == (300, 150)
            deleted = await purge_older_than(db, 0, now_ms=NOW_MS + 100)
            return recorder.rejected_events, deleted, recorder.dropped_events
        finally:
            await db.close()

    assert asyncio.run(main()) == (1, 100, 0)


def test_a_write_reloads_the_other_replica_within_a_second(pg_url: str) -> None:
    async def main() -> float:
        first = await open_store(pg_url, secret_key=STORE_KEY)
        second = await open_store(pg_url, secret_key=STORE_KEY)
        try:
            one, two = ConfigManager(first), ConfigManager(second)
            for db, manager in ((first, one), (second, two)):
                await manager.start()
                await db.watch(manager.refresh)
            await asyncio.sleep(0.2)  # both listening
            provider = f.PROVIDER.model.model_validate(
                {"id": "p1", "provider_type": "openai", "api_key": "sk-a"}
            )
            started = time.monotonic()
            await one.change(lambda state: (state.put(f.PROVIDER, touched(None, provider)), None))
            await wait_until(lambda: "p1" in two.state.objects["provider"], within=1.0)
            return time.monotonic() - started
        finally:
            await first.close()
            await second.close()

    assert asyncio.run(main()) < 1.0


def test_a_route_created_on_one_agwd_is_served_by_the_other(
    pg_url: str, agwd_factory: AgwdLauncher
) -> None:
    first = agwd_factory.start(store_url=pg_url, env=STORE_KEY_ENV, wait=False)
    second = agwd_factory.start(store_url=pg_url, env=STORE_KEY_ENV, wait=False)
    first.wait_ready()
    second.wait_ready()
    try:
        with first.client() as admin, httpx.Client(base_url=second.data_url) as data:
            assert data.post("/r1/v1/chat/completions", json={}).status_code == 404
            make_provider(admin, "p1", base_url="http://127.0.0.1:9/v1")
            route = llm_route_body("r1", "p1", auth_policy={"require_virtual_key": True})
            created(admin, "/admin/llm/routes", route)
            deadline = time.monotonic() + 1.0
            status = 404
            while status == 404 and time.monotonic() < deadline:
                status = data.post(
                    "/r1/v1/chat/completions", json={"model": "m", "messages": []}
                ).status_code
                time.sleep(0.02)
            assert status == 401  # matched on the second agwd, which asks for a virtual key
    finally:
        first.stop()
        second.stop()


def test_migrate_store_moves_a_sqlite_deployment_into_postgresql(
    pg_url: str, inproc_factory: InprocLauncher, tmp_path: Path
) -> None:
    gateway = inproc_factory.start()
    with gateway.client() as client:
        ok(apply_bundle(client, bundle(providers=[provider_body("p1", api_key="sk-secret")])))
        vk = created(client, "/admin/virtual_keys", {"id": "vk1"})
    path = gateway.db_path
    gateway.stop()
    seed(path, generate(), None)
    env = {**base_env(), **STORE_KEY_ENV}

    moved = run_agwctl("gateway", "migrate-store", "--from", f"sqlite:{path}", "--to", pg_url,
                       env=env, cwd=tmp_path)  # fmt: skip
    assert moved.returncode == 0, moved.stderr
    assert moved.stdout.startswith("moved 2 objects; rows: ")

    async def both() -> tuple[list[Row], list[Row], list[list[int]]]:
        lite = await open_store(path)
        pg = await open_store(pg_url, secret_key=STORE_KEY)
        try:
            counts: list[list[int]] = []
            for db in (lite, pg):
                async with db.conn.execute(
                    "SELECT (SELECT COUNT(*) FROM llm_usage_events), "
                    "(SELECT COUNT(*) FROM mcp_usage_events), (SELECT SUM(total_tokens) "
                    "FROM llm_usage_events)"
                ) as cur:
                    counts.append(list(await cur.fetchone()))
            return await config_repo.load_rows(lite), await config_repo.load_rows(pg), counts
        finally:
            await lite.close()
            await pg.close()

    lite_rows, pg_rows, (lite_counts, pg_counts) = asyncio.run(both())
    assert pg_rows == lite_rows and pg_counts == lite_counts
    assert {r.key for r in pg_rows if r.family == "virtual_key"} == {vk["key"]}
    again = run_agwctl("gateway", "migrate-store", "--from", str(path), "--to", pg_url, env=env,
                       cwd=tmp_path)  # fmt: skip
    assert_one_line_error(again, "the target store already holds rows in providers: migrate-store "
                          "moves a deployment into an empty store only")  # fmt: skip


def test_lost_connections_are_reopened_and_the_version_check_catches_up(pg_url: str) -> None:
    """Every connection of the store killed: the next write finds its connection closed at
    ``BEGIN`` and goes on on a new one; the listening connection comes back and, the version
    having moved meanwhile (writes whose notices it could not hear), reloads."""

    async def main() -> int:
        db = await open_store(pg_url, secret_key=STORE_KEY)
        reloads: list[int] = []

        async def changed() -> None:
            reloads.append(1)

        try:
            await db.watch(changed)
            await asyncio.sleep(0.3)  # listening
            with psycopg.connect(pg_url, autocommit=True) as conn:
                conn.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND pid <> pg_backend_pid()"
                )
            await config_repo.write(db, [], [])  # reconnects; its own notice: ignored
            await config_repo.write(db, [], [])
            assert db.problem() is None
            await wait_until(lambda: bool(reloads), within=3.0)
            return len(reloads)
        finally:
            await db.close()

    assert asyncio.run(main()) == 1


def test_usage_rows_wait_for_a_database_that_went_away(pg_url: str) -> None:
    """The write connection killed under the recorder: its batch waits, is written once the
    connection is back, and nothing is lost or counted as failed."""

    async def main() -> tuple[int, int, int]:
        db = await open_store(pg_url, secret_key=STORE_KEY)
        try:
            recorder = UsageRecorder(db)
            recorder.start()
            assert recorder.emit(llm_event(0, event_id="before"))
            await wait_until(lambda: recorder.written_events == 1, within=3.0)
            with psycopg.connect(pg_url, autocommit=True) as conn:
                conn.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND pid <> pg_backend_pid()"
                )
            for n in range(1, 51):
                assert recorder.emit(llm_event(n, event_id=f"e{n}"))
            await recorder.close()
            async with (await db.reader()).execute("SELECT COUNT(*) FROM llm_usage_events") as cur:
                (rows,) = await cur.fetchone()
            return rows, recorder.write_failures, recorder.dropped_events
        finally:
            await db.close()

    assert asyncio.run(main()) == (51, 0, 0)
