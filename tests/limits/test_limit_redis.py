"""Limit counters shared in Redis (agw/policy/limit_redis.py, docs/scale-out.md#shared-limits):
three backends, as three replicas would have, admit exactly what a budget affords under
concurrent load; three agwd replicas with ``--redis-url`` behind a round-robin balancer share
one limit, its status and its reset; with Redis unreachable each limit fails open or closed as
configured and agwd keeps serving; a settle Redis did not take at first is retried until it
does. Skipped with the reason when the test Redis is unreachable (the semantics suite runs on
Redis too: tests/limits/test_limit_backend.py)."""

from __future__ import annotations

import asyncio
import json
import secrets
import shutil
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import pytest
import redis
import redis.asyncio
from pydantic import ValidationError

from agw.config.limits import Limit
from agw.errors import Refusal
from agw.policy.limit_grant import Grant
from agw.policy.limit_redis import LimitBackendUnavailable, OfflineGrant, RedisBackend
from agw.policy.limit_types import CONCURRENT, COST, NO_CAP, REQUESTS, Charge, Denial, Plan, spec
from tests.fakes.run import FakeUpstream
from tests.support.agwd import Agwd, AgwdLauncher, free_port
from tests.support.balancer import Balancer
from tests.support.engines import PATIENT_REDIS_URL, REDIS_URL, need_redis, redis_prefix
from tests.support.limits import away_from_midnight, post, replica_bundle, subjects

REPLICAS = 3


def budget(cost: float) -> Plan:
    """One request of team-a against a $1.05 budget: each holds ``cost`` and one request."""
    caps = [NO_CAP] * 6
    caps[COST] = 1.05
    dollars = spec("dollars", caps, "1d", 86400)
    return Plan([Charge(dollars, "team-a")], [cost, 0, 0, 0, 1, 0], [0.0] * 6, 0)


def test_three_backends_admit_exactly_what_the_budget_affords() -> None:
    async def race(backends: list[RedisBackend], n: int) -> list[Grant | Denial]:
        return await asyncio.gather(
            *(backends[i % REPLICAS].reserve(budget(0.1)) for i in range(n))
        )

    async def main(prefix: str) -> None:
        # what is checked is atomicity, not the outage timeout: a loaded CI machine may take
        # longer than half a second to open 200 connections
        backends = [RedisBackend(PATIENT_REDIS_URL, prefix=prefix) for _ in range(REPLICAS)]
        try:
            verdicts = await race(backends, 200)
            assert not any(isinstance(v, OfflineGrant) for v in verdicts)  # all counted
            grants = [v for v in verdicts if isinstance(v, Grant)]
            assert len(grants) == 10  # $1.05 affords ten of $0.10, not eleven
            refused = [v for v in verdicts if isinstance(v, Denial)]
            assert len(refused) == 190 and refused[0].retry_after == 2  # held, not yet used
            for i, grant in enumerate(grants):
                backends[i % REPLICAS].settle(grant, [0.05, 0, 0, 0, 1, 0])
            for backend in backends:
                await backend.flush()
            (counter,) = await backends[2].counters("dollars")
            assert counter.used[COST] == pytest.approx(0.5)
            assert counter.used[REQUESTS] == 10
            assert counter.held[COST] == pytest.approx(0.0, abs=1e-9)
            again = await race(backends, 50)  # $0.55 left: five more
            assert sum(isinstance(v, Grant) for v in again) == 5
            assert await backends[0].reset("dollars", "team-a") == 1
            (counter,) = await backends[1].counters("dollars")
            assert counter.used[COST] == 0 and counter.held[COST] == pytest.approx(0.5)
        finally:
            for backend in backends:
                await backend.close()

    with redis_prefix() as prefix:
        asyncio.run(main(prefix))


