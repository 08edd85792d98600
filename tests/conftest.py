"""Shared fixtures for both test tiers (README.md, after ``scripts/test``):

- in-process (``inproc``...): agw's two ASGI apps composed as agwd composes them, driven through
  ``httpx.ASGITransport`` (tests/support/inproc.py): the breadth;
- process (``agwd``...): real agwd processes on ephemeral loopback ports (tests/support/agwd.py):
  the contracts of the process, its listeners and its CLI.

Both run on temp SQLite stores; fake upstreams are real servers on loopback either way.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.support.agwd import ADMIN_PASSWORD, ADMIN_USER, Agwd, AgwdLauncher

if TYPE_CHECKING:
    # imported by the fixtures that use it: it imports agw.server, every plane (0.6 s)
    from tests.support.inproc import InprocGateway, InprocLauncher


@pytest.fixture(scope="session")
def admin_hash() -> str:
    """``user:bcrypt-hash`` of the test password, at bcrypt's lowest cost: every check costs
    milliseconds instead of agw hash-password's 0.2 s (tests/test_agwd.py tests that one)."""
    from passlib.hash import bcrypt

    return f"{ADMIN_USER}:{bcrypt.using(rounds=4).hash(ADMIN_PASSWORD)}"


# ---------------------------------------------------------------------------------- in-process


@pytest.fixture
def inproc_factory(tmp_path: Path, admin_hash: str) -> Iterator[InprocLauncher]:
    from tests.support.inproc import InprocLauncher

    launcher = InprocLauncher(tmp_path, admin_hash)
    yield launcher
    launcher.close()


@pytest.fixture
def inproc(inproc_factory: InprocLauncher) -> InprocGateway:
    """A gateway of the test's own, in-process."""
    return inproc_factory.start()


@pytest.fixture(scope="module")
def module_inproc_factory(
    tmp_path_factory: pytest.TempPathFactory, admin_hash: str
) -> Iterator[InprocLauncher]:
    from tests.support.inproc import InprocLauncher

    launcher = InprocLauncher(tmp_path_factory.mktemp("inproc"), admin_hash)
    yield launcher
    launcher.close()


@pytest.fixture(scope="module")
def module_inproc(module_inproc_factory: InprocLauncher) -> InprocGateway:
    """One in-process gateway shared by a test module (tests must not depend on each other's
    objects)."""
    return module_inproc_factory.start()


# ------------------------------------------------------------------------------------ process


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
