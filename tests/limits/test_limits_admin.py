"""The operator's side of limits (docs/limits.md, "Operating limits: admin API and agwctl"):
the family's CRUD at ``/admin/limits``, ``GET /admin/limits`` with each subject's use, what
remains and when it resets, ``POST /admin/limits/{id}/reset``, and ``agwctl gateway limits``.
A real agwd and the fake upstream: counters move only with real traffic."""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from tests.fakes.run import FakeUpstream
from tests.support.admin import assert_error
from tests.support.agwctl import Agwctl, assert_one_line_error
from tests.support.agwd import Agwd, AgwdLauncher
from tests.support.limits import (
    PER_TOKEN,
    apply,
    away_from_midnight,
    chat,
    spent,
    status,
    subjects,
)

RFC3339_MS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


@pytest.fixture(scope="module")
def gw(module_agwd_factory: AgwdLauncher) -> Agwd:
    return module_agwd_factory.start()


@pytest.fixture(autouse=True)
def _clean(gw: Agwd, fake: FakeUpstream) -> Iterator[None]:
    fake.configure(reply_words=0, delay_ms=0)
    away_from_midnight()
    yield
    apply(gw, fake, [])  # the next test starts with no limit and no counter


DAILY = {"id": "daily", "subject": "key", "window": "1d", "requests": 3}
DOLLARS = {"id": "dollars", "subject": "key", "window": "1d", "cost_usd": 1}
STREAMS = {"id": "streams", "subject": "key", "concurrent": 2, "enforce": False}


# ---------------------------------------------------------------------------------- CRUD


def test_the_limits_family_has_the_standard_crud(gw: Agwd) -> None:
    with gw.client() as c:
        r = c.post("/admin/limits", json={"id": "crud", "requests": 5, "window": "1h"})
        assert r.status_code == 201, r.text
        view = r.json()
        assert view["subject"] == "key" and view["enforce"] is True
        assert view["on_exceed"] == "finish" and view["min_output_tokens"] == 1024
        assert view["source"] == "store" and view["read_only"] is False
        assert c.get("/admin/limits/crud").json() == view
        listed = status(gw)["crud"]
        assert {k: listed[k] for k in view} == view  # the list is the family's views...
        assert listed["caps"] == {"requests": 5}  # ...with the caps and the counters
        assert listed["subjects"] == [] and listed["subjects_total"] == 0

        body = {k: v for k, v in view.items() if k not in ("created_at", "updated_at")}
        r = c.put("/admin/limits/crud", json={**body, "tokens": {"output": 100}})
        assert r.status_code == 200, r.text
        assert status(gw)["crud"]["caps"] == {"output_tokens": 100, "requests": 5}
        assert c.post("/admin/limits/crud/disable").json()["disabled"] is True
        assert status(gw)["crud"]["disabled"] is True
        assert c.post("/admin/limits/crud/enable").json()["disabled"] is False

        bad = c.put("/admin/limits/crud", json={**body, "window": "fortnight"})
        problems = assert_error(bad, 400, "config_invalid")["problems"]
        assert problems[0]["path"].endswith("window"), problems
        assert "unknown window" in problems[0]["message"]
        assert_error(c.post("/admin/limits", json={"id": "none"}), 400, "config_invalid")
        assert_error(c.post("/admin/limits", json=body), 409, "conflict")

        assert c.delete("/admin/limits/crud").json() == {"status": "deleted", "id": "crud"}
        assert_error(c.get("/admin/limits/crud"), 404, "not_found", "limit not found")


# -------------------------------------------------------------------------------- status


def test_status_shows_each_subjects_use_what_remains_and_when_it_resets(
    gw: Agwd, fake: FakeUpstream
) -> None:
    keys = apply(gw, fake, [STREAMS, DOLLARS, DAILY])
    a1, a2 = spent(chat(gw, keys["team-a"])), spent(chat(gw, keys["team-a"]))
    b1 = spent(chat(gw, keys["team-b"]))
    found = status(gw)
    assert list(found) == ["daily", "dollars", "streams"]  # by id, as every list

    daily = found["daily"]
    assert daily["window"] == "1d" and daily["caps"] == {"requests": 3}
    assert daily["subjects_total"] == 2
    a, b = daily["subjects"]  # the busiest first
    assert a["subject"] == "team-a" and b["subject"] == "team-b"
    today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    assert a["window_start"] == today.strftime("%Y-%m-%dT00:00:00.000Z")
    assert a["resets_at"] == (today + timedelta(days=1)).strftime("%Y-%m-%dT00:00:00.000Z")
    assert a["used"] == {"requests": 2}  # a counter counts what its limit caps, and requests
    assert a["in_flight"] == {"requests": 0}  # of what the limit caps
    assert a["remaining"] == {"requests": 1}
    assert b["used"]["requests"] == 1 and b["remaining"] == {"requests": 2}

    dollars = subjects(gw, "dollars")
    assert dollars["team-a"]["used"] == {
        "cost_usd": pytest.approx((sum(a1) + sum(a2)) * PER_TOKEN),
        "requests": 2,
    }
    assert dollars["team-b"]["used"]["cost_usd"] == pytest.approx(sum(b1) * PER_TOKEN)
    assert dollars["team-b"]["remaining"]["cost_usd"] == pytest.approx(1 - sum(b1) * PER_TOKEN)

    streams = status(gw)["streams"]
    assert streams["enforce"] is False and streams["caps"] == {"concurrent": 2}
    for subj in streams["subjects"]:
        assert subj["window_start"] is None and subj["resets_at"] is None  # lifetime
        assert subj["remaining"] == {"concurrent": 2}
        assert subj["used"]["requests"] > 0


