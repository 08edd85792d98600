"""Raw HTTP conformance of the MCP ingress (httpx): every status rule of both eras, sessions,
batches, the JSON-or-SSE choice, and the usage row each client request leaves."""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.support.mcp import BOTH, META, MODERN, Gateway, initialize, note, post, rpc


@pytest.fixture
def http(gw: Gateway) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=gw.agwd.data_url, timeout=30, trust_env=False) as client:
        yield client


def error_of(r: httpx.Response) -> dict[str, Any]:
    body = r.json()
    assert body["jsonrpc"] == "2.0" and "result" not in body, body
    err: dict[str, Any] = body["error"]
    return err


def modern(
    http: httpx.Client, method: str, params: dict[str, Any] | None = None, **headers: str
) -> httpx.Response:
    h = {"mcp-method": method} | {k.replace("_", "-"): v for k, v in headers.items()}
    name = (params or {}).get("name") or (params or {}).get("uri")
    if name is not None and "mcp-name" not in h:
        h["mcp-name"] = name
    return post(
        http, "/mcp", rpc(method, {**(params or {}), "_meta": META}), version=MODERN, headers=h
    )


def sse_messages(text: str) -> list[dict[str, Any]]:
    out = []
    for block in text.replace("\r\n", "\n").split("\n\n"):
        data = [line[5:].lstrip() for line in block.split("\n") if line.startswith("data:")]
        if data:
            out.append(json.loads("\n".join(data)))
    return out


# -------------------------------------------------------------------- handshake-era rules


def test_initialize_issues_an_unguessable_session_and_negotiates(http: httpx.Client) -> None:
    sid, _ = initialize(http)
    assert re.fullmatch(r"[A-Za-z0-9_-]{40,2784}", sid)  # sealed (docs/mcp.md, "Session ids")
    for asked, got in (
        ("2025-06-18", "2025-06-18"),
        ("2025-03-26", "2025-03-26"),
        ("1999-01-01", "2025-11-25"),
    ):
        params = {"protocolVersion": asked, "capabilities": {}, "clientInfo": {"name": "x"}}
        r = post(http, "/mcp", rpc("initialize", params))
        result = r.json()["result"]
        assert result["protocolVersion"] == got
        assert result["serverInfo"]["name"] == "agw"
        assert result["capabilities"]["tools"] == {"listChanged": True}
        assert "resources" in result["capabilities"] and "prompts" in result["capabilities"]
        assert "fake server alpha" in result["instructions"]
        assert r.headers["mcp-session-id"] != sid


def test_requests_with_a_session(http: httpx.Client) -> None:
    sid, _ = initialize(http)
    r = post(http, "/mcp", rpc("tools/list"), session=sid, version="2025-11-25")
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    names = [t["name"] for t in r.json()["result"]["tools"]]
    assert "alpha_echo" in names and "time_get_current_time" in names
    r = post(http, "/mcp", rpc("ping", msg_id="p"), session=sid)  # no version header: fine
    assert r.json() == {"jsonrpc": "2.0", "id": "p", "result": {}}
    r = post(http, "/mcp", rpc("no/such/method"), session=sid, version="2025-11-25")
    assert r.status_code == 200 and error_of(r)["code"] == -32601


def test_missing_unknown_and_foreign_sessions(http: httpx.Client, gw: Gateway) -> None:
    r = post(http, "/mcp", rpc("tools/list"))
    assert r.status_code == 400 and error_of(r)["code"] == -32600
    assert "Mcp-Session-Id" in error_of(r)["message"]
    r = post(http, "/mcp", rpc("tools/list"), session="0" * 32, version="2025-11-25")
    assert r.status_code == 404 and error_of(r)["code"] == -32600
    sid, _ = initialize(http)
    r = post(http, "/single", rpc("tools/list"), session=sid)  # bound to /mcp's route
    assert r.status_code == 404
    one = {"authorization": f"Bearer {gw.keys['one']}"}
    two = {"x-api-key": gw.keys["two"]}
    keyed, _ = initialize(http, "/keyed", headers=one)
    assert post(http, "/keyed", rpc("ping"), session=keyed, headers=one).status_code == 200
    r = post(http, "/keyed", rpc("ping"), session=keyed, headers=two)  # another key
    assert r.status_code == 404


