"""Fixtures for the metrics API tests: a generated dataset seeded into a real store, on each
engine (a SQLite file, a PostgreSQL database: tests/support/engines.py), and a module-scoped
agwd serving it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.agwd import AgwdLauncher
from tests.support.engines import ENGINES, secret_key, store_env, store_target
from tests.support.metrics import Dataset, generate, seed


@pytest.fixture(scope="module")
def dataset() -> Dataset:
    return generate()


@pytest.fixture(scope="module", params=ENGINES)
def store(
    request: pytest.FixtureRequest, dataset: Dataset, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Path | str]:
    """A store holding ``dataset``: a file, or a PostgreSQL database's URL."""
    with store_target(request.param, tmp_path_factory.mktemp("metrics")) as target:
        seed(target, dataset, secret_key(target))
        yield target


@pytest.fixture(scope="module")
def api(module_agwd_factory: AgwdLauncher, store: Path | str) -> Iterator[httpx.Client]:
    """An authenticated admin client on an agwd serving ``store``."""
    if isinstance(store, str):
        agwd = module_agwd_factory.start(store_url=store, env=store_env(store))
    else:
        agwd = module_agwd_factory.start(db_path=store)
    with agwd.client() as client:
        yield client
    agwd.stop()  # before its database is dropped