def test_status_filters_and_bounds_the_subjects(gw: Agwd, fake: FakeUpstream) -> None:
    keys = apply(gw, fake, [DAILY, DOLLARS])
    for key in ("team-a", "team-a", "team-b"):
        spent(chat(gw, keys[key]))
    assert list(status(gw, limit_id="dollars")) == ["dollars"]
    assert status(gw, limit_id="nope") == {}
    only_b = status(gw, subject="team-b")
    assert [s["subject"] for s in only_b["daily"]["subjects"]] == ["team-b"]
    assert only_b["daily"]["subjects_total"] == 1
    assert status(gw, subject="nobody")["daily"]["subjects"] == []
    one = status(gw, limit="1")["daily"]
    assert [s["subject"] for s in one["subjects"]] == ["team-a"]
    assert one["subjects_total"] == 2
    with gw.client() as c:
        for bad in ("0", "1001", "x", "-1"):
            r = c.get("/admin/limits", params={"limit": bad})
            assert_error(r, 400, "invalid_parameter", "limit must be an integer between 1 and 1000")


def test_requests_in_flight_are_shown_as_held(gw: Agwd, fake: FakeUpstream) -> None:
    keys = apply(gw, fake, [{**STREAMS, "enforce": True}, DOLLARS])
    fake.configure(delay_ms=1500)
    done = threading.Event()

    def call() -> None:
        try:
            spent(chat(gw, keys["team-a"], max_tokens=100))
        finally:
            done.set()

    worker = threading.Thread(target=call)
    worker.start()
    try:
        deadline = time.monotonic() + 5
        while True:
            held = subjects(gw, "streams").get("team-a", {}).get("in_flight", {})
            if held.get("concurrent") == 1 or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert held == {"concurrent": 1}  # of what the limit caps
        assert subjects(gw, "streams")["team-a"]["remaining"] == {"concurrent": 1}
        # the dollars limit holds the estimated input and the output cap until the answer ends
        dollars = subjects(gw, "dollars")["team-a"]
        assert dollars["in_flight"]["cost_usd"] >= 100 * PER_TOKEN
        assert dollars["used"]["requests"] == 0
    finally:
        worker.join(30)
    assert done.is_set()
    after = subjects(gw, "dollars")["team-a"]
    assert after["in_flight"]["cost_usd"] == 0 and after["used"]["requests"] == 1


# --------------------------------------------------------------------------------- reset


def test_reset_forgets_one_subjects_use_or_every_subjects(gw: Agwd, fake: FakeUpstream) -> None:
    one = {"id": "one", "subject": "key", "window": "1d", "requests": 1}
    keys = apply(gw, fake, [one])
    assert chat(gw, keys["team-a"]).status_code == 200
    assert chat(gw, keys["team-a"]).status_code == 429
    assert chat(gw, keys["team-b"]).status_code == 200
    with gw.client() as c:
        r = c.post("/admin/limits/one/reset", json={"subject": "team-a"})
        assert r.status_code == 200, r.text
        assert r.json() == {"status": "reset", "id": "one", "subjects": 1}
        counted = subjects(gw, "one")
        assert counted["team-a"]["used"]["requests"] == 0
        assert counted["team-a"]["remaining"] == {"requests": 1}
        assert counted["team-b"]["used"]["requests"] == 1  # another subject keeps its use
        assert chat(gw, keys["team-a"]).status_code == 200
        assert chat(gw, keys["team-b"]).status_code == 429

        r = c.post("/admin/limits/one/reset", params={"subject": "nobody"})
        assert r.json() == {"status": "reset", "id": "one", "subjects": 0}
        r = c.post("/admin/limits/one/reset")  # no body: every subject
        assert r.json() == {"status": "reset", "id": "one", "subjects": 2}
    assert all(s["used"]["requests"] == 0 for s in subjects(gw, "one").values())
    assert chat(gw, keys["team-a"]).status_code == 200
    assert chat(gw, keys["team-b"]).status_code == 200


