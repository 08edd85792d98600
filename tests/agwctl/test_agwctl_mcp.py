"""agwctl gateway mcp-service discovery/call commands, mcp-route and mcp-runtime, against a real
agwd whose MCP services are the fake MCP server (``tests/fakes/mcp_server.py``) spawned over
stdio by the gateway itself.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.agwctl import Agwctl, assert_one_line_error
from tests.support.mcp_server import SCRIPT

REPO = Path(__file__).resolve().parents[2]
FAKE = [str(SCRIPT), "--transport", "stdio"]
FAKE_TOOLS = [
    "echo",
    "add",
    "slow",
    "fail",
    "whoami",
    "log",
    "ask",
    "change_tools",
    "crash",
    "chatter",
    "misbehave",
]


def bundle_yaml(python: str) -> str:
    def fake(sid: str, *extra: str) -> str:
        args = json.dumps([*FAKE, "--name", sid, *extra])
        return f"  - id: {sid}\n    name: fake {sid}\n    transport: stdio\n" + (
            f"    command: {json.dumps(python)}\n    args: {args}\n"
        )

    return (
        "apiVersion: gateway.agw/v1alpha1\nkind: GatewayBundle\n"
        "mcpServices:\n" + fake("st") + fake("paged", "--page-size", "2") + "mcpRoutes:\n"
        "  - id: tools-mx\n"
        "    service_ids: [st, paged]\n"
        "    match_policy:\n"
        "      path_prefix: /mx\n"
    )


@pytest.fixture(scope="module")
def ctl(module_agwd: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Agwctl]:
    cwd = tmp_path_factory.mktemp("cwd")
    path = cwd / "mcp.yaml"
    path.write_text(bundle_yaml(sys.executable))
    ctl = Agwctl(module_agwd.env, cwd)
    ctl.ok("gateway", "apply", "-f", str(path))
    yield ctl


def rows(text: str) -> list[list[str]]:
    return [line.split() for line in text.splitlines()]


def first_column(text: str) -> list[str]:
    return [row[0] for row in rows(text)[1:]]


def test_tools_table_and_json(ctl: Agwctl) -> None:
    out = ctl.ok("gateway", "mcp-service", "tools", "st")
    assert rows(out)[0] == ["NAME", "DESCRIPTION"]
    assert first_column(out) == FAKE_TOOLS
    assert not any(line != line.rstrip() for line in out.splitlines())
    data = json.loads(ctl.ok("gateway", "mcp-service", "tools", "st", "-o", "json"))
    assert [t["name"] for t in data["items"]] == FAKE_TOOLS
    assert "inputSchema" in data["items"][0]


def test_tools_pages_with_cursor(ctl: Agwctl) -> None:
    proc = ctl("gateway", "mcp-service", "tools", "paged")
    assert proc.returncode == 0, proc.stderr
    assert first_column(proc.stdout) == FAKE_TOOLS[:2]
    match = re.fullmatch(r"more: --cursor (\S+)\n", proc.stderr)
    assert match, proc.stderr
    names = first_column(proc.stdout)
    cursor: str | None = match.group(1)
    for _ in range(10):
        if cursor is None:
            break
        page = json.loads(
            ctl.ok("gateway", "mcp-service", "tools", "paged", "--cursor", cursor, "-o", "json")
        )
        names += [t["name"] for t in page["items"]]
        cursor = page.get("next_cursor")
    assert names == FAKE_TOOLS


def test_tool_call_prints_the_result(ctl: Agwctl) -> None:
    out = ctl.ok(
        "gateway", "mcp-service", "tool-call", "st", "echo", "--arguments", '{"message": "hi"}'
    )
    assert out.startswith("{\n  ")
    result = json.loads(out)
    assert result["content"][0]["text"] == "hi"
    failed = json.loads(
        ctl.ok(
            "gateway", "mcp-service", "tool-call", "st", "fail", "--arguments", '{"message": "x"}'
        )
    )
    assert failed["isError"] is True


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ("[1, 2]", "--arguments must be a JSON object, not list"),
        ("{nope", "--arguments is not valid JSON: "),
    ],
)
def test_tool_call_with_bad_arguments_is_one_line(
    ctl: Agwctl, arguments: str, message: str
) -> None:
    proc = ctl("gateway", "mcp-service", "tool-call", "st", "echo", "--arguments", arguments)
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr.startswith(f"agwctl: {message}") and proc.stderr.count("\n") == 1


def test_capabilities_and_session(ctl: Agwctl) -> None:
    caps = json.loads(ctl.ok("gateway", "mcp-service", "capabilities", "st"))
    assert caps["serverInfo"]["name"] == "st"
    session = json.loads(ctl.ok("gateway", "mcp-service", "session", "st"))["session"]
    assert session["service_id"] == "st"
    assert session["transport"] == "stdio"
    assert session["state"] == "ready"


def test_resources_templates_read(ctl: Agwctl) -> None:
    out = ctl.ok("gateway", "mcp-service", "resources", "st")
    assert rows(out)[0] == ["URI", "NAME", "MIME-TYPE"]
    assert set(first_column(out)) == {"res://st/readme", "res://st/changelog"}
    templates = ctl.ok("gateway", "mcp-service", "resource-templates", "st")
    assert rows(templates)[0] == ["URI-TEMPLATE", "NAME", "MIME-TYPE"]
    assert first_column(templates) == ["res://st/items/{item}"]
    read = json.loads(ctl.ok("gateway", "mcp-service", "resource-read", "st", "res://st/readme"))
    assert read["contents"][0]["uri"] == "res://st/readme"


def test_prompts_and_prompt_get(ctl: Agwctl) -> None:
    out = ctl.ok("gateway", "mcp-service", "prompts", "st")
    assert rows(out)[0] == ["NAME", "ARGUMENTS", "DESCRIPTION"]
    assert rows(out)[1][:2] == ["greet", "name"]
    got = json.loads(
        ctl.ok(
            "gateway", "mcp-service", "prompt-get", "st", "greet", "--arguments", '{"name": "Ada"}'
        )
    )
    assert "Ada" in json.dumps(got["messages"])


def test_unknown_service_is_one_line(ctl: Agwctl) -> None:
    assert_one_line_error(
        ctl("gateway", "mcp-service", "tools", "nope"),
        "GET /admin/mcp/services/nope/tools: 404 mcp service not found",
    )
    assert_one_line_error(
        ctl("gateway", "mcp-service", "tool-call", "nope", "echo"),
        "POST /admin/mcp/services/nope/tools/call: 404 mcp service not found",
    )


def test_multiplexed_route_lists_its_services(ctl: Agwctl) -> None:
    table = rows(ctl.ok("gateway", "mcp-route", "list"))
    assert table[0] == ["ID", "PATH-PREFIX", "SERVICE-ID", "VIRTUALKEY", "DISABLED", "SOURCE"]
    assert ["tools-mx", "/mx", "st,paged", "no", "no", "store"] in table[1:]


def test_runtime_commands(ctl: Agwctl) -> None:
    ctl.ok("gateway", "mcp-service", "tools", "st")  # the stdio process is running now
    view = json.loads(ctl.ok("gateway", "mcp-runtime", "get"))
    assert {"in_flight", "progress", "sessions", "failures", "stdio"} <= set(view)
    assert "st" in {p["service_id"] for p in view["stdio"]}
    headers = {
        "inflight": "ROUTE-ID REQUEST-ID METHOD PROGRESS-TOKEN STARTED-AT CANCELLED-AT",
        "progress": "ROUTE-ID PROGRESS-TOKEN REQUEST-ID PROGRESS TOTAL MESSAGE UPDATED-AT",
        "history": "ROUTE-ID REQUEST-ID METHOD STARTED-AT COMPLETED-AT CANCELLED ERROR",
        "sessions": "ID ERA ROUTE-ID VIRTUALKEY PROTOCOL-VERSION UPSTREAMS CREATED-AT LAST-USED",
    }
    for command, header in headers.items():
        assert rows(ctl.ok("gateway", "mcp-runtime", command))[0] == header.split(), command
        data = json.loads(ctl.ok("gateway", "mcp-runtime", command, "-o", "json"))
        assert isinstance(data["items"], list)
    history = json.loads(
        ctl.ok("gateway", "mcp-runtime", "history", "--route-id", "tools-mx", "-o", "json")
    )
    assert all(h["route_id"] == "tools-mx" for h in history["items"])


def test_cancel_of_unknown_request_is_one_line(ctl: Agwctl) -> None:
    proc = ctl("gateway", "mcp-runtime", "cancel", "tools-mx", "99")
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr.startswith(
        "agwctl: POST /admin/mcp/runtime/inflight/tools-mx/99/cancel: 404 "
    ), proc.stderr


def test_quickstart_bundle_is_valid(ctl: Agwctl) -> None:
    text = (REPO / "docs" / "quickstart-mcp.md").read_text()
    blocks = re.findall(r"```yaml\n(.*?)```", text, re.S)
    assert blocks, "docs/quickstart-mcp.md has no yaml block"
    path = ctl.cwd / "quickstart-mcp.yaml"
    path.write_text(blocks[0])
    assert ctl.ok("gateway", "validate", "-f", str(path)) == f"gateway bundle is valid: {path}\n"
    data = json.loads(ctl.ok("gateway", "validate", "-f", str(path), "-o", "json"))
    assert data["counts"]["mcp_services"] >= 2 and data["counts"]["mcp_routes"] >= 1
