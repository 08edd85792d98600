"""agw/server.py's composition without listeners (``in_process``), as the in-process test tier
uses it: one config and one store behind both apps, a real upstream behind the data plane, the
async path through ``httpx.AsyncClient``, and a shutdown that leaves every usage row written.
The same composition behind real listeners: tests/test_agwd.py."""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.fakes.run import FakeUpstream, start_fake_upstream
from tests.support.inproc import InprocGateway, InprocLauncher


@pytest.fixture(scope="module")
def fake(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeUpstream]:
    with start_fake_upstream(tmp_path_factory.mktemp("fake")) as f:
        yield f


def llm_bundle(fake: FakeUpstream) -> dict[str, Any]:
    return {
        "apiVersion": "gateway.agw/v1alpha1",
        "kind": "GatewayBundle",
        "providers": [{"id": "fake", "provider_type": "openai", "base_url": f"{fake.url}/v1"}],
        "llmRoutes": [
            {
                "id": "llm",
                "protocol": "openai",
                "match_policy": {"path_prefix": "/llm"},
                "target_policy": {"provider_id": "fake"},
            }
        ],
    }


def chat(model: str = "gpt-4o") -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": "hello"}]}


def llm_rows(db: Path) -> list[dict[str, Any]]:
    with contextlib.closing(sqlite3.connect(db)) as conn:
        conn.row_factory = sqlite3.Row
        return [dict(r) for r in conn.execute("SELECT * FROM llm_usage_events")]


def test_an_applied_route_serves_on_the_data_app(inproc: InprocGateway, fake: FakeUpstream) -> None:
    with inproc.client() as admin:
        r = admin.post("/admin/gateway/apply", json={"bundle": llm_bundle(fake)})
        assert r.status_code == 200, r.text
    with inproc.data_client() as data:
        r = data.post("/llm/v1/chat/completions", json=chat())
        assert r.status_code == 200, r.text
        assert r.json()["choices"][0]["message"]["content"]
        assert data.get("/admin/health").status_code == 404  # the data app has no admin API
    assert fake.requests()[-1]["path"] == "/v1/chat/completions"


def test_async_clients_run_on_the_gateways_loop(inproc: InprocGateway, fake: FakeUpstream) -> None:
    async def scenario() -> list[int]:
        async with (
            httpx.AsyncClient(transport=inproc.admin_transport, base_url=inproc.admin_url) as a,
            httpx.AsyncClient(transport=inproc.data_transport, base_url=inproc.data_url) as d,
        ):
            assert inproc.auth is not None
            user, _, password = inproc.auth.partition(":")
            r = await a.post(
                "/admin/gateway/apply", json={"bundle": llm_bundle(fake)}, auth=(user, password)
            )
            assert r.status_code == 200, r.text
            return [(await d.post("/llm/v1/chat/completions", json=chat())).status_code]

    assert inproc.call(scenario) == [200]


def test_stop_writes_every_usage_row_and_a_restart_serves_the_stored_config(
    inproc_factory: InprocLauncher, fake: FakeUpstream
) -> None:
    first = inproc_factory.start()
    with first.client() as admin:
        assert admin.post("/admin/gateway/apply", json={"bundle": llm_bundle(fake)}).is_success
    with first.data_client() as data:
        for _ in range(5):
            assert data.post("/llm/v1/chat/completions", json=chat()).status_code == 200
    first.stop()  # the recorder drains its queue before the store closes
    assert len(llm_rows(first.db_path)) == 5
    first.stop()  # idempotent

    again = inproc_factory.start(db_path=first.db_path)
    with again.data_client() as data:
        assert data.post("/llm/v1/chat/completions", json=chat()).status_code == 200
