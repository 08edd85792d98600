"""The ACP admin endpoints (reference §5.9) against a real agwd running the fake ACP agent
(``tests/fakes/acp_agent.py``, built on the official ACP SDK) as real processes.

One agwd for the module. Turns go through the data plane (``POST <route>/turn``, SSE) so the
runtime views, thread closing and permission answers are checked against real pooled agents;
sessions and transcripts start transient agents that read what earlier turns stored. Process
groups are checked gone after every close. Audit rows are read from the usage tables.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from agw.admin.acp import ADMIN_ROUTE_ID, NOT_RUNNING
from agw.admin.app import create_admin_app
from agw.runtime.manager import ConfigManager
from tests.support.acp import FakeAgentHandle, group_members, wait_group_gone
from tests.support.admin import assert_error, created, uid
from tests.support.agwd import Agwd
from tests.support.engine_launchers import store_of, store_rows

# The ACP runtime here is the agents' and the process's: the store only holds its services and
# routes (CRUD on both engines: test_admin_crud.py). On PostgreSQL too: the admin calls' audit
# rows (see tests/admin/conftest.py).
PG_TESTS = frozenset({"test_every_admin_call_writes_an_audit_row"})
WAIT_S = 15.0
TURN_TIMEOUT_S = 30.0


# ------------------------------------------------------------------------------- helpers


class Turn:
    """One ``POST <route>/turn``, read event by event (every read bounded by the timeout)."""

    def __init__(self, url: str, body: dict[str, Any], timeout: float = TURN_TIMEOUT_S) -> None:
        self.client = httpx.Client(timeout=timeout, trust_env=False)
        self._stream = self.client.stream("POST", url, json=body)
        self.response = self._stream.__enter__()
        assert self.response.status_code == 200, self.response.read()
        assert self.response.headers["content-type"].startswith("text/event-stream")
        self._lines = self.response.iter_lines()
        self.events: list[tuple[str, dict[str, Any]]] = []
        self.ended = False

    def next(self) -> tuple[str, dict[str, Any]] | None:
        """The next event; None once the stream has ended."""
        name, data = "", ""
        for line in self._lines:
            if line.startswith("event:"):
                name = line[6:].strip()
            elif line.startswith("data:"):
                data += line[5:].strip()
            elif not line and name:
                event = (name, json.loads(data) if data else {})
                self.events.append(event)
                return event
        self.ended = True
        return None

    def until(self, name: str, limit: int = 500) -> dict[str, Any]:
        """Read up to and including the first ``name`` event; its payload."""
        for _ in range(limit):
            event = self.next()
            if event is None:
                break
            if event[0] == name:
                return event[1]
        raise AssertionError(f"no {name!r} event; got {self.events}")

    def rest(self, limit: int = 500) -> list[tuple[str, dict[str, Any]]]:
        for _ in range(limit):
            if self.next() is None:
                return self.events
        raise AssertionError(f"the turn did not end: {self.events}")

    def text(self) -> str:
        return "".join(p.get("text", "") for n, p in self.events if n == "delta")

    def session_id(self) -> str:
        sessions = [p["session_id"] for n, p in self.events if n == "session"]
        assert sessions, self.events
        return str(sessions[0])

    def close(self) -> None:
        with contextlib.suppress(httpx.HTTPError):
            self._stream.__exit__(None, None, None)
        self.client.close()

    def __enter__(self) -> Turn:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def ok(r: httpx.Response) -> Any:
    assert r.status_code == 200, f"{r.request.method} {r.request.url}: {r.status_code} {r.text}"
    assert r.headers["content-type"].startswith("application/json")
    return r.json()


def wait_for(what: str, check: Callable[[], Any], timeout: float = WAIT_S) -> Any:
    """Poll ``check`` until it returns something truthy (at most ``timeout`` seconds)."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.1)


def audit_rows(
    agwd: Agwd, where: str, args: tuple[Any, ...], count: int = 1
) -> list[dict[str, Any]]:
    """Admin audit rows of ``acp_usage_events`` matching ``where``, waiting (bounded) for
    ``count`` of them."""

    store = store_of(agwd)
    # the order they were emitted in (PostgreSQL has no rowid: the order they started in)
    order = "rowid" if isinstance(store, Path) else "started_at, finished_at"

    def found() -> list[dict[str, Any]]:
        rows = store_rows(
            store,
            f"SELECT * FROM acp_usage_events WHERE route_id = ? AND {where} ORDER BY {order}",
            (ADMIN_ROUTE_ID, *args),
        )
        return rows if len(rows) >= count else []

    rows: list[dict[str, Any]] = wait_for(f"{count} audit row(s) where {where} {args}", found)
    return rows


