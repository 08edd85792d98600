"""Secrets at rest: the store's key, the sealing of secret fields, the virtual keys' lookup hash.

Every secret a family lists (:attr:`agw.config.families.Family.secrets`: provider API keys,
credential keys, MCP service auth, every value of an ``env`` or ``extra_headers`` map, URLs that
carry credentials) and every virtual key bearer is stored sealed: ``enc:v1:`` + base64url of a
12-byte random nonce and the AES-256-GCM ciphertext of the value's JSON, with the associated
data ``["agw", family, id, *path]``, so a sealed value moved to another row or field does not
open. A virtual key's ``key`` column holds ``hmac:v1:`` + the hex HMAC-SHA256 of its bearer
(unique, so the store still refuses a duplicate) and ``key_secret`` the sealed bearer. Above
this module (runtime state, snapshot, admin API, export) every value is plaintext, as before.

The key: 32 bytes, from ``AGW_SECRET_KEY`` (base64 or base64url, padding optional) or else from
the key file beside the store (``<store>.key``, created mode 0600 on first start, refused when
group or others may read it). The sealing, lookup, key-id and MCP session-id keys are derived
from it with HKDF-SHA256. The ``store_secret_key`` row holds a value sealed with it, so a store
opened with another key fails at start, before anything is written (docs/security.md, "Secrets
at rest").
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import json
import logging
import os
import stat
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiosqlite

from agw.clock import now_ms
from agw.config import families as f
from agw.errors import StoreError

if TYPE_CHECKING:
    from agw.store.engine import Conn

log = logging.getLogger(__name__)
KEY_ENV = "AGW_SECRET_KEY"
KEY_BYTES = 32
KEY_FILE_SUFFIX = ".key"
SEALED = "enc:v1:"  # a sealed value; anything else at a secret path is plaintext
HASHED = "hmac:v1:"  # a virtual key's lookup hash
NONCE_BYTES = 12
_CHECK = "agw secret key check"
CHECKED = "mac:v1:"  # check_value: a keyed hash of _CHECK
_CHECK_WHERE = ("store_secret_key", "1", "check_value")
SEALING_MIGRATION = 6  # migrations/0006_secrets_at_rest.sql, then seal_plaintext_rows


def parse_key(text: str, source: str = KEY_ENV) -> bytes:
    """The 32-byte key that ``text`` encodes (base64, standard or URL-safe, padding optional);
    a :class:`StoreError` naming ``source`` (never the value) otherwise."""
    compact = "".join(text.split())
    hint = "32 random bytes, base64-encoded (make one with: openssl rand -base64 32)"
    if not compact:
        raise StoreError(f"{source} is empty; it must be {hint}")
    try:
        raw = base64.b64decode(
            compact.replace("-", "+").replace("_", "/") + "=" * (-len(compact) % 4),
            validate=True,
        )
    except (binascii.Error, ValueError):
        raise StoreError(f"{source} is not base64; it must be {hint}") from None
    if len(raw) != KEY_BYTES:
        raise StoreError(f"{source} decodes to {len(raw)} bytes; it must be {hint}")
    return raw


def key_file(store: Path) -> Path:
    """Where the key of the store at ``store`` lives when ``AGW_SECRET_KEY`` is not set."""
    return store.with_name(store.name + KEY_FILE_SUFFIX)


def _derive(key: bytes, purpose: bytes, length: int = 32) -> bytes:
    """HKDF-SHA256 (RFC 5869) without salt, in the standard library: the same bytes as
    cryptography's ``HKDF(SHA256(), length, salt=None, info=purpose)``."""
    prk = hmac.new(b"\x00" * 32, key, hashlib.sha256).digest()
    out, block = b"", b""
    for counter in range(1, -(-length // 32) + 1):
        block = hmac.new(prk, block + purpose + bytes([counter]), hashlib.sha256).digest()
        out += block
    return out[:length]


def _aesgcm(key: bytes) -> Any:
    """AES-256-GCM from ``cryptography``, imported on the first seal or open: its OpenSSL
    bindings cost about 6 MiB, which a store without secrets never needs."""
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    return AESGCM(key)


class SecretBox:
    """Seals and opens values with the store's key; computes virtual keys' lookup hashes."""

    __slots__ = ("_aead", "_aead_key", "_mac", "key_id", "session_key", "source")

    def __init__(self, key: bytes, source: str) -> None:
        if len(key) != KEY_BYTES:
            raise StoreError(f"{source}: the secret key must be {KEY_BYTES} bytes")
        self.source = source  # "AGW_SECRET_KEY", the key file's path, or "memory"
        self._aead_key = _derive(key, b"agw store secrets v1 aes-256-gcm")
        self._aead: Any = None
        self._mac = _derive(key, b"agw virtual key lookup v1 hmac-sha256")
        # seals the MCP session ids (agw.mcp.session_id), unless AGW_SESSION_KEY is set
        self.session_key = _derive(key, b"agw mcp session id v1 aes-256-gcm")
        # names the key in messages and logs without revealing it
        self.key_id = _derive(key, b"agw secret key id v1", 8).hex()

    def __repr__(self) -> str:
        return f"SecretBox(key_id={self.key_id!r}, source={self.source!r})"

    def seal(self, value: object, where: Sequence[str]) -> str:
        """``value`` (any JSON value) sealed for the place ``where`` (family, id, path...)."""
        nonce = os.urandom(NONCE_BYTES)
        plain = json.dumps(value, separators=(",", ":")).encode()
        sealed = self._cipher().encrypt(nonce, plain, _aad(where))
        return SEALED + base64.urlsafe_b64encode(nonce + sealed).rstrip(b"=").decode()

    def open(self, sealed: str, where: Sequence[str]) -> Any:
        """The value :meth:`seal` sealed for ``where``; :class:`StoreError` when it was sealed
        with another key, for another place, or altered."""
        from cryptography.exceptions import InvalidTag

        body = sealed.removeprefix(SEALED)
        try:
            raw = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
            plain = self._cipher().decrypt(raw[:NONCE_BYTES], raw[NONCE_BYTES:], _aad(where))
            return json.loads(plain)
        except (InvalidTag, ValueError, binascii.Error):
            raise StoreError(
                f"config store: cannot decrypt {'/'.join(where)}: it was sealed with another "
                "secret key, for another row, or altered"
            ) from None

    def _cipher(self) -> Any:
        if self._aead is None:
            self._aead = _aesgcm(self._aead_key)
        return self._aead

    def check_tag(self) -> str:
        """What the store records to recognise its key without decrypting anything."""
        return CHECKED + hmac.new(self._mac, _CHECK.encode(), hashlib.sha256).hexdigest()

    def lookup_hash(self, bearer: str) -> str:
        """What a virtual key's ``key`` column holds: a keyed hash of its bearer."""
        return HASHED + hmac.new(self._mac, bearer.encode(), hashlib.sha256).hexdigest()


def _aad(where: Sequence[str]) -> bytes:
    return json.dumps(["agw", *where], separators=(",", ":")).encode()


# ---------------------------------------------------------------------------- the secret fields


def _should_seal(secret: f.SecretPath, value: object) -> bool:
    if value is None or value == "":
        return False
    if isinstance(value, str) and value.startswith(SEALED):
        return True  # so that every stored value starting so is one we sealed
    if secret.in_url:
        return not isinstance(value, str) or bool(f.url_secrets(value))
    return True


def _transform(
    box: SecretBox, family: f.Family, oid: str, data: dict[str, Any], *, seal: bool
) -> dict[str, Any]:
    """A copy of ``data`` with its secrets sealed (``seal``) or opened."""
    out: dict[str, Any] = json.loads(json.dumps(data))
    for secret in family.secrets:
        node: Any = out
        for part in secret.path[:-1]:
            node = node.get(part) if isinstance(node, dict) else None
        last = secret.path[-1]
        if not isinstance(node, dict) or last not in node:
            continue
        places: list[tuple[dict[str, Any], str, tuple[str, ...]]] = [(node, last, secret.path)]
        if secret.map_of_names:
            # every value of the map, not only those with sensitive names: an env value such
            # as DATABASE_URL=postgres://user:password@... is a secret too
            inner = node[last]
            places = (
                [(inner, k, (*secret.path, k)) for k in inner] if isinstance(inner, dict) else []
            )
        for holder, name, path in places:
            value = holder[name]
            where = (family.name, oid, *path)
            if seal:
                if _should_seal(secret, value):
                    holder[name] = box.seal(value, where)
            elif isinstance(value, str) and value.startswith(SEALED):
                holder[name] = box.open(value, where)
    return out


def seal_row(box: SecretBox, family: f.Family, oid: str, data: dict[str, Any]) -> dict[str, Any]:
    """``data`` as the store keeps it: every secret of ``family`` sealed (a copy)."""
    return _transform(box, family, oid, data, seal=True) if family.secrets else data


def open_row(box: SecretBox, family: f.Family, oid: str, data: dict[str, Any]) -> dict[str, Any]:
    """``data`` as read from the store with its secrets opened (a copy)."""
    return _transform(box, family, oid, data, seal=False) if family.secrets else data


def vk_where(oid: str) -> tuple[str, str, str]:
    """Where a virtual key's bearer is sealed for (its associated data)."""
    return (f.VIRTUAL_KEY.name, oid, "key")


def payload_column(table: str) -> str:
    """The column that holds a configuration row's object as JSON."""
    return "data" if table in ("cliauth_credentials", "model_configs") else "config"


# ------------------------------------------------------------------------------ the key itself


def _read_key_file(path: Path) -> bytes:
    """The key in ``path``: a regular file of this user that group and others cannot read."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOCTTY)
    except OSError as exc:
        raise StoreError(f"cannot read the secret key file {path}: {exc.strerror or exc}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise StoreError(f"the secret key file {path} is not a regular file")
        if info.st_mode & 0o077:
            raise StoreError(
                f"the secret key file {path} is open to other users (mode "
                f"{stat.S_IMODE(info.st_mode):04o}); chmod 600 {path}"
            )
        if hasattr(os, "geteuid") and info.st_uid != os.geteuid():
            raise StoreError(f"the secret key file {path} belongs to another user")
        text = os.read(fd, 4096).decode("ascii", errors="replace")
    finally:
        os.close(fd)
    return parse_key(text, f"the secret key file {path}")


def _create_key_file(path: Path) -> bytes | None:
    """A new random key written to ``path`` (mode 0600 from creation on); None when the file
    appeared meanwhile (another process created it: read that one)."""
    key = os.urandom(KEY_BYTES)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(path, flags, 0o600)
    except FileExistsError:
        return None
    except OSError as exc:
        raise StoreError(f"cannot create the secret key file {path}: {exc.strerror}") from None
    try:
        os.write(fd, base64.urlsafe_b64encode(key) + b"\n")
        os.fsync(fd)
    except OSError as exc:
        os.close(fd)
        path.unlink(missing_ok=True)
        raise StoreError(f"cannot write the secret key file {path}: {exc.strerror}") from None
    os.close(fd)
    return key


def _file_box(store: Path, create: bool) -> SecretBox:
    path = key_file(store)
    if not os.path.lexists(path):
        if not create:
            raise StoreError(
                f"config store {store} holds secrets sealed with a key that is not here: set "
                f"{KEY_ENV}, or put back its key file {path}"
            )
        key = _create_key_file(path)
        if key is not None:
            # the only copy of the key: back it up apart from the store (docs/deploy.md)
            log.warning("secret_key_file_created", extra={"path": str(path)})
            return SecretBox(key, str(path))
    return SecretBox(_read_key_file(path), str(path))


async def unlock(conn: Conn, store: Path, key: bytes | None, version: int) -> SecretBox:
    """The store's :class:`SecretBox`: from ``key`` (``AGW_SECRET_KEY``), else the key file
    beside the store (created when the store has sealed nothing yet). A store that recorded
    another key is refused here, before anything is written."""
    check: tuple[str, str] | None = None
    if version >= SEALING_MIGRATION:
        async with conn.execute(
            "SELECT key_id, check_value FROM store_secret_key WHERE id = 1"
        ) as cur:
            row = await cur.fetchone()
        check = (str(row[0]), str(row[1])) if row else None
    if key is not None:
        box = SecretBox(key, KEY_ENV)
    elif str(store) == ":memory:":
        box = SecretBox(os.urandom(KEY_BYTES), "memory")
    else:
        box = await asyncio.to_thread(_file_box, store, check is None)
    if check is not None:
        if check[1].startswith(CHECKED):
            ok = hmac.compare_digest(check[1], box.check_tag())
        else:  # recorded sealed, before the tag
            try:
                ok = box.open(check[1], _CHECK_WHERE) == _CHECK
            except StoreError:
                ok = False
        if not ok:
            # a PostgreSQL store has no key file: its key only ever comes from the environment
            where = KEY_ENV
            if not str(store).startswith("postgres"):
                where += f" or its key file {key_file(store)}"
            raise StoreError(
                f"config store {store} was sealed with another secret key (key id {check[0]}) "
                f"than the one from {box.source} (key id {box.key_id}); nothing was changed. "
                f"Start with the store's key ({where})"
            )
    return box


# ------------------------------------------------------------- migration 6: seal what was plain


async def record_key(conn: Conn, box: SecretBox) -> None:
    """Record which key seals the store (``store_secret_key``), in migration 6's transaction."""
    await conn.execute(
        "INSERT INTO store_secret_key (id, key_id, check_value, created_at) VALUES (1, ?, ?, ?)",
        (box.key_id, box.check_tag(), now_ms()),
    )


async def seal_plaintext_rows(conn: aiosqlite.Connection, box: SecretBox) -> None:
    """Run once, in migration 6's transaction: seal every secret of every stored row, move each
    virtual key's bearer to ``key_secret`` (sealed) and its hash to ``key``, and record the key.
    ``secure_delete`` zeroes the plaintext the updates leave behind in the file's pages."""
    await conn.execute("PRAGMA secure_delete = ON")
    try:
        async with conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'") as cur:
            tables = {str(name) async for (name,) in cur}
        for family in f.ALL_FAMILIES:
            # a family whose table a later migration creates (a2a_services) has nothing yet
            if not family.secrets or family.table not in tables:
                continue
            column = payload_column(family.table)
            async with conn.execute(f"SELECT id, {column} FROM {family.table}") as cur:
                rows = [(str(oid), str(payload)) async for oid, payload in cur]
            for oid, payload in rows:
                sealed = seal_row(box, family, oid, json.loads(payload))
                await conn.execute(
                    f"UPDATE {family.table} SET {column} = ? WHERE id = ?",
                    (json.dumps(sealed, sort_keys=True, separators=(",", ":")), oid),
                )
        async with conn.execute("SELECT id, key FROM virtual_keys") as cur:
            keys = [(str(oid), str(bearer)) async for oid, bearer in cur]
        for oid, bearer in keys:
            await conn.execute(
                "UPDATE virtual_keys SET key = ?, key_secret = ? WHERE id = ?",
                (box.lookup_hash(bearer), box.seal(bearer, vk_where(oid)), oid),
            )
        await record_key(conn, box)
    finally:
        await conn.execute("PRAGMA secure_delete = OFF")
