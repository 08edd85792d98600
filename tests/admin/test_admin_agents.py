"""The agents control plane (reference §5.10) against one real agwd: a fake LLM upstream and
the fake ACP agent run as real processes, usage rows come from real traffic and from rows
seeded into the store, and every number is checked against sums computed here from the
rows themselves.

The module's agent ``coder`` runs on an ACP service (interactive permissions) and lists an LLM
route and an MCP route; ``web`` is an ``http`` agent bound to nothing.
"""

from __future__ import annotations

import contextlib
import json
import random
import secrets
from collections import defaultdict
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import httpx
import openai
import pytest

from agw.usage.events import AcpUsageEvent, LlmUsageEvent, McpUsageEvent, UsageEvent
from tests.fakes.run import FakeUpstream, start_fake_upstream
from tests.support.acp import FakeAgentHandle
from tests.support.admin import assert_error, bundle, created, problem_paths, uid
from tests.support.agwd import Agwd, AgwdLauncher
from tests.support.engine_launchers import store_execute, store_of, store_rows, usage_rows

KEY = "sk-agents-upstream"
AGENT = "coder"
SERVICE = "coder-svc"
ROUTES = {"llm": "chat", "mcp": "tools", "acp": "coder-acp"}
# Seeded rows live in their own window (2030-01-01, three hours), apart from real traffic.
T0 = int(datetime(2030, 1, 1, tzinfo=UTC).timestamp() * 1000)
SPAN_MS = 3 * 3600 * 1000
WINDOW = {"from": "2030-01-01T00:00:00Z", "to": "2030-01-01T03:00:00Z"}
KINDS = ("llm", "mcp", "acp")


# ----------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def fake_llm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeUpstream]:
    with start_fake_upstream(tmp_path_factory.mktemp("llm"), "--require-key", KEY) as fake:
        yield fake


@pytest.fixture(scope="module")
def fake_acp(tmp_path_factory: pytest.TempPathFactory) -> FakeAgentHandle:
    base = tmp_path_factory.mktemp("acp")
    (base / "state").mkdir()
    (base / "work").mkdir()
    return FakeAgentHandle(state=base / "state", workdir=base / "work")


@pytest.fixture(scope="module")
def gw(
    module_agwd_factory: AgwdLauncher, fake_llm: FakeUpstream, fake_acp: FakeAgentHandle
) -> Agwd:
    agwd = module_agwd_factory.start()
    config = bundle(
        providers=[
            {"id": "oa", "provider_type": "openai", "base_url": f"{fake_llm.url}/v1",
             "api_key": KEY},
        ],
        llmRoutes=[
            {"id": ROUTES["llm"], "protocol": "openai", "match_policy": {"path_prefix": "/chat"},
             "target_policy": {"provider_id": "oa"}},
            {"id": "other", "protocol": "openai", "match_policy": {"path_prefix": "/other"},
             "target_policy": {"provider_id": "oa"}},
        ],
        virtualKeys=[{"id": "team"}],
        mcpServices=[
            {"id": "docs", "name": "Docs", "transport": "streamable_http",
             "url": "http://127.0.0.1:9/mcp"},
        ],
        mcpRoutes=[
            {"id": ROUTES["mcp"], "service_id": "docs", "match_policy": {"path_prefix": "/tools"}},
            {"id": "more-tools", "service_id": "docs",
             "match_policy": {"path_prefix": "/more-tools"}},
        ],
        acpServices=[
            fake_acp.service_config(SERVICE, permission_mode="interactive"),
            fake_acp.service_config("spare-svc"),
        ],
        acpRoutes=[
            {"id": ROUTES["acp"], "service_id": SERVICE,
             "match_policy": {"path_prefix": "/coder"}},
            {"id": "spare-acp", "service_id": "spare-svc",
             "match_policy": {"path_prefix": "/spare"}},
        ],
        agents=[
            {"id": AGENT, "name": "Coder",
             "runtime": {"type": "acp", "acp": {"service_id": SERVICE}},
             "routes": {"llm_route_ids": [ROUTES["llm"]], "mcp_route_ids": [ROUTES["mcp"]]},
             "resources": {"provider_ids": ["oa"], "virtual_key_ids": ["team"]}},
            {"id": "web", "name": "Web", "runtime": {"type": "http",
             "http": {"endpoint": "http://127.0.0.1:9/web"}}},
        ],
    )  # fmt: skip
    with agwd.client() as c:
        r = c.post("/admin/gateway/apply", json={"bundle": config})
        assert r.status_code == 200, r.text
    return agwd


