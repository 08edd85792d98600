"""Fixtures for the metrics API tests: a generated dataset seeded into a real store, and a
module-scoped agwd serving it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.agwd import AgwdLauncher
from tests.support.metrics import Dataset, generate, seed


@pytest.fixture(scope="module")
def dataset() -> Dataset:
    return generate()


@pytest.fixture(scope="module")
def store(dataset: Dataset, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A store file holding ``dataset``."""
    db_path = tmp_path_factory.mktemp("metrics") / "configstore.db"
    seed(db_path, dataset)
    return db_path


@pytest.fixture(scope="module")
def api(module_agwd_factory: AgwdLauncher, store: Path) -> Iterator[httpx.Client]:
    """An authenticated admin client on an agwd serving ``store``."""
    agwd = module_agwd_factory.start(db_path=store)
    with agwd.client() as client:
        yield client
