"""Every LLM test gets a fresh trace id (see llm_support.py)."""

from __future__ import annotations

import secrets

import pytest

from tests.support.llm import TRACE


@pytest.fixture(autouse=True)
def trace_id() -> str:
    TRACE["id"] = secrets.token_hex(16)
    return TRACE["id"]
