"""agwctl gateway <family> list/get/delete/enable/disable against one agwd for the module.

The module applies tests/agwctl/gateway.yaml once; tests only read those objects, or change
objects they create themselves.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.agwctl import BUNDLE, Agwctl


@pytest.fixture(scope="module")
def ctl(module_agwd: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Agwctl]:
    ctl = Agwctl(module_agwd.env, tmp_path_factory.mktemp("cwd"))
    ctl.ok("gateway", "apply", "-f", str(BUNDLE))
    yield ctl


@pytest.fixture(scope="module")
def admin(module_agwd: Any) -> Iterator[Any]:
    with module_agwd.client() as client:
        yield client


def table(text: str) -> list[list[str]]:
    """A plain table's lines split on runs of spaces (no cell holds a space here)."""
    return [line.split() for line in text.splitlines()]


TABLES = [
    (
        "provider",
        ["ID", "TYPE", "DEFAULT-MODEL", "DISABLED", "SOURCE"],
        [
            ["local-ollama", "ollama", "-", "yes", "store"],
            ["openai-main", "openai", "gpt-4o-mini", "no", "store"],
        ],
    ),
    (
        "llm-route",
        ["ID", "PROTOCOL", "PATH-PREFIX", "DISABLED", "TARGET", "SOURCE"],
        [
            ["openai-direct", "openai", "/openai", "no", "openai-main", "store"],
            ["smart", "openai", "/smart", "no", "model:smart", "store"],
        ],
    ),
    (
        "mcp-route",
        ["ID", "PATH-PREFIX", "SERVICE-ID", "VIRTUALKEY", "DISABLED", "SOURCE"],
        [["mcp:tools:mcp", "/mcp", "tools", "no", "no", "store"]],
    ),
    (
        "acp-service",
        ["ID", "NAME", "AGENT-TYPE", "CWD", "PERMISSION-MODE", "DISABLED", "SOURCE"],
        [["opencode", "opencode", "opencode", "/srv/work", "interactive", "no", "config_store"]],
    ),
    (
        "acp-route",
        ["ID", "PATH-PREFIX", "SERVICE-ID", "VIRTUALKEY", "DISABLED", "SOURCE"],
        [["opencode-turns", "/agents/opencode", "opencode", "yes", "no", "store"]],
    ),
]


@pytest.mark.parametrize(("command", "header", "rows"), TABLES, ids=[t[0] for t in TABLES])
def test_list_tables(ctl: Agwctl, command: str, header: list[str], rows: list[list[str]]) -> None:
    out = ctl.ok("gateway", command, "list")
    assert table(out) == [header, *rows]
    assert not any(line != line.rstrip() for line in out.splitlines())


def test_tables_with_spaces_in_cells(ctl: Agwctl) -> None:
    mcp = ctl.ok("gateway", "mcp-service", "list").splitlines()
    assert mcp[0].split() == ["ID", "NAME", "TRANSPORT", "ENDPOINT", "DISABLED", "SOURCE"]
    assert mcp[1].split() == [
        "tools", "Local", "tools", "stdio", "uvx", "mcp-server-time", "no", "config_store"
    ]  # fmt: skip
    agents = ctl.ok("gateway", "agent", "list").splitlines()
    assert agents[0].split() == ["ID", "NAME", "RUNTIME", "RUNTIME-TARGET", "DISABLED", "SOURCE"]
    assert agents[1].split() == [
        "coder",
        "Coding",
        "agent",
        "acp",
        "opencode",
        "no",
        "config_store",
    ]


def test_virtual_keys_table_shows_the_generated_key(ctl: Agwctl) -> None:
    rows = table(ctl.ok("gateway", "virtualkey", "list"))
    assert rows[0] == ["ID", "KEY", "TAG", "DISABLED", "ALLOWED-ROUTES", "SOURCE"]
    by_id = {row[0]: row for row in rows[1:]}
    assert by_id["team-a"][2:] == ["team-a", "no", "openai-direct,smart", "store"]
    assert by_id["spare"][2:] == ["-", "no", "-", "store"]
    key = json.loads(ctl.ok("gateway", "virtualkey", "get", "team-a"))["key"]
    assert key.startswith("vk-") and by_id["team-a"][1] == key
    tagged = table(ctl.ok("gateway", "virtualkey", "list", "--tag", "team-a"))
    assert [row[0] for row in tagged[1:]] == ["team-a"]


