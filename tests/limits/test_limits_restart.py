"""Limit counters outlive agwd (docs/limits.md, "Operating limits: admin API and agwctl"): a
day's requests and dollars are still counted after a graceful restart (saved at shutdown) and
after a ``kill -9`` (saved every ``SAVE_EVERY_S``), and a reset is saved at once."""

from __future__ import annotations

import contextlib
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest

from agw.policy.limits import SAVE_EVERY_S
from tests.fakes.run import FakeUpstream
from tests.support.agwd import Agwd, AgwdLauncher
from tests.support.limits import (
    PER_TOKEN,
    apply,
    away_from_midnight,
    bearers,
    chat,
    spent,
    subjects,
)

LIMITS = [
    {"id": "daily", "subject": "key", "window": "1d", "requests": 3},
    {"id": "dollars", "subject": "key", "window": "1d", "cost_usd": 5},
]


def saved_requests(db: Path, limit_id: str, subject: str) -> int | None:
    with contextlib.closing(sqlite3.connect(db)) as conn:
        row = conn.execute(
            "SELECT requests FROM limit_counters WHERE limit_id = ? AND subject = ?",
            (limit_id, subject),
        ).fetchone()
    return None if row is None else int(row[0])


def two_requests(gw: Agwd, fake: FakeUpstream) -> tuple[dict[str, str], dict[str, Any]]:
    """Applies the limits and spends two requests of team-a; what the admin API then shows."""
    away_from_midnight(60)
    keys = apply(gw, fake, LIMITS)
    tokens = [spent(chat(gw, keys["team-a"])) for _ in range(2)]
    shown = {lid: subjects(gw, lid)["team-a"]["used"] for lid in ("daily", "dollars")}
    assert shown["daily"]["requests"] == 2
    assert shown["dollars"]["cost_usd"] == pytest.approx(sum(map(sum, tokens)) * PER_TOKEN)
    return keys, shown


def used_after_restart(gw: Agwd) -> dict[str, Any]:
    return {lid: subjects(gw, lid)["team-a"]["used"] for lid in ("daily", "dollars")}


def test_a_graceful_restart_keeps_what_each_subject_used(
    agwd_factory: AgwdLauncher, fake: FakeUpstream
) -> None:
    gw = agwd_factory.start()
    keys, before = two_requests(gw, fake)
    assert gw.stop() == 0
    again = agwd_factory.start(db_path=gw.db_path)
    assert bearers(again) == keys
    assert used_after_restart(again) == before
    assert chat(again, keys["team-a"]).status_code == 200  # the third of the day
    refused = chat(again, keys["team-a"])
    assert refused.status_code == 429, refused.text
    assert refused.json()["error"]["limit"]["id"] == "daily"
    assert chat(again, keys["team-b"]).status_code == 200  # its own counter


def test_a_kill_after_the_periodic_save_keeps_what_each_subject_used(
    agwd_factory: AgwdLauncher, fake: FakeUpstream
) -> None:
    gw = agwd_factory.start()
    keys, before = two_requests(gw, fake)
    deadline = time.monotonic() + SAVE_EVERY_S + 5
    # saved within SAVE_EVERY_S; the dollars counter in the same transaction
    while saved_requests(gw.db_path, "daily", "team-a") != 2:
        assert time.monotonic() < deadline, "the counters were never saved"
        time.sleep(0.1)
    gw.kill()
    again = agwd_factory.start(db_path=gw.db_path)
    assert used_after_restart(again) == before
    assert chat(again, keys["team-a"]).status_code == 200
    assert chat(again, keys["team-a"]).status_code == 429


def test_a_reset_is_saved_at_once_and_lets_requests_through(
    agwd_factory: AgwdLauncher, fake: FakeUpstream
) -> None:
    gw = agwd_factory.start()
    keys, _ = two_requests(gw, fake)
    assert chat(gw, keys["team-a"]).status_code == 200
    assert chat(gw, keys["team-a"]).status_code == 429
    with gw.client() as c:
        r = c.post("/admin/limits/daily/reset", json={"subject": "team-a"})
    assert r.json() == {"status": "reset", "id": "daily", "subjects": 1}
    assert saved_requests(gw.db_path, "daily", "team-a") == 0  # before the answer came
    gw.kill()  # before any periodic save
    again = agwd_factory.start(db_path=gw.db_path)
    assert subjects(again, "daily")["team-a"]["used"]["requests"] == 0
    assert subjects(again, "dollars")["team-a"]["used"]["requests"] == 3  # not reset
    for _ in range(3):
        assert chat(again, keys["team-a"]).status_code == 200
    assert chat(again, keys["team-a"]).status_code == 429
