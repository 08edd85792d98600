"""The multiplexer on its own: presented names, cursors, URI namespacing, tool policy, and list
merging / fail-open over an in-memory backend (a second implementation of the Backend protocol,
not a patch of the gateway's own)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import re
from collections.abc import Callable, Coroutine
from typing import Any

import pytest

from agw.config.mcp import McpRoute
from agw.mcp.jsonrpc import INVALID_PARAMS, METHOD_NOT_FOUND, UPSTREAM_FAILED, RpcError
from agw.mcp.mux import (
    Multiplexer,
    NameMap,
    cut,
    decode_cursor,
    encode_cursor,
    namespace_uri,
    present_names,
    rewrite_content_uris,
    split_uri,
    tool_allowed,
)
from agw.mcp.upstream import UpstreamError
from agw.types import JsonObj

VALID = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


def sync(case: Callable[[], Coroutine[Any, Any, None]]) -> Callable[[], None]:
    """A test body that needs an event loop, run in a fresh one."""

    def run() -> None:
        asyncio.run(case())

    return run


def route(services: list[str], **kw: Any) -> McpRoute:
    body: dict[str, Any] = {"match_policy": {"path_prefix": "/mcp"}, **kw}
    if len(services) == 1:
        body["service_id"] = services[0]
    else:
        body["service_ids"] = services
    return McpRoute.model_validate(body)


# ------------------------------------------------------------------------------------ names


def test_always_prefixes_every_name() -> None:
    names = present_names([("time", "get_current_time"), ("alpha", "echo")], "always")
    assert names == {
        ("time", "get_current_time"): "time_get_current_time",
        ("alpha", "echo"): "alpha_echo",
    }


def test_never_keeps_names_and_cuts_every_claimant_of_a_collision() -> None:
    names = present_names([("a", "echo"), ("b", "echo"), ("a", "add")], "never")
    assert names[("a", "add")] == "add"
    assert names[("a", "echo")] == cut("echo", "a", "echo")
    assert names[("b", "echo")] == cut("echo", "b", "echo")
    assert names[("a", "echo")] != names[("b", "echo")]
    digest = hashlib.sha256(b"a/echo").hexdigest()[:8]
    assert names[("a", "echo")] == f"echo_{digest}"


def test_conditional_prefixes_only_colliding_names() -> None:
    names = present_names([("a", "echo"), ("b", "echo"), ("a", "add"), ("b", "sub")], "conditional")
    assert names == {
        ("a", "echo"): "a_echo",
        ("b", "echo"): "b_echo",
        ("a", "add"): "add",
        ("b", "sub"): "sub",
    }


def test_conditional_prefix_that_collides_again_is_cut() -> None:
    # "a_echo" is both service b's own tool and a's prefixed "echo"
    entries = [("a", "echo"), ("b", "echo"), ("b", "a_echo")]
    names = present_names(entries, "conditional")
    assert names[("b", "echo")] == "b_echo"
    assert names[("a", "echo")] == cut("a_echo", "a", "echo")
    assert names[("b", "a_echo")] == cut("a_echo", "b", "a_echo")
    assert len(set(names.values())) == 3


def test_bad_characters_and_long_names_become_valid_and_stay_deterministic() -> None:
    long = "x" * 80
    entries = [("svc", "get weather/now"), ("svc", long), ("svc", "ünï"), ("svc", "")]
    first = present_names(entries, "always")
    again = present_names(list(reversed(entries)), "always")
    assert first == again
    assert first[("svc", "get weather/now")] == "svc_get_weather_now"
    assert first[("svc", long)] == cut("svc_" + long, "svc", long)
    assert len(first[("svc", long)]) == 64
    assert first[("svc", "ünï")] == "svc__n_"
    assert all(VALID.match(n) for n in first.values()), first
    assert len(set(first.values())) == len(first)


def test_sanitising_collision_inside_one_service_is_cut() -> None:
    names = present_names([("s", "a b"), ("s", "a_b")], "never")
    assert names[("s", "a b")] != names[("s", "a_b")]
    assert all(VALID.match(n) for n in names.values())


def test_name_map_is_two_way() -> None:
    nm = NameMap.build(route(["a", "b"]), [("a", "x"), ("b", "y")])
    assert nm.forward == {"a_x": ("a", "x"), "b_y": ("b", "y")}
    assert nm.backward[("b", "y")] == "b_y"


def test_prefix_mode_defaults_by_service_count() -> None:
    assert route(["a"]).effective_prefix_mode == "never"
    assert route(["a", "b"]).effective_prefix_mode == "always"
    assert route(["a", "b"], prefix_mode="conditional").effective_prefix_mode == "conditional"


# --------------------------------------------------------------------------------- policies


def test_tool_policy_deny_wins_and_empty_allow_allows_all() -> None:
    r = route(["a", "b"], tool_policy={"allow": ["a_*", "b_read*"], "deny": ["a_delete*"]})
    assert tool_allowed(r, "a_echo")
    assert tool_allowed(r, "b_read_file")
    assert not tool_allowed(r, "b_write_file")
    assert not tool_allowed(r, "a_delete_all")
    open_route = route(["a"], tool_policy={"deny": ["rm"]})
    assert tool_allowed(open_route, "anything") and not tool_allowed(open_route, "rm")
    assert not tool_allowed(route(["a"], tool_policy={"allow": ["A_*"]}), "a_x")  # case-sensitive


# ---------------------------------------------------------------------------------- cursors


def test_cursor_round_trip_and_shape() -> None:
    text = encode_cursor(1, "abc")
    assert "=" not in text
    raw = json.loads(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))
    assert raw == {"s": 1, "c": "abc", "v": 1}
    assert decode_cursor(text, 2) == (1, "abc")
    assert decode_cursor(encode_cursor(0, None), 1) == (0, None)


def _b64(obj: Any) -> str:
    return base64.urlsafe_b64encode(json.dumps(obj).encode()).decode()


@pytest.mark.parametrize(
    "cursor",
    [
        "",
        "not base64 !!",
        _b64([1, 2]),
        _b64({"s": 0, "c": None}),  # no version
        _b64({"s": 0, "c": None, "v": 2}),
        _b64({"s": 5, "c": None, "v": 1}),  # past the last service
        _b64({"s": -1, "c": None, "v": 1}),
        _b64({"s": True, "c": None, "v": 1}),
        _b64({"s": 0, "c": 7, "v": 1}),
        base64.urlsafe_b64encode(b"\xff\xfe").decode(),
        12,
        None,
    ],
)
def test_bad_cursor_is_invalid_params(cursor: Any) -> None:
    with pytest.raises(RpcError) as info:
        decode_cursor(cursor, 2)
    assert info.value.code == INVALID_PARAMS and info.value.message == "invalid cursor"


# ------------------------------------------------------------------------------------- URIs


def test_uri_namespacing_round_trip() -> None:
    uri = "file:///tmp/a b/ü?x=1#f"
    ns = namespace_uri("alpha", uri)
    assert ns.startswith("agw://alpha/") and "/" not in ns[len("agw://alpha/") :]
    assert split_uri(ns) == ("alpha", uri)
    assert split_uri("res://alpha/readme") is None
    assert split_uri("agw://alpha") is None


def test_template_keeps_its_variables_expandable() -> None:
    ns = namespace_uri("alpha", "res://alpha/items/{item}", template=True)
    assert ns == "agw://alpha/res%3A%2F%2Falpha%2Fitems%2F{item}"
    expanded = ns.replace("{item}", "42")
    assert split_uri(expanded) == ("alpha", "res://alpha/items/42")


def test_content_uris_are_rewritten() -> None:
    result = {
        "content": [
            {"type": "resource_link", "uri": "res://a/x", "name": "x"},
            {"type": "resource", "resource": {"uri": "res://a/y", "text": "t"}},
            {"type": "text", "text": "uri"},
        ],
        "structuredContent": {"uri": "kept"},
    }
    out = rewrite_content_uris(result, "a")
    assert out["content"][0]["uri"] == namespace_uri("a", "res://a/x")
    assert out["content"][1]["resource"]["uri"] == namespace_uri("a", "res://a/y")
    assert out["content"][2] == {"type": "text", "text": "uri"}
    assert out["structuredContent"] == {"uri": "kept"}


# ------------------------------------------------------------------- the multiplexer itself


class Memory:
    """Services as lists in memory; a list call answers ``page`` items at a time."""

    def __init__(self, lists: dict[str, dict[str, list[JsonObj]]], page: int = 0) -> None:
        self.lists = lists
        self.page = page
        self.down: set[str] = set()
        self.caps: dict[str, JsonObj] = {}
        self.calls: list[tuple[str, str, JsonObj | None]] = []
        self.failures: list[tuple[str, str, str]] = []

    async def capabilities(self, service_id: str) -> JsonObj:
        if service_id in self.down:
            raise UpstreamError(f"mcp service {service_id} unreachable: refused")
        return self.caps.get(service_id, {"tools": {}, "prompts": {}, "resources": {}})

    async def request(self, service_id: str, method: str, params: JsonObj | None) -> Any:
        self.calls.append((service_id, method, params))
        await asyncio.sleep(0)
        key = {
            "tools/list": "tools",
            "prompts/list": "prompts",
            "resources/list": "resources",
            "resources/templates/list": "resourceTemplates",
        }[method]
        if key not in self.lists[service_id]:
            raise RpcError(METHOD_NOT_FOUND, "Method not found")
        items = self.lists[service_id][key]
        cursor = (params or {}).get("cursor")
        if cursor is not None and not str(cursor).isdigit():
            raise RpcError(INVALID_PARAMS, "bad cursor")
        start = int(cursor or 0)
        size = self.page or len(items) or 1
        out: JsonObj = {key: items[start : start + size]}
        if start + size < len(items):
            out["nextCursor"] = str(start + size)
        return out

    def failed(self, service_id: str, method: str, error: str) -> None:
        self.failures.append((service_id, method, error))


def tools(*names: str) -> list[JsonObj]:
    return [{"name": n, "inputSchema": {"type": "object"}} for n in names]


def mux_of(r: McpRoute, backend: Memory) -> Multiplexer:
    return Multiplexer(r, backend, {}, {})


async def walk(mux: Multiplexer, method: str, key: str) -> tuple[list[JsonObj], int]:
    out: list[JsonObj] = []
    cursor = None
    for pages in range(1, 50):
        page = await mux.list_page(method, cursor)
        out += page[key]
        cursor = page.get("nextCursor")
        if cursor is None:
            return out, pages
    raise AssertionError("pagination did not end")


@sync
async def test_unpaginated_services_merge_into_one_page() -> None:
    backend = Memory({"a": {"tools": tools("x", "y")}, "b": {"tools": tools("z")}})
    page = await mux_of(route(["a", "b"]), backend).list_page("tools/list", None)
    assert [t["name"] for t in page["tools"]] == ["a_x", "a_y", "b_z"]
    assert "nextCursor" not in page


@sync
async def test_pagination_walks_every_service_in_route_order() -> None:
    backend = Memory(
        {"a": {"tools": tools("a1", "a2", "a3")}, "b": {"tools": tools("b1")},
         "c": {"tools": tools("c1", "c2", "c3", "c4")}},
        page=2,
    )  # fmt: skip
    mux = mux_of(route(["a", "b", "c"]), backend)
    items, pages = await walk(mux, "tools/list", "tools")
    assert [t["name"] for t in items] == [
        "a_a1", "a_a2", "a_a3", "b_b1", "c_c1", "c_c2", "c_c3", "c_c4",
    ]  # fmt: skip
    assert pages == 3  # [a1 a2] [a3 b1 c1 c2] [c3 c4]


@sync
async def test_upstream_cursor_travels_inside_the_composite_cursor() -> None:
    backend = Memory({"a": {"tools": tools("1", "2", "3")}, "b": {"tools": tools("4")}}, page=2)
    mux = mux_of(route(["a", "b"]), backend)
    first = await mux.list_page("tools/list", None)
    assert decode_cursor(first["nextCursor"], 2) == (0, "2")
    second = await mux.list_page("tools/list", first["nextCursor"])
    assert ("a", "tools/list", {"cursor": "2"}) in backend.calls
    assert [t["name"] for t in second["tools"]] == ["a_3", "b_4"]


@sync
async def test_stale_upstream_cursor_is_invalid_cursor() -> None:
    mux = mux_of(route(["a", "b"]), Memory({"a": {"tools": tools("1")}, "b": {"tools": []}}))
    with pytest.raises(RpcError) as info:
        await mux.list_page("tools/list", encode_cursor(0, "garbage"))
    assert info.value.code == INVALID_PARAMS and info.value.message == "invalid cursor"


@sync
async def test_fail_open_skips_a_down_service_and_reports_it() -> None:
    backend = Memory({"a": {"tools": tools("x")}, "b": {"tools": tools("y")}})
    backend.down.add("a")
    page = await mux_of(route(["a", "b"]), backend).list_page("tools/list", None)
    assert [t["name"] for t in page["tools"]] == ["b_y"]
    assert backend.failures and backend.failures[0][:2] == ("a", "tools/list")
    assert "unreachable" in backend.failures[0][2]


@sync
async def test_fail_closed_fails_the_call_naming_the_service() -> None:
    backend = Memory({"a": {"tools": tools("x")}, "b": {"tools": tools("y")}})
    backend.down.add("b")
    with pytest.raises(RpcError) as info:
        await mux_of(route(["a", "b"], fail_closed=True), backend).list_page("tools/list", None)
    assert info.value.code == UPSTREAM_FAILED
    assert info.value.message.startswith("mcp service b failed: ")


@sync
async def test_service_without_the_capability_or_method_is_empty_not_a_failure() -> None:
    backend = Memory({"a": {"tools": tools("x")}, "b": {"tools": tools("y")}})
    backend.caps["a"] = {"tools": {}}  # no prompts
    page = await mux_of(route(["a", "b"]), backend).list_page("prompts/list", None)
    assert page == {"prompts": []}
    assert backend.failures == []
    assert not any(c[0] == "a" and c[1] == "prompts/list" for c in backend.calls)


@sync
async def test_denied_tools_are_absent_from_lists() -> None:
    backend = Memory({"a": {"tools": tools("read", "delete")}, "b": {"tools": tools("x")}})
    r = route(["a", "b"], tool_policy={"deny": ["*_delete"]})
    page = await mux_of(r, backend).list_page("tools/list", None)
    assert [t["name"] for t in page["tools"]] == ["a_read", "b_x"]


@sync
async def test_resources_are_namespaced_only_with_several_services() -> None:
    lists = {
        "a": {"resources": [{"uri": "res://a/readme", "name": "readme"}],
              "resourceTemplates": [{"uriTemplate": "res://a/items/{item}", "name": "item"}]},
        "b": {"resources": [{"uri": "res://b/readme", "name": "readme"}]},
    }  # fmt: skip
    multi = mux_of(route(["a", "b"]), Memory(lists))
    page = await multi.list_page("resources/list", None)
    assert [r["uri"] for r in page["resources"]] == [
        namespace_uri("a", "res://a/readme"),
        namespace_uri("b", "res://b/readme"),
    ]
    templates = await multi.list_page("resources/templates/list", None)
    assert templates["resourceTemplates"] == [
        {"uriTemplate": "agw://a/res%3A%2F%2Fa%2Fitems%2F{item}", "name": "item"}
    ]  # b answers -32601 for templates: empty, not a failure
    assert multi.owner_of_uri(namespace_uri("b", "res://b/readme")) == ("b", "res://b/readme")
    with pytest.raises(RpcError) as info:
        multi.owner_of_uri("res://b/readme")
    assert info.value.code == -32002
    with pytest.raises(RpcError):
        multi.owner_of_uri(namespace_uri("zzz", "res://b/readme"))
    single = mux_of(route(["a"]), Memory(lists))
    page = await single.list_page("resources/list", None)
    assert [r["uri"] for r in page["resources"]] == ["res://a/readme"]
    assert single.owner_of_uri("res://a/readme") == ("a", "res://a/readme")


@sync
async def test_resolve_refreshes_the_map_once_for_an_unknown_name() -> None:
    lists = {"a": {"tools": tools("x")}, "b": {"tools": tools("y")}}
    backend = Memory(lists)
    names: dict[str, NameMap] = {}
    mux = Multiplexer(route(["a", "b"]), backend, names, {})
    assert await mux.resolve("tools", "a_x") == ("a", "x")
    lists["b"]["tools"] = tools("y", "new")
    assert await mux.resolve("tools", "b_new") == ("b", "new")  # refreshed
    before = len(backend.calls)
    assert await mux.resolve("tools", "nope") is None
    assert len(backend.calls) - before == 2  # one full read of each service, not more
    # the map is shared through ``names``: another multiplexer of the route reuses it
    other = Multiplexer(mux.route, backend, names, {})
    before = len(backend.calls)
    assert await other.resolve("tools", "a_x") == ("a", "x")
    assert len(backend.calls) == before


@sync
async def test_concurrent_map_builds_share_one_read() -> None:
    backend = Memory({"a": {"tools": tools("x")}, "b": {"tools": tools("y")}})
    names: dict[str, NameMap] = {}
    locks: dict[str, asyncio.Lock] = {}
    muxes = [Multiplexer(route(["a", "b"]), backend, names, locks) for _ in range(5)]
    r = muxes[0].route
    for m in muxes:
        m.route = r
    found = await asyncio.gather(*(m.resolve("tools", "b_y") for m in muxes))
    assert found == [("b", "y")] * 5
    assert len(backend.calls) == 2


@sync
async def test_a_changed_route_rebuilds_its_map() -> None:
    backend = Memory({"a": {"tools": tools("x")}, "b": {"tools": tools("x")}})
    names: dict[str, NameMap] = {}
    always = Multiplexer(route(["a", "b"]), backend, names, {})
    assert await always.resolve("tools", "a_x") == ("a", "x")
    conditional = Multiplexer(route(["a", "b"], prefix_mode="never"), backend, names, {})
    assert await conditional.resolve("tools", "a_x") is None
    assert await conditional.resolve("tools", cut("x", "b", "x")) == ("b", "x")
