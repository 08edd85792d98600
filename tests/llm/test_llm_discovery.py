"""Model discovery through the admin API and agwctl, against the fake upstream's model lists."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fakes.run import FakeUpstream, start_fake_upstream
from tests.support.agwctl import run_agwctl
from tests.support.agwd import Agwd, AgwdLauncher

KEY = "sk-upstream-secret-0004"
MODELS = ["fake-gpt", "fake-claude", "fake-gemini"]


@pytest.fixture(scope="module")
def fake(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeUpstream]:
    with start_fake_upstream(tmp_path_factory.mktemp("fake"), "--require-key", KEY) as f:
        yield f


@pytest.fixture(scope="module")
def gw(module_agwd_factory: AgwdLauncher, fake: FakeUpstream) -> Agwd:
    agwd = module_agwd_factory.start()
    bundle = {
        "apiVersion": "gateway.agw/v1alpha1",
        "kind": "GatewayBundle",
        "providers": [
            {"id": "oa", "provider_type": "openai", "base_url": f"{fake.url}/v1", "api_key": KEY},
            {"id": "an", "provider_type": "anthropic", "base_url": fake.url, "api_key": KEY},
            {"id": "gm", "provider_type": "gemini", "base_url": fake.url, "api_key": KEY},
            {"id": "dead", "provider_type": "openai", "base_url": "http://127.0.0.1:9/v1"},
        ],
        "managedModels": [{"provider_id": "gm", "upstream_model": "fake-gemini"}],
    }
    with agwd.client() as c:
        assert c.post("/admin/gateway/apply", json={"bundle": bundle}).status_code == 200
    return agwd


@pytest.mark.parametrize("provider", ["oa", "an", "gm"])
def test_refresh_and_list(gw: Agwd, fake: FakeUpstream, provider: str) -> None:
    with gw.client() as c:
        assert c.get(f"/admin/llm/models/providers/{provider}/discovered").json() == {"items": []}
        r = c.post(f"/admin/llm/models/providers/{provider}/refresh")
        assert r.status_code == 200, r.text
        items = r.json()["items"]
        assert [i["upstream_model"] for i in items] == MODELS
        assert all(i["status"] == "ok" and i["provider_id"] == provider for i in items)
        listed = c.get(f"/admin/llm/models/providers/{provider}/discovered").json()["items"]
        assert listed == items
    sent = fake.requests()[-1]
    if provider == "an":
        assert sent["headers"]["anthropic-version"] and sent["headers"]["x-api-key"] == KEY
        assert items[0]["display_name"] == "fake-gpt"
    if provider == "gm":
        assert sent["path"] == "/v1beta/models" and sent["headers"]["x-goog-api-key"] == KEY
        assert items[2]["capabilities"]["streaming"] is True
        assert items[2]["capabilities"]["context_window"] == 32768


def test_managed_model_view_shows_the_snapshot(gw: Agwd) -> None:
    with gw.client() as c:
        c.post("/admin/llm/models/providers/gm/refresh")
        view = c.get("/admin/llm/models/managed/gm/fake-gemini").json()
        assert view["snapshot_status"] == "ok" and view["display_name"] == "Fake Gemini"
        assert view["capabilities"]["streaming"] is True
        # the view can be sent back as it is
        assert (
            c.put(
                "/admin/llm/models/managed/gm/fake-gemini",
                json={k: v for k, v in view.items() if k not in ("created_at", "updated_at")},
            ).status_code
            == 200
        )


def test_failures(gw: Agwd) -> None:
    with gw.client() as c:
        r = c.post("/admin/llm/models/providers/dead/refresh")
        assert r.status_code == 502 and r.json()["code"] == "upstream_failed"
        r = c.post("/admin/llm/models/providers/nope/refresh")
        assert r.status_code == 404 and r.json()["error"] == "provider not found"


def test_agwctl_model_discovered(gw: Agwd, tmp_path: Path) -> None:
    out = run_agwctl("gateway", "model", "discovered", "refresh", "oa", env=gw.env, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].split() == ["UPSTREAM-MODEL", "DISPLAY-NAME", "STATUS", "FETCHED-AT"]
    assert [ln.split()[0] for ln in lines[1:]] == MODELS
    out = run_agwctl(
        "gateway", "-o", "json", "model", "discovered", "list", "oa", env=gw.env, cwd=tmp_path
    )
    assert out.returncode == 0 and '"fake-claude"' in out.stdout
