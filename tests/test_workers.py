"""``agwd --workers N`` (docs/scale-out.md, "Workers on one machine"): real agwd processes
with two workers in front of the fake LLM upstream. Which worker served a request is read from
the access log, whose lines carry ``worker`` under ``--workers``."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.fakes.run import FakeUpstream, start_fake_upstream
from tests.support.admin import created, uid
from tests.support.agwd import Agwd, AgwdLauncher, run_cli, usage_rows
from tests.support.limits import away_from_minute_end

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture(scope="module")
def fake(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeUpstream]:
    with start_fake_upstream(tmp_path_factory.mktemp("fake")) as f:
        yield f


@pytest.fixture(scope="module")
def gw(module_agwd_factory: AgwdLauncher, fake: FakeUpstream) -> Agwd:
    """Two workers, an access log file, one provider to the fake upstream."""
    access = module_agwd_factory.base / "access.log"
    gw = module_agwd_factory.start("--workers", "2", "--access-log", str(access))
    with gw.client() as admin:
        created(
            admin,
            "/admin/llm/providers",
            {"id": "oa", "provider_type": "openai", "base_url": f"{fake.url}/v1", "api_key": "k"},
        )
    return gw


def access_lines(path: Path, path_prefix: str) -> list[dict[str, Any]]:
    """The access-log lines of requests under ``path_prefix`` (the log is flushed every
    0.2 s: wait that long first)."""
    lines = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
    return [x for x in lines if x.get("path", "").startswith(path_prefix)]


def make_route(gw: Agwd) -> str:
    rid = uid("w")
    with gw.client() as admin:
        created(
            admin,
            "/admin/llm/routes",
            {
                "id": rid,
                "protocol": "openai",
                "match_policy": {"path_prefix": f"/{rid}"},
                "target_policy": {"provider_id": "oa"},
            },
        )
    return rid


def post_fresh(url: str) -> int:
    """One request on a new connection (each may land on either worker)."""
    with httpx.Client(timeout=10, trust_env=False) as client:
        return client.post(url, json=CHAT).status_code


def worker_pids(gw: Agwd) -> dict[int, int]:
    """The running worker of each index, from the supervisor's ``worker_started`` lines."""
    pids: dict[int, int] = {}
    for event in gw.log_events():
        if event.get("event") == "worker_started":
            pids[event["worker"]] = event["pid"]
    return pids


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"  # a zombie is gone but not yet reaped


def test_a_route_made_through_the_admin_api_is_served_by_every_worker_within_a_second(
    gw: Agwd,
) -> None:
    rid = make_route(gw)
    created_at = time.monotonic()
    url = f"{gw.data_url}/{rid}/v1/chat/completions"
    late: list[int] = []
    while time.monotonic() - created_at < 1.6:
        status = post_fresh(url)
        if time.monotonic() - created_at > 1.0:
            late.append(status)
    assert late and set(late) == {200}, late
    time.sleep(0.3)
    served = {
        x["worker"]
        for x in access_lines(gw.workdir.parent / "access.log", f"/{rid}/")
        if x["status"] == 200
    }
    assert served == {0, 1}


def test_concurrent_requests_on_both_workers_all_get_their_usage_rows(gw: Agwd) -> None:
    rid = make_route(gw)
    url = f"{gw.data_url}/{rid}/v1/chat/completions"
    trace = os.urandom(16).hex()
    n = 96

    async def burst() -> list[int]:
        limits = httpx.Limits(max_connections=n, max_keepalive_connections=0)
        async with httpx.AsyncClient(timeout=20, limits=limits, trust_env=False) as client:
            headers = {"traceparent": f"00-{trace}-{'ab' * 8}-01"}
            answers = await asyncio.gather(
                *(client.post(url, json=CHAT, headers=headers) for _ in range(n))
            )
        return [r.status_code for r in answers]

    time.sleep(0.6)  # every worker has the route
    assert asyncio.run(burst()) == [200] * n
    rows = usage_rows(gw.db_path, "llm_usage_events", "trace_id = ?", n, (trace,))
    assert len(rows) == n
    time.sleep(0.3)
    assert {x["worker"] for x in access_lines(gw.workdir.parent / "access.log", f"/{rid}/")} == {
        0,
        1,
    }


