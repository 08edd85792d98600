"""Limits on A2A routes (agw/a2a/limits.py, docs/limits.md): a message to a remote agent is
admitted before it is relayed; a session limit counts per A2A ``contextId``; the refusal is a
429 in the caller's binding; reading a task is not counted."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.a2a.conftest import A2aGateway

V1 = {"a2a-version": "1.0"}
PREFIX = "/a2a/limited"


@pytest.fixture(scope="module")
def limited(gw: A2aGateway) -> Iterator[str]:
    """A route of its own with a two-message lifetime limit per session; removed after."""
    with gw.agwd.client() as admin:
        r = admin.post(
            "/admin/a2a/routes",
            json={"id": "a2a-limited", "service_id": "planner",
                  "match_policy": {"path_prefix": PREFIX}},
        )  # fmt: skip
        assert r.status_code == 201, r.text
        r = admin.post(
            "/admin/limits",
            json={"id": "a2a-two", "subject": "session", "window": "lifetime", "requests": 2,
                  "match": {"route_ids": ["a2a-limited"]}},
        )  # fmt: skip
        assert r.status_code == 201, r.text
    try:
        yield PREFIX
    finally:
        with gw.agwd.client() as admin:
            admin.delete("/admin/limits/a2a-two")
            admin.delete("/admin/a2a/routes/a2a-limited")


def send(http: httpx.Client, context: str, n: int) -> httpx.Response:
    body = {
        "jsonrpc": "2.0",
        "id": f"lim-{n}",
        "method": "SendMessage",
        "params": {
            "message": {
                "messageId": f"m-lim-{uuid.uuid4()}",
                "role": "ROLE_USER",
                "contextId": context,
                "parts": [{"text": f"hello {n}"}],
            }
        },
    }
    return http.post(PREFIX, json=body, headers=V1)


def test_a_session_limit_refuses_the_third_message_in_the_context(
    gw: A2aGateway, limited: str
) -> None:
    context = f"ctx-lim-{uuid.uuid4()}"
    with gw.data() as http:
        first, second = send(http, context, 1), send(http, context, 2)
        third = send(http, context, 3)
        other = send(http, f"ctx-other-{uuid.uuid4()}", 4)
    assert first.status_code == second.status_code == 200, first.text
    assert first.headers["ratelimit-policy"] == '"a2a-two";q=2;qu="requests"'
    assert first.headers["ratelimit"] == '"a2a-two";r=1'
    assert third.status_code == 429
    error: dict[str, Any] = third.json()["error"]
    assert third.json()["id"] == "lim-3" and error["code"] == -32029
    assert error["data"]["limit"]["id"] == "a2a-two"
    assert error["data"]["limit"]["subject"] == f"-/{context}"
    assert error["data"]["limit"]["remaining"] == 0
    assert third.headers["x-should-retry"] == "false"  # a lifetime limit never resets
    assert other.status_code == 200  # another context has its own count
    (row,) = gw.rows("session_id = ? AND status_code = 429", (context,))
    assert row["limit_id"] == "a2a-two" and row["limit_action"] == "refused"
    assert row["error_type"] == "rate_limited" and row["method"] == "SendMessage"


def test_the_http_json_binding_refuses_with_resource_exhausted(
    gw: A2aGateway, limited: str
) -> None:
    context = f"ctx-rest-{uuid.uuid4()}"
    with gw.data() as http:
        for n in range(2):
            assert send(http, context, n).status_code == 200
        body = {
            "message": {
                "messageId": f"m-rest-{uuid.uuid4()}",
                "role": "ROLE_USER",
                "contextId": context,
                "parts": [{"text": "once more"}],
            }
        }
        r = http.post(f"{PREFIX}/message:send", json=body, headers=V1)
    assert r.status_code == 429, r.text
    error = r.json()["error"]
    assert error["code"] == 429 and error["status"] == "RESOURCE_EXHAUSTED"
    limit = next(d for d in error["details"] if d.get("@type") == "agw.limit")
    assert limit["limit"]["id"] == "a2a-two" and limit["limit"]["meter"] == "requests"


def test_reading_a_task_is_not_counted(gw: A2aGateway, limited: str) -> None:
    context = f"ctx-read-{uuid.uuid4()}"
    with gw.data() as http:
        sent = send(http, context, 1)
        task_id = sent.json()["result"]["task"]["id"]
        for n in range(3):
            got = http.post(
                PREFIX,
                json={"jsonrpc": "2.0", "id": f"get-{n}", "method": "GetTask",
                      "params": {"id": task_id}},
                headers=V1,
            )  # fmt: skip
            assert got.status_code == 200, got.text
            assert got.json()["result"]["id"] == task_id
        assert send(http, context, 2).status_code == 200  # the second message still fits
        assert send(http, context, 3).status_code == 429
