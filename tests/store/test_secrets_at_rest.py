"""Secrets at rest against a real agwd (docs/security.md, "Secrets at rest"): secrets created
through the admin API, and those of a store written in clear by an older agw, never appear in
the bytes of the SQLite files (nor, for those created through the admin API, in any row of a
PostgreSQL store); the admin API, export and the data plane see them as before;
a wrong, malformed or exposed key stops agwd at start with a clear message and changes nothing.
"""

from __future__ import annotations

import base64
import json
import os
import sqlite3
from contextlib import closing
from pathlib import Path
from typing import Any

import httpx
import pytest

from agw.store.db import migrations_dir
from agw.store.secrets import key_file
from tests.support.admin import REVEAL, created, store_bytes
from tests.support.agwd import Agwd, AgwdLauncher
from tests.support.engine_launchers import EngineAgwdLauncher, store_of
from tests.support.engines import ENGINES

# Every secret is unique so that a grep of the files finds it wherever it leaked.
S = {
    "provider": "sk-rest-SECRET-prov-11a",
    "header": "Bearer hdr-rest-SECRET-22b",
    "base_url": "base-rest-SECRET-33c",
    "proxy": "proxy-rest-SECRET-44d",
    "credential": "sk-rest-SECRET-cred-55e",
    "mcp_bearer": "mcp-rest-SECRET-bearer-66f",
    "mcp_password": "mcp-rest-SECRET-pass-77a",
    "mcp_env": "ghp_rest_SECRET_env_88b",
    "mcp_query": "mcp-rest-SECRET-query-99c",
    "acp_env": "sk-rest-SECRET-acp-00d",
    "agent_url": "agent-rest-SECRET-11e",
}

MCP_URL = "http://127.0.0.1:9/mcp"
ROUTE = {
    "id": "locked",
    "protocol": "openai",
    "match_policy": {"path_prefix": "/locked/v1"},
    "auth_policy": {"require_virtual_key": True},
    "target_policy": {"provider_id": "p"},
}


def credential() -> dict[str, Any]:
    return {
        "id": "c",
        "type": "api_key",
        "provider_id": "p",
        "attributes": {"api_key": S["credential"]},
    }


def key_text(key: bytes) -> str:
    return base64.b64encode(key).decode()


def files_bytes(db: Path | str) -> bytes:
    return b"".join(store_bytes(db).values())


def assert_no_secret(db: Path | str, secrets: list[str]) -> None:
    """No secret in the SQLite files, or in any row of the PostgreSQL database."""
    on_disk = files_bytes(db)
    assert on_disk  # the store exists
    leaked = [s for s in secrets if s.encode() in on_disk]
    assert not leaked, f"in the store {db}: {leaked}"


def create_everything(admin: httpx.Client) -> list[str]:
    """One object of every family with secrets, two virtual keys and a route that needs one;
    returns the virtual keys' bearers."""
    created(
        admin,
        "/admin/llm/providers",
        {
            "id": "p",
            "provider_type": "openai",
            "api_key": S["provider"],
            "base_url": f"http://user:{S['base_url']}@127.0.0.1:9/v1",
            "network": {
                "extra_headers": {"Authorization": S["header"]},
                "proxy_url": f"http://proxy:{S['proxy']}@127.0.0.1:9",
            },
        },
    )
    created(admin, "/admin/credentials", credential())
    for sid, extra in (
        ("m-bearer", {"auth": {"type": "bearer", "api_key": S["mcp_bearer"]}}),
        ("m-basic", {"auth": {"type": "basic", "username": "bob", "password": S["mcp_password"]}}),
        ("m-query", {"url": f"http://127.0.0.1:9/mcp?access_token={S['mcp_query']}"}),
    ):
        body = {"id": sid, "name": "m", "transport": "streamable_http", "url": MCP_URL}
        created(admin, "/admin/mcp/services", body | extra)
    created(
        admin,
        "/admin/mcp/services",
        {"id": "m-stdio", "name": "m", "transport": "stdio", "command": "mcp-server",
         "env": {"GITHUB_TOKEN": S["mcp_env"]}},
    )  # fmt: skip
    created(
        admin,
        "/admin/acp/services",
        {"id": "a", "name": "a", "agent_type": "codex", "cwd": "/tmp",
         "env": {"OPENAI_API_KEY": S["acp_env"]}},
    )  # fmt: skip
    created(
        admin,
        "/admin/agents",
        {"id": "ag", "name": "ag",
         "runtime": {"type": "http", "http": {"endpoint": f"http://u:{S['agent_url']}@127.0.0.1:9/a"}}},
    )  # fmt: skip
    created(admin, "/admin/llm/routes", ROUTE)
    return [created(admin, "/admin/virtual_keys", {"id": f"vk{n}"})["key"] for n in (1, 2)]


