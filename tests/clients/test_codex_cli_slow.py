"""Slow tier: the real Codex CLI (npm ``@openai/codex``) with agw as its only origin. ``codex
exec`` runs with a model provider ``agw`` (``wire_api = "responses"``, the virtual key through
``env_key``) in a ``config.toml`` of its own ``CODEX_HOME``, the one docs/quickstart-clis.md
shows. Its Responses calls go through an agw ``openai`` route to a fake upstream that answers
the first with a call of Codex's shell tool ``exec_command``; Codex runs the command in the
work directory (in its own sandbox) and sends the output back. Twice: an ``openai`` provider
(the Responses API passed through) and an ``ollama`` one (chat completions only: agw
translates). Checks every hop, the session id on the usage rows, and that Codex reached nothing
but loopback (tests/support/egress.py); and that a wrong key stops at agw with its 401.

Codex is installed with npm into ``.cache/npm-codex`` on first use (about 420 MB: a native
binary); without npm the test is skipped (tests/support/npm.py)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from tests.fakes.run import start_fake_upstream
from tests.support.agwd import Agwd, AgwdLauncher, usage_rows
from tests.support.egress import egress_trap
from tests.support.npm import npm_tool

pytestmark = pytest.mark.slow

PACKAGE = "@openai/codex@0.171.0"
COMMAND = "echo codex-was-here > proof.txt && cat proof.txt"
KEY_ENV = "AGW_API_KEY"
UPSTREAM_PATHS = {"openai": "/v1/responses", "ollama": "/v1/chat/completions"}


def codex_config(base_url: str) -> str:
    """The ``config.toml`` that makes agw Codex's only origin (docs/quickstart-clis.md)."""
    return f"""\
model = "fake-gpt"
model_provider = "agw"
check_for_update_on_startup = false

[model_providers.agw]
name = "agw"
base_url = "{base_url}"
env_key = "{KEY_ENV}"
wire_api = "responses"

[features]
plugins = false

[analytics]
enabled = false
"""


def tool_outputs(request: dict[str, Any]) -> list[Any]:
    """What the upstream got back from the tool: Responses ``function_call_output`` items or
    chat ``tool`` messages."""
    body = request["body"]
    if "input" in body:
        return [i for i in body["input"] if i.get("type") == "function_call_output"]
    return [m for m in body["messages"] if m.get("role") == "tool"]


def start_gateway(
    agwd_factory: AgwdLauncher, fake_url: str, provider_type: str
) -> tuple[Agwd, str]:
    """agwd with an ``openai`` route on ``/llm`` in front of the fake, and the virtual key
    ``codex`` (its bearer)."""
    agwd = agwd_factory.start()
    with agwd.client() as admin:
        r = admin.post("/admin/virtual_keys", json={"id": "codex"})
        assert r.status_code in (200, 201), r.text
        bearer: str = r.json()["key"]
        bundle = {
            "apiVersion": "gateway.agw/v1alpha1",
            "kind": "GatewayBundle",
            "providers": [
                {"id": "fake", "provider_type": provider_type, "base_url": f"{fake_url}/v1",
                 "api_key": "sk-upstream"},
            ],
            "llmRoutes": [
                {"id": "llm", "protocol": "openai", "match_policy": {"path_prefix": "/llm"},
                 "auth_policy": {"require_virtual_key": True},
                 "target_policy": {"provider_id": "fake"}},
            ],
        }  # fmt: skip
        r = admin.post("/admin/gateway/apply", json={"bundle": bundle})
        assert r.status_code == 200, r.text
    return agwd, bearer


def run_codex(
    codex: Path, agwd: Agwd, key: str, tmp_path: Path, env: dict[str, str], *args: str
) -> subprocess.CompletedProcess[str]:
    """``codex exec [args...]`` in ``tmp_path/work`` with a ``CODEX_HOME`` of its own."""
    codex_home = tmp_path / "codex-home"
    work = tmp_path / "work"
    for d in (codex_home, work):
        d.mkdir()
    (codex_home / "config.toml").write_text(codex_config(f"{agwd.data_url}/llm/v1"))
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(tmp_path),
        "CODEX_HOME": str(codex_home),
        KEY_ENV: key,
        **env,
    }
    return subprocess.run(
        [str(codex), "exec", "--strict-config", "--skip-git-repo-check", *args],
        cwd=work, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True,
        timeout=120, start_new_session=True,
    )  # fmt: skip