@pytest.fixture(scope="module")
def fake(tmp_path_factory: pytest.TempPathFactory) -> FakeAgentHandle:
    base = tmp_path_factory.mktemp("acp")
    (base / "state").mkdir()
    for sub in ("work/a", "work/b", "elsewhere"):
        (base / sub).mkdir(parents=True)
    (base / "work" / "in-link").symlink_to(base / "work" / "a")
    (base / "work" / "out-link").symlink_to(base / "elsewhere")
    return FakeAgentHandle(state=base / "state", workdir=base / "work" / "a")


@pytest.fixture(scope="module")
def work(fake: FakeAgentHandle) -> Path:
    return fake.workdir.parent


class Gateway:
    """The module's agwd, its admin client and helpers to make services and routes."""

    def __init__(self, agwd: Agwd, admin: httpx.Client, fake: FakeAgentHandle) -> None:
        self.agwd, self.admin, self.fake = agwd, admin, fake

    def service(self, *flags: str, route: bool = True, **extra: Any) -> tuple[str, str]:
        """A new service running the fake (cwd work/a, roots work/), and a route to it; returns
        (service id, route URL)."""
        sid = uid("acp")
        body = self.fake.service_config(
            sid, *flags, allowed_roots=[str(self.fake.workdir.parent)], **extra
        )
        created(self.admin, "/admin/acp/services", body)
        if not route:
            return sid, ""
        rid = uid("acproute")
        created(
            self.admin,
            "/admin/acp/routes",
            {"id": rid, "service_id": sid, "match_policy": {"path_prefix": f"/{rid}"}},
        )
        return sid, f"{self.agwd.data_url}/{rid}"

    def turn(self, url: str, text: str, thread: str, **extra: Any) -> Turn:
        return Turn(f"{url}/turn", {"thread_id": thread, "input": text, **extra})

    def run(self, url: str, text: str, thread: str, **extra: Any) -> Turn:
        """A whole turn; asserts it ended with ``done``."""
        with self.turn(url, text, thread, **extra) as t:
            t.rest()
        assert t.events[-1][0] == "done", t.events
        return t

    def instances(self, service_id: str) -> list[dict[str, Any]]:
        view = ok(self.admin.get("/admin/acp/runtime"))
        return [i for i in view["instances"] if i["scope"].split("\x00")[0] == service_id]


@pytest.fixture(scope="module")
def gw(module_agwd: Agwd, admin: httpx.Client, fake: FakeAgentHandle) -> Gateway:
    return Gateway(module_agwd, admin, fake)


def svc(service_id: str, tail: str) -> str:
    return f"/admin/acp/services/{service_id}/{tail}"


# -------------------------------------------------------------------- sessions, transcripts


def test_sessions_lists_the_agents_sessions_in_the_cwd(
    gw: Gateway, fake: FakeAgentHandle, work: Path
) -> None:
    sid, url = gw.service()
    in_a = gw.run(url, "hello from a", uid("th")).session_id()
    in_b = gw.run(url, "hello from b", uid("th"), cwd=str(work / "b")).session_id()

    default = ok(gw.admin.get(svc(sid, "sessions")))
    mine = {s["session_id"]: s for s in default["sessions"]}
    assert in_a in mine and in_b not in mine, default
    assert mine[in_a]["cwd"] == str(work / "a")
    assert mine[in_a]["title"] == "hello from a"
    assert mine[in_a]["updated_at"]
    assert "next_cursor" not in default
    assert all(s["cwd"] == str(work / "a") for s in default["sessions"])

    in_b_list = ok(gw.admin.get(svc(sid, "sessions"), params={"cwd": str(work / "b")}))
    assert [s["session_id"] for s in in_b_list["sessions"]] == [in_b]
    # the same directory through a symlink: compared after resolving both sides
    linked = ok(gw.admin.get(svc(sid, "sessions"), params={"cwd": str(work / "in-link")}))
    assert in_a in {s["session_id"] for s in linked["sessions"]}


