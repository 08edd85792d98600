"""Helpers for the LLM plane tests: each test sends its own W3C trace id (set by the autouse
fixture in tests/llm/conftest.py), so it can find exactly its own usage rows."""

from __future__ import annotations

import sqlite3
import time
from typing import Any

from tests.support.agwd import Agwd

TRACE: dict[str, str] = {"id": "0" * 32}


def tp() -> dict[str, str]:
    """The ``traceparent`` header carrying this test's trace id."""
    return {"traceparent": f"00-{TRACE['id']}-{'ab' * 8}-01"}


def settle(gw: Agwd, n: int, timeout: float = 5.0) -> list[dict[str, Any]]:
    """This test's ``n`` usage rows, oldest first, once the recorder has written them."""
    deadline = time.monotonic() + timeout
    while True:
        with sqlite3.connect(gw.db_path) as db:
            db.row_factory = sqlite3.Row
            got = [
                dict(r)
                for r in db.execute(
                    "SELECT * FROM llm_usage_events WHERE trace_id = ? ORDER BY rowid",
                    (TRACE["id"],),
                )
            ]
        if len(got) >= n or time.monotonic() > deadline:
            assert len(got) == n, got
            return got
        time.sleep(0.05)
