"""Admin API basic auth against a ``user:bcrypt-hash`` pair, with a login backoff per client,
and the generated password agwd uses when none is configured (docs/security.md, "Admin API").

bcrypt is slow on purpose (~0.2 s), so it runs in a thread, and a successful check is
remembered by a SHA-256 of the presented header for the process lifetime (bounded), as Caddy
does; a wrong password is always checked in full. Checks from one client address run one at a
time, and after ``MAX_FAILURES`` rejected ones within ``FAILURE_WINDOW_S`` that address gets
429 until the window has passed (a remembered good header still passes).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hashlib
import hmac
import ipaddress
import math
import os
import secrets
import stat
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

from passlib.hash import bcrypt

_CACHE_LIMIT = 256
MAX_FAILURES = 5  # rejected logins per client address ...
FAILURE_WINDOW_S = 60.0  # ... within this window, then 429 until it has passed
MAX_TRACKED_CLIENTS = 4096  # the failure table's bound (the oldest entry goes first)
GENERATED_USER = "admin"


class AdminAuthConfigError(ValueError):
    pass


def hash_password(plaintext: str) -> str:
    if not plaintext:
        raise AdminAuthConfigError("password must not be empty")
    return str(bcrypt.using(rounds=12).hash(plaintext))


@dataclass(frozen=True, slots=True)
class Verdict:
    ok: bool
    retry_after_s: int = 0  # > 0: refused without checking (too many failures)


def client_key(address: str) -> str:
    """What the backoff counts by: the address; an IPv6 one by its /64 (one host owns a /64),
    and every loopback address as one (a local user can bind any of 127.0.0.0/8)."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip.is_loopback:
        return "loopback"
    if isinstance(ip, ipaddress.IPv6Address):
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip)


class LoginBackoff:
    """Rejected logins per client: ``(count, first failure)`` in a bounded table."""

    def __init__(self, now: Callable[[], float] = time.monotonic) -> None:
        self._now = now
        self._failures: OrderedDict[str, tuple[int, float]] = OrderedDict()
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}

    def retry_after(self, client: str) -> int:
        """Seconds until ``client`` may try again; 0 when it may now."""
        entry = self._failures.get(client)
        if entry is None:
            return 0
        count, first = entry
        left = first + FAILURE_WINDOW_S - self._now()
        if left <= 0:
            del self._failures[client]
            return 0
        return math.ceil(left) if count >= MAX_FAILURES else 0

    def failed(self, client: str) -> None:
        count, first = self._failures.pop(client, (0, self._now()))
        self._failures[client] = (count + 1, first)
        while len(self._failures) > MAX_TRACKED_CLIENTS:
            self._failures.popitem(last=False)

    def succeeded(self, client: str) -> None:
        self._failures.pop(client, None)

    @contextlib.asynccontextmanager
    async def one_at_a_time(self, client: str) -> AsyncIterator[None]:
        """Checks from one client run in turn (so parallel guesses cannot outrun the count);
        the lock lives only while someone holds or waits for it."""
        lock, users = self._locks.get(client, (asyncio.Lock(), 0))
        self._locks[client] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[client]
            if users == 1:
                del self._locks[client]
            else:
                self._locks[client] = (lock, users - 1)


class BasicAuth:
    def __init__(self, spec: str) -> None:
        user, sep, hashed = spec.partition(":")
        if not sep or not user or not hashed:
            raise AdminAuthConfigError("admin basic auth must be user:bcrypt-hash")
        if not bcrypt.identify(hashed):
            raise AdminAuthConfigError(
                "admin basic auth hash is not a bcrypt hash (make one with agw hash-password)"
            )
        self.user = user
        self._hash = hashed
        self._good: set[bytes] = set()
        self.backoff = LoginBackoff()

    async def check(self, authorization: str | None, client: str = "") -> Verdict:
        """``client`` is the caller's address. A missing header is refused without counting
        (browsers and clients ask without credentials first); any other refusal counts."""
        if not authorization:
            return Verdict(False)
        digest = hashlib.sha256(authorization.encode()).digest()
        if digest in self._good:
            return Verdict(True)
        key = client_key(client)
        if wait := self.backoff.retry_after(key):
            return Verdict(False, wait)
        async with self.backoff.one_at_a_time(key):
            if digest in self._good:  # a request ahead of this one just proved it
                return Verdict(True)
            if wait := self.backoff.retry_after(key):
                return Verdict(False, wait)
            if await self._verify(authorization):
                if len(self._good) >= _CACHE_LIMIT:
                    self._good.clear()
                self._good.add(digest)
                self.backoff.succeeded(key)
                return Verdict(True)
            self.backoff.failed(key)
            return Verdict(False)

    async def _verify(self, authorization: str) -> bool:
        if authorization[:6].lower() != "basic ":
            return False
        try:
            decoded = base64.b64decode(authorization[6:].strip(), validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            return False
        user, sep, password = decoded.partition(":")
        if not sep:
            return False
        user_ok = hmac.compare_digest(user.encode(), self.user.encode())
        ok = await asyncio.to_thread(_verify, password, self._hash)
        return ok and user_ok


def _verify(password: str, hashed: str) -> bool:
    try:
        return bool(bcrypt.verify(password, hashed))
    except ValueError:
        return False


# ----------------------------------------------------------------------- the password file


def read_password_file(path: Path) -> tuple[str, str]:
    """``user:password`` from the first line of ``path``. Refuses a file that is not a regular
    file of this user, or that group or others may read or write (mode 0600 expected)."""
    try:
        # non-blocking: a FIFO planted there must not hang the start
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOCTTY)
    except OSError as exc:
        raise AdminAuthConfigError(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise AdminAuthConfigError(f"{path} is not a regular file")
        if info.st_mode & 0o077:
            raise AdminAuthConfigError(
                f"{path} is open to other users (mode {stat.S_IMODE(info.st_mode):04o}); "
                f"chmod 600 {path}"
            )
        if hasattr(os, "geteuid") and info.st_uid != os.geteuid():
            raise AdminAuthConfigError(f"{path} belongs to another user (uid {info.st_uid})")
        text = os.read(fd, 4096).decode("utf-8", errors="replace")
    finally:
        os.close(fd)
    user, sep, password = text.splitlines()[0].partition(":") if text.strip() else ("", "", "")
    if not sep or not user or not password:
        raise AdminAuthConfigError(f"{path} must hold user:password on its first line")
    return user, password


def create_password_file(path: Path) -> tuple[str, str]:
    """A new random password for ``admin``, written to ``path`` (mode 0600 from creation on,
    never over an existing file; the parent is created mode 0700)."""
    password = secrets.token_urlsafe(24)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | getattr(os, "O_NOFOLLOW", 0)
    fd = os.open(path, flags, 0o600)
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(f"{GENERATED_USER}:{password}\n".encode())
            file.flush()
            os.fsync(file.fileno())
    except OSError:
        path.unlink(missing_ok=True)
        raise
    return GENERATED_USER, password


def password_file_auth(path: Path) -> tuple[str, str | None]:
    """The ``user:bcrypt-hash`` agwd checks against, from ``path``; the second value is the
    password when this call generated it (to be shown once), else None."""
    created: str | None = None
    try:
        user, password = create_password_file(path)
        created = password
    except FileExistsError:
        user, password = read_password_file(path)
    except OSError as exc:
        raise AdminAuthConfigError(f"cannot create {path}: {exc.strerror or exc}") from None
    return f"{user}:{hash_password(password)}", created