def test_sessions_pages_follow_the_agents_cursor(gw: Gateway) -> None:
    sid, url = gw.service("--page-size", "1")
    made = {gw.run(url, f"page {i}", uid("th")).session_id() for i in range(2)}
    seen: list[str] = []
    cursor = ""
    pages = 0
    for _ in range(50):
        params = {"cursor": cursor} if cursor else {}
        page = ok(gw.admin.get(svc(sid, "sessions"), params=params))
        pages += 1
        assert len(page["sessions"]) <= 1
        seen += [s["session_id"] for s in page["sessions"]]
        cursor = page.get("next_cursor", "")
        if not cursor:
            break
    assert made <= set(seen)
    assert pages > 2  # the fake's other sessions (other cwds or not) took pages too


def test_transcript_replays_the_session(gw: Gateway) -> None:
    sid, url = gw.service()
    thread = uid("th")
    session_id = gw.run(url, "think it over", thread).session_id()
    again = gw.run(url, "and again", thread, session_id=session_id)
    assert again.session_id() == session_id
    body = ok(gw.admin.get(svc(sid, f"sessions/{session_id}/transcript")))
    assert body == {
        "session_id": session_id,
        "messages": [
            {"role": "user", "text": "think it over"},
            {"role": "reasoning", "text": "it over"},
            {"role": "assistant", "text": "echo: think it over"},
            {"role": "user", "text": "and again"},
            {"role": "assistant", "text": "echo: and again"},
        ],
    }


def test_transcript_of_an_unknown_session_is_502(gw: Gateway) -> None:
    sid, _ = gw.service(route=False)
    body = assert_error(
        gw.admin.get(svc(sid, "sessions/sess-nosuchsession/transcript")), 502, "upstream_failed"
    )
    assert f"acp service {sid} failed" in body["error"]


@pytest.mark.parametrize(
    ("flag", "tail"),
    [("--no-list", "sessions"), ("--no-load", "sessions/sess-x/transcript")],
)
def test_capability_not_advertised_is_502(gw: Gateway, flag: str, tail: str) -> None:
    sid, _ = gw.service(flag, route=False)
    body = assert_error(gw.admin.get(svc(sid, tail)), 502, "upstream_failed")
    assert f"acp service {sid} failed" in body["error"]
    assert ("session/list" if flag == "--no-list" else "load") in body["error"], body


def test_agent_that_cannot_start_is_502_with_its_reason(gw: Gateway) -> None:
    sid, _ = gw.service("--exit-on-start", "7", route=False)
    body = assert_error(gw.admin.get(svc(sid, "sessions")), 502, "upstream_failed")
    assert "fake agent: exit on start" in body["error"], body  # the stderr tail

    missing = uid("nocmd")
    created(
        gw.admin,
        "/admin/acp/services",
        {
            "id": missing,
            "name": missing,
            "agent_type": "command",
            "command": "no-such-acp-agent-binary",
            "cwd": str(gw.fake.workdir),
        },
    )
    body = assert_error(gw.admin.get(svc(missing, "sessions")), 502, "upstream_failed")
    assert 'acp command "no-such-acp-agent-binary" not found' in body["error"], body


SERVICE_CALLS = [("GET", "sessions"), ("GET", "sessions/sess-x/transcript")]


@pytest.mark.parametrize(("method", "tail"), SERVICE_CALLS)
def test_unknown_service_is_404(gw: Gateway, method: str, tail: str) -> None:
    r = gw.admin.request(method, svc("no-such-service", tail))
    assert assert_error(r, 404, "not_found")["error"] == "acp service not found"


@pytest.mark.parametrize(("method", "tail"), SERVICE_CALLS)
def test_disabled_service_is_400_and_starts_nothing(
    gw: Gateway, work: Path, method: str, tail: str
) -> None:
    # the fake creates its --state directory when it starts: none must appear
    marker = work.parent / f"state-{uid()}"
    args = [*gw.fake.args()[:1], "--state", str(marker)]
    sid, _ = gw.service(route=False, disabled=True, args=args)
    r = gw.admin.request(method, svc(sid, tail))
    assert_error(r, 400, "invalid_request", contains="disabled")
    assert not marker.exists()