def test_protocol_version_header_is_checked(http: httpx.Client) -> None:
    sid, _ = initialize(http)
    r = post(http, "/mcp", rpc("ping"), session=sid, version="2030-01-01")
    assert r.status_code == 400
    err = error_of(r)
    assert err["code"] == -32600 and "2030-01-01" in err["message"]


def test_accept_origin_body_and_method_rules(http: httpx.Client) -> None:
    sid, _ = initialize(http)
    r = post(http, "/mcp", rpc("ping"), session=sid, accept="text/plain")
    assert r.status_code == 406 and error_of(r)["code"] == -32600
    # one of the two is enough
    assert post(http, "/mcp", rpc("ping"), session=sid, accept="application/json").is_success
    assert post(http, "/mcp", rpc("ping"), session=sid, accept="text/event-stream").is_success
    # Origin (agw.edge, checked by the dispatcher): only the request's own origin or a listed
    # one; another loopback port is another site (a dev server's page). A rebinding page sends
    # its own name as Host and Origin alike: the Host check refuses it (421)
    own = f"http://{http.base_url.host}:{http.base_url.port}"
    for origin in ("https://evil.example", "http://localhost:3000", "http://127.0.0.1", "null"):
        r = post(http, "/mcp", rpc("ping"), session=sid, headers={"origin": origin})
        assert r.status_code == 403 and error_of(r)["code"] == -32600, origin
    r = post(http, "/mcp", rpc("ping"), session=sid, headers={"origin": own})
    assert r.status_code == 200
    rebound = {"origin": "http://rebind.example:8080", "host": "rebind.example:8080"}
    r = post(http, "/mcp", rpc("ping"), session=sid, headers=rebound)
    assert r.status_code == 421 and error_of(r)["code"] == -32600
    big = b'{"jsonrpc":"2.0","id":1,"method":"ping","params":{"x":"' + b"a" * (4 * 1024 * 1024)
    r = post(http, "/mcp", big + b'"}}', session=sid)
    assert r.status_code == 413 and error_of(r)["code"] == -32600
    r = post(http, "/mcp", b"{not json", session=sid)
    assert r.status_code == 400 and error_of(r)["code"] == -32700
    for bad in (
        {"jsonrpc": "2.0", "id": 1},
        {"jsonrpc": "1.0", "id": 1, "method": "ping"},
        {"jsonrpc": "2.0", "id": 1, "method": 5},
        [1],
        "text",
    ):
        r = post(http, "/mcp", bad, session=sid)
        assert r.status_code == 400 and error_of(r)["code"] == -32600, bad
    r = http.put("/mcp", content=b"{}")
    assert r.status_code == 405 and "POST" in r.headers["allow"]


NOT_JSON_TYPES: list[str | None] = [
    "text/plain",
    "text/plain;charset=UTF-8",
    "application/x-www-form-urlencoded",
    "multipart/form-data; boundary=x",
    None,  # no Content-Type at all
    "application/jsonx",
    "application/json-rpc",
    "application/json, text/plain",  # two Content-Type headers, joined
]


