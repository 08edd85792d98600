"""Helpers for the limit tests that drive a real agwd: a bundle with one priced OpenAI route
behind virtual keys, requests through it, and the admin API's view of the counters."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

from tests.fakes.run import FakeUpstream
from tests.support.agwd import Agwd

# a token costs a tenth of a cent either way: the arithmetic stays plain
PRICE = {"input": 1000.0, "output": 1000.0}
PER_TOKEN = 0.001
KEYS = ("team-a", "team-b")
HI = [{"role": "user", "content": "hi"}]


def bundle(fake: FakeUpstream, limits: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "apiVersion": "gateway.agw/v1alpha1",
        "kind": "GatewayBundle",
        "providers": [
            {"id": "oa", "provider_type": "openai", "base_url": f"{fake.url}/v1", "api_key": "k"}
        ],
        "managedModels": [{"provider_id": "oa", "upstream_model": "fake-gpt", "pricing": PRICE}],
        "llmRoutes": [
            {
                "id": "oa",
                "protocol": "openai",
                "match_policy": {"path_prefix": "/oa"},
                "target_policy": {"provider_id": "oa"},
                "auth_policy": {"require_virtual_key": True},
            }
        ],
        "virtualKeys": [{"id": k, "tag": k} for k in KEYS],
        "limits": limits,
    }


def apply(gw: Agwd, fake: FakeUpstream, limits: list[dict[str, Any]]) -> dict[str, str]:
    """Applies the bundle (pruning what it lacks); the bearer of each key."""
    with gw.client() as c:
        r = c.post("/admin/gateway/apply", json={"bundle": bundle(fake, limits), "prune": True})
        assert r.status_code == 200, r.text
    return bearers(gw)


def bearers(gw: Agwd) -> dict[str, str]:
    """The bearer of each key (the same after a restart: they are in the store)."""
    with gw.client() as c:
        return {k: c.get(f"/admin/virtual_keys/{k}").json()["key"] for k in KEYS}


def chat(gw: Agwd, key: str, **extra: Any) -> httpx.Response:
    """One chat completion on the ``oa`` route; the response (200 or the refusal)."""
    body = {"model": "fake-gpt", "messages": HI, "max_tokens": 20, **extra}
    with httpx.Client(base_url=gw.data_url, timeout=30, trust_env=False) as c:
        return c.post(
            "/oa/v1/chat/completions", json=body, headers={"authorization": f"Bearer {key}"}
        )


def spent(resp: httpx.Response) -> tuple[int, int]:
    """(input, output) tokens of a 200 answer."""
    assert resp.status_code == 200, resp.text
    usage = resp.json()["usage"]
    return int(usage["prompt_tokens"]), int(usage["completion_tokens"])


def status(gw: Agwd, **params: str) -> dict[str, dict[str, Any]]:
    """``GET /admin/limits`` by limit id."""
    with gw.client() as c:
        r = c.get("/admin/limits", params=params)
    assert r.status_code == 200, r.text
    return {item["id"]: item for item in r.json()["items"]}


def subjects(gw: Agwd, limit_id: str) -> dict[str, dict[str, Any]]:
    """What ``GET /admin/limits`` says of each subject of one limit."""
    item = status(gw, limit_id=limit_id)[limit_id]
    return {s["subject"]: s for s in item["subjects"]}


def away_from_minute_end(margin_s: float = 10) -> None:
    """A test of a ``1m`` window must not see it roll over: wait past the minute when it ends
    in under ``margin_s`` (at most ``margin_s`` + 0.2 s)."""
    left = 60 - time.time() % 60
    if left < margin_s:
        time.sleep(left + 0.2)


def away_from_midnight(margin_s: float = 20) -> None:
    """A test of a ``1d`` window must not see it roll over (at midnight UTC): wait past it when
    it is under ``margin_s`` away (at most ``margin_s`` + 2 s)."""
    now = datetime.now(UTC)
    midnight = (now + timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
    left = (midnight - now).total_seconds()
    if left < margin_s:
        time.sleep(left + 2)


def replica_bundle(fake: FakeUpstream, limits: list[dict[str, Any]]) -> dict[str, Any]:
    """Two keyless routes, ``open`` and ``closed``, on the fake upstream, and ``limits``."""
    keyed = bundle(fake, limits)
    (route,) = keyed["llmRoutes"]
    del route["auth_policy"], keyed["virtualKeys"]
    keyed["llmRoutes"] = [
        {**route, "id": rid, "match_policy": {"path_prefix": f"/{rid}"}}
        for rid in ("open", "closed")
    ]
    return keyed


def post(base_url: str, route: str) -> httpx.Response:
    body = {"model": "fake-gpt", "messages": HI, "max_tokens": 20}
    with httpx.Client(base_url=base_url, timeout=30, trust_env=False) as c:
        return c.post(f"/{route}/v1/chat/completions", json=body)
