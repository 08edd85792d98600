"""The ACP plane's bounds through a real agwd (issue 12): a pool cap that evicts idle agents and
an idle TTL that reaps them; agent file requests on a FIFO that must not block anyone; an agent
flooding updates at a client that does not read, which must not grow agwd's memory."""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.support.acp import (
    AcpGateway,
    agent_pids,
    make_agent,
    read_events,
    start_acp_gateway,
)
from tests.support.agwd import AgwdLauncher

FAST = httpx.Timeout(15.0, connect=5.0)


@dataclass
class Limits:
    gw: AcpGateway
    fifo: Path


@pytest.fixture(scope="module")
def limits(module_agwd_factory: AgwdLauncher, tmp_path_factory: pytest.TempPathFactory) -> Limits:
    tmp = tmp_path_factory.mktemp("acp-limits")
    agent = make_agent(tmp)
    fifo = agent.workdir / "pipe"
    os.mkfifo(fifo)
    services = [
        agent.service_config("capped", max_instances=2, idle_ttl="1s"),
        agent.service_config("files", fs_access="read_write", max_instances=16),
        agent.service_config("flood"),
        agent.service_config("echo"),
        agent.service_config("asks", permission_mode="interactive"),
    ]
    routes = [{"prefix": f"/{s['id']}", "service_id": s["id"]} for s in services]
    return Limits(start_acp_gateway(module_agwd_factory, tmp, agent, services, routes), fifo)


@contextlib.contextmanager
def sampling(gw: AcpGateway) -> Iterator[list[int]]:
    """The number of live fake agent processes, sampled every 20 ms while the block runs."""
    counts: list[int] = []
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            counts.append(len(agent_pids(gw.agent)))
            stop.wait(0.02)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield counts
    finally:
        stop.set()
        thread.join(5)


def test_pool_cap_evicts_idle_agents_and_the_ttl_reaps_them(limits: Limits) -> None:
    gw = limits.gw
    with sampling(gw) as counts:
        first = gw.turn("/capped", {"thread_id": "c0", "input": "think remember"})
        for i in range(1, 6):  # more threads than the cap of 2: every one is served
            r = gw.turn("/capped", {"thread_id": f"c{i}", "input": "hi"})
            assert r.names[-1] == "done", r.events
        # the evicted thread's next turn loads its session again
        again = gw.turn("/capped", {"thread_id": "c0", "input": "hi"})
        assert again.names[-1] == "done" and again.session_id == first.session_id
    assert counts and max(counts) <= 2, max(counts)
    # idle for longer than idle_ttl (1s): reaped without any other request
    deadline = time.monotonic() + 6
    while agent_pids(gw.agent) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert agent_pids(gw.agent) == []
    with gw.agwd.client() as admin:
        view = admin.get("/admin/acp/runtime").json()
    assert [i for i in view["instances"] if i["service_id"] == "capped"] == []


def _turn_text(gw: AcpGateway, prefix: str, thread: str, text: str) -> tuple[str, float]:
    started = time.monotonic()
    body = {"thread_id": thread, "input": text}
    with (
        httpx.Client(timeout=FAST, trust_env=False) as client,
        gw.open_turn(client, prefix, body) as r,
    ):
        events = list(read_events(r))
    assert events[-1].name == "done", events
    out = "".join(e.data.get("text", "") for e in events if e.name == "delta")
    return out, time.monotonic() - started


