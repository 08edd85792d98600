"""A fake A2A agent (the official ``a2a-sdk`` server) run as a real process for tests.

    python -m tests.fakes.a2a_agent --port 0 [--log F] [--require-token T]

Listens on 127.0.0.1 and prints ``READY <port>`` on stdout once it accepts connections. It is
the SDK's own server (``DefaultRequestHandler`` over an in-memory task store and push-config
store) with both bindings and both protocol versions: JSON-RPC at ``/jsonrpc`` (1.0 and, on the
same endpoint, 0.3) and HTTP+JSON under ``/rest`` (1.0 paths and the 0.3 ``/v1/...`` ones). Its
card (``/.well-known/agent-card.json``) names those four interfaces, an API-key security scheme
of its own, and a signature, so a gateway's rewriting shows; ``capabilities.extendedAgentCard``
is on and the extended card names one more skill.

What the agent does with a message's text:

- ``hello ...`` -> a task: submitted, working, an artifact ``echo: <text>``, completed;
- ``direct ...`` -> a plain message ``direct: <text>`` (no task);
- ``slow ...`` -> a task that stays ``working``, one status update every 0.1 s, until it is
  cancelled (or 30 s pass, then completed);
- ``fail ...`` -> a task that fails.

``--log F`` appends one JSON line per HTTP request: ``{"method", "path", "headers"}`` (headers
lower-case). ``--require-token T``: every request but the public card's without
``Authorization: Bearer T`` gets 401.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from a2a.helpers.proto_helpers import new_text_artifact, new_text_message
from a2a.server.agent_execution import AgentExecutor, RequestContext
from a2a.server.events import EventQueue
from a2a.server.request_handlers import DefaultRequestHandler
from a2a.server.routes import (
    create_agent_card_routes,
    create_jsonrpc_routes,
    create_rest_routes,
)
from a2a.server.tasks import InMemoryPushNotificationConfigStore, InMemoryTaskStore, TaskUpdater
from a2a.types.a2a_pb2 import (
    AgentCapabilities,
    AgentCard,
    AgentCardSignature,
    AgentInterface,
    AgentSkill,
    APIKeySecurityScheme,
    Role,
    SecurityRequirement,
    SecurityScheme,
    StringList,
    Task,
    TaskState,
    TaskStatus,
)
from starlette.applications import Starlette

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
Asgi = Callable[[Scope, Receive, Send], Awaitable[None]]

CARD_PATH = "/.well-known/agent-card.json"
SLOW_LIMIT_S = 30.0


class FakeExecutor(AgentExecutor):
    """The agent: what a message's first word asks for (see the module doc)."""

    async def execute(self, context: RequestContext, event_queue: EventQueue) -> None:
        text = context.get_user_input()
        task_id, context_id = context.task_id or "", context.context_id or ""
        if text.startswith("direct"):
            await event_queue.enqueue_event(
                new_text_message(f"direct: {text}", context_id=context_id, role=Role.ROLE_AGENT)
            )
            return
        if context.current_task is None:
            assert context.message is not None
            await event_queue.enqueue_event(
                Task(
                    id=task_id,
                    context_id=context_id,
                    status=TaskStatus(state=TaskState.TASK_STATE_SUBMITTED),
                    history=[context.message],
                )
            )
        updater = TaskUpdater(event_queue, task_id, context_id)
        await updater.start_work()
        if text.startswith("fail"):
            await updater.failed(updater.new_agent_message([_part("failed on purpose")]))
            return
        if text.startswith("slow"):
            loop = asyncio.get_running_loop()
            deadline = loop.time() + SLOW_LIMIT_S
            while loop.time() < deadline:
                await asyncio.sleep(0.1)
                await updater.update_status(TaskState.TASK_STATE_WORKING)
        await updater.add_artifact([_part(f"echo: {text}")], name="echo")
        await updater.complete()

    async def cancel(self, context: RequestContext, event_queue: EventQueue) -> None:
        updater = TaskUpdater(event_queue, context.task_id or "", context.context_id or "")
        await updater.cancel()


