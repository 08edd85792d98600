"""W3C trace context across the MCP plane: an MCP server behind agw (streamable HTTP and legacy
SSE) receives ``traceparent`` with the client request's trace and the gateway's span as the
parent, exactly the ``traceparent`` agw answered the client with; the long-lived GET streams,
opened for no single request, carry none."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.support.agwd import AgwdLauncher
from tests.support.mcp import Gateway, initialize, post, rpc, start_gateway
from tests.support.mcp_server import run_mcp_server

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN = "00f067aa0ba902b7"
ROUTES: dict[str, tuple[list[str], dict[str, Any]]] = {
    "/a": (["alpha"], {}),
    "/b": (["beta"], {}),
}


@pytest.fixture(scope="module")
def gw(
    module_agwd_factory: AgwdLauncher, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Gateway]:
    tmp = tmp_path_factory.mktemp("mcp-traceparent")
    with contextlib.ExitStack() as stack:
        alpha = stack.enter_context(run_mcp_server(tmp, "streamable-http", "alpha"))
        beta = stack.enter_context(run_mcp_server(tmp, "sse", "beta"))
        services = [alpha.service_config(), beta.service_config()]
        agwd = start_gateway(module_agwd_factory, tmp, services, ROUTES)
        yield Gateway(agwd, {"alpha": alpha, "beta": beta})


def call_echo(http: httpx.Client, path: str, message: str) -> httpx.Response:
    """initialize, tools/list, tools/call echo through agw, every request traced by the caller;
    the tools/call answer."""
    traced = {"traceparent": f"00-{TRACE}-{CALLER_SPAN}-01"}
    sid, _ = initialize(http, path, headers=traced)
    version = "2025-11-25"
    r = post(http, path, rpc("tools/list"), session=sid, version=version, headers=traced)
    assert r.status_code == 200, r.text
    (echo,) = [t["name"] for t in r.json()["result"]["tools"] if t["name"].endswith("echo")]
    params = {"name": echo, "arguments": {"message": message}}
    r = post(http, path, rpc("tools/call", params, 2), session=sid, version=version, headers=traced)
    assert r.status_code == 200, r.text
    assert message in r.text
    return r


@pytest.mark.parametrize(("path", "server"), [("/a", "alpha"), ("/b", "beta")])
def test_upstream_sees_the_request_traceparent(gw: Gateway, path: str, server: str) -> None:
    message = f"traced through {server}"
    with httpx.Client(base_url=gw.agwd.data_url, timeout=30, trust_env=False) as http:
        answer = call_echo(http, path, message)
    answered = answer.headers["traceparent"]
    version, trace, span, flags = answered.split("-")
    assert (version, trace, flags) == ("00", TRACE, "01") and span != CALLER_SPAN
    assert answer.headers["x-span-id"] == span

    http_events = gw.servers[server].events("http")
    (call,) = [
        e
        for e in http_events
        if e["method"] == "POST"
        and isinstance(e["body"], dict)
        and e["body"].get("method") == "tools/call"
        and message in str(e["body"])
    ]
    # the upstream call is a child of the gateway's span, in the caller's trace
    assert call["headers"]["traceparent"] == answered
    for event in http_events:
        if event["method"] == "GET":  # the session's stream belongs to no request
            assert "traceparent" not in event["headers"], event
        elif "traceparent" in event["headers"]:
            assert event["headers"]["traceparent"].split("-")[1] == TRACE

    (row,) = gw.rows(
        "trace_id = ? AND method = 'tools/call' AND route_id = ?",
        (TRACE, "r" + path.replace("/", "-")),
    )
    assert row["span_id"] == span and row["parent_span_id"] == CALLER_SPAN