@pytest.mark.parametrize("provider_type", ["openai", "ollama"])
def test_codex_exec_through_agw_runs_a_shell_tool_call(
    agwd_factory: AgwdLauncher, tmp_path: Path, provider_type: str
) -> None:
    codex = npm_tool(PACKAGE, "codex", "codex")
    fake_env = {"FAKE_LLM_TOOL": "exec_command", "FAKE_LLM_TOOL_ARGS": json.dumps({"cmd": COMMAND})}
    with start_fake_upstream(tmp_path / "fake", env=fake_env) as fake, egress_trap() as trap:
        agwd, bearer = start_gateway(agwd_factory, fake.url, provider_type)
        started = time.monotonic()
        run = run_codex(
            codex, agwd, bearer, tmp_path, trap.env(),
            "--sandbox", "workspace-write", "Write the proof file.",
        )  # fmt: skip
        elapsed = time.monotonic() - started
        assert run.returncode == 0, (run.stdout, run.stderr[-3000:])
        assert (tmp_path / "work" / "proof.txt").read_text() == "codex-was-here\n"
        # the fake echoes the last user text once the tool's output came back
        assert "echo: Write the proof file." in run.stdout, run.stdout
        found = re.search(r"^session id: (\S+)$", run.stderr, re.M)
        assert found, run.stderr[-3000:]
        session = found.group(1)

        sent = [r for r in fake.requests() if r["path"] == UPSTREAM_PATHS[provider_type]]
        assert len(sent) == 2, [r["path"] for r in fake.requests()]
        assert all(r["headers"].get("authorization") == "Bearer sk-upstream" for r in sent)
        assert bearer not in json.dumps(sent)
        outputs = tool_outputs(sent[1])
        assert outputs and "codex-was-here" in json.dumps(outputs), sent[1]["body"]
        assert trap.attempts == [], trap.attempts  # nothing beyond loopback

    llm = usage_rows(agwd.db_path, "llm_usage_events", "route_id = 'llm'", count=2)
    assert len(llm) == 2, llm
    assert {r["session_id"] for r in llm} == {session}  # Codex's session-id header
    assert all(r["virtual_key_id"] == "codex" and r["status_code"] == 200 for r in llm)
    assert all(r["api_operation"] == "responses" and r["stream"] == 1 for r in llm)
    assert llm[0]["tool_names"] and "exec_command" in llm[0]["tool_names"]
    assert elapsed < 60, elapsed


def test_codex_exec_with_a_wrong_key_stops_at_agw(
    agwd_factory: AgwdLauncher, tmp_path: Path
) -> None:
    codex = npm_tool(PACKAGE, "codex", "codex")
    with start_fake_upstream(tmp_path / "fake") as fake, egress_trap() as trap:
        agwd, _ = start_gateway(agwd_factory, fake.url, "openai")
        no_retries = ["-c", "model_providers.agw.stream_max_retries=0",
                      "-c", "model_providers.agw.request_max_retries=0"]  # fmt: skip
        run = run_codex(codex, agwd, "vk-not-a-key", tmp_path, trap.env(), *no_retries, "hi")
        assert run.returncode != 0, run.stdout
        # agw's refusal, in OpenAI's dialect, is what Codex shows
        assert "401 Unauthorized: invalid virtual key" in run.stderr, run.stderr[-3000:]
        assert fake.requests() == [] and trap.attempts == []

    (row,) = usage_rows(agwd.db_path, "llm_usage_events", "route_id = 'llm'")
    assert row["status_code"] == 401 and row["error_type"] == "virtual_key_rejected"
    assert row["session_id"]  # Codex's session id, on the refusal too
