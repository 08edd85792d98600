"""PostgreSQL itself restarted under load (docs/scale-out.md, "Guarantees and their limits"):
two agwd replicas on a private server of their own (tests/support/pgserver.py: the shared test
server serves the other tests), behind the round-robin balancer, over the fake LLM upstream.
The server is stopped (``fast``, then ``immediate``: a crash and its recovery) and started again
on the same port while clients keep sending: every request is answered, no replica crashes,
every answered request has its usage row once the writers caught up, none is dropped, and a
configuration write right after the restart succeeds and reaches both replicas at once (their
listening connections are back). Skipped, with the reason, where no private server can run."""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator

import httpx
import psycopg
import pytest

from tests.fakes.run import FakeUpstream, start_fake_upstream
from tests.support.agwd import Agwd, AgwdLauncher
from tests.support.balancer import Balancer
from tests.support.engines import STORE_KEY_ENV
from tests.support.pgserver import PgServer, StopMode
from tests.support.replicas import (
    Answer,
    Load,
    apply,
    bundle,
    chat,
    dropped_events,
    rows_of,
    served_within,
)

REPLICAS = 2
CLIENTS = 4
DOWN_S = 1.0
"""How long the server stays stopped each time."""
CATCH_UP_S = 15.0
"""How long the usage writers get to write what waited (their retries back off to 5 s)."""


@pytest.fixture(scope="module")
def pg() -> Iterator[PgServer]:
    with PgServer() as server:
        yield server


@pytest.fixture(scope="module")
def fake(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeUpstream]:
    with start_fake_upstream(tmp_path_factory.mktemp("fake")) as f:
        yield f


@pytest.fixture(scope="module")
def replicas(pg: PgServer, module_agwd_factory: AgwdLauncher) -> Iterator[list[Agwd]]:
    started = [
        module_agwd_factory.start(store_url=pg.url, env=STORE_KEY_ENV, wait=False)
        for _ in range(REPLICAS)
    ]
    for gw in started:
        gw.wait_ready()
    yield started
    for gw in started:
        gw.kill()


def listening(db_url: str) -> int:
    """How many connections of the database wait on ``LISTEN agw_config`` (one a replica)."""
    with psycopg.connect(db_url, connect_timeout=3) as conn:
        (count,) = conn.execute(
            "SELECT COUNT(*) FROM pg_stat_activity WHERE query = 'LISTEN agw_config'"
        ).fetchone() or (0,)
    return int(count)


def wait_listening(db_url: str, count: int, within: float) -> None:
    deadline = time.monotonic() + within
    while (found := listening(db_url)) < count:
        assert time.monotonic() < deadline, f"{found} of {count} replicas listen again"
        time.sleep(0.1)


def test_postgresql_restarted_under_load(
    pg: PgServer, replicas: list[Agwd], fake: FakeUpstream
) -> None:
    apply(replicas[0], bundle(fake, ["chat"]))
    served_within(replicas, "chat", 5.0)
    down: list[tuple[float, float]] = []
    modes: tuple[StopMode, ...] = ("fast", "immediate")
    with Balancer([gw.data_url for gw in replicas]) as lb, Load(lb.url, "chat", CLIENTS) as load:
        for mode in modes:
            time.sleep(0.5)
            pg.stop(mode)
            stopped = time.monotonic()
            time.sleep(DOWN_S)
            down.append((stopped, time.monotonic()))
            pg.start()
        time.sleep(0.5)
    ok = load.ok()
    assert len(ok) == len(load.answers) > 0, {a.status for a in load.answers}
    for start, end in down:  # answered while the server was down: nothing waits for it
        assert any(start < a.at < end for a in ok), (start, end)
    missing = {a.trace_id for a in ok} - rows_of(pg.url, ok, within=CATCH_UP_S)
    assert not missing, f"{len(missing)} of {len(ok)} answered requests have no usage row"
    for gw in replicas:
        assert gw.proc.poll() is None, gw.logs()
        assert dropped_events(gw) == 0
    # the listening connections are back: a write succeeds at the first try and reaches both
    # replicas by its notice
    wait_listening(pg.url, REPLICAS, within=10.0)
    apply(replicas[1], bundle(fake, ["chat", "after"]))
    took = served_within(replicas, "after", 3.0)
    assert max(took) < 1.0, took


def test_the_first_reads_and_writes_after_a_restart_succeed(
    pg: PgServer, replicas: list[Agwd], fake: FakeUpstream
) -> None:
    """Without load nothing has used the replicas' connections since the restart: each first
    finds its connection closed by the server, and opens another rather than failing."""
    a, b = replicas
    apply(a, bundle(fake, ["chat"]))
    served_within(replicas, "chat", 5.0)
    answers = []
    for gw in replicas:  # a usage row each, written before the restart: the writers are idle
        with httpx.Client(base_url=gw.data_url, timeout=10, trust_env=False) as c:
            trace_id = secrets.token_hex(16)
            answers.append(Answer(trace_id, chat(c, "chat", trace_id), time.monotonic()))
    assert len(rows_of(pg.url, answers)) == REPLICAS
    pg.stop("immediate")
    with a.client() as c:  # a write while the server is down: refused at once, nothing waits
        r = c.post("/admin/gateway/apply", json={"bundle": bundle(fake, ["chat", "down"])})
    assert r.status_code == 503 and r.json()["code"] == "store_unavailable", r.text
    pg.start()
    with b.client() as c:  # b's reader: the metrics queries
        r = c.get("/admin/metrics")
    assert r.status_code == 200, r.text
    wait_listening(pg.url, REPLICAS, within=10.0)
    apply(a, bundle(fake, ["chat", "first"]))  # a's write connection
    # b reloads on the notice, reading the configuration on its own write connection
    took = served_within(replicas, "first", 3.0)
    assert max(took) < 1.0, took