def test_a_post_must_say_its_body_is_json(http: httpx.Client, gw: Gateway) -> None:
    """What a page may send cross-site without a CORS preflight (text/plain, forms, no type) is
    refused before its body is read, in both eras and on the legacy transport, as the official
    SDKs' servers refuse it; the upstream never hears of it and the gateway goes on serving."""
    alpha = gw.servers["alpha"]
    sid, _ = initialize(http)
    sent = []
    for n, ctype in enumerate(NOT_JSON_TYPES):
        echo = {"name": "alpha_echo", "arguments": {"message": f"typed-{n}"}}
        sent.append(f"typed-{n}")
        call = rpc("tools/call", echo, msg_id=f"t{n}")
        r = post(http, "/mcp", call, session=sid, version="2025-11-25", content_type=ctype)
        assert r.status_code == 415, (ctype, r.text)
        err = error_of(r)
        assert err["code"] == -32600, ctype
        assert "Content-Type must be application/json" in err["message"], err
        modern_call = rpc("tools/call", {**echo, "_meta": META}, msg_id=f"m{n}")
        named = {"mcp-method": "tools/call", "mcp-name": "alpha_echo"}
        r = post(http, "/mcp", modern_call, version=MODERN, headers=named, content_type=ctype)
        assert r.status_code == 415 and error_of(r)["code"] == -32600, (ctype, r.text)
    opening = rpc("initialize", {"protocolVersion": "2025-11-25"})
    r = post(http, "/mcp", opening, content_type="text/plain")
    assert r.status_code == 415 and "mcp-session-id" not in r.headers  # no session opened
    # each refusal leaves its usage row, as every refused request does
    rows = gw.rows("status_code = 415 AND route_id = 'r-mcp'", count=2 * len(NOT_JSON_TYPES) + 1)
    assert all(row["error_type"] == "protocol_validation_failed" for row in rows)
    # a JSON type with parameters, in any case, is JSON
    for ctype in ("application/json; charset=utf-8", "Application/JSON"):
        echo = {"name": "alpha_echo", "arguments": {"message": "typed-ok"}}
        r = post(
            http,
            "/mcp",
            rpc("tools/call", echo),
            session=sid,
            version="2025-11-25",
            content_type=ctype,
        )
        assert r.status_code == 200 and r.json()["result"]["content"][0]["text"] == "typed-ok"
    called = {e["args"].get("message") for e in alpha.events("call")}
    assert "typed-ok" in called and not called & set(sent)
    # the legacy HTTP+SSE transport's message POSTs too (answered 415, not 202)
    with http.stream("GET", "/mcp/sse", headers={"accept": "text/event-stream"}) as stream:
        lines = stream.iter_lines()
        assert next(lines) == "event: endpoint"
        endpoint = next(lines).removeprefix("data:").strip()
        ping = rpc("ping", msg_id="legacy-typed")
        r = post(http, endpoint, ping, content_type="text/plain")
        assert r.status_code == 415 and error_of(r)["code"] == -32600, r.text
        assert post(http, endpoint, ping).status_code == 202


def test_notifications_and_responses_are_202(http: httpx.Client) -> None:
    sid, _ = initialize(http)
    for msg in (
        note("notifications/roots/list_changed"),
        note("notifications/cancelled", {"requestId": 99}),
        {"jsonrpc": "2.0", "id": "agw-unknown", "result": {}},
    ):
        r = post(http, "/mcp", msg, session=sid, version="2025-11-25")
        assert r.status_code == 202 and r.content == b"", msg


def test_batches_only_for_2025_03_26(http: httpx.Client) -> None:
    new, _ = initialize(http, version="2025-11-25")
    batch = [rpc("ping", msg_id=1), rpc("tools/list", msg_id=2), note("notifications/x")]
    r = post(http, "/mcp", batch, session=new, version="2025-11-25")
    assert r.status_code == 400 and error_of(r)["code"] == -32600
    old, _ = initialize(http, version="2025-03-26")
    r = post(http, "/mcp", batch, session=old, version="2025-03-26")
    assert r.status_code == 200, r.text
    answers = {a["id"]: a for a in r.json()}
    assert answers[1]["result"] == {} and "tools" in answers[2]["result"]
    r = post(http, "/mcp", [note("notifications/x")], session=old, version="2025-03-26")
    assert r.status_code == 202
    r = post(http, "/mcp", [], session=old, version="2025-03-26")
    assert r.status_code == 400


