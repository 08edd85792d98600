"""agwctl gateway validate / apply / export against a real agwd (one fresh gateway per test)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from ruamel.yaml import YAML

from tests.support.agwctl import BUNDLE, BUNDLE_OBJECTS, Agwctl, run_agwctl

CREATE_LINES = [
    "gateway apply: gateway.yaml",
    "  create provider openai-main",
    "  create provider local-ollama",
    "  create managed_model local-ollama/meta/llama-3.2",
    "  create llm_route openai-direct",
    "  create llm_route smart",
    "  create virtual_key team-a",
    "  create virtual_key spare",
    "  create mcp_service tools",
    "  create mcp_route mcp:tools:mcp",
    "  create acp_service opencode",
    "  create acp_route opencode-turns",
    "  create agent coder",
]
ALL_SKIPS = f"summary: create=0 update=0 skip={BUNDLE_OBJECTS} error=0"


@pytest.fixture
def ctl(agwd: Any, tmp_path: Path) -> Agwctl:
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    shutil.copy(BUNDLE, cwd / "gateway.yaml")
    return Agwctl(agwd.env, cwd)


def load_yaml(path: Path) -> Any:
    return YAML(typ="safe").load(path.read_text())


def write_yaml(path: Path, data: Any) -> None:
    with path.open("w") as fh:
        YAML(typ="safe").dump(data, fh)


def provider_ids(ctl: Agwctl) -> list[str]:
    items = json.loads(ctl.ok("-o", "json", "gateway", "provider", "list"))["items"]
    return sorted(item["id"] for item in items)


def test_apply_creates_everything_then_skips_everything(ctl: Agwctl) -> None:
    first = ctl.ok("gateway", "apply", "-f", "gateway.yaml")
    assert first.splitlines() == [
        *CREATE_LINES,
        f"summary: create={BUNDLE_OBJECTS} update=0 skip=0 error=0",
    ]

    second = ctl.ok("gateway", "apply", "-f", "gateway.yaml").splitlines()
    assert second[0] == "gateway apply: gateway.yaml"
    assert second[1:-1] == [line.replace("create", "skip") for line in CREATE_LINES[1:]]
    assert second[-1] == ALL_SKIPS


def test_apply_json_output(ctl: Agwctl) -> None:
    report = json.loads(ctl.ok("-o", "json", "gateway", "apply", "-f", "gateway.yaml"))
    assert report["file"] == "gateway.yaml"
    assert report["status"] == "ok"
    assert report["dry_run"] is False
    assert report["actions"][0] == {"kind": "provider", "id": "openai-main", "action": "create"}
    assert len(report["actions"]) == BUNDLE_OBJECTS
    assert report["counts"]["create"] == BUNDLE_OBJECTS
    assert report["counts"]["error"] == 0
    # persistent flag after the subcommand, as with cobra
    again = json.loads(ctl.ok("gateway", "apply", "-f", "gateway.yaml", "-o", "json"))
    assert {a["action"] for a in again["actions"]} == {"skip"}


def test_dry_run_reports_and_changes_nothing(ctl: Agwctl) -> None:
    out = ctl.ok("gateway", "apply", "-f", "gateway.yaml", "--dry-run").splitlines()
    assert out == [
        *CREATE_LINES,
        f"summary: create={BUNDLE_OBJECTS} update=0 skip=0 error=0 (dry run)",
    ]
    assert provider_ids(ctl) == []
    ctl.ok("gateway", "apply", "-f", "gateway.yaml")
    assert provider_ids(ctl) == ["local-ollama", "openai-main"]


def test_update_and_prune(ctl: Agwctl) -> None:
    ctl.ok("gateway", "apply", "-f", "gateway.yaml")
    data = load_yaml(ctl.cwd / "gateway.yaml")
    data["virtualKeys"] = [vk for vk in data["virtualKeys"] if vk["id"] != "spare"]
    data["providers"][0]["default_model"] = "gpt-4.1"
    del data["agents"]  # an absent family is never pruned
    write_yaml(ctl.cwd / "smaller.yaml", data)

    plain = ctl.ok("gateway", "apply", "-f", "smaller.yaml").splitlines()
    assert "  update provider openai-main" in plain
    assert plain[-1] == f"summary: create=0 update=1 skip={BUNDLE_OBJECTS - 3} error=0"
    assert not any(line.startswith("  delete") for line in plain)

    dry = ctl.ok("gateway", "apply", "-f", "smaller.yaml", "--prune", "--dry-run").splitlines()
    assert dry[-1] == (
        f"summary: create=0 update=0 skip={BUNDLE_OBJECTS - 2} error=0 delete=1 (dry run)"
    )
    pruned = ctl.ok("gateway", "apply", "-f", "smaller.yaml", "--prune").splitlines()
    assert "  delete virtual_key spare" in pruned
    assert pruned[-1] == f"summary: create=0 update=0 skip={BUNDLE_OBJECTS - 2} error=0 delete=1"

    keys = json.loads(ctl.ok("-o", "json", "gateway", "virtualkey", "list"))["items"]
    assert [vk["id"] for vk in keys] == ["team-a"]
    agent = json.loads(ctl.ok("gateway", "agent", "get", "coder"))
    assert agent["id"] == "coder"


def test_apply_errors_change_nothing_and_exit_non_zero(ctl: Agwctl) -> None:
    (ctl.cwd / "redacted.yaml").write_text(
        "apiVersion: gateway.agw/v1alpha1\nkind: GatewayBundle\nproviders:\n"
        "  - {id: fresh, provider_type: openai, api_key: <redacted>}\n"
        "  - {id: fine, provider_type: openai}\n"
    )
    proc = ctl("gateway", "apply", "-f", "redacted.yaml")
    assert proc.returncode == 1
    lines = proc.stdout.splitlines()
    assert lines[0] == "gateway apply: redacted.yaml"
    assert lines[1].startswith("  error provider fresh: api_key: <redacted>")
    assert lines[2] == "  create provider fine"
    assert lines[3] == "summary: create=1 update=0 skip=0 error=1"
    assert proc.stderr == "agwctl: gateway apply finished with 1 error(s)\n"
    assert provider_ids(ctl) == []  # all or nothing


def test_export_validate_reapply_round_trip(ctl: Agwctl) -> None:
    ctl.ok("gateway", "apply", "-f", "gateway.yaml")
    assert ctl.ok("gateway", "export", "-f", "exported.yaml") == (
        "gateway bundle exported: exported.yaml\n"
    )
    exported = load_yaml(ctl.cwd / "exported.yaml")
    assert list(exported)[:2] == ["apiVersion", "kind"]
    providers = {p["id"]: p for p in exported["providers"]}
    assert providers["openai-main"]["api_key"] == "<redacted>"
    assert providers["local-ollama"]["api_key"] == ""
    assert "source" not in providers["openai-main"]
    assert "read_only" not in providers["openai-main"]

    valid = ctl.ok("gateway", "validate", "-f", "exported.yaml")
    assert valid == "gateway bundle is valid: exported.yaml\n"
    assert ctl.ok("gateway", "apply", "-f", "exported.yaml").splitlines()[-1] == ALL_SKIPS

    # <redacted> on apply keeps the stored key
    revealed = json.loads(ctl.ok("gateway", "provider", "get", "openai-main", "--reveal"))
    assert revealed["api_key"] == "sk-agwctl-test-secret"
    masked = json.loads(ctl.ok("gateway", "provider", "get", "openai-main"))
    assert masked["api_key"] == "<redacted>"


def test_export_to_stdout_and_with_secrets(ctl: Agwctl) -> None:
    ctl.ok("gateway", "apply", "-f", "gateway.yaml")
    text = ctl.ok("gateway", "export")
    assert text.startswith("apiVersion: gateway.agw/v1alpha1\nkind: GatewayBundle\n")
    assert "sk-agwctl-test-secret" not in text
    assert "api_key: <redacted>" in text
    secret = ctl.ok("gateway", "export", "--include-secrets")
    assert "api_key: sk-agwctl-test-secret" in secret
    # the stdout form applies back as all skips too
    (ctl.cwd / "stdout.yaml").write_text(secret)
    assert ctl.ok("gateway", "apply", "-f", "stdout.yaml").splitlines()[-1] == ALL_SKIPS

    report = json.loads(ctl.ok("-o", "json", "gateway", "export", "-f", "out.yaml"))
    assert report == {"status": "ok", "file": "out.yaml"}


def test_validate_is_local(tmp_path: Path) -> None:
    shutil.copy(BUNDLE, tmp_path / "gateway.yaml")
    env = {"PATH": "/usr/bin:/bin", "AGW_ADMIN_ADDR": "http://127.0.0.1:9"}
    proc = run_agwctl("gateway", "validate", "-f", "gateway.yaml", env=env, cwd=tmp_path)
    assert (proc.returncode, proc.stdout, proc.stderr) == (
        0,
        "gateway bundle is valid: gateway.yaml\n",
        "",
    )
    proc = run_agwctl(
        "-o", "json", "gateway", "validate", "-f", "gateway.yaml", env=env, cwd=tmp_path
    )
    assert json.loads(proc.stdout) == {
        "status": "ok",
        "file": "gateway.yaml",
        "counts": {
            "providers": 2,
            "managed_models": 1,
            "llm_routes": 2,
            "virtual_keys": 2,
            "jwt_providers": 0,
            "authorization_policies": 0,
            "cliauth_authenticators": 0,
            "mcp_services": 1,
            "mcp_routes": 1,
            "acp_services": 1,
            "acp_routes": 1,
            "agents": 1,
            "a2a_services": 0,
            "a2a_routes": 0,
            "limits": 0,
        },
    }


def test_invalid_bundle_is_reported_and_nothing_is_sent(tmp_path: Path) -> None:
    (tmp_path / "bad.yaml").write_text(
        "apiVersion: gateway.agw/v1alpha1\n"
        "kind: GatewayBundle\n"
        "providers:\n"
        "  - id: p1\n"
        "    provider_type: openai\n"
        "    api_kee: sk-x\n"
        "llmRoutes:\n"
        "  - id: r1\n"
        "    protocol: grpc\n"
        "    target_policy: {provider_id: p1}\n"
    )
    # the admin address is closed: a validation error must come before any request
    env = {"PATH": "/usr/bin:/bin", "AGW_ADMIN_ADDR": "http://127.0.0.1:9"}
    for command in ("validate", "apply"):
        proc = run_agwctl("gateway", command, "-f", "bad.yaml", env=env, cwd=tmp_path)
        assert proc.returncode == 1, proc
        assert proc.stdout == ""
        lines = proc.stderr.splitlines()
        assert lines[0] == "agwctl: bad.yaml: invalid gateway bundle (2 problems):"
        assert lines[1].startswith("  llmRoutes[0].protocol (line 9): ")
        assert "'grpc'" in lines[1]
        assert lines[2] == ("  providers[0].api_kee (line 6): unknown field; did you mean api_key?")
        assert "cannot reach" not in proc.stderr

    proc = run_agwctl("-o", "json", "gateway", "validate", "-f", "bad.yaml", env=env, cwd=tmp_path)
    report = json.loads(proc.stdout)
    assert report["status"] == "error"
    assert report["problems"][1] == {
        "path": "providers[0].api_kee",
        "message": "unknown field; did you mean api_key?",
        "line": 6,
    }


def test_env_expansion_and_missing_file(tmp_path: Path) -> None:
    (tmp_path / "env.yaml").write_text(
        "apiVersion: gateway.agw/v1alpha1\nkind: GatewayBundle\n"
        "providers: [{id: p, provider_type: openai, api_key: '${AGWCTL_TEST_KEY}'}]\n"
    )
    env = {"PATH": "/usr/bin:/bin"}
    proc = run_agwctl("gateway", "validate", "-f", "env.yaml", env=env, cwd=tmp_path)
    assert proc.returncode == 1
    assert 'environment variable "AGWCTL_TEST_KEY" is not set' in proc.stderr
    # .env in the working directory is loaded at startup
    (tmp_path / ".env").write_text("AGWCTL_TEST_KEY=sk-from-dotenv\n")
    proc = run_agwctl("gateway", "validate", "-f", "env.yaml", env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr

    proc = run_agwctl("gateway", "apply", "-f", "missing.yaml", env=env, cwd=tmp_path)
    assert (proc.returncode, proc.stdout) == (1, "")
    assert proc.stderr == "agwctl: cannot read missing.yaml: No such file or directory\n"


def test_static_objects_are_read_only(agwd_factory: Any, tmp_path: Path) -> None:
    static = tmp_path / "static.yaml"
    static.write_text(
        "apiVersion: gateway.agw/v1alpha1\nkind: GatewayBundle\n"
        "providers: [{id: openai-main, provider_type: openai, api_key: sk-static}]\n"
    )
    agwd = agwd_factory.start(static=static)
    ctl = Agwctl(agwd.env, tmp_path)
    shutil.copy(BUNDLE, tmp_path / "gateway.yaml")
    proc = ctl("gateway", "apply", "-f", "gateway.yaml")
    assert proc.returncode == 1
    lines = proc.stdout.splitlines()
    assert lines[1] == ("  error provider openai-main: is read-only (defined in the static config)")
    assert lines[-1] == f"summary: create={BUNDLE_OBJECTS - 1} update=0 skip=0 error=1"
    assert proc.stderr == "agwctl: gateway apply finished with 1 error(s)\n"

    [provider] = json.loads(ctl.ok("-o", "json", "gateway", "provider", "list"))["items"]
    assert provider["read_only"] is True
    proc = ctl("gateway", "provider", "delete", "openai-main")
    assert proc.returncode == 1
    assert proc.stderr.startswith("agwctl: DELETE /admin/llm/providers/openai-main: 409 ")
    assert "read-only" in proc.stderr
