"""A small REST API (aiohttp) that publishes its own OpenAPI 3.1 spec, run as a real process.

    python tests/fakes/rest_app.py --port 0

Listens on 127.0.0.1 and prints ``READY <port>`` once it accepts connections. The spec is at
``/openapi.json`` (its server is ``/api``, relative: a client resolves it against the spec's
URL); ``/openapi-broken.json`` is a spec with a ``$ref`` that does not resolve.

Operations (under ``/api``):

- ``getItem`` ``GET /items/{item_id}`` (query ``verbose`` boolean, ``tags`` array; header
  ``X-Trace-Tag`` via ``components/parameters``) -> what it got: ``item_id`` (decoded),
  ``raw_path``, ``query`` (pairs), ``trace_tag``
- ``createItem`` ``POST /items`` (query ``dry_run``; body ``NewItem`` via
  ``components/requestBodies``: ``name`` required, ``tags``, ``owner`` (``Owner``, nested), and
  ``id`` read-only) -> 201 ``{"created": body, "dry_run": ...}``
- ``replaceItem`` ``PUT /items/{id}`` (body with its own ``id``: the path parameter becomes
  ``id__path``) -> ``{"path_id", "body"}``
- ``deleteItem`` ``DELETE /items/{item_id}`` -> 204, no body
- ``sum`` ``POST /sum`` (body: an array of numbers) -> ``{"sum": n}``
- ``whoami`` ``GET /whoami`` -> every request header (lower-case names)
- ``failing`` ``GET /fail`` (query ``status``, default 404) -> that status,
  ``{"error": "no such thing"}``
- ``GET /text`` (no operationId: the tool is ``get_text``) -> ``text/plain``
- ``listNumbers`` ``GET /numbers`` -> ``[1, 2, 3]``
- ``slow`` ``GET /slow`` (query ``seconds``) -> sleeps, then ``{"slept": seconds}``
- ``big`` ``GET /big`` (query ``mib``) -> a JSON string of that many MiB
- ``HEAD /items`` -> not offered as a tool
"""

from __future__ import annotations

import argparse
import asyncio
import socket
from typing import Any

from aiohttp import web

SPEC: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {"title": "Fake REST", "version": "1.2.3"},
    "servers": [{"url": "/api"}],
    "paths": {
        "/items": {
            "post": {
                "operationId": "createItem",
                "summary": "Create an item",
                "description": "Stores a new item.",
                "parameters": [
                    {"name": "dry_run", "in": "query", "schema": {"type": "boolean"}},
                ],
                "requestBody": {"$ref": "#/components/requestBodies/NewItem"},
                "responses": {"201": {"description": "created"}},
            },
            "head": {"responses": {"200": {"description": "exists"}}},
        },
        "/items/{item_id}": {
            "parameters": [{"$ref": "#/components/parameters/ItemId"}],
            "get": {
                "operationId": "getItem",
                "summary": "Read an item",
                "parameters": [
                    {"name": "verbose", "in": "query", "schema": {"type": "boolean"}},
                    {
                        "name": "tags",
                        "in": "query",
                        "schema": {"type": "array", "items": {"type": "string"}},
                    },
                    {"$ref": "#/components/parameters/TraceTag"},
                ],
                "responses": {"200": {"description": "the item"}},
            },
            "delete": {
                "operationId": "deleteItem",
                "responses": {"204": {"description": "gone"}},
            },
        },
        "/items/{id}": {
            "put": {
                "operationId": "replaceItem",
                "parameters": [
                    {"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}
                ],
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "required": ["id", "name"],
                                "properties": {
                                    "id": {"type": "string"},
                                    "name": {"type": "string"},
                                },
                            }
                        }
                    },
                },
                "responses": {"200": {"description": "replaced"}},
            }
        },
        "/sum": {
            "post": {
                "operationId": "sum",
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {
                            "schema": {"type": "array", "items": {"type": "number"}}
                        }
                    },
                },
                "responses": {"200": {"description": "the sum"}},
            }
        },
        "/whoami": {
            "get": {"operationId": "whoami", "responses": {"200": {"description": "headers"}}}
        },
        "/fail": {
            "get": {
                "operationId": "failing",
                "parameters": [{"name": "status", "in": "query", "schema": {"type": "integer"}}],
                "responses": {"404": {"description": "never found"}},
            }
        },
        "/text": {"get": {"summary": "Plain text", "responses": {"200": {"description": "t"}}}},
        "/numbers": {
            "get": {"operationId": "listNumbers", "responses": {"200": {"description": "n"}}}
        },
        "/slow": {
            "get": {
                "operationId": "slow",
                "parameters": [{"name": "seconds", "in": "query", "schema": {"type": "number"}}],
                "responses": {"200": {"description": "slept"}},
            }
        },
        "/big": {
            "get": {
                "operationId": "big",
                "parameters": [{"name": "mib", "in": "query", "schema": {"type": "integer"}}],
                "responses": {"200": {"description": "big"}},
            }
        },
    },
    "components": {
        "parameters": {
            "ItemId": {
                "name": "item_id",
                "in": "path",
                "required": True,
                "description": "Which item",
                "schema": {"type": "string"},
            },
            "TraceTag": {
                "name": "X-Trace-Tag",
                "in": "header",
                "schema": {"$ref": "#/components/schemas/Tag"},
            },
        },
        "requestBodies": {
            "NewItem": {
                "required": True,
                "content": {
                    "application/json": {"schema": {"$ref": "#/components/schemas/NewItem"}}
                },
            }
        },
        "schemas": {
            "Tag": {"type": "string", "maxLength": 40},
            "NewItem": {
                "type": "object",
                "required": ["name"],
                "properties": {
                    "id": {"type": "integer", "readOnly": True},
                    "name": {"type": "string", "description": "What to call it"},
                    "tags": {"type": "array", "items": {"$ref": "#/components/schemas/Tag"}},
                    "owner": {"$ref": "#/components/schemas/Owner"},
                },
            },
            "Owner": {
                "type": "object",
                "properties": {"email": {"type": ["string", "null"], "format": "email"}},
            },
        },
    },
}
BROKEN = {
    "openapi": "3.1.0",
    "info": {"title": "Broken", "version": "0"},
    "paths": {
        "/x": {
            "post": {
                "requestBody": {
                    "content": {
                        "application/json": {"schema": {"$ref": "#/components/schemas/Gone"}}
                    }
                },
                "responses": {"200": {"description": "x"}},
            }
        }
    },
}


