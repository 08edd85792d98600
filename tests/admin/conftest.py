"""Fixtures for the admin API tests: ``api``, an authenticated client of the module's
in-process gateway (the breadth), and ``admin``, one of the module's agwd process (for tests
that also need its data listener)."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from tests.support.agwd import Agwd
from tests.support.inproc import InprocGateway


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
