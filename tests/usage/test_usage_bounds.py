"""Client-supplied values against a real agwd: none can make a usage batch fail, each is cut to
its documented limit in the row and the access log, and a row the store itself refuses loses
only itself (issue 12, "One header drops everyone's usage rows")."""

from __future__ import annotations

import contextlib
import json
import os
import re
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import httpx
import pytest

from agw.usage.events import INT64_MAX, NAME_LIMIT, NAMES_LIMIT, TEXT_LIMIT, TEXT_LIMITS
from tests.fakes.run import start_fake_upstream
from tests.support.agwd import Agwd, AgwdLauncher

WAIT_S = 10.0


def bundle(upstream: str) -> dict[str, Any]:
    return {
        "apiVersion": "gateway.agw/v1alpha1",
        "kind": "GatewayBundle",
        "providers": [
            {"id": "fake", "provider_type": "openai", "base_url": f"{upstream}/v1",
             "api_key": "sk-fake"},
        ],
        "llmRoutes": [
            {"id": "open", "protocol": "openai", "match_policy": {"path_prefix": "/open"},
             "target_policy": {"provider_id": "fake"}},
            {"id": "locked", "protocol": "openai", "match_policy": {"path_prefix": "/locked"},
             "auth_policy": {"require_virtual_key": True},
             "target_policy": {"provider_id": "fake"}},
        ],
    }  # fmt: skip


@pytest.fixture(scope="module")
def gw(
    module_agwd_factory: AgwdLauncher, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Agwd]:
    with start_fake_upstream(tmp_path_factory.mktemp("llm")) as fake:
        agwd = module_agwd_factory.start()
        with agwd.client() as admin:
            r = admin.post("/admin/gateway/apply", json={"bundle": bundle(fake.url)})
            assert r.status_code == 200, r.text
        yield agwd


@pytest.fixture
def data(gw: Agwd) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=gw.data_url, timeout=10, trust_env=False) as client:
        yield client


class Traces:
    """Trace ids of one test's requests (its rows are the rows with these ids)."""

    def __init__(self) -> None:
        self.prefix = os.urandom(8).hex()
        self.n = 0

    def header(self) -> dict[str, str]:
        self.n += 1
        return {"traceparent": f"00-{self.prefix}{self.n:016x}-{'1' * 16}-01"}

    def rows(self, gw: Agwd) -> list[dict[str, Any]]:
        with closing(sqlite3.connect(gw.db_path)) as conn:
            conn.row_factory = sqlite3.Row
            found = conn.execute(
                "SELECT * FROM llm_usage_events WHERE trace_id LIKE ? ORDER BY trace_id",
                (self.prefix + "%",),
            )
            return [dict(r) for r in found]

    def access_lines(self, gw: Agwd) -> list[dict[str, Any]]:
        return [e for e in gw.log_events() if str(e.get("trace_id", "")).startswith(self.prefix)]


def wait_for(what: Callable[[], object], within: float = WAIT_S) -> None:
    deadline = time.monotonic() + within
    while not what():
        if time.monotonic() > deadline:
            return
        time.sleep(0.05)


def counter(gw: Agwd, name: str) -> float | None:
    """A Prometheus counter's value, None when it is not exported."""
    with gw.client() as admin:
        text = admin.get("/admin/metrics/prometheus").text
    match = re.search(rf"^{name} (\S+)$", text, re.M)
    return float(match.group(1)) if match else None


