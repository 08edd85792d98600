"""What a caller cannot make the A2A plane do: send its own credentials upstream, get past a
virtual key, or break it with bad input. Every bad request gets a clear error in its binding
and a usage row, and the gateway keeps serving; the agent's own errors come back as it sent
them."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from tests.a2a.conftest import UPSTREAM_TOKEN, A2aGateway

SEND = {
    "jsonrpc": "2.0",
    "id": 7,
    "method": "SendMessage",
    "params": {"message": {"messageId": "m1", "role": "ROLE_USER", "parts": [{"text": "hello"}]}},
}
V1 = {"a2a-version": "1.0"}


def rpc(http: httpx.Client, body: Any, **headers: str) -> httpx.Response:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return http.post(
        "/a2a/open", content=content, headers={"content-type": "application/json", **headers}
    )


def test_the_callers_credentials_never_go_upstream(gw: A2aGateway) -> None:
    secrets = {
        "authorization": f"Bearer {gw.key}",
        "x-api-key": "caller-api-key",
        "cookie": "session=caller-cookie",
        "proxy-authorization": "Basic Y2FsbGVyOnNlY3JldA==",
        "x-custom-secret": "caller-custom",
    }
    with gw.data() as http:
        r = http.post("/a2a/keyed", json=SEND, headers={**V1, **secrets})
        rest = http.post("/a2a/keyed/message:send", json=SEND["params"], headers={**V1, **secrets})
    assert r.status_code == 200 and r.json()["result"]["task"]["status"]["state"]
    assert rest.status_code == 200
    sent = [q for q in gw.agent.requests() if q["method"] == "POST"][-2:]
    for request in sent:
        headers = request["headers"]
        assert headers["authorization"] == f"Bearer {UPSTREAM_TOKEN}"
        assert headers["a2a-version"] == "1.0"
        dumped = json.dumps(headers)
        for value in (gw.key, "caller-api-key", "caller-cookie", "Y2FsbGVy", "caller-custom"):
            assert value not in dumped
        assert "traceparent" in headers


@pytest.mark.parametrize(
    ("path", "extra"),
    [
        ("/a2a/keyed", {}),
        ("/a2a/keyed", {"authorization": "Bearer vk-not-a-key"}),
        ("/a2a/keyed", {"x-api-key": "vk-not-a-key"}),
    ],
)
def test_a_keyed_route_needs_a_virtual_key(
    gw: A2aGateway, path: str, extra: dict[str, str]
) -> None:
    before = len(gw.agent.requests())
    with gw.data() as http:
        r = http.post(path, json=SEND, headers={**V1, **extra})
        rest = http.get(f"{path}/tasks/t1", headers={**V1, **extra})
    assert r.status_code == 401 and r.json()["id"] == 7
    assert r.json()["error"]["code"] == -32600
    assert rest.status_code == 401 and rest.json()["error"]["status"] == "UNAUTHENTICATED"
    assert len(gw.agent.requests()) == before  # nothing reached the agent


BAD_RPC: list[tuple[str, Any, dict[str, str], int, int, Any]] = [
    ("not json", b"{nope", {}, 400, -32700, None),
    ("a batch", [SEND, SEND], {}, 400, -32600, None),
    ("a scalar", b"42", {}, 400, -32600, None),
    ("jsonrpc 1.0", {**SEND, "jsonrpc": "1.0"}, {}, 400, -32600, 7),
    ("an id that is a boolean", {**SEND, "id": True}, {}, 400, -32600, None),
    ("no method", {"jsonrpc": "2.0", "id": 1}, {}, 400, -32600, 1),
    ("an unknown method", {**SEND, "method": "tasks/explode"}, {}, 200, -32601, 7),
    ("an id of 201 characters", {**SEND, "id": "i" * 201}, {}, 400, -32600, None),
    ("an id of 700 bits", {**SEND, "id": 2**700}, {}, 400, -32600, None),
    ("a method of 201 characters", {**SEND, "method": "m" * 201}, {}, 400, -32600, 7),
    ("not JSON content", SEND, {"content-type": "text/plain"}, 415, -32600, None),
]


@pytest.mark.parametrize(("what", "body", "headers", "status", "code", "msg_id"), BAD_RPC)
def test_bad_json_rpc_is_refused_in_json_rpc(
    gw: A2aGateway,
    what: str,
    body: Any,
    headers: dict[str, str],
    status: int,
    code: int,
    msg_id: Any,
) -> None:
    before = len(gw.agent.requests())
    with gw.data() as http:
        r = rpc(http, body, **headers)
        assert r.status_code == status, r.text
        answer = r.json()
        assert answer["jsonrpc"] == "2.0" and answer["error"]["code"] == code
        assert answer["id"] == msg_id, what
        assert rpc(http, SEND, **V1).status_code == 200  # and the gateway goes on
    assert len(gw.agent.requests()) == before + 1  # only the good one went up


def test_a_body_over_the_limit_is_refused_before_it_is_read(gw: A2aGateway) -> None:
    with gw.data() as http:
        r = http.post(
            "/a2a/open",
            content=b"x" * (16 * 1024 * 1024 + 1),
            headers={"content-type": "application/json"},
        )
    assert r.status_code == 413 and r.json()["error"]["code"] == -32600


BAD_REST: list[tuple[str, str, bytes | None, int, str]] = [
    ("GET", "/a2a/open/nothing/here", None, 404, "NOT_FOUND"),
    ("GET", "/a2a/open/%2e%2e/tasks/x", None, 404, "NOT_FOUND"),  # ".." never goes up
    ("GET", "/a2a/open/tasks/%2e%2e", None, 404, "NOT_FOUND"),
    ("DELETE", "/a2a/open/message:send", None, 405, "UNIMPLEMENTED"),
    ("POST", "/a2a/open/message:send", b"{nope", 400, "INVALID_ARGUMENT"),
    ("POST", "/a2a/open/.well-known/agent-card.json", b"{}", 405, "UNIMPLEMENTED"),
]


@pytest.mark.parametrize(("method", "path", "body", "status", "grpc"), BAD_REST)
def test_bad_http_json_is_refused_in_http_json(
    gw: A2aGateway, method: str, path: str, body: bytes | None, status: int, grpc: str
) -> None:
    with gw.data() as http:
        r = http.request(
            method, path, content=body, headers={"content-type": "application/json", **V1}
        )
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert (error["code"], error["status"]) == (status, grpc) and error["message"]
    if status == 405:
        assert r.headers["allow"]


def test_bad_requests_are_recorded(gw: A2aGateway) -> None:
    with gw.data() as http:
        rpc(http, {**SEND, "method": "tasks/explode", "id": "row-probe"})
        http.get("/a2a/open/nothing/at/all")
    (unknown,) = gw.rows("request_id = 'row-probe'")
    assert (unknown["method"], unknown["error_type"]) == ("tasks/explode", "method_not_found")
    assert unknown["success"] == 0 and unknown["status_code"] == 200
    missing = gw.rows("route_id = 'a2a-open' AND error_type = 'route_not_found'")
    assert missing[-1]["status_code"] == 404 and missing[-1]["binding"] == "http_json"


def test_the_agents_own_errors_come_back_as_they_were(gw: A2aGateway) -> None:
    with gw.data() as http:
        rpc_miss = rpc(http, {**SEND, "method": "GetTask", "params": {"id": "no-such"}}, **V1)
        rest_miss = http.get("/a2a/open/tasks/no-such-task", headers=V1)
        legacy = rpc(http, {**SEND, "method": "tasks/get", "params": {"id": "no-such-0.3"}})
    assert rpc_miss.status_code == 200 and rpc_miss.json()["error"]["code"] == -32001
    assert rest_miss.status_code == 404
    assert rest_miss.json()["error"]["details"][0]["reason"] == "TASK_NOT_FOUND"
    assert legacy.json()["error"]["code"] == -32001
    for task_id in ("no-such", "no-such-task", "no-such-0.3"):
        (row,) = gw.rows("task_id = ?", (task_id,))
        assert row["error_type"] == "task_not_found" and row["success"] == 0


def test_an_agent_that_refuses_the_services_credentials(gw: A2aGateway) -> None:
    """A 401 from the agent is the gateway's configuration, not the caller's key: 502."""
    with gw.agwd.client() as admin:
        auth = {"type": "api_key", "header": "X-Up-Key", "api_key": "not-it"}
        service = {"id": "wrong", "card_url": gw.agent.card_url, "auth": auth}
        route = {
            "id": "a2a-wrong",
            "service_id": "wrong",
            "match_policy": {"path_prefix": "/a2a/wrong"},
        }
        assert admin.post("/admin/a2a/services", json=service).status_code == 201
        assert admin.post("/admin/a2a/routes", json=route).status_code == 201
        try:
            with gw.data() as http:
                r = http.post("/a2a/wrong", json=SEND, headers=V1)
            assert r.status_code == 502 and r.json()["error"]["code"] == -32603
            assert "refused the gateway's credentials" in r.json()["error"]["message"]
            sent = gw.agent.requests()[-1]["headers"]
            assert sent["x-up-key"] == "not-it" and "authorization" not in sent
            (row,) = gw.rows("route_id = 'a2a-wrong' AND method = 'SendMessage'")
            assert row["error_type"] == "upstream_auth_failed"
        finally:
            admin.delete("/admin/a2a/routes/a2a-wrong")
            admin.delete("/admin/a2a/services/wrong")


def test_authorization_rules_see_the_a2a_method(gw: A2aGateway) -> None:
    """A route's CEL rules see ``a2a.method`` (the JSON-RPC name on both bindings)."""
    route = {
        "id": "a2a-ruled",
        "service_id": "planner",
        "match_policy": {"path_prefix": "/a2a/ruled"},
        "authorization": {"deny": ['a2a.method in ["CancelTask", "tasks/cancel"]']},
    }
    with gw.agwd.client() as admin:
        assert admin.post("/admin/a2a/routes", json=route).status_code == 201
        try:
            with gw.data() as http:
                cancel = {**SEND, "method": "CancelTask", "params": {"id": "t-ruled"}}
                denied = http.post("/a2a/ruled", json=cancel, headers=V1)
                legacy = http.post("/a2a/ruled/v1/tasks/t-ruled:cancel")
                allowed = http.post("/a2a/ruled", json={**cancel, "method": "GetTask"}, headers=V1)
                card = http.get("/a2a/ruled/.well-known/agent-card.json")
            assert denied.status_code == 403 and "deny[0]" in denied.json()["error"]["message"]
            assert (
                legacy.status_code == 403
                and legacy.json()["error"]["status"] == "PERMISSION_DENIED"
            )
            assert (
                allowed.json()["error"]["code"] == -32001
            )  # relayed: the agent knows no such task
            assert card.status_code == 200
            rows = gw.rows("route_id = 'a2a-ruled' AND error_type = 'forbidden'", count=2)
            assert sorted(r["method"] for r in rows) == ["CancelTask", "tasks/cancel"]
        finally:
            admin.delete("/admin/a2a/routes/a2a-ruled")