def test_an_unreachable_redis_fails_open_or_closed_per_limit() -> None:
    async def main() -> None:
        backend = RedisBackend(f"redis://127.0.0.1:{free_port()}/0")
        try:
            caps = [NO_CAP] * 6
            caps[REQUESTS] = 1
            watch = spec("watch", caps, "1m", 60)
            shut = replace(spec("shut", caps, "1m", 60), on_failure="closed")
            one: tuple[list[float], list[float], int] = ([0, 0, 0, 0, 1, 1], [0.0] * 6, 0)
            open_plan = Plan([Charge(watch, "k")], *one)
            for _ in range(3):  # a requests: 1 limit, uncounted: none refused
                grant = await backend.reserve(open_plan)
                assert isinstance(grant, OfflineGrant)
                backend.settle(grant, [0, 0, 0, 0, 1, 0])  # nothing to settle
            with pytest.raises(Refusal) as refused:
                await backend.reserve(Plan([Charge(watch, "k"), Charge(shut, "k")], *one))
            assert refused.value.status == 503 and '"shut"' in refused.value.message
            assert backend.metrics.failures == {("watch", "open"): 4, ("shut", "closed"): 1}
            with pytest.raises(LimitBackendUnavailable):
                await backend.counters("watch")
        finally:
            await backend.close()

    asyncio.run(main())