def test_list_json(ctl: Agwctl) -> None:
    for args in (
        ("-o", "json", "gateway", "provider", "list"),
        ("gateway", "provider", "list", "-o", "json"),
    ):
        data = json.loads(ctl.ok(*args))
        ids = [item["id"] for item in data["items"]]
        assert ids == ["local-ollama", "openai-main"]
        assert all(
            item["source"] == "store" and item["read_only"] is False for item in data["items"]
        )
        assert data["items"][1]["api_key"] == "<redacted>"
    filtered = json.loads(
        ctl.ok("-o", "json", "gateway", "provider", "list", "--provider-type", "ollama")
    )
    assert [item["id"] for item in filtered["items"]] == ["local-ollama"]


def test_get_is_pretty_json_and_masks_secrets(ctl: Agwctl) -> None:
    out = ctl.ok("gateway", "provider", "get", "openai-main")
    assert out.startswith("{\n  ")
    assert json.loads(out)["api_key"] == "<redacted>"
    revealed = json.loads(ctl.ok("gateway", "provider", "get", "openai-main", "--reveal"))
    assert revealed["api_key"] == "sk-agwctl-test-secret"
    route = json.loads(ctl.ok("gateway", "mcp-route", "get", "mcp:tools:mcp"))
    assert route["service_id"] == "tools"


def test_managed_models_with_a_slash_in_the_model(ctl: Agwctl) -> None:
    rows = table(ctl.ok("gateway", "model", "managed", "list"))
    assert rows == [
        ["PROVIDER-ID", "UPSTREAM-MODEL", "ENABLED", "CREDENTIAL-SCOPE", "SOURCE"],
        ["local-ollama", "meta/llama-3.2", "yes", "team-a", "store"],
    ]
    one = json.loads(ctl.ok("gateway", "model", "managed", "get", "local-ollama", "meta/llama-3.2"))
    assert (one["provider_id"], one["upstream_model"]) == ("local-ollama", "meta/llama-3.2")
    none = json.loads(
        ctl.ok("-o", "json", "gateway", "model", "managed", "list", "--provider-id", "openai-main")
    )
    assert none == {"items": []}


def test_enable_disable_delete_own_objects(ctl: Agwctl, admin: Any) -> None:
    resp = admin.post("/admin/virtual_keys", json={"id": "scratch-vk", "tag": "scratch"})
    assert resp.status_code == 201, resp.text
    disabled = json.loads(ctl.ok("gateway", "virtualkey", "disable", "scratch-vk"))
    assert disabled["disabled"] is True
    rows = table(ctl.ok("gateway", "virtualkey", "list", "--tag", "scratch"))
    assert rows[1][3] == "yes"
    enabled = json.loads(ctl.ok("gateway", "virtualkey", "enable", "scratch-vk"))
    assert enabled["disabled"] is False
    deleted = json.loads(ctl.ok("gateway", "virtualkey", "delete", "scratch-vk"))
    assert deleted == {"status": "deleted", "id": "scratch-vk"}
    proc = ctl("gateway", "virtualkey", "get", "scratch-vk")
    assert proc.returncode == 1
    assert proc.stderr.startswith("agwctl: GET /admin/virtual_keys/scratch-vk: 404 ")