def test_get_stream_delete_and_after(http: httpx.Client, gw: Gateway) -> None:
    r = http.get("/mcp", headers={"accept": "text/event-stream"})
    assert r.status_code == 405  # no session: the stateless era has no stream
    sid, _ = initialize(http)
    headers = {"accept": "text/event-stream", "mcp-session-id": sid}
    with http.stream("GET", "/mcp", headers=headers) as stream:
        assert stream.status_code == 200
        assert stream.headers["content-type"] == "text/event-stream"
        second = http.get("/mcp", headers=headers)
        assert second.status_code == 409
        with gw.admin() as admin:
            sessions = admin.get("/admin/mcp/sessions").json()["items"]
        mine = [s for s in sessions if s["id"] == sid[:8] + "****"]
        assert mine and mine[0]["stream_open"] and mine[0]["route_id"] == "r-mcp"
        assert all(sid not in json.dumps(s) for s in sessions)
        r = http.delete("/mcp", headers={"mcp-session-id": sid})
        assert r.status_code == 200
        assert list(stream.iter_bytes()) is not None  # the stream ends with the session
    r = post(http, "/mcp", rpc("ping"), session=sid)
    assert r.status_code == 404
    assert http.delete("/mcp", headers={"mcp-session-id": sid}).status_code == 404
    assert http.delete("/mcp").status_code == 405


# ----------------------------------------------------------------------- JSON or SSE


def test_answer_is_sse_only_when_something_streams_first(http: httpx.Client) -> None:
    sid, _ = initialize(http)
    call = {
        "name": "alpha_slow",
        "arguments": {"seconds": 0.2, "steps": 2},
        "_meta": {"progressToken": "tok-1"},
    }
    r = post(http, "/mcp", rpc("tools/call", call, msg_id=7), session=sid, version="2025-11-25")
    assert r.status_code == 200 and r.headers["content-type"] == "text/event-stream"
    msgs = sse_messages(r.text)
    progress = [m["params"] for m in msgs if m.get("method") == "notifications/progress"]
    assert [(p["progressToken"], p["progress"]) for p in progress] == [("tok-1", 1), ("tok-1", 2)]
    assert msgs[-1]["id"] == 7 and "slept" in msgs[-1]["result"]["content"][0]["text"]
    # nothing streams before the answer: JSON
    echo = {"name": "alpha_echo", "arguments": {"message": "x"}}
    r = post(http, "/mcp", rpc("tools/call", echo), session=sid, version="2025-11-25")
    assert r.headers["content-type"] == "application/json"
    # a client that takes only JSON gets JSON (the progress had nowhere to go)
    r = post(
        http,
        "/mcp",
        rpc("tools/call", call, msg_id=8),
        session=sid,
        version="2025-11-25",
        accept="application/json",
    )
    assert r.headers["content-type"] == "application/json" and r.json()["id"] == 8


# ------------------------------------------------------------------------ modern era


def test_modern_discover_and_calls(http: httpx.Client) -> None:
    r = modern(http, "server/discover")
    assert r.status_code == 200, r.text
    result = r.json()["result"]
    assert result["supportedVersions"] == [MODERN, "2025-11-25", "2025-06-18", "2025-03-26"]
    assert result["resultType"] == "complete"
    assert result["_meta"]["io.modelcontextprotocol/serverInfo"]["name"] == "agw"
    assert "mcp-session-id" not in r.headers
    r = modern(http, "tools/list")
    result = r.json()["result"]
    assert result["resultType"] == "complete" and result["ttlMs"] == 0
    assert "alpha_echo" in [t["name"] for t in result["tools"]]
    r = modern(http, "tools/call", {"name": "alpha_echo", "arguments": {"message": "m"}})
    assert r.json()["result"]["content"][0]["text"] == "m"


