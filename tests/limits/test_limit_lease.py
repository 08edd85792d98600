"""Limit caps leased through the config store (agw/policy/limit_lease.py, docs/scale-out.md,
"Shared limits"), on a real SQLite file and a real PostgreSQL database: three backends over one
store, as three processes would have, admit exactly what a budget affords under concurrent
load, and again once their idle leases went back; a process that stops renewing its lease
loses it when it expires; with the store unreachable a request its lease covers is admitted
and one that needs more fails open or closed as its limit says; three agwd replicas on one
PostgreSQL database without Redis share one limit, its status and its reset (the semantics
suite runs on leases too: tests/limits/test_limit_backend.py; ``--workers``:
tests/test_workers.py). The clock is injected only where a test moves it."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from agw.errors import Refusal
from agw.policy.limit_grant import Grant
from agw.policy.limit_lease import LEASE_TTL_S, LeaseBackend
from agw.policy.limit_types import COST, NO_CAP, REQUESTS, Charge, Denial, Plan, spec
from agw.store.engine import Store, open_store
from tests.fakes.run import FakeUpstream
from tests.support.agwd import AgwdLauncher
from tests.support.balancer import Balancer
from tests.support.engines import (
    ENGINES,
    STORE_KEY,
    STORE_KEY_ENV,
    fresh_postgres,
    store_target,
    url_of,
)
from tests.support.limits import post, replica_bundle, subjects

REPLICAS = 3


def budget(cost: float, on_failure: str = "closed") -> Plan:
    """One request of team-a against a $1.05 budget: each holds ``cost`` and one request."""
    caps = [NO_CAP] * 6
    caps[COST] = 1.05
    dollars = replace(spec("dollars", caps, "1d", 86400), on_failure=on_failure)
    return Plan([Charge(dollars, "team-a")], [cost, 0, 0, 0, 1, 0], [0.0] * 6, 0)


@pytest.fixture(params=ENGINES)
def target(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str | Path]:
    """One store, on each engine, that the backends of a test share."""
    with store_target(str(request.param), tmp_path / "store") as where:
        yield where


async def stores(target: str | Path, n: int) -> list[Store]:
    """``n`` connections to one store, as ``n`` processes would open it."""
    return [await open_store(target, secret_key=STORE_KEY) for _ in range(n)]


async def close(backends: list[LeaseBackend], dbs: list[Store]) -> None:
    for backend in backends:
        await backend.close()
    for db in dbs:
        await db.close()


async def race(backends: list[LeaseBackend], n: int) -> list[Grant | Denial]:
    return await asyncio.gather(*(backends[i % REPLICAS].reserve(budget(0.1)) for i in range(n)))


def test_three_backends_admit_exactly_what_the_budget_affords(target: str | Path) -> None:
    async def main() -> None:
        dbs = await stores(target, REPLICAS)
        backends = [LeaseBackend(db) for db in dbs]
        try:
            verdicts = await race(backends, 200)
            grants = [v for v in verdicts if isinstance(v, Grant)]
            assert len(grants) == 10  # $1.05 affords ten of $0.10, not eleven
            assert all(g.counters for g in grants)  # all counted (none admitted offline)
            refused = [v for v in verdicts if isinstance(v, Denial)]
            assert len(refused) == 190
            by = {id(g): i % REPLICAS for i, g in enumerate(verdicts) if isinstance(g, Grant)}
            for grant in grants:
                backends[by[id(grant)]].settle(grant, [0.05, 0, 0, 0, 1, 0])
            (counter,) = await backends[2].counters("dollars")  # adds backend 2's own use
            for backend in backends:  # a tick adds the others'; two idle ticks return leases
                await backend.tick()
                await backend.tick()
            (counter,) = await backends[1].counters("dollars")
            assert counter.used[COST] == pytest.approx(0.5)
            assert counter.used[REQUESTS] == 10
            conn = await dbs[0].reader()
            cur = await conn.execute("SELECT COUNT(*) FROM limit_leases")
            assert (await cur.fetchone())[0] == 0  # every lease went back
            again = await race(backends, 50)  # $0.55 left: five more
            assert sum(isinstance(v, Grant) for v in again) == 5
            assert await backends[0].reset("dollars", "team-a") == 1
            (counter,) = await backends[1].counters("dollars")
            assert counter.used[COST] == 0
        finally:
            await close(backends, dbs)

    asyncio.run(main())


def test_a_lease_its_holder_stopped_renewing_is_free_once_it_expires(target: str | Path) -> None:
    now = [time.time()]
    clock: Callable[[], float] = lambda: now[0]  # noqa: E731

    async def main() -> None:
        dbs = await stores(target, 2)
        dead, alive = LeaseBackend(dbs[0], clock=clock), LeaseBackend(dbs[1], clock=clock)
        try:
            big = Plan(budget(1.0).charges, [1.0, 0, 0, 0, 1, 0], [0.0] * 6, 0)
            assert isinstance(await dead.reserve(big), Grant)  # holds $1 of $1.05, never ends
            assert isinstance(await alive.reserve(budget(0.1)), Denial)
            now[0] += LEASE_TTL_S + 1  # the dead process's lease was not renewed
            assert isinstance(await alive.reserve(budget(0.1)), Grant)
        finally:
            await alive.close()
            for db in dbs:
                await db.close()

    asyncio.run(main())


def reachable(url: str, allow: bool) -> None:
    """The test database takes connections again, or refuses them and loses the open ones
    (as a server that went away: a new connection fails)."""
    info = psycopg.conninfo.conninfo_to_dict(url)
    name = str(info["dbname"])
    info["dbname"] = "postgres"
    with psycopg.connect(psycopg.conninfo.make_conninfo("", **info), autocommit=True) as admin:
        flag = sql.SQL("true" if allow else "false")
        admin.execute(
            sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS {}").format(sql.Identifier(name), flag)
        )
        if not allow:
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s",
                (name,),
            )


def test_an_unreachable_store_fails_open_or_closed_past_the_lease() -> None:
    async def main(url: str) -> None:
        db = await open_store(url, secret_key=STORE_KEY)
        backend = LeaseBackend(db)
        try:
            first = await backend.reserve(budget(0.1))
            assert isinstance(first, Grant) and first.counters
            backend.settle(first, [0.04, 0, 0, 0, 1, 0])  # its lease has $0.06 left
            reachable(url, False)
            covered = await backend.reserve(budget(0.05))  # the lease pays: no store needed
            assert isinstance(covered, Grant) and covered.counters
            assert backend.metrics.failures == {}
            with pytest.raises(Refusal) as closed:
                await backend.reserve(budget(0.5))
            assert closed.value.status == 503 and closed.value.code == "limit_backend_unavailable"
            assert backend.metrics.failures == {("dollars", "closed"): 1}
            reachable(url, True)  # reconnected on the next transaction: counted again
            assert isinstance(await backend.reserve(budget(0.1)), Grant)
            reachable(url, False)
            uncounted = await backend.reserve(budget(2.0, on_failure="open"))
            assert isinstance(uncounted, Grant) and not uncounted.counters
            assert backend.metrics.failures[("dollars", "open")] == 1
        finally:
            await backend.close()
            await db.close()

    with fresh_postgres() as conninfo:
        asyncio.run(main(url_of(conninfo)))


def test_three_replicas_without_redis_share_one_limit(
    agwd_factory: AgwdLauncher, fake: FakeUpstream, tmp_path: Path
) -> None:
    limit_id = "shared"
    limit = {"id": limit_id, "subject": "route", "window": "1h", "requests": 12}
    static = tmp_path / "bundle.json"
    static.write_text(json.dumps(replica_bundle(fake, [limit])))
    with fresh_postgres() as conninfo:
        url = url_of(conninfo)
        gws = [
            agwd_factory.start(static=static, store_url=url, env=STORE_KEY_ENV, wait=False)
            for _ in range(REPLICAS)
        ]
        for gw in gws:
            gw.wait_ready()
        try:
            with Balancer([gw.data_url for gw in gws]) as lb, ThreadPoolExecutor(12) as pool:
                codes = list(pool.map(lambda _: post(lb.url, "open").status_code, range(36)))
                assert sorted(lb.hits.values()) == [12, 12, 12]
            assert codes.count(200) == 12 and codes.count(429) == 24, codes
            deadline = time.monotonic() + 5  # each replica adds its use within a tick
            while True:
                shown = [subjects(gw, limit_id)["open"]["used"]["requests"] for gw in gws]
                if shown == [12] * REPLICAS or time.monotonic() > deadline:
                    break
                time.sleep(0.1)
            assert shown == [12] * REPLICAS
            with gws[1].client() as c:
                r = c.post(f"/admin/limits/{limit_id}/reset", json={})
            assert r.json() == {"status": "reset", "id": limit_id, "subjects": 1}
            assert subjects(gws[2], limit_id)["open"]["used"]["requests"] == 0
        finally:
            for gw in gws:
                gw.stop()