@pytest.mark.parametrize(("method", "tail"), SERVICE_CALLS)
def test_cwd_outside_allowed_roots_is_400(gw: Gateway, work: Path, method: str, tail: str) -> None:
    sid, _ = gw.service(route=False)
    for outside in (work.parent / "elsewhere", work / "out-link"):  # the link leads outside
        r = gw.admin.request(method, svc(sid, tail), params={"cwd": str(outside)})
        assert_error(r, 400, "invalid_request")


# ------------------------------------------------------------------------------- runtime


def test_runtime_view_shows_a_pooled_instance(gw: Gateway, work: Path) -> None:
    sid, url = gw.service()
    thread = uid("th")
    t = gw.run(url, "meta", thread)
    session_id = t.session_id()
    [instance] = gw.instances(sid)
    route_id = url.rsplit("/", 1)[1]
    assert instance["scope"].split("\x00") == [
        sid, str(work / "a"), thread, "", "", route_id, "anonymous"
    ]  # fmt: skip
    assert (instance["route_id"], instance["principal"]) == (route_id, "anonymous")
    assert instance["session_id"] == session_id
    assert instance["alive"] is True and instance["active"] is False
    assert instance["last_used"]
    assert instance["idle_ttl"] == 15 * 60 * 10**9  # the default: 15m
    assert isinstance(instance["pid"], int) and group_members(instance["pid"])
    metadata = instance["metadata"]
    assert metadata["available_commands"] and metadata["session_info"] and metadata["usage"]
    assert metadata["config_options"] and metadata["mode"]
    view = ok(gw.admin.get("/admin/acp/runtime"))
    assert set(view) >= {"in_flight", "instances", "pending_permissions"}
    assert all(i["scope"] != instance["scope"] for i in view["in_flight"])


def test_inflight_lists_a_running_turn(gw: Gateway) -> None:
    sid, url = gw.service()
    thread = uid("th")
    with gw.turn(url, "slow 40 0.25", thread) as t:
        t.until("delta")
        items = ok(gw.admin.get("/admin/acp/runtime/inflight"))["items"]
        scopes = [i["scope"] for i in items if i["scope"].split("\x00")[:1] == [sid]]
        assert len(scopes) == 1 and scopes[0].split("\x00")[2] == thread, items
        [instance] = gw.instances(sid)
        assert instance["active"] is True and instance["scope"] == scopes[0]
        view = ok(gw.admin.get("/admin/acp/runtime"))
        assert scopes[0] in [i["scope"] for i in view["in_flight"]]
    # the client left: the turn is cancelled and the scope is free again

    def idle() -> bool:
        items = ok(gw.admin.get("/admin/acp/runtime/inflight"))["items"]
        return not any(i["scope"] == scopes[0] for i in items)

    wait_for("the cancelled turn to leave in_flight", idle)


def test_close_thread_stops_its_instances(gw: Gateway, work: Path) -> None:
    sid, url = gw.service()
    thread = uid("th")
    gw.run(url, "one", thread)
    gw.run(url, "two", thread, cwd=str(work / "b"))  # a second scope of the same thread
    other = uid("th")
    gw.run(url, "other thread", other)
    pids = {i["scope"].split("\x00")[2]: i["pid"] for i in gw.instances(sid)}
    closing = [i["pid"] for i in gw.instances(sid) if i["scope"].split("\x00")[2] == thread]
    assert len(closing) == 2, gw.instances(sid)

    assert ok(gw.admin.delete(f"/admin/acp/runtime/threads/{sid}/{thread}")) == {"closed": 2}
    for pid in closing:
        wait_group_gone(pid)
    left = gw.instances(sid)
    assert [i["scope"].split("\x00")[2] for i in left] == [other]
    assert group_members(pids[other])
    assert ok(gw.admin.delete(f"/admin/acp/runtime/threads/{sid}/{thread}")) == {"closed": 0}
    # the thread works again: a fresh agent
    assert gw.run(url, "back", thread).text().startswith("echo: back")


def test_close_thread_mid_turn_ends_the_turn_with_an_error(gw: Gateway) -> None:
    sid, url = gw.service()
    thread = uid("th")
    with gw.turn(url, "slow 40 0.25", thread) as t:
        t.until("delta")
        [instance] = gw.instances(sid)
        assert ok(gw.admin.delete(f"/admin/acp/runtime/threads/{sid}/{thread}")) == {"closed": 1}
        events = t.rest()
    assert events[-1][0] == "error", events
    wait_group_gone(instance["pid"])