def _json(value: Any, status: int = 200) -> web.Response:
    return web.json_response(value, status=status)


async def spec(request: web.Request) -> web.Response:
    return _json(SPEC)


async def broken(request: web.Request) -> web.Response:
    return _json(BROKEN)


async def get_item(request: web.Request) -> web.Response:
    return _json(
        {
            "item_id": request.match_info["item_id"],
            "raw_path": request.raw_path,
            "query": [[k, v] for k, v in request.query.items()],
            "trace_tag": request.headers.get("X-Trace-Tag"),
        }
    )


async def create_item(request: web.Request) -> web.Response:
    body = await request.json()
    return _json({"created": body, "dry_run": request.query.get("dry_run")}, 201)


async def replace_item(request: web.Request) -> web.Response:
    return _json({"path_id": request.match_info["item_id"], "body": await request.json()})


async def delete_item(request: web.Request) -> web.Response:
    return web.Response(status=204)


async def add_up(request: web.Request) -> web.Response:
    return _json({"sum": sum(await request.json())})


async def whoami(request: web.Request) -> web.Response:
    return _json({k.lower(): v for k, v in request.headers.items()})


async def fail(request: web.Request) -> web.Response:
    return _json({"error": "no such thing"}, int(request.query.get("status", "404")))


async def text(request: web.Request) -> web.Response:
    return web.Response(text="plain words", content_type="text/plain")


async def numbers(request: web.Request) -> web.Response:
    return _json([1, 2, 3])


async def slow(request: web.Request) -> web.Response:
    seconds = float(request.query.get("seconds", "1"))
    await asyncio.sleep(seconds)
    return _json({"slept": seconds})


async def big(request: web.Request) -> web.Response:
    size = int(request.query.get("mib", "1")) * 1024 * 1024
    return web.Response(body=b'"' + b"x" * size + b'"', content_type="application/json")


def app() -> web.Application:
    application = web.Application()
    application.add_routes(
        [
            web.get("/openapi.json", spec),
            web.get("/openapi-broken.json", broken),
            web.get("/api/items/{item_id}", get_item),
            web.post("/api/items", create_item),
            web.put("/api/items/{item_id}", replace_item),
            web.delete("/api/items/{item_id}", delete_item),
            web.post("/api/sum", add_up),
            web.get("/api/whoami", whoami),
            web.get("/api/fail", fail),
            web.get("/api/text", text),
            web.get("/api/numbers", numbers),
            web.get("/api/slow", slow),
            web.get("/api/big", big),
        ]
    )
    return application


async def serve(port: int) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    runner = web.AppRunner(app(), access_log=None)
    await runner.setup()
    await web.SockSite(runner, sock).start()
    print(f"READY {sock.getsockname()[1]}", flush=True)
    await asyncio.Event().wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0] if __doc__ else None)
    parser.add_argument("--port", type=int, default=0)
    asyncio.run(serve(parser.parse_args().port))


if __name__ == "__main__":
    main()
