"""Fixtures for the admin API tests: ``api``, an authenticated client of the module's
in-process gateway (the breadth), and ``admin``, one of the module's agwd process (for tests
that also need its data listener).

Every test here that starts a gateway runs twice, on a SQLite file and on a PostgreSQL database
(``engine``; tests/support/engines.py): the gateways of ``inproc``, ``module_inproc`` and the
agwd fixtures, and every gateway a test starts with their factories
(tests/support/engine_launchers.py), are on the test's engine. Two exceptions:

- ``@pytest.mark.sqlite_only(reason)``: what the test checks is SQLite's own (a file beside the
  store, the file's bytes); its PostgreSQL run is skipped with the reason.
- a module's ``PG_TESTS`` (a set of test names): only those run on PostgreSQL too, the others on
  SQLite alone. For modules whose subject is a runtime the store only configures (the ACP
  agents), where a second agwd per module would cost more than it checks."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.agwd import Agwd
from tests.support.engine_launchers import EngineAgwdLauncher, EngineInprocLauncher
from tests.support.engines import ENGINES
from tests.support.inproc import InprocGateway


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "sqlite_only(reason): the test's PostgreSQL run is skipped (tests/admin)"
    )


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "engine" not in metafunc.fixturenames:
        return
    only = getattr(metafunc.module, "PG_TESTS", None)
    if only is not None and metafunc.function.__name__ not in only:
        return
    mark = metafunc.definition.get_closest_marker("sqlite_only")
    if mark is None:
        metafunc.parametrize("engine", ENGINES, scope="module")
        return
    reason = mark.args[0] if mark.args else mark.kwargs["reason"]
    skipped = pytest.param("postgresql", marks=pytest.mark.skip(reason=f"SQLite only: {reason}"))
    metafunc.parametrize("engine", ["sqlite", skipped], scope="module")


@pytest.fixture(scope="module")
def engine() -> str:
    """The store engine of the test's gateways (parametrized: see the module docstring)."""
    return "sqlite"


@pytest.fixture(scope="module")
def module_inproc_factory(
    tmp_path_factory: pytest.TempPathFactory, admin_hash: str, engine: str
) -> Iterator[EngineInprocLauncher]:
    launcher = EngineInprocLauncher(tmp_path_factory.mktemp("inproc"), admin_hash, engine)
    yield launcher
    launcher.close()


@pytest.fixture
def inproc_factory(tmp_path: Path, admin_hash: str, engine: str) -> Iterator[EngineInprocLauncher]:
    launcher = EngineInprocLauncher(tmp_path, admin_hash, engine)
    yield launcher
    launcher.close()


@pytest.fixture(scope="module")
def module_agwd_factory(
    tmp_path_factory: pytest.TempPathFactory, admin_hash: str, engine: str
) -> Iterator[EngineAgwdLauncher]:
    launcher = EngineAgwdLauncher(tmp_path_factory.mktemp("agwd"), admin_hash, engine)
    yield launcher
    launcher.close()


@pytest.fixture
def agwd_factory(tmp_path: Path, admin_hash: str, engine: str) -> Iterator[EngineAgwdLauncher]:
    launcher = EngineAgwdLauncher(tmp_path, admin_hash, engine)
    yield launcher
    launcher.close()


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