def test_a_limit_holds_across_workers_by_default(gw: Agwd) -> None:
    """Without --redis-url, --workers leases each cap through the SQLite store: 48 concurrent
    requests on fresh connections (both workers) against 16 a minute: exactly 16 pass."""
    rid = make_route(gw)
    lid = uid("lim")
    with gw.client() as admin:
        limit = {"id": lid, "subject": "route", "window": "1m", "requests": 16}
        created(admin, "/admin/limits", {**limit, "match": {"route_ids": [rid]}})
    url = f"{gw.data_url}/{rid}/v1/chat/completions"
    n = 48

    async def burst() -> list[int]:
        limits = httpx.Limits(max_connections=n, max_keepalive_connections=0)
        async with httpx.AsyncClient(timeout=20, limits=limits, trust_env=False) as client:
            answers = await asyncio.gather(*(client.post(url, json=CHAT) for _ in range(n)))
        return [r.status_code for r in answers]

    away_from_minute_end(25)  # room for the later bursts below
    time.sleep(0.6)  # every worker has the route and the limit
    codes = asyncio.run(burst())
    assert codes.count(200) == 16 and codes.count(429) == 32, codes
    time.sleep(0.3)
    log = gw.workdir.parent / "access.log"
    served = {x["worker"] for x in access_lines(log, f"/{rid}/")}
    # The workers race to accept; on a loaded machine one may take a whole burst. Later bursts
    # in the same minute are refused whichever worker takes them: the cap is spent for both.
    for _ in range(5):
        if served == {0, 1}:
            break
        assert asyncio.run(burst()) == [429] * n
        time.sleep(0.3)
        served = {x["worker"] for x in access_lines(log, f"/{rid}/")}
    assert served == {0, 1}


def test_a_worker_that_dies_is_started_again(gw: Agwd) -> None:
    rid = make_route(gw)
    old = worker_pids(gw)
    os.kill(old[0], signal.SIGKILL)  # worker 0: the admin API comes back with it
    deadline = time.monotonic() + 10
    while worker_pids(gw)[0] == old[0] and time.monotonic() < deadline:
        time.sleep(0.05)
    new = worker_pids(gw)
    assert new[0] != old[0] and new[1] == old[1]
    assert any(e.get("event") == "worker_exited" and e["pid"] == old[0] for e in gw.log_events())
    while time.monotonic() < deadline:
        try:
            with gw.client() as admin:
                if admin.get(f"/admin/llm/routes/{rid}").status_code == 200:
                    break
        except httpx.TransportError:
            time.sleep(0.05)
    else:
        pytest.fail("the admin API did not come back")
    statuses = [post_fresh(f"{gw.data_url}/{rid}/v1/chat/completions") for _ in range(10)]
    assert statuses == [200] * 10


def test_sighup_reloads_every_worker_and_sigterm_stops_them_all(
    agwd_factory: AgwdLauncher, fake: FakeUpstream, tmp_path: Path
) -> None:
    static = tmp_path / "static.yaml"
    head = (
        "apiVersion: gateway.agw/v1alpha1\nkind: GatewayBundle\n"
        f"providers:\n  - {{id: oa, provider_type: openai, base_url: '{fake.url}/v1', "
        "api_key: k}\nlimits:\n  - {id: rpm, subject: route, window: 1m, requests: 1000}\n"
    )
    static.write_text(head)
    access = tmp_path / "access.log"
    gw = agwd_factory.start(
        "--workers", "2", "--access-log", str(access), "--limit-counters", "process", static=static
    )
    pids = worker_pids(gw)
    assert len(pids) == 2 and all(alive(p) for p in pids.values())
    warning = [e for e in gw.log_events() if e.get("event") == "limits_counted_per_worker"]
    assert warning and warning[0]["workers"] == 2 and warning[0]["limits"] == 1

    static.write_text(
        head + "llmRoutes:\n  - {id: hup, protocol: openai, match_policy: {path_prefix: /hup}, "
        "target_policy: {provider_id: oa}}\n"
    )
    gw.proc.send_signal(signal.SIGHUP)
    reloaded = time.monotonic()
    late = []
    while time.monotonic() - reloaded < 1.6:
        status = post_fresh(f"{gw.data_url}/hup/v1/chat/completions")
        if time.monotonic() - reloaded > 1.0:
            late.append(status)
    assert late and set(late) == {200}, late
    time.sleep(0.3)
    assert {x["worker"] for x in access_lines(access, "/hup/") if x["status"] == 200} == {0, 1}

    assert gw.stop() == 0
    assert not any(alive(p) for p in pids.values())
    assert {e["worker"] for e in gw.log_events() if e.get("event") == "worker_stopped"} == {0, 1}


def test_bad_worker_counts_are_refused(tmp_path: Path) -> None:
    db = str(tmp_path / "s.db")
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGW_")}
    common = ["--config-store", db, "--admin-insecure"]
    out = run_cli("--workers", "0", *common, env=env, module="agwd.main")
    assert out.returncode == 1 and "--workers must be between 1 and 64" in out.stderr
    same = ["--addr", "127.0.0.1:18999", "--admin-addr", "127.0.0.1:18999"]
    out = run_cli("--workers", "2", *same, *common, env=env, module="agwd.main")
    assert out.returncode == 1 and "--admin-addr other than --addr" in out.stderr
    assert not Path(db).exists()  # refused before the store is touched
