"""The openapi transport end to end: a REST app on loopback (``tests/fakes/rest_app.py``) that
publishes its own OpenAPI 3.1 spec, served as MCP tools by a real agwd to the official ``mcp``
client in both eras, multiplexed on one route with an MCP server and a local spec file; usage
rows; credentials; a broken spec URL failing the service's start; a broken local spec refused
by the admin API; and the upstream itself against the app (call timeout, answer bound,
cancellation, an unreachable API, an apiKey header)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from mcp import Client
from mcp.shared.exceptions import MCPError

from agw.config.mcp import McpService
from agw.mcp.upstream import OpenApiUpstream, UpstreamError, create_upstream
from tests.support.agwd import AgwdLauncher, free_port
from tests.support.mcp import Gateway, start_gateway, sync
from tests.support.mcp_server import run_mcp_server
from tests.support.rest import RestApp, run_rest_app

PETSTORE = Path(__file__).resolve().parent.parent / "data" / "openapi" / "petstore.yaml"
REST_KEY = "sk-rest-upstream-7f3a"
SPEC_TOKEN = "spec-token-91b2"
BROKEN_AT = "#/paths/~1x/post/requestBody/content/application~1json/schema/$ref"
REST_TOOLS = {
    "createItem",
    "getItem",
    "deleteItem",
    "replaceItem",
    "sum",
    "whoami",
    "failing",
    "get_text",
    "listNumbers",
    "slow",
    "big",
}


@dataclass
class Api:
    gateway: Gateway
    rest: RestApp
    key: str = ""

    def url(self, prefix: str) -> str:
        return self.gateway.url(prefix)


@pytest.fixture(scope="module")
def api(
    module_agwd_factory: AgwdLauncher, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Api]:
    tmp = tmp_path_factory.mktemp("openapi")
    with contextlib.ExitStack() as stack:
        rest = stack.enter_context(run_rest_app(tmp))
        alpha = stack.enter_context(run_mcp_server(tmp, "streamable-http", "alpha"))
        services: list[dict[str, Any]] = [
            {"id": "rest", "name": "rest", "transport": "openapi",
             "spec": f"{rest.spec_url}?token={SPEC_TOKEN}",
             "auth": {"type": "bearer", "api_key": REST_KEY}},
            {"id": "pets", "name": "pets", "transport": "openapi", "spec": str(PETSTORE),
             "base_url": f"{rest.url}/api", "include": ["listPets", "showPetById"]},
            {"id": "broken", "name": "broken", "transport": "openapi",
             "spec": f"{rest.url}/openapi-broken.json"},
            alpha.service_config(),
        ]  # fmt: skip
        routes: dict[str, tuple[list[str], dict[str, Any]]] = {
            "/rest": (["rest"], {}),
            "/mix": (["rest", "alpha", "pets"], {"tool_policy": {"deny": ["rest_slow"]}}),
            "/keyed": (["rest"], {"auth_policy": {"require_virtual_key": True}}),
            "/broken": (["broken", "rest"], {}),
            "/failclosed": (["broken"], {"fail_closed": True}),
        }
        agwd = start_gateway(module_agwd_factory, tmp, services, routes)
        found = Api(Gateway(agwd, {"alpha": alpha}), rest)
        with agwd.client() as admin:
            r = admin.post("/admin/virtual_keys", json={"id": "vk-openapi"})
            assert r.status_code in (200, 201), r.text
            found.key = r.json()["key"]
        yield found


def text_of(result: Any) -> str:
    return str(result.content[0].text)


# ----------------------------------------------------------------------------- both eras


def test_rest_operations_are_tools_in_both_eras(api: Api) -> None:
    @sync
    async def case() -> None:
        for mode in ("auto", "legacy"):
            async with Client(api.url("/rest"), mode=mode) as client:
                tools = {t.name: t for t in (await client.list_tools()).tools}
                assert set(tools) == REST_TOOLS, mode
                get_item = tools["getItem"]
                assert get_item.title == "Read an item"
                assert get_item.input_schema["required"] == ["item_id"]
                assert set(get_item.input_schema["properties"]) == {
                    "item_id",
                    "verbose",
                    "tags",
                    "X-Trace-Tag",
                }
                await exercise(client)
                assert (await client.list_resources()).resources == []
                assert (await client.list_prompts()).prompts == []

    case()


async def exercise(client: Client) -> None:
    args = {"item_id": "a/b c", "verbose": True, "tags": ["x", "y"], "X-Trace-Tag": "t-1"}
    got = await client.call_tool("getItem", args)
    assert not got.is_error and got.structured_content is not None
    assert got.structured_content["raw_path"] == "/api/items/a%2Fb%20c?verbose=true&tags=x&tags=y"
    assert got.structured_content["item_id"] == "a/b c"
    assert got.structured_content["trace_tag"] == "t-1"
    assert json.loads(text_of(got)) == got.structured_content

    made = await client.call_tool(
        "createItem", {"name": "n", "owner": {"email": None}, "dry_run": True}
    )
    assert made.structured_content == {
        "created": {"name": "n", "owner": {"email": None}},
        "dry_run": "true",
    }
    swapped = await client.call_tool("replaceItem", {"id__path": "p-1", "id": "b-1", "name": "x"})
    assert swapped.structured_content == {"path_id": "p-1", "body": {"id": "b-1", "name": "x"}}
    total = await client.call_tool("sum", {"body": [1, 2, 3.5]})
    assert total.structured_content == {"sum": 6.5}

    failed = await client.call_tool("failing", {"status": 500})
    assert failed.is_error
    assert text_of(failed) == 'HTTP 500: {"error": "no such thing"}'
    assert failed.structured_content == {"status": 500, "body": {"error": "no such thing"}}

    plain = await client.call_tool("get_text", {})
    assert text_of(plain) == "plain words" and plain.structured_content is None
    listed = await client.call_tool("listNumbers", {})
    assert listed.structured_content == {"result": [1, 2, 3]}
    gone = await client.call_tool("deleteItem", {"item_id": "7"})
    assert not gone.is_error and text_of(gone) == "HTTP 204, no content"

    missing = await client.call_tool("getItem", {})
    assert missing.is_error and text_of(missing) == "missing required argument 'item_id'"
    with pytest.raises(MCPError) as info:
        await client.call_tool("nope", {})
    assert info.value.error.code == -32602


def test_the_service_credentials_go_up_the_callers_never(api: Api) -> None:
    @sync
    async def case() -> None:
        import httpx2

        headers = {"Authorization": f"Bearer {api.key}"}
        async with httpx2.AsyncClient(headers=headers, timeout=30) as http:
            from mcp.client.streamable_http import streamable_http_client

            transport = streamable_http_client(api.url("/keyed"), http_client=http)
            async with Client(transport, mode="legacy") as client:
                seen = (await client.call_tool("whoami", {})).structured_content
        assert seen is not None
        assert seen["authorization"] == f"Bearer {REST_KEY}"
        assert api.key not in json.dumps(seen)
        assert seen["user-agent"].startswith("agw/")
        assert "traceparent" in seen

    case()


# ---------------------------------------------------------------------------- multiplexing


def test_multiplexed_with_an_mcp_server_and_a_local_spec(api: Api) -> None:
    @sync
    async def case() -> None:
        async with Client(api.url("/mix"), mode="auto") as client:
            names = {t.name for t in (await client.list_tools()).tools}
            assert {"rest_getItem", "alpha_echo", "pets_listPets", "pets_showPetById"} <= names
            assert "pets_createPets" not in names  # not in the service's include
            assert "rest_slow" not in names  # the route's tool policy
            got = await client.call_tool("rest_getItem", {"item_id": "9"})
            assert got.structured_content is not None
            assert got.structured_content["item_id"] == "9"
            echo = await client.call_tool("alpha_echo", {"message": "hi"})
            assert text_of(echo) == "hi"
            # the petstore's base_url is the rest app, which has no pets: its 404, as a tool error
            pet = await client.call_tool("pets_showPetById", {"petId": "7"})
            assert pet.is_error and text_of(pet).startswith("HTTP 404: ")
            with pytest.raises(MCPError, match="denied by route policy"):
                await client.call_tool("rest_slow", {"seconds": 0})

    case()
    rows = api.gateway.rows("route_id = ? AND tool_name = ?", ("r-mix", "pets_showPetById"))
    assert rows[0]["service_id"] == "pets"
    assert rows[0]["executed_tool_name"] == "showPetById"
    assert rows[0]["result_status"] == "error"


def test_usage_rows(api: Api) -> None:
    @sync
    async def case() -> None:
        async with Client(api.url("/rest"), mode="legacy") as client:
            await client.call_tool("listNumbers", {})
            await client.call_tool("failing", {})

    case()
    ok = api.gateway.rows("route_id = ? AND tool_name = ?", ("r-rest", "listNumbers"))[-1]
    assert ok["service_id"] == "rest" and ok["method"] == "tools/call"
    assert ok["result_status"] != "error" and ok["success"] == 1
    bad = api.gateway.rows("route_id = ? AND tool_name = ?", ("r-rest", "failing"))[-1]
    assert bad["result_status"] == "error" and bad["executed_tool_name"] == "failing"


# --------------------------------------------------------------------------- broken specs


def test_a_broken_spec_url_fails_the_service_start(api: Api) -> None:
    agwd = api.gateway.agwd
    deadline = time.monotonic() + 10
    failed: list[dict[str, Any]] = []
    while not failed and time.monotonic() < deadline:
        failed = [
            e
            for e in agwd.log_events()
            if e.get("event") == "mcp_upstream_start_failed" and e.get("service_id") == "broken"
        ]
        time.sleep(0.05)
    assert failed, agwd.logs()[-3000:]
    assert BROKEN_AT in failed[0]["error"]
    assert "does not resolve" in failed[0]["error"]

    @sync
    async def case() -> None:
        async with Client(api.url("/broken"), mode="auto") as client:  # fail open: skipped
            names = {t.name for t in (await client.list_tools()).tools}
            assert names == {f"rest_{t}" for t in REST_TOOLS}
        async with Client(api.url("/failclosed"), mode="legacy") as client:
            with pytest.raises(MCPError) as info:
                await client.list_tools()
            assert BROKEN_AT in info.value.error.message

    case()
    with agwd.client() as admin:
        session = admin.get("/admin/mcp/services/broken/sessions").json()["session"]
    assert session["id"] == "openapi:broken" and session["state"] == "error"
    assert BROKEN_AT in session["last_error"]


def test_a_broken_local_spec_is_refused_by_the_admin_api(api: Api, tmp_path: Path) -> None:
    spec = tmp_path / "cycle.yaml"
    spec.write_text(
        "openapi: 3.0.3\ninfo: {title: t, version: '1'}\n"
        "paths:\n  /a:\n    get:\n      parameters:\n"
        "        - {name: q, in: query, schema: {$ref: '#/components/schemas/A'}}\n"
        "      responses: {'200': {description: ok}}\n"
        "components:\n  schemas:\n"
        "    A: {$ref: '#/components/schemas/B'}\n    B: {$ref: '#/components/schemas/A'}\n"
    )
    body = {"id": "cyc", "name": "cyc", "transport": "openapi", "spec": str(spec)}
    with api.gateway.agwd.client() as admin:
        r = admin.post("/admin/mcp/services", json=body)
        assert r.status_code == 400, r.text
        assert "$ref cycle: #/components/schemas/A -> #/components/schemas/B" in r.json()["error"]
        assert admin.get("/admin/mcp/services/cyc").status_code == 404


# ----------------------------------------------------------------------------------- admin


def test_admin_views_redact_and_admin_calls_work(api: Api) -> None:
    with api.gateway.agwd.client() as admin:
        shown = admin.get("/admin/mcp/services/rest").json()
        assert shown["spec"].endswith("?token=<redacted>")
        assert shown["auth"]["api_key"] == "<redacted>"
        r = admin.post(
            "/admin/mcp/services/rest/tools/call", json={"name": "sum", "arguments": {"body": [2]}}
        )
        assert r.status_code == 200 and r.json()["structuredContent"] == {"sum": 2}
        r = admin.get("/admin/mcp/services/rest/resources")
        assert r.status_code == 502
        assert "-32601" in r.json()["error"]
    logs = api.gateway.agwd.logs()
    assert REST_KEY not in logs and SPEC_TOKEN not in logs


# ------------------------------------------------------------------------ the upstream itself


def upstream(rest: RestApp, **fields: Any) -> OpenApiUpstream:
    config = {"id": "direct", "name": "direct", "transport": "openapi", "spec": rest.spec_url}
    up = create_upstream(McpService.model_validate(config | fields))
    assert isinstance(up, OpenApiUpstream)
    return up


async def call(up: OpenApiUpstream, name: str, timeout: float = 10, **args: Any) -> Any:  # noqa: ASYNC109
    return await up.request("tools/call", {"name": name, "arguments": args}, timeout=timeout)


def test_call_timeout_answer_bound_and_cancellation(api: Api) -> None:
    @sync
    async def case() -> None:
        up = upstream(api.rest)
        try:
            init = await up.ensure_ready()
            assert init["serverInfo"] == {"name": "Fake REST", "version": "1.2.3"}
            assert init["capabilities"] == {"tools": {}}
            began = time.monotonic()
            with pytest.raises(UpstreamError, match=r"did not answer slow within 0\.3s"):
                await call(up, "slow", timeout=0.3, seconds=5)
            assert time.monotonic() - began < 3
            big = await call(up, "big", mib=9)
            assert big["isError"] and "over the 8 MiB limit" in big["content"][0]["text"]
            task = asyncio.create_task(call(up, "slow", seconds=5))
            await asyncio.sleep(0.2)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert (await call(up, "listNumbers"))["structuredContent"] == {"result": [1, 2, 3]}
            with pytest.raises(Exception, match="Method not found: prompts/list"):
                await up.request("prompts/list")
        finally:
            await up.close()
        assert up.state == "closed"

    case()


def test_unreachable_api_and_spec(api: Api) -> None:
    @sync
    async def case() -> None:
        nowhere = f"http://127.0.0.1:{free_port()}"
        up = upstream(api.rest, base_url=f"{nowhere}/api")
        try:
            await up.ensure_ready()
            with pytest.raises(UpstreamError, match="mcp service direct unreachable"):
                await call(up, "listNumbers")
        finally:
            await up.close()
        up = upstream(api.rest, spec=f"{nowhere}/openapi.json")
        with pytest.raises(UpstreamError, match=r"spec http://127\.0\.0\.1:\d+/openapi.json"):
            await up.ensure_ready()
        assert up.state == "error" and up.last_error is not None
        await up.close()

    case()


def test_api_key_goes_where_the_spec_says(api: Api, tmp_path: Path) -> None:
    spec = tmp_path / "keyed.json"
    spec.write_text(
        json.dumps(
            {
                "openapi": "3.1.0",
                "info": {"title": "keyed", "version": "1"},
                "paths": {"/whoami": {"get": {"operationId": "whoami", "responses": {"200": {}}}}},
                "components": {
                    "securitySchemes": {
                        "key": {"type": "apiKey", "in": "header", "name": "X-Api-Key"}
                    }
                },
            }
        )
    )

    @sync
    async def case() -> None:
        up = upstream(
            api.rest,
            spec=str(spec),
            base_url=f"{api.rest.url}/api",
            auth={"type": "api_key", "api_key": "k-123"},
        )
        try:
            seen = (await call(up, "whoami"))["structuredContent"]
        finally:
            await up.close()
        assert seen["x-api-key"] == "k-123" and "authorization" not in seen

    case()