def test_modern_header_and_version_rules(http: httpx.Client) -> None:
    r = modern(http, "tools/list", mcp_method="tools/call")
    assert r.status_code == 400 and error_of(r)["code"] == -32020
    call = {"name": "alpha_echo", "arguments": {"message": "m"}}
    r = modern(http, "tools/call", call, mcp_name="alpha_add")
    assert r.status_code == 400 and error_of(r)["code"] == -32020
    r = modern(http, "tools/call", call, mcp_name="=?base64?YWxwaGFfZWNobw==?=")  # alpha_echo
    assert r.status_code == 200, r.text
    r = modern(http, "tools/list", mcp_protocol_version="2025-11-25")
    assert r.status_code == 400 and error_of(r)["code"] == -32020
    future = {**META, "io.modelcontextprotocol/protocolVersion": "2099-01-01"}
    r = post(
        http,
        "/mcp",
        rpc("server/discover", {"_meta": future}),
        version="2099-01-01",
        headers={"mcp-method": "server/discover"},
    )
    assert r.status_code == 400
    err = error_of(r)
    assert err["code"] == -32022
    assert err["data"]["requested"] == "2099-01-01" and MODERN in err["data"]["supported"]
    r = modern(http, "no/such/method")
    assert r.status_code == 404 and error_of(r)["code"] == -32601
    r = modern(http, "initialize")  # initialize is the handshake, whatever its _meta says
    assert r.status_code == 200 and r.headers["mcp-session-id"]
    no_caps = {"io.modelcontextprotocol/protocolVersion": MODERN}
    r = post(
        http,
        "/mcp",
        rpc("tools/list", {"_meta": no_caps}),
        version=MODERN,
        headers={"mcp-method": "tools/list"},
    )
    assert r.status_code == 400 and error_of(r)["code"] == -32602


# --------------------------------------------------------------------- rejections, usage


def test_rejection_is_a_json_rpc_error_with_a_challenge(http: httpx.Client, gw: Gateway) -> None:
    r = post(http, "/keyed", rpc("tools/list", msg_id="rej-1"))
    assert r.status_code == 401
    assert r.headers["www-authenticate"] == "Bearer"
    assert error_of(r) == {"code": -32600, "message": "virtual key is required", "data": None}
    r = post(http, "/keyed", rpc("tools/list"), headers={"authorization": "Bearer vk-nope"})
    assert r.status_code == 401 and error_of(r)["message"] == "invalid virtual key"
    row = gw.rows("route_id = ? AND request_id = ?", ("r-keyed", "rej-1"))[0]
    assert row["status_code"] == 401 and row["error_type"] == "virtual_key_rejected"
    assert row["method"] == "tools/list" and row["success"] == 0


def test_one_usage_row_per_client_request(http: httpx.Client, gw: Gateway) -> None:
    key = {"authorization": f"Bearer {gw.keys['one']}"}
    sid, _ = initialize(http, "/audit")
    call = {"name": "echo", "arguments": {"message": "audit me"}}
    post(http, "/audit", rpc("tools/call", call, msg_id="u-1"), session=sid)
    post(
        http,
        "/audit",
        rpc("resources/read", {"uri": "res://alpha/readme"}, msg_id="u-2"),
        session=sid,
    )
    post(
        http,
        "/audit",
        rpc("prompts/get", {"name": "greet", "arguments": {"name": "x"}}, msg_id="u-3"),
        session=sid,
    )
    post(
        http,
        "/audit",
        rpc("tools/call", {"name": "fail", "arguments": {"message": "m"}}, msg_id="u-4"),
        session=sid,
    )
    post(http, "/audit", note("notifications/roots/list_changed"), session=sid)
    rows = gw.rows("route_id = ? AND request_id LIKE 'u-%'", ("r-audit",), count=4)
    by_id = {r["request_id"]: r for r in rows}
    assert set(by_id) == {"u-1", "u-2", "u-3", "u-4"}
    tool = by_id["u-1"]
    assert tool["method"] == "tools/call" and tool["service_id"] == "audited"
    assert tool["tool_name"] == tool["presented_tool_name"] == "echo"
    assert tool["executed_tool_name"] == "echo" and tool["arg_count"] == 1
    assert json.loads(tool["tool_args_json"]) == {"message": "audit me"}
    assert tool["result_status"] == "success" and tool["success"] == 1
    assert tool["status_code"] == 200 and tool["route_protocol"] == "mcp"
    assert tool["route_kind"] == "mcp" and tool["cancelled"] == 0 and tool["trace_id"]
    assert by_id["u-2"]["resource_uri"] == "res://alpha/readme"
    assert by_id["u-3"]["prompt_name"] == "greet" and by_id["u-3"]["arg_count"] == 1
    assert by_id["u-4"]["result_status"] == "error"  # a tool error (isError)
    # the session's handle as /admin/mcp/sessions shows it (never the session id itself)
    assert {r["mcp_session_id"] for r in rows} == {f"{sid[:8]}****"}
    assert all(sid not in json.dumps(r) for r in rows)
    assert {r["acp_session_id"] for r in rows} == {None}
    init = gw.rows("route_id = ? AND method = 'initialize'", ("r-audit",))
    assert init and init[0]["status_code"] == 200
    # a virtual key is recorded
    sid, _ = initialize(http, "/keyed", headers=key)
    post(http, "/keyed", rpc("ping", msg_id="u-vk"), session=sid, headers=key)
    row = gw.rows("request_id = ?", ("u-vk",))[0]
    assert row["virtual_key_id"] == "vk-one"