def chat(
    data: httpx.Client,
    route: str,
    traces: Traces,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> int:
    content = body or b'{"model":"m","messages":[{"role":"user","content":"hi"}]}'
    r = data.post(
        f"/{route}/v1/chat/completions",
        content=content,
        headers={"content-type": "application/json", **traces.header(), **(headers or {})},
    )
    return r.status_code


def test_a_depth_beyond_64_bits_loses_no_row(gw: Agwd, data: httpx.Client) -> None:
    # issue 12: one such header on a 401 made the batch insert fail, every row of it was lost
    traces = Traces()
    statuses = [
        chat(data, "locked", traces, headers={"x-agent-depth": "9" * 30} if i == 20 else None)
        for i in range(40)
    ]
    # the dispatcher refuses the depth itself (a 400), with or without a row of its own
    expected = 40 - statuses.count(400)
    wait_for(lambda: len(traces.rows(gw)) >= 40)
    rows = traces.rows(gw)
    assert expected <= len(rows) <= 40, statuses
    assert max(r["agent_depth"] for r in rows) in (0, INT64_MAX)
    wait_for(lambda: len(traces.access_lines(gw)) >= len(rows))
    assert len(traces.access_lines(gw)) >= len(rows)


def test_a_lone_surrogate_in_a_model_name_loses_no_row(gw: Agwd, data: httpx.Client) -> None:
    # "\ud800" parses (json.loads takes it) but UTF-8 cannot encode it: sqlite3 refused the row
    traces = Traces()
    poison = b'{"model":"gpt-\\ud800","messages":[{"role":"user","content":"hi"}]}'
    for i in range(30):
        chat(data, "open", traces, poison if i == 10 else None)
    wait_for(lambda: len(traces.rows(gw)) >= 30)
    rows = traces.rows(gw)
    assert len(rows) == 30
    assert sorted({r["upstream_model"] for r in rows}) == ["gpt-?", "m"]
    wait_for(lambda: len(traces.access_lines(gw)) >= 30)
    assert len(traces.access_lines(gw)) == 30


def test_long_client_values_are_cut_in_the_row_and_the_log(gw: Agwd, data: httpx.Client) -> None:
    traces = Traces()
    model = "m" * 100_000
    tools = b",".join(
        b'{"type":"function","function":{"name":"t%d%s"}}' % (i, b"x" * 300) for i in range(500)
    )
    body = b'{"model":"%s","tools":[%s],"messages":[{"role":"user","content":"hi"}]}' % (
        model.encode(),
        tools,
    )
    assert chat(data, "open", traces, body) == 200
    path = "/open/v1/chat/completions/" + "p" * 6000  # a row of the route, whatever the answer
    data.post(path, content=b"{}", headers={"content-type": "application/json",
                                            **traces.header()})  # fmt: skip
    wait_for(lambda: len(traces.rows(gw)) >= 2 and len(traces.access_lines(gw)) >= 2)
    first, _ = traces.rows(gw)
    assert first["upstream_model"] == model[:TEXT_LIMIT]
    assert first["request_tool_count"] == 500
    names = json.loads(first["request_tool_names"])
    assert 0 < len(names) < 500
    assert all(len(n) == NAME_LIMIT for n in names)
    assert sum(len(n) for n in names) <= NAMES_LIMIT
    lines = traces.access_lines(gw)
    assert {len(line["path"]) for line in lines} == {len("/open/v1/chat/completions"),
                                                    TEXT_LIMITS["http_path"]}  # fmt: skip
    assert all(len(line.get("model", "")) <= TEXT_LIMIT for line in lines)


def test_an_unmatched_path_is_cut_in_the_log(gw: Agwd, data: httpx.Client) -> None:
    marker = os.urandom(6).hex()
    r = data.get(f"/nowhere-{marker}/" + "q" * 6000)
    assert r.status_code == 404
    lines: list[dict[str, Any]] = []

    def logged() -> bool:
        lines[:] = [e for e in gw.log_events() if marker in str(e.get("path", ""))]
        return bool(lines)

    wait_for(logged)
    assert lines and len(lines[0]["path"]) == TEXT_LIMITS["http_path"]


@contextlib.contextmanager
def refusing_trigger(db_path: Path, prefix: str) -> Iterator[None]:
    """A trigger in the store (added through a second connection, as an operator could) that
    refuses one row: the test's request that carries X-Agent-Depth 7."""
    with closing(sqlite3.connect(db_path, isolation_level=None)) as conn:
        conn.execute(
            "CREATE TRIGGER refuse_poison BEFORE INSERT ON llm_usage_events "
            f"WHEN NEW.agent_depth = 7 AND NEW.trace_id LIKE '{prefix}%' "
            "BEGIN SELECT RAISE(ABORT, 'poison row refused by the store'); END"
        )
        try:
            yield
        finally:
            conn.execute("DROP TRIGGER refuse_poison")


def test_a_row_the_store_refuses_loses_only_itself(gw: Agwd, data: httpx.Client) -> None:
    traces = Traces()
    name = "agw_usage_rejected_events_total"
    before = counter(gw, name) or 0.0
    with refusing_trigger(gw.db_path, traces.prefix):
        for i in range(60):
            chat(data, "locked", traces, headers={"x-agent-depth": "7"} if i == 30 else None)
        wait_for(lambda: len(traces.rows(gw)) >= 59)
        wait_for(lambda: (counter(gw, name) or 0.0) > before)
    rows = traces.rows(gw)
    assert len(rows) == 59
    assert all(r["agent_depth"] == 0 for r in rows)
    assert counter(gw, name) == before + 1
    with gw.client() as admin:
        pipeline = admin.get("/admin/metrics").json()["pipeline"]
    assert pipeline["rejected_events"] >= 1
    rejected = [e for e in gw.log_events() if e.get("event") == "usage_row_rejected"]
    assert rejected and "poison row refused by the store" in rejected[-1]["detail"]
    assert traces.prefix not in str(rejected)  # the log names the error, never the row
