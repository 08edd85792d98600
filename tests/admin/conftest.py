"""Fixtures for the admin API tests: authenticated clients on a module-scoped agwd."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from tests.support.agwd import Agwd


@pytest.fixture(scope="module")
def admin(module_agwd: Agwd) -> Iterator[httpx.Client]:
    """An authenticated admin client on the module's agwd."""
    with module_agwd.client() as client:
        yield client
