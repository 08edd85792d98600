"""The data-plane dispatcher: a lean ASGI app that matches a request against the runtime
snapshot's route table.

This version matches routes and answers with clear JSON errors; the protocol handlers (LLM, MCP,
ACP) plug in behind the match as their planes land.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from agw.runtime.manager import ConfigManager

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


async def _send_json(send: Send, status: int, body: dict[str, Any]) -> None:
    payload = json.dumps(body).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(payload)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": payload})


def create_data_app(manager: ConfigManager) -> Callable[[Scope, Receive, Send], Awaitable[None]]:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        host = ""
        for name, value in scope["headers"]:
            if name == b"host":
                host = value.decode("latin-1")
                break
        route = manager.snapshot.match(host, scope["path"], scope["method"])
        if route is None:
            await _send_json(send, 404, {"error": f"no route matches {scope['path']}"})
            return
        if route.disabled:
            await _send_json(send, 403, {"error": f'route "{route.id}" is disabled'})
            return
        await _send_json(
            send,
            501,
            {"error": f'route "{route.id}": {route.kind} routes are not served by this build yet'},
        )

    return app