# -------------------------------------------------------------------------- cancellation


def _in_background(fn: Any) -> tuple[threading.Thread, dict[str, Any]]:
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["response"] = fn()
        except Exception as exc:  # reported by the test
            box["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, box


def _wait_inflight(gw: Gateway, route_id: str, request_id: str) -> None:
    deadline = time.monotonic() + 10
    with gw.admin() as admin:
        while time.monotonic() < deadline:
            items = admin.get("/admin/mcp/runtime/inflight").json()["items"]
            if any(i["route_id"] == route_id and i["request_id"] == request_id for i in items):
                return
            time.sleep(0.05)
    raise AssertionError(f"{request_id} never in flight")


def test_client_cancellation_reaches_the_upstream(http: httpx.Client, gw: Gateway) -> None:
    sid, _ = initialize(http, "/single")
    alpha = gw.servers["alpha"]
    call = {"name": "slow", "arguments": {"seconds": 20, "steps": 2}}
    thread, box = _in_background(
        lambda: post(http, "/single", rpc("tools/call", call, msg_id="c-1"), session=sid)
    )
    _wait_inflight(gw, "r-single", "c-1")
    started = time.monotonic()
    r = post(http, "/single", note("notifications/cancelled", {"requestId": "c-1"}), session=sid)
    assert r.status_code == 202
    thread.join(10)
    assert not thread.is_alive() and "error" not in box, box
    assert time.monotonic() - started < 5
    answer = box["response"]
    assert answer.status_code == 200 and sse_messages(answer.text) == []  # no response (spec)
    deadline = time.monotonic() + 10
    while not alpha.events("cancelled") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert alpha.events("cancelled"), "the upstream never heard of the cancellation"
    row = gw.rows("request_id = ?", ("c-1",))[0]
    assert row["cancelled"] == 1 and row["result_status"] == "cancelled"
    with gw.admin() as admin:
        hist = admin.get("/admin/mcp/runtime/history", params={"route_id": "r-single"}).json()
    assert any(h["request_id"] == "c-1" and h.get("cancelled") for h in hist["items"])


def test_admin_cancel_answers_the_client(http: httpx.Client, gw: Gateway) -> None:
    sid, _ = initialize(http, "/single")
    call = {"name": "slow", "arguments": {"seconds": 20, "steps": 2}}
    thread, box = _in_background(
        lambda: post(
            http,
            "/single",
            rpc("tools/call", call, msg_id="c-2"),
            session=sid,
            accept="application/json",
        )
    )
    _wait_inflight(gw, "r-single", "c-2")
    with gw.admin() as admin:
        r = admin.post("/admin/mcp/runtime/inflight/r-single/c-2/cancel")
        assert r.is_success, r.text
    thread.join(10)
    assert not thread.is_alive() and "error" not in box, box
    err = error_of(box["response"])
    assert err["code"] == -32000 and "cancelled by the gateway admin" in err["message"]


def test_modern_client_closing_its_stream_cancels_the_call(
    http: httpx.Client,
    gw: Gateway,
) -> None:
    alpha = gw.servers["alpha"]
    before = len(alpha.events("cancelled"))
    params = {
        "name": "alpha_slow",
        "arguments": {"seconds": 20, "steps": 20},
        "_meta": {**META, "progressToken": "m-tok"},
    }
    headers = {
        "accept": BOTH,
        "content-type": "application/json",
        "mcp-protocol-version": MODERN,
        "mcp-method": "tools/call",
        "mcp-name": "alpha_slow",
    }
    body = json.dumps(rpc("tools/call", params, msg_id="m-1"))
    with http.stream("POST", "/mcp", content=body, headers=headers) as r:
        assert r.headers["content-type"] == "text/event-stream"
        lines = r.iter_lines()  # kept: a dropped iterator closes the response
        first = next(json.loads(line[5:]) for line in lines if line.startswith("data:"))
        assert first["method"] == "notifications/progress"
        assert first["params"]["progressToken"] == "m-tok"
        with gw.admin() as admin:
            progress = admin.get("/admin/mcp/runtime/progress").json()["items"]
            inflight = admin.get("/admin/mcp/runtime/inflight").json()["items"]
        mine = [p for p in progress if p["progress_token"] == "m-tok"]
        assert mine and mine[0]["request_id"] == "m-1" and mine[0]["route_id"] == "r-mcp"
        assert any(i["request_id"] == "m-1" and i["progress_token"] == "m-tok" for i in inflight)
    deadline = time.monotonic() + 10
    while len(alpha.events("cancelled")) == before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(alpha.events("cancelled")) > before, "closing the stream did not cancel upstream"
    row = gw.rows("request_id = ?", ("m-1",))[0]
    assert row["cancelled"] == 1 and row["error_type"] == "client_cancelled"


def test_stateless_clients_sharing_a_key_never_cancel_each_other(
    http: httpx.Client, gw: Gateway
) -> None:
    """Two modern clients on one (route, key) pick the same request id; the one that leaves
    cancels its own call only, and its row says 499."""
    alpha = gw.servers["alpha"]
    before = len(alpha.events("cancelled"))
    headers = {
        "accept": BOTH,
        "content-type": "application/json",
        "mcp-protocol-version": MODERN,
        "mcp-method": "tools/call",
        "mcp-name": "alpha_slow",
    }

    def slow(token: str, seconds: int) -> bytes:
        params = {
            "name": "alpha_slow",
            "arguments": {"seconds": seconds, "steps": seconds * 2},
            "_meta": {**META, "progressToken": token},
        }
        return json.dumps(rpc("tools/call", params, msg_id="same-id")).encode()

    outcome: dict[str, Any] = {}

    def stayer() -> None:
        with httpx.Client(base_url=gw.agwd.data_url, timeout=30, trust_env=False) as other:
            r = other.post("/mcp", content=slow("stay", 2), headers=headers)
            outcome["status"] = r.status_code
            outcome["body"] = r.text

    thread = threading.Thread(target=stayer)
    try:
        with http.stream("POST", "/mcp", content=slow("leave", 20), headers=headers) as r:
            lines = r.iter_lines()
            next(line for line in lines if line.startswith("data:"))  # its call is running
            thread.start()  # the second call, same id, registered after the first
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                with gw.admin() as admin:
                    items = admin.get("/admin/mcp/runtime/inflight").json()["items"]
                if sum(i["request_id"] == "same-id" for i in items) == 2:
                    break
                time.sleep(0.05)
            else:
                pytest.fail("the second call never got in flight")
    finally:
        if thread.is_alive() or thread.ident is not None:
            thread.join(timeout=30)
    assert outcome["status"] == 200, outcome
    events = [json.loads(line[5:]) for line in outcome["body"].splitlines() if line[:5] == "data:"]
    final = events[-1] if events else json.loads(outcome["body"])
    assert "result" in final and not final["result"].get("isError"), outcome["body"]
    deadline = time.monotonic() + 10
    while len(alpha.events("cancelled")) == before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(alpha.events("cancelled")) == before + 1
    rows = gw.rows("request_id = 'same-id' AND method = 'tools/call'", count=2)
    by_status = sorted((r["status_code"], r["result_status"]) for r in rows[-2:])
    assert by_status == [(200, "success"), (499, "cancelled")], rows
