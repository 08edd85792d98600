"""Shared fixtures: real agwd processes (tests/support/agwd.py) on ephemeral loopback ports with
temp SQLite stores."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.agwd import ADMIN_PASSWORD, ADMIN_USER, Agwd, AgwdLauncher


@pytest.fixture(scope="session")
def admin_hash() -> str:
    from agw.auth.admin_basic import hash_password

    return f"{ADMIN_USER}:{hash_password(ADMIN_PASSWORD)}"


@pytest.fixture
def agwd_factory(tmp_path: Path, admin_hash: str) -> Iterator[AgwdLauncher]:
    launcher = AgwdLauncher(tmp_path, admin_hash)
    yield launcher
    launcher.close()


@pytest.fixture
def agwd(agwd_factory: AgwdLauncher) -> Agwd:
    return agwd_factory.start()


@pytest.fixture(scope="module")
def module_agwd_factory(
    tmp_path_factory: pytest.TempPathFactory, admin_hash: str
) -> Iterator[AgwdLauncher]:
    launcher = AgwdLauncher(tmp_path_factory.mktemp("agwd"), admin_hash)
    yield launcher
    launcher.close()


@pytest.fixture(scope="module")
def module_agwd(module_agwd_factory: AgwdLauncher) -> Agwd:
    """One agwd shared by a test module (tests must not depend on each other's objects)."""
    return module_agwd_factory.start()
