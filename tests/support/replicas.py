"""Helpers of the scale-out tests (tests/test_replicas.py, tests/test_pg_restart.py): agwd
replicas on one PostgreSQL database over the fake LLM upstream, a load of concurrent clients
through a balancer, and the usage rows of what it was answered, counted by trace id."""

from __future__ import annotations

import secrets
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import httpx
import psycopg

from tests.fakes.run import FakeUpstream
from tests.support.agwd import Agwd

HI = [{"role": "user", "content": "hi"}]


@dataclass
class Answer:
    trace_id: str
    status: int
    at: float  # time.monotonic() when it came back


def bundle(fake: FakeUpstream, routes: list[str]) -> dict[str, Any]:
    """Keyless OpenAI routes named ``routes`` on the fake upstream."""
    return {
        "apiVersion": "gateway.agw/v1alpha1",
        "kind": "GatewayBundle",
        "providers": [
            {"id": "oa", "provider_type": "openai", "base_url": f"{fake.url}/v1", "api_key": "k"}
        ],
        "managedModels": [{"provider_id": "oa", "upstream_model": "fake-gpt"}],
        "llmRoutes": [
            {
                "id": rid,
                "protocol": "openai",
                "match_policy": {"path_prefix": f"/{rid}"},
                "target_policy": {"provider_id": "oa"},
            }
            for rid in routes
        ],
    }


def chat(client: httpx.Client, route: str, trace_id: str | None = None) -> int:
    """The status of one chat completion on ``route`` (0: no answer)."""
    body = {"model": "fake-gpt", "messages": HI, "max_tokens": 5}
    headers = {"x-trace-id": trace_id} if trace_id else {}
    try:
        return client.post(f"/{route}/v1/chat/completions", json=body, headers=headers).status_code
    except httpx.TransportError:
        return 0


def apply(gw: Agwd, body: dict[str, Any]) -> None:
    with gw.client() as c:
        r = c.post("/admin/gateway/apply", json={"bundle": body})
    assert r.status_code == 200, r.text


def served_within(replicas: list[Agwd], route: str, seconds: float) -> list[float]:
    """How long after now each replica, probed directly, took to answer ``route`` with 200."""
    start = time.monotonic()
    took = []
    for gw in replicas:
        with httpx.Client(base_url=gw.data_url, timeout=10, trust_env=False) as c:
            while chat(c, route) != 200:
                assert time.monotonic() - start < seconds, f"{gw.data_url} does not serve {route}"
                time.sleep(0.02)
        took.append(time.monotonic() - start)
    return took


class Load:
    """``clients`` threads sending chat requests to ``url``, each with a trace id of its own,
    until stopped; every answer is kept."""

    def __init__(self, url: str, route: str, clients: int) -> None:
        self.url, self.route, self.clients = url, route, clients
        self.answers: list[Answer] = []
        self._stop = threading.Event()
        self._pool = ThreadPoolExecutor(clients)

    def __enter__(self) -> Load:
        for _ in range(self.clients):
            self._pool.submit(self._loop)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._pool.shutdown(wait=True)

    def _loop(self) -> None:
        with httpx.Client(base_url=self.url, timeout=20, trust_env=False) as c:
            while not self._stop.is_set():
                trace_id = secrets.token_hex(16)
                status = chat(c, self.route, trace_id)
                self.answers.append(Answer(trace_id, status, time.monotonic()))

    def ok(self) -> list[Answer]:
        return [a for a in self.answers if a.status == 200]


def rows_of(db_url: str, answers: list[Answer], within: float = 10.0) -> set[str]:
    """The trace ids of ``answers`` that have a usage row, once all have one or ``within``
    seconds passed (the recorder writes off the request path)."""
    wanted = [a.trace_id for a in answers]
    deadline = time.monotonic() + within
    while True:
        with psycopg.connect(db_url, connect_timeout=3) as conn:
            found = {
                str(t)
                for (t,) in conn.execute(
                    "SELECT trace_id FROM llm_usage_events WHERE trace_id = ANY(%s)", (wanted,)
                )
            }
        if len(found) == len(wanted) or time.monotonic() > deadline:
            return found
        time.sleep(0.1)


def dropped_events(gw: Agwd) -> int:
    """The replica's ``pipeline.dropped_events`` (``GET /admin/metrics``)."""
    with gw.client() as c:
        r = c.get("/admin/metrics")
    assert r.status_code == 200, r.text
    return int(r.json()["pipeline"]["dropped_events"])