def test_close_thread_of_unknown_service_is_404(gw: Gateway) -> None:
    r = gw.admin.delete("/admin/acp/runtime/threads/no-such-service/t1")
    assert assert_error(r, 404, "not_found")["error"] == "acp service not found"


@pytest.mark.parametrize("verb", ["PUT", "disable", "DELETE"])
def test_changing_or_deleting_a_service_stops_its_instances(gw: Gateway, verb: str) -> None:
    sid, url = gw.service()
    gw.run(url, "hello", uid("th"))
    [instance] = gw.instances(sid)
    if verb == "PUT":
        body = gw.fake.service_config(
            sid, allowed_roots=[str(gw.fake.workdir.parent)], description="changed"
        )
        ok(gw.admin.put(f"/admin/acp/services/{sid}", json=body))
    elif verb == "disable":
        ok(gw.admin.post(f"/admin/acp/services/{sid}/disable"))
    else:
        rid = url.rsplit("/", 1)[1]
        ok(gw.admin.delete(f"/admin/acp/routes/{rid}"))
        ok(gw.admin.delete(f"/admin/acp/services/{sid}"))
    wait_group_gone(instance["pid"])
    wait_for("the instance to leave the runtime view", lambda: not gw.instances(sid))


def test_an_unchanged_apply_keeps_the_instances(gw: Gateway) -> None:
    sid, url = gw.service()
    gw.run(url, "hello", uid("th"))
    [instance] = gw.instances(sid)
    other = uid("other")
    created(gw.admin, "/admin/acp/services", gw.fake.service_config(other))  # another service
    time.sleep(0.5)
    assert [i["pid"] for i in gw.instances(sid)] == [instance["pid"]]


# ---------------------------------------------------------------------------- permissions


def pending(gw: Gateway, request_id: str) -> dict[str, Any] | None:
    view = ok(gw.admin.get("/admin/acp/runtime"))
    for entry in view["pending_permissions"]:
        if entry["request_id"] == request_id:
            found: dict[str, Any] = entry
            return found
    return None


BAD_BODIES = [
    ({"outcome": "maybe"}, 'outcome must be "selected" or "cancelled"'),
    ({}, "outcome is required"),
    ({"outcome": "selected"}, "option_id is required"),
    ({"outcome": "selected", "option_id": "nope"}, "not one of the offered options"),
    ({"outcome": "cancelled", "why": "x"}, "unknown field 'why'"),
    ({"outcome": 1}, "outcome must be a string"),
    ({"request_id": "perm-other", "outcome": "cancelled"}, "does not match the path"),
]


def test_permission_round_trip_through_the_admin_api(gw: Gateway) -> None:
    sid, url = gw.service(permission_mode="interactive")
    with gw.turn(url, "tool build", uid("th")) as t:
        asked = t.until("permission")
        request_id = asked["request_id"]
        assert request_id.startswith("perm-") and len(request_id) == 5 + 32
        entry = pending(gw, request_id)
        assert entry is not None
        assert entry["service_id"] == sid and entry["session_id"] == t.session_id()
        assert [o["optionId"] for o in entry["data"]["options"]] == ["ok", "no"]
        assert entry["created_at"].endswith("Z")

        path = f"/admin/acp/runtime/permissions/{request_id}"
        for body, message in BAD_BODIES:
            assert_error(gw.admin.post(path, json=body), 400, "invalid_request", contains=message)
        assert_error(
            gw.admin.post(path, content=b"{nope", headers={"Content-Type": "application/json"}),
            400,
            "invalid_request",
        )
        assert pending(gw, request_id) is not None  # still waiting

        answer = {"request_id": request_id, "outcome": "selected", "option_id": "ok"}
        assert ok(gw.admin.post(path, json=answer)) == {"status": "resolved"}
        events = t.rest()
    assert events[-1] == ("done", {"stop_reason": "end_turn"}), events
    assert 'permission={"optionId":"ok","outcome":"selected"}' in t.text()
    assert pending(gw, request_id) is None
    again = gw.admin.post(path, json={"outcome": "cancelled"})
    body = assert_error(again, 404, "not_found")
    assert body["error"] == "permission request not found (already answered or expired)"

    rows = audit_rows(gw.agwd, "operation = 'permission' AND permission_request_id = ?",
                      (request_id,), count=len(BAD_BODIES) + 3)  # fmt: skip
    assert [r["status_code"] for r in rows] == [400] * (len(BAD_BODIES) + 1) + [200, 404]
    for row in rows:
        assert row["route_kind"] == "acp" and row["route_protocol"] == "admin"
        assert row["success"] == (row["status_code"] == 200)
        assert row["result_status"] == ("success" if row["status_code"] == 200 else "error")
    assert rows[0]["error_type"] == "invalid_request"
    assert rows[-1]["error_type"] == "not_found"
    # while pending, the row names the request's service and session
    assert {r["service_id"] for r in rows[:-1]} == {sid}
    assert rows[-2]["session_id"] == t.session_id() and rows[-2]["agent_type"] == "command"


