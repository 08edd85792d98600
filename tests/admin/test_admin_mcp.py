"""The MCP admin endpoints (reference §5.8) against a real agwd and real MCP servers.

One agwd for the module; the fake MCP servers (``tests/fakes/mcp_server.py``) run as real
processes: three over HTTP (streamable HTTP, one of them requiring a key, and legacy SSE), the
others spawned by the gateway itself over stdio (the fake and ``mcp-server-time`` from PyPI).
The runtime views are checked against real client traffic on the data plane.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from agw.admin.mcp import upstream_failure
from agw.mcp.jsonrpc import METHOD_NOT_FOUND, RpcError
from agw.mcp.upstream import UpstreamError
from tests.support.admin import assert_error, created, uid
from tests.support.agwd import free_port
from tests.support.mcp_server import McpServerHandle, run_mcp_server

TIME_SERVER = str(Path(sys.executable).parent / "mcp-server-time")
UPSTREAM_KEY = "sk-upstream-only-7731"
PROTOCOL = "2025-11-25"
WAIT_S = 15.0
MASKED = re.compile(r"^[0-9A-Za-z_-]{1,8}\*\*\*\*$")


@dataclass
class Fakes:
    alpha: McpServerHandle  # streamable HTTP
    legacy: McpServerHandle  # legacy HTTP+SSE
    keyed: McpServerHandle  # streamable HTTP that wants Authorization: Bearer UPSTREAM_KEY
    stdio: McpServerHandle  # nothing running: how the gateway spawns the fake over stdio
    paged: McpServerHandle  # the same over stdio with pages of 2


@pytest.fixture(scope="module")
def fakes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fakes]:
    base = tmp_path_factory.mktemp("mcp")
    with contextlib.ExitStack() as stack:

        def start(transport: str, name: str, **kw: Any) -> McpServerHandle:
            return stack.enter_context(run_mcp_server(base, transport, name, **kw))

        yield Fakes(
            alpha=start("streamable-http", "alpha"),
            legacy=start("sse", "legacy"),
            keyed=start("streamable-http", "keyed", require_key=UPSTREAM_KEY),
            stdio=start("stdio", "st"),
            paged=start("stdio", "paged", page_size=2),
        )


@pytest.fixture(scope="module")
def services(admin: httpx.Client, fakes: Fakes) -> dict[str, str]:
    """Service ids by role, created through the admin API."""
    out = {}
    bodies = {
        "alpha": fakes.alpha.service_config(uid("alpha")),
        "legacy": fakes.legacy.service_config(uid("legacy")),
        "keyed": fakes.keyed.service_config(
            uid("keyed"), auth={"type": "bearer", "api_key": UPSTREAM_KEY}
        ),
        "st": fakes.stdio.service_config(uid("st")),
        "paged": fakes.paged.service_config(uid("paged")),
        "time": {"id": uid("time"), "name": "time", "transport": "stdio", "command": TIME_SERVER},
    }
    for role, body in bodies.items():
        out[role] = created(admin, "/admin/mcp/services", body)["id"]
    return out


def svc(service_id: str, tail: str) -> str:
    return f"/admin/mcp/services/{service_id}/{tail}"


def ok(r: httpx.Response) -> Any:
    assert r.status_code == 200, f"{r.request.method} {r.request.url}: {r.status_code} {r.text}"
    assert r.headers["content-type"].startswith("application/json")
    return r.json()


def text_of(result: dict[str, Any]) -> str:
    return "".join(c.get("text", "") for c in result["content"] if c.get("type") == "text")


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


# ------------------------------------------------------------------------ one service's calls


@pytest.mark.parametrize(
    ("role", "server_name"),
    [("alpha", "alpha"), ("legacy", "legacy"), ("keyed", "keyed"), ("st", "st"), ("time", None)],
)
def test_capabilities_is_the_upstream_initialize_answer(
    admin: httpx.Client, services: dict[str, str], role: str, server_name: str | None
) -> None:
    caps = ok(admin.get(svc(services[role], "capabilities")))
    assert caps["protocolVersion"] == PROTOCOL
    assert "tools" in caps["capabilities"]
    name = caps["serverInfo"]["name"]
    assert name == server_name if server_name else name == "mcp-time"


def test_session_view_is_null_until_first_use_then_masked(
    admin: httpx.Client, fakes: Fakes
) -> None:
    sid = created(admin, "/admin/mcp/services", fakes.alpha.service_config(uid("fresh")))["id"]
    assert ok(admin.get(svc(sid, "sessions"))) == {"session": None}
    ok(admin.get(svc(sid, "capabilities")))
    session = ok(admin.get(svc(sid, "sessions")))["session"]
    assert session["service_id"] == sid
    assert session["transport"] == "streamable_http"
    assert session["state"] == "ready"
    assert MASKED.match(session["upstream_session_id"]), session
    # The upstream saw a real session id: the view shows only its first 8 characters.
    seen = {
        e["headers"].get("mcp-session-id")
        for e in fakes.alpha.events("http")
        if e["headers"].get("mcp-session-id")
    }
    assert any(s.startswith(session["upstream_session_id"][:-4]) and len(s) > 8 for s in seen)
    assert session["id"] and session["created_at"] > 0, session
    ok(admin.get(svc(sid, "tools")))
    used = ok(admin.get(svc(sid, "sessions")))["session"]
    assert used["id"] == session["id"]  # the same session, reused
    assert used["last_used_at"] >= used["created_at"] > 0, used


def test_tools_of_http_sse_and_stdio_services(
    admin: httpx.Client, services: dict[str, str]
) -> None:
    fake_tools = {"echo", "add", "slow", "fail", "whoami", "crash"}
    for role in ("alpha", "legacy", "st"):
        body = ok(admin.get(svc(services[role], "tools")))
        assert set(body) == {"items"}, body
        assert fake_tools <= {t["name"] for t in body["items"]}, role
        assert all("inputSchema" in t for t in body["items"])
    time_tools = ok(admin.get(svc(services["time"], "tools")))["items"]
    assert {t["name"] for t in time_tools} == {"get_current_time", "convert_time"}


def test_tools_pages_follow_the_upstream_cursor(
    admin: httpx.Client, services: dict[str, str]
) -> None:
    everything = [t["name"] for t in ok(admin.get(svc(services["st"], "tools")))["items"]]
    names: list[str] = []
    cursor: str | None = None
    for _ in range(20):
        params = {"cursor": cursor} if cursor else {}
        page = ok(admin.get(svc(services["paged"], "tools"), params=params))
        assert len(page["items"]) <= 2
        names += [t["name"] for t in page["items"]]
        cursor = page.get("next_cursor")
        if not cursor:
            break
    assert names == everything
    assert len(names) > 2  # so there were several pages


def test_tool_call_returns_the_raw_result(admin: httpx.Client, services: dict[str, str]) -> None:
    for role in ("alpha", "legacy", "st"):
        echoed = ok(
            admin.post(
                svc(services[role], "tools/call"),
                json={"name": "echo", "arguments": {"message": f"hi {role}"}},
            )
        )
        assert text_of(echoed) == f"hi {role}"
        assert not echoed.get("isError")
    added = ok(
        admin.post(
            svc(services["alpha"], "tools/call"),
            json={"name": "add", "arguments": {"a": 2, "b": 40}},
        )
    )
    assert text_of(added) == "42"
    # A tool error is a result, not an admin error.
    failed = ok(
        admin.post(
            svc(services["alpha"], "tools/call"),
            json={"name": "fail", "arguments": {"message": "boom"}},
        )
    )
    assert failed["isError"] is True
    assert "boom" in text_of(failed)


def test_tool_call_on_mcp_server_time(admin: httpx.Client, services: dict[str, str]) -> None:
    result = ok(
        admin.post(
            svc(services["time"], "tools/call"),
            json={"name": "get_current_time", "arguments": {"timezone": "UTC"}},
        )
    )
    assert json.loads(text_of(result))["timezone"] == "UTC"


def test_service_auth_is_injected_and_the_admin_credentials_are_not(
    admin: httpx.Client, services: dict[str, str], fakes: Fakes
) -> None:
    # this test's requests only: the fake outlives the module's run on each engine, and
    # test_upstream_that_rejects_the_gateway_is_502 sends it requests without the key
    earlier = len(fakes.keyed.events("http"))
    result = ok(admin.post(svc(services["keyed"], "tools/call"), json={"name": "whoami"}))
    seen = json.loads(text_of(result))
    assert seen["authorization"] == f"Bearer {UPSTREAM_KEY}"
    mine = fakes.keyed.events("http")[earlier:]
    assert mine
    for event in mine:
        assert event["headers"].get("authorization") == f"Bearer {UPSTREAM_KEY}", event


def test_upstream_that_rejects_the_gateway_is_502(admin: httpx.Client, fakes: Fakes) -> None:
    sid = created(admin, "/admin/mcp/services", fakes.keyed.service_config(uid("nokey")))["id"]
    body = assert_error(admin.get(svc(sid, "capabilities")), 502, "upstream_failed")
    assert sid in body["error"]


def test_resources_templates_and_read(admin: httpx.Client, services: dict[str, str]) -> None:
    sid = services["alpha"]
    uris = {r["uri"] for r in ok(admin.get(svc(sid, "resources")))["items"]}
    assert {"res://alpha/readme", "res://alpha/changelog"} <= uris
    templates = ok(admin.get(svc(sid, "resource-templates")))["items"]
    assert [t["uriTemplate"] for t in templates] == ["res://alpha/items/{item}"]
    read = ok(admin.post(svc(sid, "resources/read"), json={"uri": "res://alpha/readme"}))
    assert read["contents"][0]["uri"] == "res://alpha/readme"
    assert read["contents"][0]["text"]
    item = ok(admin.post(svc(sid, "resources/read"), json={"uri": "res://alpha/items/42"}))
    assert "42" in item["contents"][0]["text"]


def test_prompts_and_prompt_get(admin: httpx.Client, services: dict[str, str]) -> None:
    sid = services["legacy"]
    prompts = ok(admin.get(svc(sid, "prompts")))["items"]
    assert [p["name"] for p in prompts] == ["greet"]
    assert [a["name"] for a in prompts[0]["arguments"]] == ["name"]
    got = ok(
        admin.post(svc(sid, "prompts/get"), json={"name": "greet", "arguments": {"name": "Ada"}})
    )
    assert "Ada" in json.dumps(got["messages"])


def test_service_without_resources_answers_empty_lists(
    admin: httpx.Client, services: dict[str, str]
) -> None:
    assert ok(admin.get(svc(services["time"], "resources"))) == {"items": []}
    assert ok(admin.get(svc(services["time"], "prompts"))) == {"items": []}


def test_upstream_json_rpc_error_is_502_with_its_code(
    admin: httpx.Client, services: dict[str, str]
) -> None:
    r = admin.post(svc(services["alpha"], "resources/read"), json={"uri": "res://nowhere/x"})
    body = assert_error(r, 502, "upstream_failed")
    assert re.search(r"answered resources/read with error -?\d+", body["error"]), body


def test_method_not_found_on_optional_features_gets_a_hint() -> None:
    missing = RpcError(METHOD_NOT_FOUND, "Method not found")
    for method in ("resources/list", "resources/templates/list", "prompts/list"):
        message = upstream_failure("svc", method, missing).message
        assert message.startswith(f"mcp service svc answered {method} with error -32601")
        assert "try tools/list" in message
    assert "try tools/list" not in upstream_failure("svc", "tools/call", missing).message
    down = upstream_failure("svc", "tools/list", UpstreamError("connection refused"))
    assert (down.status, down.code) == (502, "upstream_failed")
    assert down.message == "mcp service svc failed: connection refused"


# ---------------------------------------------------------------------------------- errors

SERVICE_ENDPOINTS = [
    ("GET", "capabilities", None),
    ("GET", "sessions", None),
    ("GET", "tools", None),
    ("POST", "tools/call", {"name": "echo"}),
    ("GET", "resources", None),
    ("GET", "resource-templates", None),
    ("POST", "resources/read", {"uri": "res://x/readme"}),
    ("GET", "prompts", None),
    ("POST", "prompts/get", {"name": "greet"}),
]


@pytest.mark.parametrize(("method", "tail", "body"), SERVICE_ENDPOINTS, ids=lambda v: str(v))
def test_unknown_service_is_404(
    admin: httpx.Client, method: str, tail: str, body: dict[str, Any] | None
) -> None:
    r = admin.request(method, svc("no-such-service", tail), json=body)
    assert assert_error(r, 404, "not_found")["error"] == "mcp service not found"


def test_disabled_service_is_409_and_starts_nothing(admin: httpx.Client, fakes: Fakes) -> None:
    sid = created(
        admin, "/admin/mcp/services", fakes.stdio.service_config(uid("off"), disabled=True)
    )["id"]
    for method, tail, body in SERVICE_ENDPOINTS:
        if tail == "sessions":
            continue
        r = admin.request(method, svc(sid, tail), json=body)
        assert_error(r, 409, "conflict", contains="disabled")
    assert ok(admin.get(svc(sid, "sessions"))) == {"session": None}
    stdio = ok(admin.get("/admin/mcp/runtime"))["stdio"]
    assert sid not in {p["service_id"] for p in stdio}


@pytest.mark.parametrize(
    ("tail", "body", "message"),
    [
        ("tools/call", {}, "name is required"),
        ("tools/call", {"name": 7}, "name is required"),
        ("tools/call", {"name": "echo", "arguments": [1]}, "arguments must be a JSON object"),
        ("tools/call", {"name": "echo", "args": {}}, "unknown field 'args'"),
        ("resources/read", {}, "uri is required"),
        ("resources/read", {"uri": "res://st/readme", "name": "x"}, "unknown field 'name'"),
        ("prompts/get", {"arguments": {}}, "name is required"),
        ("prompts/get", {"name": "greet", "arguments": {"name": 1}}, "must be a string"),
    ],
)
def test_bad_call_bodies_are_400(
    admin: httpx.Client, services: dict[str, str], tail: str, body: dict[str, Any], message: str
) -> None:
    r = admin.post(svc(services["st"], tail), json=body)
    assert_error(r, 400, "invalid_request", contains=message)


def test_non_json_call_body_is_400(admin: httpx.Client, services: dict[str, str]) -> None:
    r = admin.post(
        svc(services["st"], "tools/call"),
        content=b"{nope",
        headers={"Content-Type": "application/json"},
    )
    assert_error(r, 400, "invalid_request", contains="invalid JSON body")


def test_unreachable_service_is_502_fast(admin: httpx.Client) -> None:
    url = f"http://127.0.0.1:{free_port()}/mcp"
    sid = created(
        admin,
        "/admin/mcp/services",
        {"id": uid("down"), "name": "down", "transport": "streamable_http", "url": url},
    )["id"]
    started = time.monotonic()
    body = assert_error(admin.get(svc(sid, "tools")), 502, "upstream_failed")
    assert time.monotonic() - started < 10
    assert f"mcp service {sid}" in body["error"]


# ---------------------------------------------------------------------- runtime life cycle


def stdio_entry(admin: httpx.Client, sid: str) -> dict[str, Any] | None:
    for proc in ok(admin.get("/admin/mcp/runtime"))["stdio"]:
        if proc["service_id"] == sid:
            found: dict[str, Any] = proc
            return found
    return None


def test_stdio_crash_fails_the_call_and_the_next_call_works(
    admin: httpx.Client, fakes: Fakes
) -> None:
    sid = created(admin, "/admin/mcp/services", fakes.stdio.service_config(uid("crashy")))["id"]
    call = svc(sid, "tools/call")
    ok(admin.post(call, json={"name": "echo", "arguments": {"message": "before"}}))
    first_pid = stdio_entry(admin, sid)
    assert first_pid and first_pid["pid"]
    started = time.monotonic()
    body = assert_error(admin.post(call, json={"name": "crash"}), 502, "upstream_failed")
    assert time.monotonic() - started < 10, "a dead stdio server must fail the call at once"
    assert "exited (code 3)" in body["error"], body
    assert "crashing on purpose" in body["error"], body
    dead = stdio_entry(admin, sid)
    assert dead and dead["state"] == "error"
    assert "crashing on purpose" in dead["stderr_tail"]

    def echo_again() -> bool:
        r = admin.post(call, json={"name": "echo", "arguments": {"message": "after"}})
        return r.status_code == 200 and text_of(r.json()) == "after"

    wait_for("the stdio server to be restarted", echo_again, timeout=30)
    entry = stdio_entry(admin, sid)
    assert entry and entry["pid"] != first_pid["pid"]
    assert entry["restarts"] >= 1
    assert entry["state"] == "ready"


def pid_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    with contextlib.suppress(FileNotFoundError):
        return Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"  # reaped soon
    return True


def test_deleting_a_stdio_service_stops_its_process(admin: httpx.Client, fakes: Fakes) -> None:
    sid = created(admin, "/admin/mcp/services", fakes.stdio.service_config(uid("gone")))["id"]
    ok(admin.get(svc(sid, "tools")))
    entry = stdio_entry(admin, sid)
    assert entry and entry["pid"]
    pid = int(entry["pid"])
    assert not pid_gone(pid)
    ok(admin.delete(f"/admin/mcp/services/{sid}"))
    wait_for(f"stdio process {pid} to stop", lambda: pid_gone(pid), timeout=10)
    assert stdio_entry(admin, sid) is None


def test_updating_a_service_drops_its_admin_session(admin: httpx.Client, fakes: Fakes) -> None:
    sid = uid("moving")
    created(admin, "/admin/mcp/services", fakes.alpha.service_config(sid))
    assert ok(admin.get(svc(sid, "capabilities")))["serverInfo"]["name"] == "alpha"
    r = admin.put(f"/admin/mcp/services/{sid}", json=fakes.legacy.service_config(sid))
    assert r.status_code == 200, r.text
    assert ok(admin.get(svc(sid, "capabilities")))["serverInfo"]["name"] == "legacy"
    assert ok(admin.get(svc(sid, "sessions")))["session"]["transport"] == "sse"


# -------------------------------------------------------------------------- runtime views


def test_runtime_views_have_their_shapes(admin: httpx.Client) -> None:
    view = ok(admin.get("/admin/mcp/runtime"))
    assert {"in_flight", "progress", "sessions", "failures", "stdio"} <= set(view)
    for tail in ("inflight", "progress", "history"):
        body = ok(admin.get(f"/admin/mcp/runtime/{tail}"))
        assert set(body) == {"items"} and isinstance(body["items"], list)
    assert set(ok(admin.get("/admin/mcp/sessions"))) == {"items"}


class McpClient:
    """A raw Streamable HTTP client (handshake era) of one MCP route of the gateway."""

    def __init__(self, base_url: str, prefix: str) -> None:
        self.url = base_url + prefix
        self.http = httpx.Client(timeout=30, trust_env=False)
        self.session_id = ""

    def close(self) -> None:
        self.http.close()

    def headers(self) -> dict[str, str]:
        out = {
            "accept": "application/json, text/event-stream",
            "content-type": "application/json",
            "mcp-protocol-version": PROTOCOL,
        }
        if self.session_id:
            out["mcp-session-id"] = self.session_id
        return out

    @staticmethod
    def messages(r: httpx.Response) -> list[dict[str, Any]]:
        if r.headers.get("content-type", "").startswith("text/event-stream"):
            out = []
            for block in r.text.replace("\r\n", "\n").split("\n\n"):
                data = "\n".join(
                    line[5:].lstrip() for line in block.split("\n") if line.startswith("data:")
                )
                if data:
                    out.append(json.loads(data))
            return out
        return [r.json()] if r.content else []

    def call(self, msg_id: int, method: str, params: dict[str, Any] | None = None) -> Any:
        body = {"jsonrpc": "2.0", "id": msg_id, "method": method, "params": params or {}}
        r = self.http.post(self.url, json=body, headers=self.headers())
        assert r.status_code == 200, (r.status_code, r.text)
        answers = [m for m in self.messages(r) if m.get("id") == msg_id]
        assert answers and "result" in answers[0], r.text
        return answers[0]["result"]

    def initialize(self) -> None:
        body = {
            "jsonrpc": "2.0",
            "id": 0,
            "method": "initialize",
            "params": {
                "protocolVersion": PROTOCOL,
                "capabilities": {},
                "clientInfo": {"name": "admin-test", "version": "1"},
            },
        }
        r = self.http.post(self.url, json=body, headers=self.headers())
        assert r.status_code == 200, r.text
        self.session_id = r.headers["mcp-session-id"]
        note = {"jsonrpc": "2.0", "method": "notifications/initialized"}
        assert self.http.post(self.url, json=note, headers=self.headers()).status_code == 202


@pytest.fixture(scope="module")
def route(admin: httpx.Client, services: dict[str, str]) -> str:
    rid = uid("mx")
    created(
        admin,
        "/admin/mcp/routes",
        {
            "id": rid,
            "service_ids": [services["alpha"], services["st"]],
            "match_policy": {"path_prefix": f"/{rid}"},
        },
    )
    return rid


@pytest.fixture
def client(module_agwd: Any, route: str) -> Iterator[McpClient]:
    c = McpClient(module_agwd.data_url, f"/{route}")
    c.initialize()
    yield c
    c.close()


def test_sessions_list_the_client_session_masked(
    admin: httpx.Client, route: str, client: McpClient, services: dict[str, str]
) -> None:
    client.call(1, "tools/list")
    mine = [s for s in ok(admin.get("/admin/mcp/sessions"))["items"] if s["route_id"] == route]
    assert len(mine) == 1, mine
    session = mine[0]
    assert MASKED.match(session["id"]) and client.session_id.startswith(session["id"][:-4])
    assert client.session_id not in json.dumps(ok(admin.get("/admin/mcp/sessions")))
    assert session["protocol_version"] == PROTOCOL
    assert {u["service_id"] for u in session["upstreams"]} <= {services["alpha"], services["st"]}
    # also in the whole runtime view
    assert any(s["route_id"] == route for s in ok(admin.get("/admin/mcp/runtime"))["sessions"])


def test_history_records_client_calls_per_route(
    admin: httpx.Client, route: str, client: McpClient, services: dict[str, str]
) -> None:
    result = client.call(
        41, "tools/call", {"name": f"{services['alpha']}_echo", "arguments": {"message": "x"}}
    )
    assert text_of(result) == "x"

    def mine() -> list[dict[str, Any]]:
        items = ok(admin.get("/admin/mcp/runtime/history", params={"route_id": route}))["items"]
        return [h for h in items if str(h["request_id"]) == "41"]

    done = wait_for("the call in the route's history", mine)[0]
    assert done["route_id"] == route and done["method"] == "tools/call"
    assert done["started_at"] and done["completed_at"]
    assert not done.get("cancelled")
    others = ok(admin.get("/admin/mcp/runtime/history", params={"route_id": "other-route"}))
    assert all(h["route_id"] == "other-route" for h in others["items"])


def test_admin_cancel_reaches_the_upstream(
    admin: httpx.Client, route: str, client: McpClient, services: dict[str, str], fakes: Fakes
) -> None:
    token = f"tok-{uid()}"
    params = {
        "name": f"{services['alpha']}_slow",
        "arguments": {"seconds": 20, "steps": 20},
        "_meta": {"progressToken": token},
    }
    outcome: dict[str, Any] = {}

    def slow_call() -> None:
        body = {"jsonrpc": "2.0", "id": 77, "method": "tools/call", "params": params}
        try:
            r = client.http.post(client.url, json=body, headers=client.headers(), timeout=40)
            outcome["status"] = r.status_code
            outcome["answers"] = [m for m in client.messages(r) if m.get("id") == 77]
        except httpx.HTTPError as exc:
            outcome["error"] = exc

    worker = threading.Thread(target=slow_call, daemon=True)
    started = time.monotonic()
    worker.start()
    try:

        def inflight() -> list[dict[str, Any]]:
            items = ok(admin.get("/admin/mcp/runtime/inflight"))["items"]
            return [i for i in items if i["route_id"] == route and str(i["request_id"]) == "77"]

        item = wait_for("the slow call to be in flight", inflight)[0]
        assert item["method"] == "tools/call"

        def progressed() -> list[dict[str, Any]]:
            items = ok(admin.get("/admin/mcp/runtime/progress"))["items"]
            return [p for p in items if p["route_id"] == route and p["progress_token"] == token]

        assert wait_for("progress of the slow call", progressed)[0]["progress"] >= 1

        r = admin.post(f"/admin/mcp/runtime/inflight/{route}/77/cancel")
        assert ok(r) == {"status": "cancelled", "route_id": route, "request_id": "77"}
    finally:
        worker.join(30)
    assert not worker.is_alive()
    assert time.monotonic() - started < 19, "the cancelled call must not run to its end"
    # the client did not ask for the cancel, so it gets an answer: a -32000 error
    assert outcome.get("status") == 200, outcome
    assert [a["error"]["code"] for a in outcome["answers"]] == [-32000], outcome

    def cancelled_upstream() -> list[dict[str, Any]]:
        return [e for e in fakes.alpha.events("cancelled") if e.get("tool") == "slow"]

    wait_for("notifications/cancelled at the upstream", cancelled_upstream)

    def in_history() -> list[dict[str, Any]]:
        items = ok(admin.get("/admin/mcp/runtime/history", params={"route_id": route}))["items"]
        return [h for h in items if str(h["request_id"]) == "77"]

    assert wait_for("the cancelled call in history", in_history)[0]["cancelled"] is True
    again = admin.post(f"/admin/mcp/runtime/inflight/{route}/77/cancel")
    assert_error(again, 404, "not_found")


def test_cancel_of_unknown_request_is_404(admin: httpx.Client, route: str) -> None:
    r = admin.post(f"/admin/mcp/runtime/inflight/{route}/no-such-request/cancel")
    assert_error(r, 404, "not_found", contains="no-such-request")


def test_fail_open_skip_is_reported_in_the_runtime_view(
    admin: httpx.Client, module_agwd: Any, services: dict[str, str]
) -> None:
    dead = created(
        admin,
        "/admin/mcp/services",
        {
            "id": uid("dead"),
            "name": "dead",
            "transport": "streamable_http",
            "url": f"http://127.0.0.1:{free_port()}/mcp",
        },
    )["id"]
    rid = uid("fo")
    created(
        admin,
        "/admin/mcp/routes",
        {
            "id": rid,
            "service_ids": [services["st"], dead],
            "match_policy": {"path_prefix": f"/{rid}"},
        },
    )
    c = McpClient(module_agwd.data_url, f"/{rid}")
    try:
        c.initialize()
        tools = c.call(1, "tools/list")["tools"]
        assert f"{services['st']}_echo" in {t["name"] for t in tools}
    finally:
        c.close()

    def failures() -> dict[str, dict[str, Any]]:
        items = ok(admin.get("/admin/mcp/runtime"))["failures"]
        return {f["method"]: f for f in items if f["route_id"] == rid and f["service_id"] == dead}

    # the client's initialize and its tools/list both went on without the dead service
    skipped = wait_for("the fail-open skips", lambda: len(failures()) >= 2 and failures())
    assert set(skipped) == {"initialize", "tools/list"}, skipped
    assert all(f["error"] and f["at"] > 0 for f in skipped.values())