def test_credentials(ctl: Agwctl, admin: Any) -> None:
    body = {
        "id": "cred-1",
        "type": "api_key",
        "provider_id": "openai-main",
        "label": "primary",
        "attributes": {"api_key": "sk-cred-secret"},
    }
    resp = admin.post("/admin/credentials", json=body)
    assert resp.status_code == 201, resp.text
    rows = table(ctl.ok("gateway", "credential", "list", "--type", "api_key"))
    assert rows[0] == [
        "ID", "PROVIDER-ID", "PROVIDER-TYPE", "TYPE", "LABEL", "DISABLED", "UNAVAILABLE"
    ]  # fmt: skip
    assert rows[1][:6] == ["cred-1", "openai-main", "openai", "api_key", "primary", "no"]
    assert table(ctl.ok("gateway", "credential", "list", "--type", "cliauth_token")) == [rows[0]]
    assert len(table(ctl.ok("gateway", "credential", "list", "--provider-id", "local-ollama"))) == 1
    masked = json.loads(ctl.ok("gateway", "credential", "get", "cred-1"))
    assert masked["attributes"]["api_key"] == "<redacted>"
    shown = json.loads(ctl.ok("gateway", "credential", "get", "cred-1", "--reveal"))
    assert shown["attributes"]["api_key"] == "sk-cred-secret"
    assert json.loads(ctl.ok("gateway", "credential", "disable", "cred-1"))["disabled"] is True
    deleted = json.loads(ctl.ok("gateway", "credential", "delete", "cred-1"))
    assert deleted["status"] == "deleted"


def test_registries(ctl: Agwctl) -> None:
    types = table(ctl.ok("gateway", "provider-type", "list"))
    assert types[0] == ["PROVIDER-TYPE", "ENABLED"]
    assert ["openai", "yes"] in types
    handlers = table(ctl.ok("gateway", "llm-api-handler-type", "list"))
    assert handlers == [["LLM-API-HANDLER-TYPE"], ["anthropic"], ["cc"], ["gemini"], ["openai"]]
    auth = table(ctl.ok("gateway", "cliauth", "authenticators", "list"))
    assert auth[0] == ["NAME", "ENABLED", "CONFIG"]
    assert {row[0]: row[1] for row in auth[1:]} == {
        "claudecode": "no",
        "codex": "no",
        "gemini": "no",
    }
    codex = json.loads(ctl.ok("gateway", "cliauth", "authenticators", "get", "codex"))
    assert codex["name"] == "codex"


def test_help_lists_every_family(ctl: Agwctl, tmp_path: Path) -> None:
    out = ctl.ok("gateway", "--help")
    for name in (
        "validate", "apply", "export", "provider", "llm-route", "mcp-service", "mcp-route",
        "acp-service", "acp-route", "agent", "virtualkey", "credential", "model",
        "provider-type", "llm-api-handler-type", "cliauth",
    ):  # fmt: skip
        assert f"\n  {name} " in out


def test_jwt_providers_and_authorization_policies(ctl: Agwctl, admin: Any) -> None:
    """The identity families (issue 14) through agwctl: list, get, disable, delete."""
    provider = {
        "id": "corp-idp",
        "issuer": "https://idp.example.com",
        "audiences": ["https://agw.example.com/mcp"],
        "jwks_uri": "https://idp.example.com/jwks",
    }
    assert admin.post("/admin/jwt_providers", json=provider).status_code == 201
    policy = {"id": "no-interns", "route_kinds": ["llm"], "deny": ['"interns" in principal.groups']}
    assert admin.post("/admin/authorization_policies", json=policy).status_code == 201
    rows = table(ctl.ok("gateway", "jwt-provider", "list"))
    assert rows[0] == ["ID", "ISSUER", "AUDIENCES", "JWKS", "DISABLED", "SOURCE"]
    assert rows[1] == [
        "corp-idp",
        "https://idp.example.com",
        "https://agw.example.com/mcp",
        "https://idp.example.com/jwks",
        "no",
        "store",
    ]
    got = json.loads(ctl.ok("gateway", "jwt-provider", "get", "corp-idp"))
    assert got["algorithms"] == ["RS256", "ES256", "EdDSA"] and got["clock_skew_seconds"] == 60
    ctl.ok("gateway", "jwt-provider", "disable", "corp-idp")
    assert admin.get("/admin/jwt_providers/corp-idp").json()["disabled"] is True
    out = ctl.ok("gateway", "authz-policy", "list")
    assert "no-interns" in out and "llm" in out
    ctl.ok("gateway", "authz-policy", "delete", "no-interns")
    ctl.ok("gateway", "jwt-provider", "delete", "corp-idp")
    assert admin.get("/admin/jwt_providers/corp-idp").status_code == 404
    assert admin.get("/admin/authorization_policies/no-interns").status_code == 404