def chat(agwd: Agwd, key: str | None) -> int:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    with httpx.Client(base_url=agwd.data_url, timeout=30, trust_env=False) as c:
        return c.post("/locked/v1/chat/completions", json=body, headers=headers).status_code


def assert_admin_sees_plaintext(agwd: Agwd, keys: list[str]) -> None:
    with agwd.client() as admin:
        view = admin.get("/admin/llm/providers/p", params={"reveal": "true"}, headers=REVEAL)
        assert view.json()["api_key"] == S["provider"]
        assert view.json()["network"]["extra_headers"]["Authorization"] == S["header"]
        assert S["base_url"] in view.json()["base_url"]
        masked = admin.get("/admin/llm/providers/p").json()
        assert masked["api_key"] == "<redacted>"  # redaction is unchanged
        exported = admin.get(
            "/admin/gateway/export", params={"include_secrets": "true"}, headers=REVEAL
        )
        text = exported.text
        for name in ("provider", "mcp_bearer", "mcp_password", "mcp_env", "acp_env", "proxy"):
            assert S[name] in text, name  # bundles carry plaintext, as before
        for n, key in enumerate(keys, 1):
            assert admin.get(f"/admin/virtual_keys/vk{n}").json()["key"] == key
        cred = admin.get("/admin/credentials/c", params={"reveal": "true"}, headers=REVEAL)
        assert cred.json()["attributes"]["api_key"] == S["credential"]


@pytest.mark.parametrize("engine", ENGINES)
def test_secrets_created_through_the_admin_api_are_sealed_in_the_files(
    tmp_path: Path, admin_hash: str, engine: str
) -> None:
    launcher = EngineAgwdLauncher(tmp_path, admin_hash, engine)
    with closing(launcher):
        sealed_through_the_admin_api(launcher)


def sealed_through_the_admin_api(agwd_factory: EngineAgwdLauncher) -> None:
    agwd = agwd_factory.start()
    store = store_of(agwd)
    with agwd.client() as admin:
        keys = create_everything(admin)
    secrets = [*S.values(), *keys]
    assert_no_secret(store, secrets)  # while running: the WAL holds the new rows
    assert_admin_sees_plaintext(agwd, keys)
    # the data plane finds the keys in memory as before: a key passes the gate, none does not
    assert chat(agwd, None) == 401
    assert chat(agwd, keys[0]) not in (401, 403)
    assert agwd.stop() == 0
    assert_no_secret(store, secrets)
    if isinstance(store, Path):  # PostgreSQL: the key is AGW_SECRET_KEY alone
        kf = key_file(store)
        assert kf.stat().st_mode & 0o777 == 0o600
    for secret in secrets:
        assert secret not in agwd.logs()

    again = agwd_factory.start(store=store)
    assert_admin_sees_plaintext(again, keys)
    assert chat(again, keys[1]) not in (401, 403)
    assert chat(again, "vk-" + "x" * 43) == 401
    again.stop()


def test_an_environment_key_is_used_and_a_wrong_one_stops_agwd(
    agwd_factory: AgwdLauncher,
) -> None:
    key = key_text(os.urandom(32))
    agwd = agwd_factory.start(env={"AGW_SECRET_KEY": key})
    with agwd.client() as admin:
        keys = create_everything(admin)
    assert agwd.stop() == 0
    assert not key_file(agwd.db_path).exists()
    before = store_bytes(agwd.db_path)

    wrong = agwd_factory.start(
        db_path=agwd.db_path, env={"AGW_SECRET_KEY": key_text(os.urandom(32))}, wait=False
    )
    assert wrong.proc.wait(30) == 1
    assert "sealed with another secret key" in wrong.logs()
    assert "nothing was changed" in wrong.logs()
    missing = agwd_factory.start(db_path=agwd.db_path, wait=False)  # no key at all
    assert missing.proc.wait(30) == 1
    assert "set AGW_SECRET_KEY, or put back its key file" in missing.logs()
    assert not key_file(agwd.db_path).exists()
    assert store_bytes(agwd.db_path) == before

    right = agwd_factory.start(db_path=agwd.db_path, env={"AGW_SECRET_KEY": key})
    assert_admin_sees_plaintext(right, keys)
    right.stop()


@pytest.mark.parametrize(
    ("value", "words"),
    [
        ("c2hvcnQ=", "AGW_SECRET_KEY decodes to 5 bytes"),
        ("%%%not-base64%%%", "AGW_SECRET_KEY is not base64"),
    ],
)
def test_a_malformed_environment_key_stops_agwd(
    agwd_factory: AgwdLauncher, value: str, words: str
) -> None:
    agwd = agwd_factory.start(env={"AGW_SECRET_KEY": value}, wait=False)
    assert agwd.proc.wait(30) == 1
    assert words in agwd.logs() and "openssl rand -base64 32" in agwd.logs()
    assert value not in agwd.logs()
    assert not agwd.db_path.exists()  # refused before the store is touched