@pytest.fixture
def own_redis() -> Iterator[str]:
    """A Redis server of this test's own (it pauses it), on a free port; killed after."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not installed: no Redis of the test's own to pause")
    port = free_port()
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    client = redis.Redis(port=port, socket_timeout=1)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                assert time.monotonic() < deadline, "redis-server did not start"
                time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        client.close()
        proc.kill()
        proc.wait(timeout=10)


def test_a_hold_is_released_when_redis_answers_again(own_redis: str) -> None:
    caps = [NO_CAP] * 6
    caps[CONCURRENT] = 1
    one_at_a_time = replace(spec("par", caps, "lifetime", None), on_failure="closed")
    plan = Plan([Charge(one_at_a_time, "k")], [0, 0, 0, 0, 1, 1], [0.0] * 6, 0)

    async def main() -> None:
        backend = RedisBackend(own_redis)
        admin = redis.asyncio.Redis.from_url(own_redis)
        try:
            grant = await backend.reserve(plan)
            assert isinstance(grant, Grant)
            await admin.client_pause(1500)  # Redis answers nobody for 1.5 s
            backend.settle(grant, [0, 0, 0, 0, 1, 0])  # its first tries time out
            with pytest.raises(Refusal):  # meanwhile a closed limit refuses
                await backend.reserve(plan)
            await backend.flush(10)
            (counter,) = await backend.counters("par")
            assert counter.held[CONCURRENT] == 0 and counter.used[REQUESTS] == 1
            assert isinstance(await backend.reserve(plan), Grant)  # the slot is free again
            assert backend.metrics.settles_dropped == 0
        finally:
            await admin.aclose()
            await backend.close()

    asyncio.run(main())


# ---------------------------------------------------------------------------- agwd replicas


@pytest.fixture
def limit_id() -> Iterator[str]:
    """A limit id of its own (agwd's keys are ``agw:lim:<id>:...``), its keys deleted after."""
    need_redis()
    lid = f"shared-{secrets.token_hex(4)}"
    yield lid
    client = redis.Redis.from_url(REDIS_URL)
    keys = list(client.scan_iter(match=f"agw:lim:{lid}:*"))
    if keys:
        client.delete(*keys)
    client.close()


def settled(gw: Agwd, limit_id: str) -> dict[str, int]:
    """What the one subject of ``limit_id`` used and holds, once nothing is held (5 s at most)."""
    deadline = time.monotonic() + 5
    while True:
        (shown,) = subjects(gw, limit_id).values()
        now = {"used": shown["used"]["requests"], "in_flight": shown["in_flight"]["requests"]}
        if now["in_flight"] == 0 or time.monotonic() > deadline:
            return now
        time.sleep(0.05)


def test_three_replicas_share_one_limit(
    agwd_factory: AgwdLauncher, fake: FakeUpstream, tmp_path: Path, limit_id: str
) -> None:
    # a day's window: an hour's rolled over once mid-test (a CI run at 11:00 UTC saw used 0)
    limit = {"id": limit_id, "subject": "route", "window": "1d", "requests": 12}
    away_from_midnight(60)  # the replicas start within it
    static = tmp_path / "bundle.json"
    static.write_text(json.dumps(replica_bundle(fake, [limit])))
    gws = [
        agwd_factory.start("--redis-url", PATIENT_REDIS_URL, static=static, wait=False)
        for _ in range(REPLICAS)
    ]
    for gw in gws:  # started together: the start-up is the test's longest part
        gw.wait_ready()
    with Balancer([gw.data_url for gw in gws]) as lb, ThreadPoolExecutor(12) as pool:
        codes = list(pool.map(lambda _: post(lb.url, "open").status_code, range(36)))
        assert sorted(lb.hits.values()) == [12, 12, 12]
    assert codes.count(200) == 12 and codes.count(429) == 24, codes
    for gw in gws:  # every replica shows the one counter (settles are sent in the background)
        assert settled(gw, limit_id) == {"used": 12, "in_flight": 0}
    with gws[1].client() as c:
        r = c.post(f"/admin/limits/{limit_id}/reset", json={})
    assert r.json() == {"status": "reset", "id": limit_id, "subjects": 1}
    assert subjects(gws[2], limit_id)["open"]["used"]["requests"] == 0
    assert post(gws[0].data_url, "open").status_code == 200


def test_agwd_with_redis_unreachable_fails_each_limit_as_configured(
    agwd_factory: AgwdLauncher, fake: FakeUpstream, tmp_path: Path, limit_id: str
) -> None:
    limits = [
        {  # a request budget that fails open: admitted uncounted
            "id": f"{limit_id}-open",
            "subject": "route",
            "match": {"route_ids": ["open"]},
            "requests": 1,
            "on_backend_failure": "open",
        },
        {  # a dollar budget: closed by default
            "id": f"{limit_id}-usd",
            "subject": "route",
            "match": {"route_ids": ["closed"]},
            "cost_usd": 5,
        },
    ]
    static = tmp_path / "bundle.json"
    static.write_text(json.dumps(replica_bundle(fake, limits)))
    gw = agwd_factory.start("--redis-url", f"redis://127.0.0.1:{free_port()}/0", static=static)
    for _ in range(3):
        assert post(gw.data_url, "open").status_code == 200
    refused = post(gw.data_url, "closed")
    assert refused.status_code == 503, refused.text
    assert refused.headers["retry-after"] == "5"
    error = refused.json()["error"]
    assert f'"{limit_id}-usd" cannot be checked' in error["message"]
    assert post(gw.data_url, "open").status_code == 200  # still serving
    with gw.client() as c:
        metrics = c.get("/admin/metrics/prometheus").text
        status = c.get("/admin/limits")
    assert status.status_code == 503 and "unreachable" in status.text
    assert (
        f'agw_limit_backend_failures_total{{limit_id="{limit_id}-open",mode="open"}} 4.0' in metrics
    )
    assert (
        f'agw_limit_backend_failures_total{{limit_id="{limit_id}-usd",mode="closed"}} 1.0'
        in metrics
    )
    warnings = [e for e in gw.log_events() if e.get("event") == "limit_backend_unreachable"]
    assert len(warnings) == 1  # at most one per WARN_EVERY_S


def test_bad_input_is_refused_with_the_reason(agwd_factory: AgwdLauncher) -> None:
    with pytest.raises(ValidationError, match="on_backend_failure"):
        Limit.model_validate({"id": "x", "requests": 1, "on_backend_failure": "sometimes"})
    gw = agwd_factory.start("--redis-url", "http://user:hunter2@redis:6379", wait=False)
    assert gw.proc.wait(timeout=30) != 0
    assert "--redis-url must be a redis://" in gw.logs()
    assert "hunter2" not in gw.logs()  # the password is not echoed
