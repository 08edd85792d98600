"""The official ``a2a-sdk`` client through agw to the SDK's own server (tests/fakes/a2a_agent.py):
both protocol versions (1.0 and 0.3) on both bindings (JSON-RPC and HTTP+JSON), as the SDK
speaks them. Send, stream, get, cancel, subscribe, push-notification configs, and the usage
row of each (the A2A context as its session)."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest
from a2a.client import Client
from a2a.types.a2a_pb2 import (
    CancelTaskRequest,
    DeleteTaskPushNotificationConfigRequest,
    GetTaskPushNotificationConfigRequest,
    GetTaskRequest,
    ListTaskPushNotificationConfigsRequest,
    SubscribeToTaskRequest,
    TaskPushNotificationConfig,
    TaskState,
)
from google.protobuf.json_format import MessageToDict

from tests.a2a.conftest import A2aGateway
from tests.support.a2a import message, sdk_client

BOTH = [
    ("JSONRPC", "1.0"),
    ("JSONRPC", "0.3"),
    ("HTTP+JSON", "1.0"),
    ("HTTP+JSON", "0.3"),
]
SEND = {"1.0": "SendMessage", "0.3": "message/send"}
STREAM = {"1.0": "SendStreamingMessage", "0.3": "message/stream"}
GET = {"1.0": "GetTask", "0.3": "tasks/get"}
CANCEL = {"1.0": "CancelTask", "0.3": "tasks/cancel"}
ROW_BINDING = {"JSONRPC": "jsonrpc", "HTTP+JSON": "http_json"}
WAIT_S = 20.0


def run(coro: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coro, WAIT_S))


def kinds(events: list[Any]) -> list[str]:
    return [next(iter(MessageToDict(e))) for e in events]


@pytest.mark.parametrize(("binding", "version"), BOTH)
def test_send_then_get_the_task(gw: A2aGateway, binding: str, version: str) -> None:
    context = f"ctx-{uuid.uuid4()}"

    async def case() -> tuple[Any, Any]:
        url = gw.url("/a2a/keyed")
        async with sdk_client(url, binding, version, key=gw.key, streaming=False) as client:
            (answer,) = [e async for e in client.send_message(message("hello", context_id=context))]
            task = answer.task
            again = await client.get_task(GetTaskRequest(id=task.id))
            return task, again

    task, again = run(case())
    assert task.status.state == TaskState.TASK_STATE_COMPLETED
    assert task.artifacts[0].parts[0].text == "echo: hello"
    assert task.context_id == context
    assert again.id == task.id and again.status.state == TaskState.TASK_STATE_COMPLETED
    sent, got = gw.rows("session_id = ? AND method != 'agent-card'", (context,), count=2)[:2]
    assert (sent["method"], got["method"]) == (SEND[version], GET[version])
    for row in (sent, got):
        assert row["route_kind"] == "a2a" and row["service_id"] == "planner"
        assert row["protocol_version"] == version and row["binding"] == ROW_BINDING[binding]
        assert (row["task_id"], row["context_id"]) == (task.id, context)
        assert (row["task_state"], row["status_code"], row["success"]) == ("completed", 200, 1)
        assert row["virtual_key_id"] == "a2a-caller" and row["stream"] == 0
    if binding == "JSONRPC":
        assert sent["request_id"] is not None


@pytest.mark.parametrize(("binding", "version"), BOTH)
def test_a_stream_comes_through_event_by_event(gw: A2aGateway, binding: str, version: str) -> None:
    context = f"ctx-{uuid.uuid4()}"

    async def case() -> list[Any]:
        async with sdk_client(gw.url("/a2a/open"), binding, version) as client:
            return [e async for e in client.send_message(message("hello", context_id=context))]

    events = run(case())
    assert kinds(events) == ["task", "statusUpdate", "artifactUpdate", "statusUpdate"]
    assert events[-1].status_update.status.state == TaskState.TASK_STATE_COMPLETED
    (row,) = gw.rows("session_id = ? AND method = ?", (context, STREAM[version]))
    assert (row["stream"], row["event_count"], row["task_state"]) == (1, 4, "completed")
    assert row["task_id"] == events[0].task.id and row["virtual_key_id"] is None


@pytest.mark.parametrize(("binding", "version"), [("JSONRPC", "1.0"), ("HTTP+JSON", "0.3")])
def test_cancel_a_task_while_it_streams(gw: A2aGateway, binding: str, version: str) -> None:
    context = f"ctx-{uuid.uuid4()}"

    async def case() -> tuple[list[Any], Any]:
        async with sdk_client(gw.url("/a2a/keyed"), binding, version, key=gw.key) as client:
            events: list[Any] = []
            cancelled = None
            async for event in client.send_message(message("slow", context_id=context)):
                events.append(event)
                if len(events) == 2:  # the task, then its first "working"
                    cancelled = await client.cancel_task(CancelTaskRequest(id=events[0].task.id))
            return events, cancelled

    events, cancelled = run(case())
    assert cancelled is not None and cancelled.status.state == TaskState.TASK_STATE_CANCELED
    assert events[-1].status_update.status.state == TaskState.TASK_STATE_CANCELED
    stream, cancel = (
        gw.rows("session_id = ? AND method = ?", (context, STREAM[version]))[0],
        gw.rows("session_id = ? AND method = ?", (context, CANCEL[version]))[0],
    )
    assert stream["task_state"] == cancel["task_state"] == "canceled"
    assert stream["task_id"] == cancel["task_id"] == events[0].task.id


def test_subscribe_to_a_running_task(gw: A2aGateway) -> None:
    """1.0 ``SubscribeToTask`` on JSON-RPC, 0.3 ``tasks/resubscribe`` on HTTP+JSON."""

    async def case(binding: str, version: str) -> tuple[str, list[Any]]:
        url = gw.url("/a2a/open")
        async with sdk_client(url, binding, version) as client:
            async for first in client.send_message(message("slow")):
                task_id = first.task.id
                break  # the caller leaves; the task goes on
            seen: list[Any] = []
            async for event in client.subscribe(SubscribeToTaskRequest(id=task_id)):
                seen.append(event)
                if len(seen) == 2:
                    await client.cancel_task(CancelTaskRequest(id=task_id))
            return task_id, seen

    for binding, version, method in (
        ("JSONRPC", "1.0", "SubscribeToTask"),
        ("HTTP+JSON", "0.3", "tasks/resubscribe"),
    ):
        task_id, seen = run(case(binding, version))
        assert seen[-1].status_update.status.state == TaskState.TASK_STATE_CANCELED
        (row,) = gw.rows("task_id = ? AND method = ?", (task_id, method))
        assert row["stream"] == 1 and row["task_state"] == "canceled"
        left = gw.rows("task_id = ? AND status_code = 499", (task_id,))
        assert left and left[0]["error_type"] == "client_cancelled"


@pytest.mark.parametrize(("binding", "version"), [("JSONRPC", "1.0"), ("HTTP+JSON", "1.0")])
def test_push_notification_configs(gw: A2aGateway, binding: str, version: str) -> None:
    async def case(client: Client) -> list[str]:
        (done,) = [e async for e in client.send_message(message("hello"))]
        task_id = done.task.id
        config = TaskPushNotificationConfig(
            task_id=task_id, id="hook-1", url="https://hooks.example/a2a", token="t"
        )
        made = await client.create_task_push_notification_config(config)
        got = await client.get_task_push_notification_config(
            GetTaskPushNotificationConfigRequest(task_id=task_id, id="hook-1")
        )
        listed = await client.list_task_push_notification_configs(
            ListTaskPushNotificationConfigsRequest(task_id=task_id)
        )
        await client.delete_task_push_notification_config(
            DeleteTaskPushNotificationConfigRequest(task_id=task_id, id="hook-1")
        )
        assert made.url == got.url == "https://hooks.example/a2a"
        assert [c.id for c in listed.configs] == ["hook-1"]
        return [task_id]

    async def main() -> list[str]:
        async with sdk_client(gw.url("/a2a/open"), binding, version, streaming=False) as client:
            return await case(client)

    (task_id,) = run(main())
    rows = gw.rows("task_id = ? AND method LIKE '%PushNotificationConfig%'", (task_id,), count=4)
    assert [r["method"] for r in rows] == [
        "CreateTaskPushNotificationConfig",
        "GetTaskPushNotificationConfig",
        "ListTaskPushNotificationConfigs",
        "DeleteTaskPushNotificationConfig",
    ]
    assert all(r["success"] == 1 for r in rows)


def test_one_context_is_one_session_across_calls(gw: A2aGateway) -> None:
    """The A2A contextId is the rows' session_id: the metrics API's session timeline holds
    every call of the conversation, whatever binding carried it."""
    context = f"ctx-{uuid.uuid4()}"

    async def case() -> None:
        for binding, version in (("JSONRPC", "1.0"), ("HTTP+JSON", "0.3")):
            async with sdk_client(gw.url("/a2a/open"), binding, version, streaming=False) as c:
                [_ async for _ in c.send_message(message("hello", context_id=context))]

    run(case())
    gw.rows("session_id = ?", (context,), count=2)
    with gw.agwd.client() as admin:
        r = admin.get(f"/admin/metrics/sessions/{context}")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["totals"]["a2a"]["request_count"] == 2
    assert [i["operation"] for i in body["items"]] == ["SendMessage", "message/send"]
    assert {i["kind"] for i in body["items"]} == {"a2a"}