def _part(text: str) -> Any:
    return new_text_artifact("t", text).parts[0]


def agent_card(base: str, *, extended: bool = False) -> AgentCard:
    interfaces = [
        AgentInterface(url=f"{base}/jsonrpc", protocol_binding="JSONRPC", protocol_version="1.0"),
        AgentInterface(url=f"{base}/rest", protocol_binding="HTTP+JSON", protocol_version="1.0"),
        AgentInterface(url=f"{base}/jsonrpc", protocol_binding="JSONRPC", protocol_version="0.3"),
        AgentInterface(url=f"{base}/rest", protocol_binding="HTTP+JSON", protocol_version="0.3"),
    ]
    skills = [AgentSkill(id="echo", name="echo", description="echoes", tags=["echo"])]
    if extended:
        skills.append(AgentSkill(id="secret", name="secret", description="more", tags=["x"]))
    return AgentCard(
        name="fake agent",
        description="a fake A2A agent for agw's tests",
        version="1.0.0",
        supported_interfaces=interfaces,
        capabilities=AgentCapabilities(
            streaming=True, push_notifications=True, extended_agent_card=True
        ),
        default_input_modes=["text/plain"],
        default_output_modes=["text/plain"],
        skills=skills,
        security_schemes={
            "upstream_key": SecurityScheme(
                api_key_security_scheme=APIKeySecurityScheme(location="header", name="X-Up-Key")
            )
        },
        security_requirements=[SecurityRequirement(schemes={"upstream_key": StringList(list=[])})],
        signatures=[AgentCardSignature(protected="e30", signature="c2lnbmVk")],
    )


def build_app(base: str) -> Starlette:
    card = agent_card(base)
    handler = DefaultRequestHandler(
        agent_executor=FakeExecutor(),
        task_store=InMemoryTaskStore(),
        agent_card=card,
        push_config_store=InMemoryPushNotificationConfigStore(),
        extended_agent_card=agent_card(base, extended=True),
    )
    routes = [
        *create_agent_card_routes(card),
        *create_jsonrpc_routes(handler, "/jsonrpc", enable_v0_3_compat=True),
        *create_rest_routes(handler, enable_v0_3_compat=True, path_prefix="/rest"),
    ]
    return Starlette(routes=routes)


def recorded(app: Asgi, log_path: str | None, token: str | None) -> Asgi:
    """``app`` behind the request log and the bearer check of ``--require-token``."""

    async def wrapper(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        if log_path:
            _append(
                log_path, {"method": scope["method"], "path": scope["path"], "headers": headers}
            )
        if (
            token
            and scope["path"] != CARD_PATH
            and headers.get("authorization") != f"Bearer {token}"
        ):
            body = b'{"error": "missing or wrong upstream token"}'
            await send(
                {
                    "type": "http.response.start",
                    "status": 401,
                    "headers": [(b"content-type", b"application/json")],
                }
            )
            await send({"type": "http.response.body", "body": body})
            return
        await app(scope, receive, send)

    return wrapper


def _append(path: str, line: dict[str, Any]) -> None:
    with open(path, "a", encoding="utf-8") as out:
        out.write(json.dumps(line) + "\n")


async def serve(port: int, log_path: str | None, token: str | None) -> None:
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    base = f"http://127.0.0.1:{sock.getsockname()[1]}"
    app = recorded(build_app(base), log_path, token)
    config = uvicorn.Config(app, log_level="warning", lifespan="on", timeout_graceful_shutdown=1)
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    for _ in range(1000):
        if server.started or task.done():
            break
        await asyncio.sleep(0.01)
    if task.done():
        await task
        return
    print(f"READY {sock.getsockname()[1]}", flush=True)
    await task


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0] if __doc__ else None)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--log", default=None)
    parser.add_argument("--require-token", default=None)
    args = parser.parse_args(argv)
    asyncio.run(serve(args.port, args.log, args.require_token))


if __name__ == "__main__":
    main()