def test_permission_cancelled_by_the_admin(gw: Gateway) -> None:
    _, url = gw.service(permission_mode="interactive")
    with gw.turn(url, "tool", uid("th")) as t:
        request_id = t.until("permission")["request_id"]
        r = gw.admin.post(
            f"/admin/acp/runtime/permissions/{request_id}", json={"outcome": "cancelled"}
        )
        assert ok(r) == {"status": "resolved"}
        t.rest()
    assert 'permission={"outcome":"cancelled"}' in t.text()


def test_permission_of_unknown_request_is_404(gw: Gateway) -> None:
    r = gw.admin.post("/admin/acp/runtime/permissions/perm-00", json={"outcome": "cancelled"})
    assert_error(r, 404, "not_found", contains="already answered or expired")


# ------------------------------------------------------------------------------ audit rows


def test_every_admin_call_writes_an_audit_row(gw: Gateway) -> None:
    sid, url = gw.service()
    thread = uid("th")
    session_id = gw.run(url, "audited", thread).session_id()
    ok(gw.admin.get(svc(sid, "sessions")))
    ok(gw.admin.get(svc(sid, f"sessions/{session_id}/transcript")))
    ok(gw.admin.get("/admin/acp/runtime"))
    ok(gw.admin.get("/admin/acp/runtime/inflight"))
    ok(gw.admin.delete(f"/admin/acp/runtime/threads/{sid}/{thread}"))
    assert_error(gw.admin.get(svc(sid, "sessions"), params={"cwd": "/"}), 400)

    [listed, failed] = audit_rows(gw.agwd, "operation = 'sessions' AND service_id = ?", (sid,), 2)
    assert (listed["status_code"], listed["success"], listed["result_status"]) == (
        200,
        1,
        "success",
    )
    assert listed["agent_type"] == "command" and listed["route_kind"] == "acp"
    assert listed["route_protocol"] == "admin" and listed["error_type"] is None
    assert listed["finished_at"] >= listed["started_at"] > 0
    assert (failed["status_code"], failed["success"], failed["error_type"]) == (
        400,
        0,
        "invalid_request",
    )
    assert failed["result_status"] == "error"
    [replayed] = audit_rows(gw.agwd, "operation = 'transcript' AND service_id = ?", (sid,))
    assert replayed["session_id"] == session_id and replayed["status_code"] == 200
    [closed] = audit_rows(gw.agwd, "operation = 'thread_close' AND thread_id = ?", (thread,))
    assert closed["service_id"] == sid and closed["status_code"] == 200
    for operation in ("runtime", "runtime_inflight"):
        assert audit_rows(gw.agwd, "operation = ? AND status_code = 200", (operation,))


# ------------------------------------------------------------------- without the ACP plane


def test_without_the_acp_plane_the_runtime_endpoints_are_404() -> None:
    app = create_admin_app(ConfigManager(db=None), auth=None)  # type: ignore[arg-type]

    async def call() -> list[tuple[int, Any]]:
        client = app.test_client()
        out = []
        for method, path in (
            ("GET", "/admin/acp/runtime"),
            ("GET", "/admin/acp/runtime/inflight"),
            ("DELETE", "/admin/acp/runtime/threads/s/t"),
            ("POST", "/admin/acp/runtime/permissions/perm-1"),
        ):
            r = await client.open(path, method=method, json={"outcome": "cancelled"})
            out.append((r.status_code, await r.get_json()))
        return out

    for status, body in asyncio.run(call()):
        assert (status, body) == (404, {"error": NOT_RUNNING, "code": "not_found"})
