"""Managed credentials at run time: priority order, skipping a refused or rate-limited one,
backoff, and the runtime state shown by GET /admin/credentials."""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pytest

from tests.fakes.run import FakeUpstream, start_fake_upstream
from tests.support.agwd import Agwd, AgwdLauncher

KEY = "sk-upstream-secret-0005"


@pytest.fixture(scope="module")
def fake(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeUpstream]:
    with start_fake_upstream(tmp_path_factory.mktemp("fake"), "--require-key", KEY) as f:
        yield f


@pytest.fixture
def gw(agwd_factory: AgwdLauncher, fake: FakeUpstream) -> Iterator[Agwd]:
    agwd = agwd_factory.start()
    bundle = {
        "apiVersion": "gateway.agw/v1alpha1",
        "kind": "GatewayBundle",
        "providers": [
            {
                "id": "p",
                "provider_type": "openai",
                "base_url": f"{fake.url}/v1",
                "network": {"retry_delay_seconds": 0},
            },
        ],
        "llmRoutes": [
            {
                "id": "r",
                "protocol": "openai",
                "match_policy": {"path_prefix": "/"},
                "target_policy": {"provider_id": "p", "credential_selector": "fill_first"},
            },
        ],
    }
    with agwd.client() as c:
        assert c.post("/admin/gateway/apply", json={"bundle": bundle}).status_code == 200
    yield agwd
    fake.configure(status=0)


def chat(gw: Agwd) -> httpx.Response:
    return httpx.post(
        f"{gw.data_url}/v1/chat/completions",
        timeout=20,
        json={"model": "m", "messages": [{"role": "user", "content": "x"}]},
    )


def add_cred(gw: Agwd, cid: str, key: str, priority: int) -> None:
    with gw.client() as c:
        r = c.post(
            "/admin/credentials",
            json={
                "id": cid,
                "type": "api_key",
                "provider_id": "p",
                "attributes": {"api_key": key, "priority": priority},
            },
        )
        assert r.status_code == 201, r.text


def state(gw: Agwd, cid: str) -> dict[str, object]:
    with gw.client() as c:
        view: dict[str, object] = c.get(f"/admin/credentials/{cid}").json()
        return view


def test_refused_credential_is_skipped_afterwards(gw: Agwd, fake: FakeUpstream) -> None:
    add_cred(gw, "bad", "sk-wrong", 10)
    add_cred(gw, "good", KEY, 1)
    first = chat(gw)
    assert first.status_code == 401  # the upstream's own answer, not retried
    view = state(gw, "bad")
    assert view["auth_invalid"] is True and view["unavailable"] is True
    assert "invalid or missing API key" in str(view["last_error"])
    fake.clear()
    assert chat(gw).status_code == 200
    assert fake.requests()[-1]["headers"]["authorization"] == f"Bearer {KEY}"
    assert state(gw, "good")["unavailable"] is False


def test_rate_limited_credentials_back_off_then_recover(gw: Agwd, fake: FakeUpstream) -> None:
    add_cred(gw, "a", KEY, 10)
    add_cred(gw, "b", KEY, 5)
    fake.configure(status=429)
    fake.clear()
    r = chat(gw)
    assert r.status_code == 429
    assert len(fake.requests()) == 2  # a, then b
    for cid in ("a", "b"):
        view = state(gw, cid)
        quota = view["quota"]
        assert view["unavailable"] is True and isinstance(quota, dict) and quota["exceeded"] is True
        assert quota["backoff_level"] == 1 and view["next_retry_after"]
    fake.clear()
    t0 = time.monotonic()
    r = chat(gw)
    assert r.status_code == 429 and "cooling down" in r.json()["error"]["message"]
    assert fake.requests() == []  # nothing sent while every credential backs off
    assert time.monotonic() - t0 < 0.5  # and no retry rounds spent waiting for them
    fake.configure(status=0)
    time.sleep(1.2)  # first backoff: 1 s
    assert chat(gw).status_code == 200
    assert state(gw, "a")["unavailable"] is False and state(gw, "a")["quota"] == {
        "exceeded": False,
        "reason": "",
        "next_recover_at": None,
        "backoff_level": 0,
    }


def test_credential_view_can_be_sent_back(gw: Agwd) -> None:
    add_cred(gw, "c", KEY, 1)
    view = state(gw, "c")
    body = {k: v for k, v in view.items() if k not in ("created_at", "updated_at")}
    with gw.client() as c:
        r = c.put("/admin/credentials/c", json=body)
        assert r.status_code == 200, r.text