def test_fifo_inside_the_roots_is_refused_without_blocking(limits: Limits) -> None:
    gw, fifo = limits.gw, limits.fifo
    link = fifo.parent / "link-to-pipe"
    link.symlink_to(fifo)
    # more FIFO reads at once than asyncio's default executor has threads (cores + 4)
    n = (os.cpu_count() or 1) + 6
    asks = [("fsread", f"fsread {fifo}")] * n + [
        ("fsread", f"fsread {link}"),
        ("fswrite", f"fswrite {fifo} hello"),
        ("fswrite", f"fswrite {link} hello"),
    ]
    with ThreadPoolExecutor(len(asks)) as pool:
        results = list(
            pool.map(
                lambda item: _turn_text(gw, "/files", f"fifo-{item[0]}", item[1][1]),
                enumerate(asks),
            )
        )
    for text, took in results:
        assert text.startswith("fs error: -32602 ") and "not a regular file" in text, text
        assert took < 10, took
    # the gateway's shared threads are free: an admin login (bcrypt) and a new agent's start
    started = time.monotonic()
    with gw.agwd.client() as admin:
        assert admin.get("/admin/acp/runtime", timeout=FAST).status_code == 200
    assert time.monotonic() - started < 5
    text, _ = _turn_text(gw, "/echo", "after-fifo", "still here")
    assert text == "echo: still here "
    # a regular file inside the roots is still served
    (gw.agent.workdir / "plain.txt").write_text("plain text")
    text, _ = _turn_text(gw, "/files", "plain", f"fsread {gw.agent.workdir / 'plain.txt'}")
    assert text == "plain text"


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_flood_at_a_client_that_does_not_read_keeps_memory_bounded(limits: Limits) -> None:
    gw = limits.gw
    pid = gw.agwd.proc.pid
    assert gw.turn("/flood", {"thread_id": "warm", "input": "flood 100 64"}).names[-1] == "done"
    base = rss_kib(pid)
    peak = base
    # 40000 updates of 4 KiB (about 160 MiB of frames) at a client that reads the first one
    # and then nothing for a while
    with httpx.Client(timeout=FAST, trust_env=False) as client:
        body = {"thread_id": "flood", "input": "flood 40000 4096"}
        with gw.open_turn(client, "/flood", body) as r:
            events = read_events(r)
            assert next(e for e in events if e.name == "delta")  # the flood has begun
            deadline = time.monotonic() + 6
            served = 0
            while time.monotonic() < deadline:
                peak = max(peak, rss_kib(pid))
                # other requests are served meanwhile
                if served < 3:
                    text, took = _turn_text(gw, "/echo", "beside-flood", "hi")
                    assert text == "echo: hi " and took < 5
                    served += 1
                time.sleep(0.1)
    growth_mib = (peak - base) / 1024
    assert growth_mib < 40, f"agwd grew {growth_mib:.0f} MiB under the flood"
    # the client left: the flood is cancelled (session/cancel, the agent killed after 5 s if it
    # goes on) and the agent's scope is free again
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with gw.agwd.client() as admin:
            busy = admin.get("/admin/acp/runtime").json()["in_flight"]
        if not [s for s in busy if s["thread_id"] == "flood"]:
            break
        time.sleep(0.1)
    text, _ = _turn_text(gw, "/flood", "flood", "after")
    assert text == "echo: after "


def test_an_agents_request_flood_is_bounded(limits: Limits) -> None:
    """An agent sends 200 permission requests at once: 64 are served (relayed to the client),
    the rest are refused at once, never queued."""
    gw = limits.gw
    limit = 64
    seen = []
    body = {"thread_id": "asks", "input": "asks 200"}
    with gw.client() as client, gw.client() as answers, gw.open_turn(client, "/asks", body) as r:
        events = read_events(r)
        for event in events:
            if event.name == "permission":
                seen.append(event.data["request_id"])
                if len(seen) == limit:
                    break
        for request_id in seen:
            answer = {"request_id": request_id, "outcome": "cancelled"}
            assert answers.post(gw.url("/asks/permission"), json=answer).status_code == 200
        rest = list(events)
    assert rest[-1].name == "done", rest
    assert [e for e in rest if e.name == "permission"] == []
    text = "".join(e.data.get("text", "") for e in rest if e.name == "delta")
    assert json.loads(text) == {"answered": limit, "refused": 200 - limit}


def test_http_transport_connections_and_their_buffers_are_bounded(limits: Limits) -> None:
    """``<route>/acp`` (issue 12 variant): each connection buffers its answers until a GET
    reads them (up to 16 MiB), and answers echo the client's id and method. One keyless client
    opened connections without end and filled each with four answers echoing a 4 MB id: agwd
    grew by 16 MiB a connection (+478 MiB for 30, in 2.4 s), held for 30 minutes. Now ids and
    methods are bounded (400) and a principal holds at most ``CONNECTIONS_PER_PRINCIPAL``
    connections per route, its least recently used closed beyond."""
    import agw.acp.http_transport as transport

    quota = getattr(transport, "CONNECTIONS_PER_PRINCIPAL", 32)  # (absent before the fix)
    gw = limits.gw
    url = gw.url("/echo/acp")
    pid = gw.agwd.proc.pid
    json_type = {"content-type": "application/json"}
    init = {"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {"protocolVersion": 1}}
    huge = "x" * 4_000_000
    before = rss_kib(pid)
    opened: list[str] = []
    with httpx.Client(timeout=FAST) as http:
        for _ in range(quota + 8):
            r = http.post(url, json=init, headers=json_type)
            assert r.status_code == 200, r.text
            cid = r.headers["acp-connection-id"]
            opened.append(cid)
            for message in ({"id": huge, "method": "authenticate"}, {"id": 1, "method": huge}):
                r = http.post(
                    url,
                    json={"jsonrpc": "2.0", **message},
                    headers={**json_type, "acp-connection-id": cid},
                )
                assert r.status_code == 400, r.text[:200]
                assert len(r.content) < 1000
        asked = {"jsonrpc": "2.0", "id": 1, "method": "authenticate"}
        for cid, status in (
            (opened[0], 404),
            (opened[7], 404),
            (opened[8], 202),
            (opened[-1], 202),
        ):
            r = http.post(url, json=asked, headers={**json_type, "acp-connection-id": cid})
            assert r.status_code == status, (cid, r.text)
    grown_mib = (rss_kib(pid) - before) / 1024
    assert grown_mib < 64, f"agwd grew by {grown_mib:.0f} MiB"
