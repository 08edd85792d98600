"""The login backoff's rules, in-process with a hand-driven clock (the attacks against a real
agwd are in tests/admin/test_admin_security.py)."""

from __future__ import annotations

import pytest

from agw.auth.admin_basic import (
    FAILURE_WINDOW_S,
    MAX_FAILURES,
    MAX_TRACKED_CLIENTS,
    LoginBackoff,
    client_key,
)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize(
    ("address", "key"),
    [
        ("127.0.0.1", "loopback"),
        ("127.9.8.7", "loopback"),
        ("::1", "loopback"),
        ("::ffff:127.0.0.2", "loopback"),
        ("192.0.2.7", "192.0.2.7"),
        ("::ffff:192.0.2.7", "192.0.2.7"),
        ("2001:db8:1:2:aaaa::1", "2001:db8:1:2::/64"),
        ("2001:db8:1:2:bbbb::9", "2001:db8:1:2::/64"),
        ("", ""),
        ("not-an-ip", "not-an-ip"),
    ],
)
def test_client_key(address: str, key: str) -> None:
    assert client_key(address) == key


def test_blocks_after_the_limit_until_the_window_passes() -> None:
    clock = Clock()
    backoff = LoginBackoff(clock)
    for _ in range(MAX_FAILURES - 1):
        backoff.failed("a")
        assert backoff.retry_after("a") == 0
    backoff.failed("a")
    assert backoff.retry_after("a") == FAILURE_WINDOW_S
    assert backoff.retry_after("b") == 0  # another client is not blocked
    clock.now += FAILURE_WINDOW_S - 0.5
    assert backoff.retry_after("a") == 1
    clock.now += 0.5
    assert backoff.retry_after("a") == 0
    backoff.failed("a")  # a new window starts with one failure
    assert backoff.retry_after("a") == 0


def test_a_success_clears_the_count() -> None:
    backoff = LoginBackoff(Clock())
    for _ in range(MAX_FAILURES - 1):
        backoff.failed("a")
    backoff.succeeded("a")
    backoff.failed("a")
    assert backoff.retry_after("a") == 0


def test_the_table_is_bounded() -> None:
    backoff = LoginBackoff(Clock())
    for i in range(MAX_TRACKED_CLIENTS + 100):
        backoff.failed(f"client{i}")
    assert len(backoff._failures) == MAX_TRACKED_CLIENTS
    assert "client0" not in backoff._failures  # the oldest went first
