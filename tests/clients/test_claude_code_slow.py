"""Slow tier: the real Claude Code CLI (npm ``@anthropic-ai/claude-code``) with agw as its only
origin. Its LLM calls go to an agw ``cc`` route in front of a fake Anthropic upstream, which
answers the first turn with a call of the MCP tool ``time_get_current_time``; Claude Code calls
that tool through agw's multiplexed MCP route (``mcp-server-time`` twice, over stdio) and sends
the result back. Checks every hop on the wire and in the usage tables.

Claude Code is installed with npm into ``.cache/npm-claude-code`` on first use (the npm registry
must be reachable; about 235 MB); without npm the test is skipped (tests/support/npm.py)."""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.fakes.run import start_fake_upstream
from tests.support.agwd import AgwdLauncher
from tests.support.npm import npm_tool

pytestmark = pytest.mark.slow

PACKAGE = "@anthropic-ai/claude-code@2.1.197"
TIME_SERVER = str(Path(sys.executable).parent / "mcp-server-time")


def rows(db_path: Path, sql: str) -> list[dict[str, Any]]:
    with contextlib.closing(sqlite3.connect(db_path)) as db:
        db.row_factory = sqlite3.Row
        return [dict(r) for r in db.execute(sql)]


def test_claude_code_through_agw_for_its_llm_and_its_tools(
    agwd_factory: AgwdLauncher, tmp_path: Path
) -> None:
    claude = npm_tool(PACKAGE, "claude-code", "claude")
    fake_env = {
        "FAKE_LLM_TOOL": "time_get_current_time",
        "FAKE_LLM_TOOL_ARGS": json.dumps({"timezone": "UTC"}),
    }
    with start_fake_upstream(tmp_path / "fake", env=fake_env) as fake:
        bundle = {
            "apiVersion": "gateway.agw/v1alpha1",
            "kind": "GatewayBundle",
            "providers": [
                {"id": "fake", "provider_type": "anthropic", "base_url": fake.url,
                 "api_key": "sk-upstream"},
            ],
            "llmRoutes": [
                {"id": "cc", "protocol": "cc", "match_policy": {"path_prefix": "/cc"},
                 "target_policy": {"provider_id": "fake"}},
            ],
            "mcpServices": [
                {"id": "time", "name": "time", "transport": "stdio", "command": TIME_SERVER},
                {"id": "clock", "name": "clock", "transport": "stdio", "command": TIME_SERVER},
            ],
            "mcpRoutes": [
                {"id": "tools", "service_ids": ["time", "clock"],
                 "match_policy": {"path_prefix": "/mcp"}},
            ],
        }  # fmt: skip
        static = tmp_path / "bundle.yaml"
        static.write_text(json.dumps(bundle))
        agwd = agwd_factory.start(static=static)
        home = tmp_path / "home"
        home.mkdir()
        env = {
            "PATH": os.environ["PATH"],
            "HOME": str(home),
            "ANTHROPIC_BASE_URL": f"{agwd.data_url}/cc",
            "ANTHROPIC_API_KEY": "sk-client-never-forwarded",
            "DISABLE_AUTOUPDATER": "1",
            "DISABLE_TELEMETRY": "1",
            "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
        }
        work = tmp_path / "work"
        work.mkdir()
        added = subprocess.run(
            [str(claude), "mcp", "add", "--transport", "http", "agw", f"{agwd.data_url}/mcp"],
            cwd=work, env=env, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert added.returncode == 0, added.stderr
        listed = subprocess.run(
            [str(claude), "mcp", "list"],
            cwd=work, env=env, capture_output=True, text=True, timeout=90,
        )  # fmt: skip
        assert "agw" in listed.stdout and "Connected" in listed.stdout, listed.stdout
        run = subprocess.run(
            [str(claude), "-p", "What time is it in UTC? Use the tool.",
             "--allowedTools", "mcp__agw__time_get_current_time"],
            cwd=work, env=env, capture_output=True, text=True, timeout=180,
            start_new_session=True,
        )  # fmt: skip
        assert run.returncode == 0, (run.stdout, run.stderr[-2000:])
        # the fake echoes the last user text: here, the tool result Claude Code sent back
        assert "echo:" in run.stdout and '"timezone"' in run.stdout, run.stdout

        sent = fake.requests()
        assert sent and all(r["headers"].get("x-api-key") == "sk-upstream" for r in sent)
        assert "sk-client-never-forwarded" not in json.dumps(sent)

    db = agwd.db_path
    mcp = rows(db, "SELECT * FROM mcp_usage_events ORDER BY started_at")
    calls = [r for r in mcp if r["method"] == "tools/call"]
    assert len(calls) == 1, mcp
    (call,) = calls
    assert call["tool_name"] == "time_get_current_time" and call["service_id"] == "time"
    assert call["executed_tool_name"] == "get_current_time" and call["result_status"] == "success"
    assert {"initialize", "tools/list"} <= {r["method"] for r in mcp}

    llm = rows(db, "SELECT * FROM llm_usage_events WHERE api_operation = 'messages'")
    asked = [
        r for r in llm if r["tool_names"] and "mcp__agw__time_get_current_time" in r["tool_names"]
    ]
    assert asked, llm  # the turn where the model called the tool
    sessions = {r["session_id"] for r in llm}
    assert len(sessions) == 1 and None not in sessions  # x-claude-code-session-id, every call
    assert all(r["status_code"] == 200 and r["usage_source"] == "provider" for r in llm)
