"""Fixtures for the admin API tests: ``api``, an authenticated client of the module's
in-process gateway (the breadth), and ``admin``, one of the module's agwd process (for tests
that also need its data listener).

The gateways of the modules in :data:`BOTH_ENGINES` (CRUD of every family, bundle apply) run
on a SQLite file and on a PostgreSQL database (tests/support/engines.py); the others on
SQLite."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.agwd import Agwd
from tests.support.engines import ENGINES, store_settings, store_target
from tests.support.inproc import InprocGateway, InprocLauncher

BOTH_ENGINES = frozenset({"test_admin_apply", "test_admin_crud"})


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "engine" in metafunc.fixturenames and metafunc.module.__name__.rpartition(".")[2] in (
        BOTH_ENGINES
    ):
        metafunc.parametrize("engine", ENGINES, scope="module")


@pytest.fixture(scope="module")
def engine() -> str:
    """The store engine of the module's gateways (parametrized in :data:`BOTH_ENGINES`)."""
    return "sqlite"


@pytest.fixture(scope="module")
def module_inproc(
    module_inproc_factory: InprocLauncher, engine: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[InprocGateway]:
    """One in-process gateway shared by a test module, on the module's engine."""
    with store_target(engine, tmp_path_factory.mktemp("store")) as target:
        gateway = module_inproc_factory.start(**store_settings(target))
        yield gateway
        gateway.stop()  # before its database is dropped


@pytest.fixture
def inproc(inproc_factory: InprocLauncher, engine: str, tmp_path: Path) -> Iterator[InprocGateway]:
    """A gateway of the test's own, in-process, on the module's engine."""
    with store_target(engine, tmp_path / "store") as target:
        gateway = inproc_factory.start(**store_settings(target))
        yield gateway
        gateway.stop()


@pytest.fixture(scope="module")
def api(module_inproc: InprocGateway) -> Iterator[httpx.Client]:
    """An authenticated admin client on the module's in-process gateway."""
    with module_inproc.client() as client:
        yield client


@pytest.fixture(scope="module")
def admin(module_agwd: Agwd) -> Iterator[httpx.Client]:
    """An authenticated admin client on the module's agwd."""
    with module_agwd.client() as client:
        yield client
