"""Three agwd replicas on one PostgreSQL database and one Redis, behind the round-robin balancer
of tests/support/balancer.py, over the fake LLM upstream (docs/scale-out.md): a bundle applied
through one replica's admin API is served by all three within a second; every connection of the
database killed again and again under load (the shared server serves the other tests:
tests/test_pg_restart.py restarts a private one): the replicas reconnect, none crashes and no
usage row is lost; ``kill -9`` of one replica under load: the others keep serving, and once
the killed replica is started again on its usage spool (agw/usage/spool.py), which holds the
rows it had not yet written, every answered request has its usage row. The replicas are
started once for the module and the kill comes last. Skipped with the reason when PostgreSQL
or Redis is unreachable."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import psycopg
import pytest

from tests.fakes.run import FakeUpstream, start_fake_upstream
from tests.support.agwd import Agwd, AgwdLauncher
from tests.support.balancer import Balancer
from tests.support.engines import (
    REDIS_URL,
    STORE_KEY_ENV,
    fresh_postgres,
    need_postgres,
    need_redis,
    url_of,
)
from tests.support.replicas import Load, apply, bundle, chat, rows_of, served_within

REPLICAS = 3
CLIENTS = 6


@dataclass
class Cluster:
    db_url: str
    replicas: list[Agwd]
    lb: Balancer


def terminate_connections(db_url: str) -> int:
    with psycopg.connect(db_url, autocommit=True, connect_timeout=3) as conn:
        (killed,) = conn.execute(
            "SELECT COUNT(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        ).fetchone() or (0,)
    return int(killed)


@pytest.fixture(scope="module")
def fake(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeUpstream]:
    with start_fake_upstream(tmp_path_factory.mktemp("fake")) as f:
        yield f


@pytest.fixture(scope="module")
def cluster(module_agwd_factory: AgwdLauncher) -> Iterator[Cluster]:
    need_postgres()
    need_redis()
    with fresh_postgres() as conninfo:
        db_url = url_of(conninfo)
        args = ("--redis-url", REDIS_URL)
        replicas = [
            module_agwd_factory.start(*args, store_url=db_url, env=STORE_KEY_ENV, wait=False)
            for _ in range(REPLICAS)
        ]
        for gw in replicas:  # started together: the start-up is the longest part
            gw.wait_ready()
        with Balancer([gw.data_url for gw in replicas], skip_dead=True) as lb:
            yield Cluster(db_url, replicas, lb)
        for gw in replicas:
            gw.kill()


def test_a_bundle_applied_on_one_replica_is_served_by_all_three(
    cluster: Cluster, fake: FakeUpstream
) -> None:
    apply(cluster.replicas[0], bundle(fake, ["chat"]))
    took = served_within(cluster.replicas, "chat", 1.0)
    assert max(took) < 1.0, took


def test_killed_database_connections_are_reopened_under_load(
    cluster: Cluster, fake: FakeUpstream
) -> None:
    apply(cluster.replicas[0], bundle(fake, ["chat"]))
    served_within(cluster.replicas, "chat", 5.0)
    with Load(cluster.lb.url, "chat", CLIENTS) as load:
        killed = 0
        for _ in range(5):
            time.sleep(0.3)
            killed += terminate_connections(cluster.db_url)
        time.sleep(0.3)
    assert killed >= REPLICAS  # each replica's connections, at least its listener
    ok = load.ok()
    assert len(ok) == len(load.answers) > 0, {a.status for a in load.answers}
    assert rows_of(cluster.db_url, ok) == {a.trace_id for a in ok}  # none lost
    for gw in cluster.replicas:
        assert gw.proc.poll() is None, gw.logs()
        with gw.client() as c:
            pipeline = c.get("/admin/metrics").json()["pipeline"]
        assert pipeline["dropped_events"] == 0, pipeline
    # a configuration write works again (the first may meet a dead connection: 503) and
    # reaches the others (their listeners reconnect; the version check is the safety net)
    with cluster.replicas[1].client() as c:
        body = {"bundle": bundle(fake, ["chat", "after"])}
        for _ in range(3):
            r = c.post("/admin/gateway/apply", json=body)
            if r.status_code != 503:
                break
    assert r.status_code == 200, r.text
    served_within(cluster.replicas, "after", 8.0)


def test_kill_9_of_one_replica_under_load(
    cluster: Cluster, fake: FakeUpstream, module_agwd_factory: AgwdLauncher
) -> None:
    apply(cluster.replicas[0], bundle(fake, ["chat"]))
    served_within(cluster.replicas, "chat", 5.0)
    victim, survivors = cluster.replicas[2], cluster.replicas[:2]
    with Load(cluster.lb.url, "chat", CLIENTS) as load:
        time.sleep(1.0)
        victim.kill()
        killed_at = time.monotonic()
        time.sleep(1.5)
    assert victim.proc.returncode == -9
    after = [a for a in load.answers if a.at > killed_at + 0.2]
    assert after and all(a.status == 200 for a in after), {a.status for a in after}
    # the rows the killed replica had not written are in its spool (./data/usage-spool/agwd in
    # its working directory, the default with a PostgreSQL store): started again on that
    # spool, it writes them at its start (another replica could not: the spool is local)
    spool = victim.workdir / "data" / "usage-spool"
    assert (spool / "agwd" / "lock").exists()
    again = module_agwd_factory.start(
        "--usage-spool", str(spool), store_url=cluster.db_url, env=STORE_KEY_ENV
    )
    ok = load.ok()
    found = rows_of(cluster.db_url, ok)
    assert not [a for a in ok if a.trace_id not in found], (len(ok), len(found))
    assert again.proc.poll() is None, again.logs()
    again.kill()
    for gw in survivors:
        assert gw.proc.poll() is None, gw.logs()
        with httpx.Client(base_url=gw.data_url, timeout=10, trust_env=False) as c:
            assert chat(c, "chat") == 200