def test_a_key_file_others_may_read_stops_agwd(agwd_factory: AgwdLauncher) -> None:
    agwd = agwd_factory.start()
    assert agwd.stop() == 0
    key_file(agwd.db_path).chmod(0o644)
    again = agwd_factory.start(db_path=agwd.db_path, wait=False)
    assert again.proc.wait(30) == 1
    assert "is open to other users (mode 0644); chmod 600" in again.logs()


# --------------------------------------------------------------- upgrading a store in clear


def old_store(path: Path, bearer: str) -> None:
    """A store as agw wrote it up to schema 5, secrets and the bearer in clear, with a
    provider deleted before the upgrade whose key is still in the file's free pages."""
    path.parent.mkdir(parents=True)
    provider = {"id": "p", "provider_type": "openai", "api_key": S["provider"],
                "base_url": f"http://user:{S['base_url']}@127.0.0.1:9/v1"}  # fmt: skip
    mcp = {"id": "m", "name": "m", "transport": "stdio", "command": "x",
           "env": {"GITHUB_TOKEN": S["mcp_env"]},
           "auth": {"type": "bearer", "api_key": S["mcp_bearer"]}}  # fmt: skip
    gone = {"padding": "x" * 20_000, "id": "gone", "provider_type": "openai",
            "api_key": "sk-rest-SECRET-deleted-before"}  # fmt: skip
    with closing(sqlite3.connect(path)) as conn:
        conn.execute("PRAGMA secure_delete = OFF")
        for n in range(1, 6):
            (script,) = migrations_dir().glob(f"{n:04d}_*.sql")
            conn.executescript(script.read_text())
        conn.execute("PRAGMA user_version = 5")
        put = "INSERT INTO {} (id, tag, config, created_at, updated_at) VALUES (?, '', ?, 1, 1)"
        conn.execute(put.format("providers"), ("p", json.dumps(provider)))
        conn.execute(put.format("providers"), ("gone", json.dumps(gone)))
        conn.execute(put.format("mcp_services"), ("m", json.dumps(mcp)))
        conn.execute(
            "INSERT INTO routes (id, tag, kind, config, created_at, updated_at) "
            "VALUES ('locked', '', 'llm', ?, 1, 1)",
            (json.dumps(ROUTE),),
        )
        conn.execute(
            "INSERT INTO cliauth_credentials (id, tag, data, created_at, updated_at) "
            "VALUES ('c', 'openai', ?, 1, 1)",
            (json.dumps(credential() | {"provider_type": "openai"}),),
        )
        conn.execute(
            "INSERT INTO virtual_keys (id, tag, key, config, created_at, updated_at) "
            "VALUES ('vk1', '', ?, '{\"id\": \"vk1\"}', 1, 1)",
            (bearer,),
        )
        conn.commit()
        conn.execute("DELETE FROM providers WHERE id = 'gone'")
        conn.commit()
    path.chmod(0o600)


def test_agwd_seals_a_store_written_in_clear(agwd_factory: AgwdLauncher, tmp_path: Path) -> None:
    db = tmp_path / "old" / "configstore.db"
    bearer = "vk-" + "OldBearerSECRET".ljust(43, "0")
    old_store(db, bearer)
    secrets = [S["provider"], S["base_url"], S["mcp_env"], S["mcp_bearer"], S["credential"]]
    on_disk = files_bytes(db)
    assert all(s.encode() in on_disk for s in [*secrets, bearer, "sk-rest-SECRET-deleted-before"])

    agwd = agwd_factory.start(db_path=db)
    assert_no_secret(db, [*secrets, bearer, "sk-rest-SECRET-deleted-before"])
    events = [e.get("event") for e in agwd.log_events()]
    assert "store_scrubbed" in events and "secret_key_file_created" in events
    with agwd.client() as admin:
        assert admin.get("/admin/virtual_keys/vk1").json()["key"] == bearer
        view = admin.get("/admin/mcp/services/m", params={"reveal": "true"}, headers=REVEAL).json()
        assert view["env"]["GITHUB_TOKEN"] == S["mcp_env"]
        assert view["auth"]["api_key"] == S["mcp_bearer"]
        exported = admin.get(
            "/admin/gateway/export", params={"include_secrets": "true"}, headers=REVEAL
        )
        bundle: dict[str, Any] = exported.json()
        assert bundle["providers"][0]["api_key"] == S["provider"]
    assert chat(agwd, bearer) not in (401, 403)
    assert chat(agwd, None) == 401
    assert agwd.stop() == 0
    assert_no_secret(db, [*secrets, bearer, "sk-rest-SECRET-deleted-before"])
