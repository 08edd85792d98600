"""Slow tier: the real Gemini CLI (npm ``@google/gemini-cli``) with agw as its only origin.
``gemini -p`` (headless, ``-o json``) runs in a ``HOME`` of its own whose
``.gemini/settings.json`` is the one docs/quickstart-clis.md shows: the ``gemini-api-key`` auth
type, a fixed model, usage statistics and the update check off. ``GOOGLE_GEMINI_BASE_URL``
points it at an agw ``gemini`` route, ``GEMINI_API_KEY`` is the virtual key, and
``GEMINI_CLI_CUSTOM_HEADERS`` sends ``agent-session-id`` with the id given to ``--session-id``.

A plain prompt gets the fake upstream's answer; with ``--yolo`` the fake asks for the CLI's
``write_file`` tool, the CLI writes the file in its work directory and sends the
``functionResponse`` back through agw, twice: a ``gemini`` provider (passed through) and an
``openai`` one (agw translates to chat completions). Checks every hop, the tokens and the
session id on the usage rows, that the CLI reached nothing but loopback
(tests/support/egress.py), and that a wrong key stops at agw with its 401.

The CLI is installed with npm into ``.cache/npm-gemini-cli`` on first use (about 100 MB, one
bundled script); without npm the test is skipped (tests/support/npm.py)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
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

PACKAGE = "@google/gemini-cli@0.61.0"
MODEL = "gemini-2.5-flash"
SESSION = "6d1c2f0a-7b4e-4c1d-9a55-0e3f5b2c8a10"
PROOF = "gemini-was-here\n"
ANSWER = "echo: w1 w2 w3"  # FAKE_LLM_REPLY_WORDS=3
RUN_TIMEOUT_S = 120
UPSTREAM_PATHS = {
    "gemini": f"/v1beta/models/{MODEL}:streamGenerateContent",
    "openai": "/v1/chat/completions",
}

# what keeps the CLI on agw alone (docs/quickstart-clis.md)
SETTINGS = {
    "security": {"auth": {"selectedType": "gemini-api-key"}},
    "model": {"name": MODEL},
    "privacy": {"usageStatisticsEnabled": False},
    "general": {"enableAutoUpdate": False, "enableAutoUpdateNotification": False},
}


def start_gateway(
    agwd_factory: AgwdLauncher, fake_url: str, provider_type: str
) -> tuple[Agwd, str]:
    """agwd with a ``gemini`` route on ``/gemini`` in front of the fake, and the virtual key
    ``gemini-cli`` (its value)."""
    agwd = agwd_factory.start()
    base_url = fake_url if provider_type == "gemini" else f"{fake_url}/v1"
    with agwd.client() as admin:
        r = admin.post("/admin/virtual_keys", json={"id": "gemini-cli"})
        assert r.status_code in (200, 201), r.text
        key: str = r.json()["key"]
        bundle = {
            "apiVersion": "gateway.agw/v1alpha1",
            "kind": "GatewayBundle",
            "providers": [
                {"id": "fake", "provider_type": provider_type, "base_url": base_url,
                 "api_key": "sk-upstream"},
            ],
            "llmRoutes": [
                {"id": "gemini", "protocol": "gemini", "match_policy": {"path_prefix": "/gemini"},
                 "auth_policy": {"require_virtual_key": True},
                 "target_policy": {"provider_id": "fake"}},
            ],
        }  # fmt: skip
        r = admin.post("/admin/gateway/apply", json={"bundle": bundle})
        assert r.status_code == 200, r.text
    return agwd, key


def run_gemini(
    gemini: Path, agwd: Agwd, key: str, tmp_path: Path, env: dict[str, str], *args: str
) -> subprocess.CompletedProcess[str]:
    """``gemini --skip-trust --session-id SESSION [args...]`` in ``tmp_path/work`` with a
    ``HOME`` of its own; the whole process group is killed if it outlives the timeout (the CLI
    relaunches itself as a child and its parent ignores SIGTERM)."""
    home = tmp_path / "home"
    work = tmp_path / "work"
    for d in (home / ".gemini", work):
        d.mkdir(parents=True)
    (home / ".gemini" / "settings.json").write_text(json.dumps(SETTINGS))
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(home),
        "TMPDIR": str(tmp_path),  # its error reports land there, not in /tmp
        "NO_COLOR": "1",
        "GOOGLE_GEMINI_BASE_URL": f"{agwd.data_url}/gemini",
        "GEMINI_API_KEY": key,
        "GEMINI_CLI_CUSTOM_HEADERS": f"agent-session-id: {SESSION}",
        **env,
    }
    cmd = [str(gemini), "--skip-trust", "--session-id", SESSION, *args]
    proc = subprocess.Popen(
        cmd, cwd=work, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, start_new_session=True,
    )  # fmt: skip
    try:
        out, err = proc.communicate(timeout=RUN_TIMEOUT_S)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def tool_results(request: dict[str, Any]) -> list[Any]:
    """What the upstream got back from the tool: Gemini ``functionResponse`` parts or chat
    ``tool`` messages."""
    body = request["body"]
    if "contents" in body:
        parts = [p for c in body["contents"] for p in c.get("parts", [])]
        return [p["functionResponse"] for p in parts if "functionResponse" in p]
    return [m for m in body["messages"] if m.get("role") == "tool"]


def upstream_auth(request: dict[str, Any], provider_type: str) -> str | None:
    headers: dict[str, str] = request["headers"]
    if provider_type == "gemini":
        return headers.get("x-goog-api-key")
    return headers.get("authorization")


def test_gemini_prompt_through_agw(agwd_factory: AgwdLauncher, tmp_path: Path) -> None:
    gemini = npm_tool(PACKAGE, "gemini-cli", "gemini")
    fake_env = {"FAKE_LLM_TOOL": "no-such-tool", "FAKE_LLM_REPLY_WORDS": "3"}
    with start_fake_upstream(tmp_path / "fake", env=fake_env) as fake, egress_trap() as trap:
        agwd, key = start_gateway(agwd_factory, fake.url, "gemini")
        started = time.monotonic()
        run = run_gemini(gemini, agwd, key, tmp_path, trap.env(), "-o", "json", "-p", "Say hi.")
        elapsed = time.monotonic() - started
        assert run.returncode == 0, (run.stdout, run.stderr[-3000:])
        out = json.loads(run.stdout)
        assert out["response"] == ANSWER and out["session_id"] == SESSION, out

        (sent,) = fake.requests()
        assert sent["path"] == UPSTREAM_PATHS["gemini"] and sent["query"] == {"alt": "sse"}
        assert sent["headers"]["x-goog-api-key"] == "sk-upstream"
        assert key not in json.dumps(sent)
        assert sent["body"]["contents"][-1]["parts"][-1] == {"text": "Say hi."}
        assert trap.attempts == [], trap.attempts  # nothing beyond loopback

    (row,) = usage_rows(agwd.db_path, "llm_usage_events", "route_id = 'gemini'")
    assert row["llm_api"] == "gemini" and row["api_operation"] == "generate_content"
    assert row["status_code"] == 200 and row["stream"] == 1 and row["upstream_model"] == MODEL
    assert row["virtual_key_id"] == "gemini-cli" and row["session_id"] == SESSION
    # agw's tokens are the ones the CLI counted from the same usageMetadata
    tokens = out["stats"]["models"][MODEL]["tokens"]
    assert (
        row["input_tokens"] == tokens["prompt"] and row["cached_input_tokens"] == tokens["cached"]
    )
    assert row["output_tokens"] == tokens["candidates"] + tokens["thoughts"]
    assert row["reasoning_tokens"] == tokens["thoughts"]
    assert elapsed < 60, elapsed


@pytest.mark.parametrize("provider_type", ["gemini", "openai"])
def test_gemini_yolo_through_agw_runs_write_file(
    agwd_factory: AgwdLauncher, tmp_path: Path, provider_type: str
) -> None:
    gemini = npm_tool(PACKAGE, "gemini-cli", "gemini")
    fake_env = {
        "FAKE_LLM_TOOL": "write_file",
        "FAKE_LLM_TOOL_ARGS": json.dumps({"file_path": "proof.txt", "content": PROOF}),
        "FAKE_LLM_REPLY_WORDS": "3",
    }
    with start_fake_upstream(tmp_path / "fake", env=fake_env) as fake, egress_trap() as trap:
        agwd, key = start_gateway(agwd_factory, fake.url, provider_type)
        model = MODEL if provider_type == "gemini" else "fake-gpt"
        started = time.monotonic()
        run = run_gemini(
            gemini, agwd, key, tmp_path, trap.env(),
            "--yolo", "-m", model, "-o", "json", "-p", "Write the proof file.",
        )  # fmt: skip
        elapsed = time.monotonic() - started
        assert run.returncode == 0, (run.stdout, run.stderr[-3000:])
        assert (tmp_path / "work" / "proof.txt").read_text() == PROOF
        out = json.loads(run.stdout)
        assert out["response"] == ANSWER, out
        assert out["stats"]["tools"]["byName"]["write_file"]["success"] == 1

        sent = [r for r in fake.requests() if r["path"] == UPSTREAM_PATHS[provider_type]]
        assert len(sent) == 2, [r["path"] for r in fake.requests()]
        want = "sk-upstream" if provider_type == "gemini" else "Bearer sk-upstream"
        assert all(upstream_auth(r, provider_type) == want for r in sent)
        assert key not in json.dumps(sent)
        assert tool_results(sent[0]) == []
        results = tool_results(sent[1])
        assert len(results) == 1 and "proof.txt" in json.dumps(results), sent[1]["body"]
        assert trap.attempts == [], trap.attempts

    llm = usage_rows(agwd.db_path, "llm_usage_events", "route_id = 'gemini'", count=2)
    assert len(llm) == 2, llm
    assert {r["session_id"] for r in llm} == {SESSION}
    assert all(r["llm_api"] == "gemini" and r["provider_type"] == provider_type for r in llm)
    assert all(r["status_code"] == 200 and r["stream"] == 1 for r in llm)
    assert all(r["input_tokens"] > 0 and r["output_tokens"] > 0 for r in llm)
    assert json.loads(llm[0]["tool_names"]) == ["write_file"] and not llm[1]["tool_names"]
    assert "write_file" in json.loads(llm[0]["request_tool_names"])
    assert elapsed < 60, elapsed


def test_gemini_with_a_wrong_key_stops_at_agw(agwd_factory: AgwdLauncher, tmp_path: Path) -> None:
    gemini = npm_tool(PACKAGE, "gemini-cli", "gemini")
    with start_fake_upstream(tmp_path / "fake") as fake, egress_trap() as trap:
        agwd, _ = start_gateway(agwd_factory, fake.url, "gemini")
        run = run_gemini(gemini, agwd, "vk-not-a-key", tmp_path, trap.env(), "-p", "hi")
        assert run.returncode != 0, run.stdout
        # agw's refusal, in Google's error shape, is what the CLI shows
        refusal = (
            '{"error":{"code":401,"message":"invalid virtual key","status":"UNAUTHENTICATED"}}'
        )
        assert refusal in run.stderr, run.stderr[-3000:]
        assert fake.requests() == [] and trap.attempts == []

    (row,) = usage_rows(agwd.db_path, "llm_usage_events", "route_id = 'gemini'")
    assert row["status_code"] == 401 and row["error_type"] == "virtual_key_rejected"
    assert row["llm_api"] == "gemini" and row["session_id"] == SESSION
