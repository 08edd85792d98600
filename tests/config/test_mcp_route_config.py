"""MCP route bundle fields of the multiplexer: one service or several, prefix mode, fail-closed,
tool policy; every mistake reported with its path."""

from __future__ import annotations

import pytest

from agw.config.loader import load_bundle_text
from agw.errors import ConfigInvalid

HEAD = "apiVersion: gateway.agw/v1alpha1\nkind: GatewayBundle\n"
SERVICES = (
    "mcpServices:\n"
    "  - {id: time, name: time, transport: stdio, command: mcp-server-time}\n"
    "  - {id: docs, name: docs, transport: streamable_http, url: 'http://127.0.0.1:9/mcp'}\n"
)


def problems(text: str) -> list[str]:
    with pytest.raises(ConfigInvalid) as info:
        load_bundle_text(HEAD + text, {})
    return [str(p) for p in info.value.problems]


def test_a_route_can_multiplex_several_services() -> None:
    b = load_bundle_text(
        HEAD + SERVICES + "mcpRoutes:\n"
        "  - service_ids: [time, docs, time]\n"
        "    match_policy: {path_prefix: /mcp}\n"
        "    fail_closed: true\n"
        "    tool_policy: {allow: ['time_*', 'docs_*'], deny: [docs_delete*]}\n",
        {},
    )
    (route,) = b.mcpRoutes
    assert route.id == "mcp:time+docs:mcp"
    assert route.services == ["time", "docs"]  # de-duplicated, in order
    assert route.effective_prefix_mode == "always"
    assert route.fail_closed is True
    assert route.tool_policy.deny == ["docs_delete*"]


def test_one_service_defaults_to_no_prefix_and_modes_are_kept() -> None:
    b = load_bundle_text(
        HEAD + SERVICES + "mcpRoutes:\n"
        "  - {service_id: time, match_policy: {path_prefix: /t}}\n"
        "  - {service_ids: [time, docs], prefix_mode: conditional,"
        " match_policy: {path_prefix: /c}}\n",
        {},
    )
    single, multi = b.mcpRoutes
    assert single.services == ["time"] and single.effective_prefix_mode == "never"
    assert multi.effective_prefix_mode == "conditional"


def test_service_id_and_service_ids_together_is_an_error() -> None:
    (msg,) = problems(
        SERVICES + "mcpRoutes:\n"
        "  - {service_id: time, service_ids: [docs], match_policy: {path_prefix: /x}}\n"
    )
    assert msg.startswith("mcpRoutes[0]") and "service_id or service_ids, not both" in msg


def test_a_route_needs_a_service() -> None:
    (msg,) = problems(SERVICES + "mcpRoutes:\n  - {match_policy: {path_prefix: /x}}\n")
    assert "service_id or service_ids is required" in msg


def test_every_dangling_service_is_named() -> None:
    msgs = problems(
        SERVICES + "mcpRoutes:\n"
        "  - {id: r, service_ids: [time, ghost, phantom], match_policy: {path_prefix: /x}}\n"
    )
    joined = "\n".join(msgs)
    assert "service_ids[1]" in joined and "'ghost' does not exist" in joined
    assert "service_ids[2]" in joined and "'phantom' does not exist" in joined
    assert len(msgs) == 2


def test_unknown_prefix_mode_is_refused() -> None:
    (msg,) = problems(
        SERVICES + "mcpRoutes:\n"
        "  - {service_ids: [time], prefix_mode: sometimes, match_policy: {path_prefix: /x}}\n"
    )
    assert "prefix_mode" in msg and "sometimes" in msg


def test_tool_policy_is_strict() -> None:
    (msg,) = problems(
        SERVICES + "mcpRoutes:\n"
        "  - {service_id: time, tool_policy: {alow: [x]}, match_policy: {path_prefix: /x}}\n"
    )
    assert "tool_policy.alow" in msg and "did you mean allow" in msg
