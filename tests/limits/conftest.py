"""The fake LLM upstream the limit tests share, one real server per test module."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.fakes.run import FakeUpstream, start_fake_upstream


@pytest.fixture(scope="module")
def fake(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeUpstream]:
    with start_fake_upstream(tmp_path_factory.mktemp("fake")) as f:
        yield f