def test_reset_refuses_an_unknown_limit_and_a_bad_body(gw: Agwd, fake: FakeUpstream) -> None:
    apply(gw, fake, [DAILY])
    with gw.client() as c:
        assert_error(c.post("/admin/limits/nope/reset"), 404, "not_found", "limit not found")
        r = c.post("/admin/limits/daily/reset", json={"subjekt": "team-a"})
        assert_error(r, 400, "invalid_request", "unknown field 'subjekt'")
        r = c.post("/admin/limits/daily/reset", json={"subject": 5})
        assert_error(r, 400, "invalid_request", "subject must be a non-empty string")
        r = c.post("/admin/limits/daily/reset", json=["team-a"])
        assert_error(r, 400, "invalid_request")
        r = c.post(
            "/admin/limits/daily/reset",
            content=b"subject=a",
            headers={"content-type": "text/plain"},
        )
        assert_error(r, 415, "unsupported_media_type")
        r = c.post("/admin/limits/daily/reset", params={"subject": "a"}, json={"subject": "b"})
        assert_error(r, 400, "invalid_request", "subject given twice")
        assert_error(c.get("/admin/limits/daily/reset"), 405, "method_not_allowed")


def test_the_limit_endpoints_need_the_admin_credentials(gw: Agwd, fake: FakeUpstream) -> None:
    apply(gw, fake, [DAILY])
    with gw.client(auth=False) as c:
        assert_error(c.get("/admin/limits"), 401, "unauthorized")
        assert_error(c.post("/admin/limits/daily/reset"), 401, "unauthorized")
        assert_error(c.get("/admin/limits/daily"), 401, "unauthorized")
    with httpx.Client(base_url=gw.admin_url, auth=("admin", "wrong"), trust_env=False) as c:
        assert_error(c.get("/admin/limits"), 401, "unauthorized")


# -------------------------------------------------------------------------------- agwctl


def test_agwctl_limits_status_list_and_reset(gw: Agwd, fake: FakeUpstream, tmp_path: Path) -> None:
    keys = apply(gw, fake, [DAILY, STREAMS])
    for key in ("team-a", "team-a", "team-b"):
        spent(chat(gw, keys[key]))
    ctl = Agwctl(gw.env, tmp_path)

    lines = ctl.ok("gateway", "limits", "status").splitlines()
    assert lines[0].split() == [
        "LIMIT", "SUBJECT", "METER", "USED", "IN-FLIGHT", "CAP", "REMAINING", "RESETS-AT"
    ]  # fmt: skip
    rows = [line.split() for line in lines[1:]]
    assert rows[0][:7] == ["daily", "team-a", "requests", "2", "0", "3", "1"]
    assert RFC3339_MS.match(rows[0][7])
    assert rows[1][:7] == ["daily", "team-b", "requests", "1", "0", "3", "2"]
    shadow = [r for r in rows if r[0] == "streams"]
    assert shadow and all(r[1] == "(shadow)" and r[-1] == "never" for r in shadow)

    out = ctl.ok("gateway", "limits", "status", "--limit-id", "daily", "--subject", "team-b")
    assert [line.split()[1] for line in out.splitlines()[1:]] == ["team-b"]
    data = json.loads(ctl.ok("-o", "json", "gateway", "limits", "status", "--limit-id", "daily"))
    assert [s["subject"] for s in data["items"][0]["subjects"]] == ["team-a", "team-b"]
    proc = ctl("gateway", "limits", "status", "--max-subjects", "1")
    assert proc.returncode == 0, proc.stderr
    assert "limit daily: 1 of 2 subjects shown (--max-subjects for more)" in proc.stderr

    listed = ctl.ok("gateway", "limits", "list")
    assert re.search(
        r"^daily\s+key\s+1d\s+requests=3\s+yes\s+finish\s+2\s+no\s+store$", listed, re.M
    )

    answer = json.loads(ctl.ok("gateway", "limits", "reset", "daily", "--subject", "team-a"))
    assert answer == {"status": "reset", "id": "daily", "subjects": 1}
    assert subjects(gw, "daily")["team-a"]["used"]["requests"] == 0
    answer = json.loads(ctl.ok("gateway", "limits", "reset", "daily"))
    assert answer == {"status": "reset", "id": "daily", "subjects": 2}
    assert_one_line_error(
        ctl("gateway", "limits", "reset", "nope"),
        "POST /admin/limits/nope/reset: 404 limit not found",
    )