@pytest.fixture(scope="module")
def admin(gw: Agwd) -> Iterator[httpx.Client]:
    with gw.client() as client:
        yield client


def _seed_events() -> list[UsageEvent]:
    """Rows of every attribution case: stamped ``agent_id`` on any route, the agent's routes
    without a stamp (written before the binding), the agent's ACP service on another route
    (the admin audit rows), and rows that are not the agent's (other routes, an MCP row whose
    service id equals the ACP service's)."""
    rng = random.Random(6)
    out: list[UsageEvent] = []
    step = SPAN_MS // 400
    for i in range(400):
        at = T0 + i * step + rng.randrange(step // 2)
        ok = rng.random() < 0.8
        common: dict[str, Any] = {
            "started_at": at,
            "finished_at": at + rng.randrange(5, 900),
            "success": ok,
            "status_code": 200 if ok else rng.choice((400, 502)),
            "error_type": None if ok else "provider_request_failed",
        }
        kind = KINDS[i % 3]
        case = rng.randrange(4)
        if kind == "llm":
            route, agent = [
                (ROUTES["llm"], AGENT),
                (ROUTES["llm"], None),
                ("other", AGENT),
                ("other", None),
            ][case]
            tokens = (rng.randrange(1, 500), rng.randrange(1, 300))
            out.append(LlmUsageEvent(
                **common, route_id=route, agent_id=agent, provider_id="oa",
                upstream_model=rng.choice(("gpt-a", "gpt-b", "gpt-c")),
                input_tokens=tokens[0], output_tokens=tokens[1], total_tokens=sum(tokens),
                api_operation="chat_completions",
            ))  # fmt: skip
        elif kind == "mcp":
            route, agent, service = [
                (ROUTES["mcp"], AGENT, "docs"),
                (ROUTES["mcp"], None, "docs"),
                ("more-tools", None, SERVICE),
                ("more-tools", None, "docs"),
            ][case]
            method = rng.choice(("tools/call", "tools/call", "tools/list"))
            out.append(McpUsageEvent(
                **common, route_id=route, agent_id=agent, service_id=service, method=method,
                tool_name=rng.choice(("search", "fetch")) if method == "tools/call" else None,
                result_status="success" if ok else "error",
            ))  # fmt: skip
        else:
            route, agent, service = [
                (ROUTES["acp"], AGENT, SERVICE),
                (ROUTES["acp"], None, SERVICE),
                ("/admin/acp", None, SERVICE),
                ("spare-acp", None, "spare-svc"),
            ][case]
            out.append(AcpUsageEvent(
                **common, route_id=route, agent_id=agent, service_id=service,
                operation=rng.choice(("turn", "turn", "sessions")),
                result_status="success" if ok else "error",
            ))  # fmt: skip
    return out


@pytest.fixture(scope="module")
def seeded(gw: Agwd) -> list[UsageEvent]:
    """The seeded rows, written into the running agwd's store."""
    events = _seed_events()
    store_execute(store_of(gw), [(event.insert_sql(), event.row()) for event in events])
    return events


# ------------------------------------------------------------------------------------ helpers


def ok(r: httpx.Response) -> Any:
    assert r.status_code == 200, f"{r.request.method} {r.request.url}: {r.status_code} {r.text}"
    return r.json()


def rows(gw: Agwd, kind: str) -> list[dict[str, Any]]:
    return store_rows(store_of(gw), f"SELECT * FROM {kind}_usage_events")


def coder_routes() -> set[str]:
    return set(ROUTES.values())


def attributed(kind: str, row: dict[str, Any], agent: str = AGENT) -> bool:
    """The attribution rule of reference §5.10, written out independently."""
    if agent != AGENT:  # ``web`` has no routes and no service
        return bool(row["agent_id"] == agent)
    return (
        row["agent_id"] == agent
        or row["route_id"] in coder_routes()
        or (kind == "acp" and row["service_id"] == SERVICE)
    )


def mine(gw: Agwd, kind: str, *, window: bool = False) -> list[dict[str, Any]]:
    out = [r for r in rows(gw, kind) if attributed(kind, r)]
    if window:
        out = [r for r in out if T0 <= r["started_at"] <= T0 + SPAN_MS]
    return out


def measures(group: list[dict[str, Any]]) -> dict[str, Any]:
    n = len(group)
    return {
        "request_count": n,
        "success_count": sum(1 for r in group if r["success"]),
        "failure_count": sum(1 for r in group if not r["success"]),
        "avg_latency_ms": round(sum(r["latency_ms"] for r in group) / n, 1) if n else None,
    }


def by(group: list[dict[str, Any]], key: Callable[[dict[str, Any]], Any]) -> dict[Any, list[Any]]:
    out: dict[Any, list[Any]] = defaultdict(list)
    for row in group:
        out[key(row)].append(row)
    return out


class Turn:
    """One ``POST <route>/turn`` read as SSE events (each read bounded by the client timeout)."""

    def __init__(self, url: str, body: dict[str, Any]) -> None:
        self.client = httpx.Client(timeout=30, trust_env=False)
        self.stream = self.client.stream("POST", url, json=body)
        response = self.stream.__enter__()
        assert response.status_code == 200
        self.lines = response.iter_lines()
        self.events: list[tuple[str, dict[str, Any]]] = []

    def next(self) -> tuple[str, dict[str, Any]] | None:
        name, data = "", ""
        for line in self.lines:
            if line.startswith("event:"):
                name = line[6:].strip()
            elif line.startswith("data:"):
                data += line[5:].strip()
            elif not line and name:
                self.events.append((name, json.loads(data) if data else {}))
                return self.events[-1]
        return None

    def until(self, name: str) -> dict[str, Any]:
        for _ in range(500):
            event = self.next()
            if event is None:
                break
            if event[0] == name:
                return event[1]
        raise AssertionError(f"no {name!r} event in {self.events}")

    def rest(self) -> list[tuple[str, dict[str, Any]]]:
        for _ in range(500):
            if self.next() is None:
                return self.events
        raise AssertionError(f"the turn did not end: {self.events}")

    def __enter__(self) -> Turn:
        return self

    def __exit__(self, *exc: object) -> None:
        with contextlib.suppress(httpx.HTTPError):
            self.stream.__exit__(None, None, None)
        self.client.close()


# -------------------------------------------------------------------------------------- tests


def test_llm_rows_are_attributed_when_written(gw: Agwd, admin: httpx.Client) -> None:
    trace = secrets.token_hex(16)
    for prefix in ("chat", "other"):
        client = openai.OpenAI(
            base_url=f"{gw.data_url}/{prefix}/v1", api_key="unused", max_retries=0, timeout=20,
            default_headers={"traceparent": f"00-{trace}-{'cd' * 8}-01"},
        )  # fmt: skip
        answer = client.chat.completions.create(
            model="gpt-x", messages=[{"role": "user", "content": f"hi {prefix}"}]
        )
        assert answer.choices[0].message.content == f"echo: hi {prefix}"
    got = {r["route_id"]: r for r in usage_rows(store_of(gw), "llm_usage_events",
                                                 f"trace_id = '{trace}'", 2)}  # fmt: skip
    assert got[ROUTES["llm"]]["agent_id"] == AGENT  # the route is bound to the agent
    assert got["other"]["agent_id"] is None
    # the agent's interactions find the first, not the second
    found = ok(admin.get(f"/admin/agents/{AGENT}/interactions", params={"limit": "1000"}))
    ids = {i["event_id"] for i in found["items"]}
    assert got[ROUTES["llm"]]["event_id"] in ids and got["other"]["event_id"] not in ids


def test_usage_matches_sums_of_the_rows(
    gw: Agwd, admin: httpx.Client, seeded: list[UsageEvent]
) -> None:
    body = ok(admin.get(f"/admin/agents/{AGENT}/usage", params={**WINDOW, "bucket": "1h"}))
    assert set(body) == {"agent_id", "llm", "timeseries", "mcp", "acp"}
    assert body["agent_id"] == AGENT

    llm = mine(gw, "llm", window=True)
    assert {r["route_id"] for r in llm} == {ROUTES["llm"], "other"}  # both attribution paths
    want = {
        model: measures(group)
        | {k: sum(r[k] for r in group) for k in ("input_tokens", "output_tokens", "total_tokens")}
        for model, group in by(llm, lambda r: r["upstream_model"]).items()
    }
    got = {i["group_value"]: i for i in body["llm"]["items"]}
    assert set(got) == set(want)
    for model, expected in want.items():
        assert {k: got[model][k] for k in expected} == expected, model
    assert body["llm"]["group_by"] == "upstream_model"

    series = body["timeseries"]["llm"]
    want_series = {
        key: (len(group), sum(r["total_tokens"] for r in group))
        for key, group in by(
            llm, lambda r: (r["started_at"] // 3_600_000 * 3_600_000, r["route_id"])
        ).items()
    }
    got_series = {
        (i["bucket_ms"], i["group_value"]): (i["request_count"], i["total_tokens"])
        for i in series["items"]
    }
    assert got_series == want_series
    assert [i["bucket_ms"] for i in series["items"]] == sorted(
        i["bucket_ms"] for i in series["items"]
    )

    calls = [r for r in mine(gw, "mcp", window=True) if r["method"] == "tools/call"]
    assert all(r["service_id"] != SERVICE for r in calls)  # the ACP service id is ACP-only
    got = {i["group_value"]: i for i in body["mcp"]["items"]}
    assert set(got) == {r["tool_name"] for r in calls}
    for tool, group in by(calls, lambda r: r["tool_name"]).items():
        expected = measures(group)
        assert {k: got[tool][k] for k in expected} == expected, tool

    acp = mine(gw, "acp", window=True)
    assert "/admin/acp" in {r["route_id"] for r in acp}  # matched by service only
    got = {i["group_value"]: i for i in body["acp"]["items"]}
    want = {op: measures(group) for op, group in by(acp, lambda r: r["operation"]).items()}
    assert set(got) == set(want)
    for op, expected in want.items():
        assert {k: got[op][k] for k in expected} == expected, op


def test_interactions_are_the_agents_rows(
    gw: Agwd, admin: httpx.Client, seeded: list[UsageEvent]
) -> None:
    params = {**WINDOW, "limit": "1000"}
    body = ok(admin.get(f"/admin/agents/{AGENT}/interactions", params=params))
    want = {r["event_id"] for kind in KINDS for r in mine(gw, kind, window=True)}
    assert {i["event_id"] for i in body["items"]} == want
    times = [i["started_at_ms"] for i in body["items"]]
    assert times == sorted(times, reverse=True)  # newest first
    # the metrics filters still apply, on top of the attribution
    only = ok(admin.get(f"/admin/agents/{AGENT}/interactions",
                        params={**params, "route_kind": "acp", "success": "false"}))  # fmt: skip
    want_acp = {r["event_id"] for r in mine(gw, "acp", window=True) if not r["success"]}
    assert {i["event_id"] for i in only["items"]} == want_acp
    # an agent bound to nothing matches nothing, however many rows there are
    assert ok(admin.get("/admin/agents/web/interactions"))["items"] == []
    assert_error(
        admin.get(f"/admin/agents/{AGENT}/interactions", params={"from": "yesterday"}),
        400,
        "invalid_parameter",
        "from must be RFC3339",
    )


def test_activity_and_health_read_the_newest_rows(
    gw: Agwd, admin: httpx.Client, seeded: list[UsageEvent]
) -> None:
    everything = sorted(
        (r for kind in KINDS for r in mine(gw, kind)), key=lambda r: r["started_at"], reverse=True
    )
    activity = ok(admin.get(f"/admin/agents/{AGENT}/activity"))
    assert set(activity) == {"interactions", "pending_permissions"}
    assert [i["event_id"] for i in activity["interactions"]] == [
        r["event_id"] for r in everything[:50]
    ]
    health = ok(admin.get(f"/admin/agents/{AGENT}/health"))
    newest = everything[:200]
    assert len(everything) > 200  # the window is the cap, not everything
    assert health["recent_window"] == 200
    assert health["recent_failures"] == sum(1 for r in newest if not r["success"])
    assert health["agent_id"] == AGENT and health["disabled"] is False
    assert health["runtime"] == {"type": "acp", "service_id": SERVICE, "status": "ready"}
    assert health["pipeline"] == {"dropped_events": 0, "write_failures": 0}

    web = ok(admin.get("/admin/agents/web/health"))
    assert web == {
        "agent_id": "web",
        "disabled": False,
        "runtime": {
            "type": "http",
            "endpoint": "http://127.0.0.1:9/web",
            "status": "not_dispatched",
        },
        "recent_window": 0,
        "recent_failures": 0,
        "pipeline": {"dropped_events": 0, "write_failures": 0},
    }
    assert ok(admin.get("/admin/agents/web/activity")) == {"interactions": []}


def test_workspace_shows_the_running_agent(
    gw: Agwd, admin: httpx.Client, seeded: list[UsageEvent]
) -> None:
    thread = uid("th")
    url = f"{gw.data_url}/coder/turn"
    with Turn(url, {"thread_id": thread, "input": "tool build"}) as turn:
        request_id = turn.until("permission")["request_id"]
        ws = ok(admin.get(f"/admin/agents/{AGENT}/workspace"))
        assert ws["agent"]["id"] == AGENT and ws["agent"]["source"] == "config_store"
        assert ws["runtime"] == {"type": "acp", "service_id": SERVICE, "status": "ready"}
        assert ws["acp_service"]["id"] == SERVICE
        assert ws["acp_routes"] == [
            {"id": ROUTES["acp"], "path_prefix": "/coder", "service_id": SERVICE}
        ]
        rv = ws["runtime_view"]
        assert [i["thread_id"] for i in rv["pooled_instances"]] == [thread]
        assert rv["pooled_instances"][0]["service_id"] == SERVICE
        assert [t["thread_id"] for t in rv["in_flight_turns"]] == [thread]
        assert [p["request_id"] for p in rv["pending_permissions"]] == [request_id]
        assert ws["links"] == {
            "sessions": "/coder/sessions",
            "transcript": "/coder/sessions/{session_id}/transcript",
            "admin_sessions": f"/admin/acp/services/{SERVICE}/sessions",
            "admin_runtime": "/admin/acp/runtime",
        }
        health = ok(admin.get(f"/admin/agents/{AGENT}/health"))
        assert (
            health["pooled_instances"],
            health["in_flight_turns"],
            health["pending_permissions"],
        ) == (1, 1, 1)
        activity = ok(admin.get(f"/admin/agents/{AGENT}/activity"))
        assert [p["request_id"] for p in activity["pending_permissions"]] == [request_id]
        answer = {"outcome": "selected", "option_id": "ok"}
        ok(admin.post(f"/admin/acp/runtime/permissions/{request_id}", json=answer))
        events = turn.rest()
    assert events[-1][0] == "done", events

    # the turn's row (route bound through the service; its thread: seeded rows match the route
    # and the agent too) and the permission's audit row (service)
    assert usage_rows(store_of(gw), "acp_usage_events", f"route_id = '{ROUTES['acp']}' AND "
               f"operation = 'turn' AND agent_id = '{AGENT}' AND thread_id = ?",
               args=(thread,))  # fmt: skip
    assert usage_rows(store_of(gw), "acp_usage_events", f"permission_request_id = '{request_id}'")
    ws = ok(admin.get(f"/admin/agents/{AGENT}/workspace"))
    assert ws["runtime_view"]["in_flight_turns"] == []
    assert ws["runtime_view"]["pending_permissions"] == []
    acp = mine(gw, "acp")
    assert ws["usage"] == measures(acp) | {
        "turn_count": sum(1 for r in acp if r["operation"] == "turn")
    }

    web = ok(admin.get("/admin/agents/web/workspace"))
    assert set(web) == {"agent", "runtime"} and web["runtime"]["status"] == "not_dispatched"


def test_resources_resolve_and_put_replaces_only_them(admin: httpx.Client) -> None:
    body = ok(admin.get(f"/admin/agents/{AGENT}/resources"))
    assert body["resources"] == {
        "provider_ids": ["oa"], "mcp_service_ids": [], "virtual_key_ids": ["team"]
    }  # fmt: skip
    assert body["routes"] == {
        "acp_route_ids": [], "llm_route_ids": [ROUTES["llm"]], "mcp_route_ids": [ROUTES["mcp"]]
    }  # fmt: skip
    resolved = body["resolved"]
    assert set(resolved) == {
        "providers", "mcp_services", "virtual_keys", "llm_routes", "mcp_routes", "acp_routes"
    }  # fmt: skip
    assert resolved["providers"] == [
        {"id": "oa", "kind": "provider", "disabled": False, "detail": "openai", "exists": True}
    ]
    assert resolved["llm_routes"] == [
        {"id": "chat", "kind": "llm_route", "disabled": False,
         "detail": "openai /chat -> provider oa", "exists": True}
    ]  # fmt: skip
    assert resolved["mcp_routes"][0]["detail"] == "/tools -> mcp service docs"
    assert resolved["virtual_keys"][0]["id"] == "team"
    assert "vk-" not in str(resolved)  # never a bearer

    aid = uid("agent")
    created(admin, "/admin/agents", {
        "id": aid, "name": "Temp", "runtime": {"type": "acp", "acp": {"service_id": "spare-svc"}},
        "routes": {"acp_route_ids": ["spare-acp"]}, "description": "kept",
    })  # fmt: skip
    put = admin.put(
        f"/admin/agents/{aid}/resources",
        json={"resources": {"mcp_service_ids": ["docs", "docs"], "provider_ids": ["oa"]}},
    )
    view = ok(put)
    assert view == ok(admin.get(f"/admin/agents/{aid}/resources"))
    assert view["resources"] == {
        "provider_ids": ["oa"], "mcp_service_ids": ["docs"], "virtual_key_ids": []
    }  # fmt: skip
    assert view["routes"]["acp_route_ids"] == ["spare-acp"]  # left out: kept
    agent = ok(admin.get(f"/admin/agents/{aid}"))
    assert agent["description"] == "kept" and agent["resources"]["mcp_service_ids"] == ["docs"]

    before = ok(admin.get(f"/admin/agents/{aid}"))
    url = f"/admin/agents/{aid}/resources"
    dangling = admin.put(url, json={"resources": {"provider_ids": ["nope"]}})
    err = assert_error(dangling, 400, "config_invalid", "provider 'nope' does not exist")
    assert any("resources.provider_ids" in p for p in problem_paths(err)), err
    twice = admin.put(url, json={"routes": {"llm_route_ids": [ROUTES["llm"]]}})
    err = assert_error(twice, 400, "config_invalid", "route 'chat' is already bound to agent")
    assert {aid, AGENT} & {p.split('"')[1] for p in problem_paths(err)}, err
    assert_error(admin.put(url, json={"policy": {}}), 400, "invalid_request", "unknown field")
    assert_error(admin.put(url, json={}), 400, "invalid_request")
    bad = admin.put(url, json={"resources": {"provider_id": ["oa"]}})
    assert_error(bad, 400, "config_invalid", "resources.provider_id")
    assert ok(admin.get(f"/admin/agents/{aid}")) == before  # refused writes change nothing

    r = admin.delete(f"/admin/agents/{aid}")
    assert ok(r) == {
        "status": "deleted",
        "id": aid,
        "unbound": {"acp_service_id": "spare-svc", "acp_route_ids": ["spare-acp"]},
    }
    web = uid("web")
    created(admin, "/admin/agents", {"id": web, "name": "W", "runtime": {
        "type": "http", "http": {"endpoint": "http://127.0.0.1:9/"}}})  # fmt: skip
    assert ok(admin.delete(f"/admin/agents/{web}")) == {
        "status": "deleted", "id": web, "unbound": {}
    }  # fmt: skip


@pytest.mark.parametrize(
    ("method", "tail"),
    [("GET", "workspace"), ("GET", "activity"), ("GET", "usage"), ("GET", "interactions"),
     ("GET", "resources"), ("PUT", "resources"), ("GET", "health")],
)  # fmt: skip
def test_unknown_agent_is_404(admin: httpx.Client, method: str, tail: str) -> None:
    body: dict[str, Any] | None = {"resources": {}} if method == "PUT" else None
    r = admin.request(method, f"/admin/agents/no-such-agent/{tail}", json=body)
    assert assert_error(r, 404, "not_found")["error"] == "agent not found"


def test_usage_rejects_unknown_parameters(admin: httpx.Client) -> None:
    r = admin.get(f"/admin/agents/{AGENT}/usage", params={"form": "2030-01-01T00:00:00Z"})
    assert_error(r, 400, "invalid_parameter", 'unknown parameter "form"')
    r = admin.get(f"/admin/agents/{AGENT}/usage", params={"bucket": "fortnight"})
    assert_error(r, 400, "invalid_parameter", "invalid bucket")
