"""Secrets at rest, at the store's level (agw/store/secrets.py): the key and its sources, sealed
values bound to their row and field, a store opened with another key, and migration 6 sealing
a store written in clear. The end-to-end tests against a real agwd are in
test_secrets_at_rest.py. Sealed rows are checked on both engines; the rest is SQLite's own (its
key file, its bytes), and tests/store/test_pg_store.py checks a PostgreSQL store's key."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import sqlite3
from collections.abc import Coroutine
from contextlib import closing
from pathlib import Path
from typing import Any, TypeVar

import pytest

from agw.config import families as f
from agw.errors import StoreError
from agw.store import config_repo
from agw.store.config_repo import Row
from agw.store.db import Database, migrations_dir
from agw.store.engine import open_store
from agw.store.secrets import (
    HASHED,
    SEALED,
    SecretBox,
    key_file,
    open_row,
    parse_key,
    seal_row,
)
from tests.support.admin import store_bytes
from tests.support.engine_launchers import store_rows
from tests.support.engines import ENGINES, store_target

T = TypeVar("T")
KEY = os.urandom(32)
OTHER_KEY = os.urandom(32)
API_KEY = "sk-at-rest-SECRET-1a2b3c"
ENV_TOKEN = "ghp_at_rest_SECRET_env_4d5e"
PLAIN_ENV = "postgres://app:pw-SECRET-7f8a@db/app"  # a name that does not look secret
URL_PASSWORD = "url-SECRET-pass-9b0c"
BEARER = "vk-atrestSECRETbearer0000000000000000000000000"


def provider(pid: str, api_key: str = API_KEY) -> dict[str, Any]:
    return {
        "id": pid,
        "provider_type": "openai",
        "api_key": api_key,
        "base_url": f"https://user:{URL_PASSWORD}@llm.example/v1",
        "network": {"extra_headers": {"X-Team": "blue"}},
    }


def mcp_service(sid: str) -> dict[str, Any]:
    return {
        "id": sid,
        "name": "m",
        "transport": "stdio",
        "command": "server",
        "env": {"GITHUB_TOKEN": ENV_TOKEN, "DATABASE_URL": PLAIN_ENV, "EMPTY_KEY": ""},
    }


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


async def write_rows(path: Path | str, rows: list[Row], key: bytes | None = KEY) -> None:
    db = await open_store(path, secret_key=key)
    try:
        await config_repo.write(db, rows, [])
    finally:
        await db.close()


async def read_rows(path: Path | str, key: bytes | None = KEY) -> list[Row]:
    db = await open_store(path, secret_key=key)
    try:
        return await config_repo.load_rows(db)
    finally:
        await db.close()


def row(family: f.Family, data: dict[str, Any], key: str = "") -> Row:
    return Row(family.name, data["id"], data, 1, 2, key=key)


def raw(path: Path | str) -> bytes:
    return b"".join(store_bytes(path).values())


# ------------------------------------------------------------------------------------- the key


def test_parse_key_takes_32_bytes_of_base64_or_base64url() -> None:
    key = bytes(range(200, 232))
    for text in (
        base64.b64encode(key).decode(),
        base64.urlsafe_b64encode(key).decode(),
        base64.urlsafe_b64encode(key).decode().rstrip("="),
        f"  {base64.b64encode(key).decode()}\n",
    ):
        assert parse_key(text) == key
    for text, words in (
        ("", "is empty"),
        (base64.b64encode(b"short").decode(), "decodes to 5 bytes"),
        (base64.b64encode(key + b"x").decode(), "decodes to 33 bytes"),
        ("not base64 at all!", "is not base64"),
        (key.hex(), "decodes to 48 bytes"),  # hex is not the format
    ):
        with pytest.raises(StoreError) as err:
            parse_key(text)
        assert words in err.value.message and "openssl rand -base64 32" in err.value.message
        assert not text or text not in err.value.message


def test_a_new_store_creates_its_key_file_mode_0600_and_reuses_it(tmp_path: Path) -> None:
    path = tmp_path / "c.db"
    run(write_rows(path, [row(f.PROVIDER, provider("p"))], key=None))
    kf = key_file(path)
    assert kf.name == "c.db.key"
    assert kf.stat().st_mode & 0o777 == 0o600
    assert len(parse_key(kf.read_text())) == 32
    assert run(read_rows(path, key=None))[0].data["api_key"] == API_KEY


def test_the_environment_key_wins_and_writes_no_key_file(tmp_path: Path) -> None:
    path = tmp_path / "c.db"
    run(write_rows(path, [row(f.PROVIDER, provider("p"))]))
    assert not key_file(path).exists()
    assert run(read_rows(path))[0].data["api_key"] == API_KEY


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o660])
def test_a_key_file_others_may_read_is_refused(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "c.db"
    run(write_rows(path, [], key=None))
    os.chmod(key_file(path), mode)
    with pytest.raises(StoreError) as err:
        run(read_rows(path, key=None))
    assert "open to other users" in err.value.message and "chmod 600" in err.value.message


def test_a_store_opened_with_another_key_is_refused_and_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "c.db"
    run(write_rows(path, [row(f.PROVIDER, provider("p"))]))
    before = store_bytes(path)
    with pytest.raises(StoreError) as err:
        run(read_rows(path, key=OTHER_KEY))
    message = err.value.message
    assert "sealed with another secret key" in message and "nothing was changed" in message
    assert SecretBox(KEY, "x").key_id in message and SecretBox(OTHER_KEY, "x").key_id in message
    assert store_bytes(path) == before
    # without the environment key and without its key file: refused, and no new key file
    with pytest.raises(StoreError) as err:
        run(read_rows(path, key=None))
    assert "key that is not here" in err.value.message
    assert not key_file(path).exists()
    assert store_bytes(path) == before
    # with a key file holding another key
    key_file(path).write_text(base64.b64encode(OTHER_KEY).decode())
    key_file(path).chmod(0o600)
    with pytest.raises(StoreError, match="sealed with another secret key"):
        run(read_rows(path, key=None))
    assert store_bytes(path) == before
    assert run(read_rows(path))[0].data["api_key"] == API_KEY


# -------------------------------------------------------------------------------- sealed values


@pytest.mark.parametrize("engine", ENGINES)
def test_rows_are_sealed_in_the_store_and_plain_above_it(tmp_path: Path, engine: str) -> None:
    with store_target(engine, tmp_path) as path:
        rows_are_sealed(path)


def rows_are_sealed(path: Path | str) -> None:
    rows = [
        row(f.PROVIDER, provider("p")),
        row(f.MCP_SERVICE, mcp_service("m")),
        row(f.VIRTUAL_KEY, {"id": "vk"}, key=BEARER),
    ]
    run(write_rows(path, rows))
    loaded = {r.id: r for r in run(read_rows(path))}
    assert loaded["p"].data == rows[0].data
    assert loaded["m"].data == rows[1].data
    assert loaded["vk"].key == BEARER
    [stored] = [json.loads(r["config"]) for r in store_rows(path, "SELECT config FROM providers")]
    [env] = [
        json.loads(r["config"])["env"] for r in store_rows(path, "SELECT config FROM mcp_services")
    ]
    [(key, sealed)] = [
        (r["key"], r["key_secret"])
        for r in store_rows(path, "SELECT key, key_secret FROM virtual_keys")
    ]
    assert stored["api_key"].startswith(SEALED) and stored["base_url"].startswith(SEALED)
    assert stored["network"]["extra_headers"]["X-Team"].startswith(SEALED)  # every map value
    assert env["GITHUB_TOKEN"].startswith(SEALED) and env["DATABASE_URL"].startswith(SEALED)
    assert env["EMPTY_KEY"] == ""
    assert key == SecretBox(KEY, "x").lookup_hash(BEARER) and key.startswith(HASHED)
    assert sealed.startswith(SEALED)
    for secret in (API_KEY, ENV_TOKEN, PLAIN_ENV, URL_PASSWORD, BEARER):
        assert secret.encode() not in raw(path), secret


def test_a_url_without_credentials_stays_readable() -> None:
    box = SecretBox(KEY, "x")
    data = {"id": "s", "url": "http://127.0.0.1:9/mcp", "post_url": "http://h/p?token=abc"}
    sealed = seal_row(box, f.MCP_SERVICE, "s", data)
    assert sealed["url"] == data["url"]
    assert sealed["post_url"].startswith(SEALED)
    assert open_row(box, f.MCP_SERVICE, "s", sealed) == data


def test_a_sealed_value_opens_only_in_its_own_row_and_field() -> None:
    box = SecretBox(KEY, "x")
    sealed = seal_row(box, f.PROVIDER, "a", provider("a"))
    with pytest.raises(StoreError, match="cannot decrypt provider/b/api_key"):
        open_row(box, f.PROVIDER, "b", sealed)  # moved to another row
    with pytest.raises(StoreError, match="cannot decrypt credential/a/attributes/api_key"):
        open_row(box, f.CREDENTIAL, "a", {"id": "a", "attributes": {"api_key": sealed["api_key"]}})
    nonce_and_ct = base64.urlsafe_b64decode(sealed["api_key"][len(SEALED) :] + "==")
    flipped = nonce_and_ct[:-1] + bytes([nonce_and_ct[-1] ^ 1])
    altered = SEALED + base64.urlsafe_b64encode(flipped).decode().rstrip("=")
    with pytest.raises(StoreError, match="altered"):
        open_row(box, f.PROVIDER, "a", {**sealed, "api_key": altered})
    with pytest.raises(StoreError):
        open_row(SecretBox(OTHER_KEY, "x"), f.PROVIDER, "a", sealed)
    # a fresh nonce per value: the same secret seals differently each time
    again = seal_row(box, f.PROVIDER, "a", provider("a"))
    assert again["api_key"] != sealed["api_key"]
    assert open_row(box, f.PROVIDER, "a", again) == provider("a")


def test_a_ciphertext_swapped_between_rows_in_the_file_fails_the_start(tmp_path: Path) -> None:
    path = tmp_path / "c.db"
    run(write_rows(path, [row(f.PROVIDER, provider("a")), row(f.PROVIDER, provider("b", "k2"))]))
    with closing(sqlite3.connect(path)) as conn:
        conn.execute(
            "UPDATE providers SET config = (SELECT config FROM providers WHERE id = 'a') "
            "WHERE id = 'b'"
        )
        conn.commit()
    with pytest.raises(StoreError, match="cannot decrypt provider/b/"):
        run(read_rows(path))


def test_values_that_look_sealed_round_trip() -> None:
    """A secret that happens to start with ``enc:v1:`` is sealed like any other, so every
    stored value with that prefix is one agw sealed."""
    box = SecretBox(KEY, "x")
    data = mcp_service("m") | {"env": {"LOG": f"{SEALED}not-really"}}
    data["auth"] = {"type": "bearer", "api_key": f"{SEALED}abc"}
    sealed = seal_row(box, f.MCP_SERVICE, "m", data)
    assert sealed["env"]["LOG"] != data["env"]["LOG"]
    assert open_row(box, f.MCP_SERVICE, "m", sealed) == data


def test_in_memory_store_has_a_key_of_its_own() -> None:
    async def main() -> list[Row]:
        db = await Database.open(":memory:")
        try:
            await config_repo.write(db, [row(f.PROVIDER, provider("p"))], [])
            return await config_repo.load_rows(db)
        finally:
            await db.close()

    assert run(main())[0].data["api_key"] == API_KEY


# ------------------------------------------------------------------- migration 6 on a v5 store


def make_v5_store(path: Path) -> None:
    """A store as agw wrote it before migration 6: every secret and bearer in clear. One
    provider was deleted and one changed before the upgrade, without secure_delete (as some
    SQLite builds run), so their old values sit in free space of the file."""
    with closing(sqlite3.connect(path)) as conn:
        conn.execute("PRAGMA secure_delete = OFF")
        for n in range(1, 6):
            conn.executescript((migrations_dir() / f"{n:04d}_{_name(n)}.sql").read_text())
        conn.execute("PRAGMA user_version = 5")
        put = "INSERT INTO {} (id, tag, config, created_at, updated_at) VALUES (?, '', ?, 1, 1)"
        for pid, key in (("p", "sk-old-SECRET-replaced"), ("gone", "sk-old-SECRET-deleted")):
            # padded past a page: its overflow pages go to the free list when it is deleted
            data = ({"padding": "x" * 20_000} if pid == "gone" else {}) | provider(pid, key)
            conn.execute(put.format("providers"), (pid, json.dumps(data)))
        conn.commit()
        conn.execute("UPDATE providers SET config = ? WHERE id = 'p'", (json.dumps(provider("p")),))
        conn.execute("DELETE FROM providers WHERE id = 'gone'")
        conn.execute(put.format("mcp_services"), ("m", json.dumps(mcp_service("m"))))
        conn.execute(
            "INSERT INTO virtual_keys (id, tag, key, config, created_at, updated_at) "
            "VALUES ('vk', '', ?, '{\"id\":\"vk\"}', 1, 1)",
            (BEARER,),
        )
        conn.commit()


def _name(n: int) -> str:
    (found,) = [p.name for p in migrations_dir().glob(f"{n:04d}_*.sql")]
    return found[5:-4]


def test_migration_6_seals_a_store_written_in_clear(tmp_path: Path) -> None:
    path = tmp_path / "c.db"
    make_v5_store(path)
    assert b"sk-old-SECRET-deleted" in raw(path)  # the test's premise: it is in the file
    loaded = {r.id: r for r in run(read_rows(path, key=None))}
    assert loaded["p"].data == provider("p")
    assert loaded["m"].data == mcp_service("m")
    assert loaded["vk"].key == BEARER
    with closing(sqlite3.connect(path)) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] >= 6
        (key,) = conn.execute("SELECT key FROM virtual_keys").fetchone()
        assert conn.execute("SELECT count(*) FROM store_secret_key").fetchone()[0] == 1
    box = SecretBox(parse_key(key_file(path).read_text()), "x")
    assert key == box.lookup_hash(BEARER)
    on_disk = raw(path)
    for secret in (API_KEY, ENV_TOKEN, PLAIN_ENV, URL_PASSWORD, BEARER, "sk-old-SECRET"):
        assert secret.encode() not in on_disk, secret
