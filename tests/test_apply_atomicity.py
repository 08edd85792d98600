"""An apply is all or nothing: bad bundles change no byte (in-process and through agwctl), kill -9
mid-apply leaves old or new. On each engine (tests/support/engines.py): "no byte" is the SQLite
file and its WAL, or every row of every table of the PostgreSQL database."""

from __future__ import annotations

import contextlib
import hashlib
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.admin import store_bytes
from tests.support.agwd import Agwd
from tests.support.engine_launchers import EngineAgwdLauncher, EngineInprocLauncher, store_of
from tests.support.engines import ENGINES
from tests.support.inproc import InprocGateway

API = {"apiVersion": "gateway.agw/v1alpha1", "kind": "GatewayBundle"}


@pytest.fixture(scope="module", params=ENGINES)
def engine(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="module")
def module_inproc(
    tmp_path_factory: pytest.TempPathFactory, admin_hash: str, engine: str
) -> Iterator[InprocGateway]:
    launcher = EngineInprocLauncher(tmp_path_factory.mktemp("inproc"), admin_hash, engine)
    yield launcher.start()
    launcher.close()


@pytest.fixture(scope="module")
def module_agwd(
    tmp_path_factory: pytest.TempPathFactory, admin_hash: str, engine: str
) -> Iterator[Agwd]:
    launcher = EngineAgwdLauncher(tmp_path_factory.mktemp("agwd"), admin_hash, engine)
    yield launcher.start()
    launcher.close()


@pytest.fixture
def agwd_factory(tmp_path: Path, admin_hash: str, engine: str) -> Iterator[EngineAgwdLauncher]:
    launcher = EngineAgwdLauncher(tmp_path, admin_hash, engine)
    yield launcher
    launcher.close()


def store_digest(store: Path | str) -> str:
    """The SQLite file and its WAL, byte for byte; every row of a PostgreSQL store."""
    h = hashlib.sha256()
    for name, content in sorted(store_bytes(store).items()):
        h.update(name.encode() + b"\0" + content + b"\0")
    return h.hexdigest()


def good_bundle() -> dict[str, Any]:
    return {
        **API,
        "providers": [{"id": "p1", "provider_type": "openai", "api_key": "sk-good-123456"}],
        "llmRoutes": [
            {
                "id": "r1",
                "protocol": "openai",
                "match_policy": {"path_prefix": "/v1"},
                "target_policy": {"provider_id": "p1"},
            }
        ],
        "virtualKeys": [{"id": "k1", "allowed_route_ids": ["r1"]}],
    }


BAD_BUNDLES = {
    "wrong_type": {
        **API,
        "providers": [{"id": "p2", "provider_type": "openai", "disabled": "sometimes"}],
    },
    "unknown_field": {**API, "providers": [{"id": "p2", "provider_type": "openai", "apikey": "x"}]},
    "duplicate_id": {
        **API,
        "providers": [
            {"id": "p2", "provider_type": "openai"},
            {"id": "p2", "provider_type": "gemini"},
        ],
    },
    "dangling_reference": {
        **API,
        "llmRoutes": [
            {
                "id": "r2",
                "protocol": "openai",
                "match_policy": {"path_prefix": "/x"},
                "target_policy": {"provider_id": "ghost"},
            }
        ],
    },
    "partly_good": {
        **API,
        "providers": [{"id": "p3", "provider_type": "openai"}],
        "mcpRoutes": [{"service_id": "nowhere"}],
    },
    "wrong_kind": {"apiVersion": "gateway.agw/v1alpha1", "kind": "Other"},
    "not_an_object": ["a"],
}


@pytest.mark.parametrize("name", sorted(BAD_BUNDLES))
def test_bad_bundle_changes_nothing(module_inproc: InprocGateway, name: str) -> None:
    with module_inproc.client() as c:
        first = c.post("/admin/gateway/apply", json={"bundle": good_bundle()})
        assert first.status_code == 200, first.text
        before = store_digest(module_inproc.store)
        r = c.post("/admin/gateway/apply", json={"bundle": BAD_BUNDLES[name]})
        assert r.status_code == 400
        assert r.json()["error"]
        assert store_digest(module_inproc.store) == before
        assert [p["id"] for p in c.get("/admin/llm/providers").json()["items"]] == ["p1"]
        assert c.get("/admin/health").json() == {"status": "ok"}


def test_noop_apply_writes_nothing(module_inproc: InprocGateway) -> None:
    with module_inproc.client() as c:
        c.post("/admin/gateway/apply", json={"bundle": good_bundle()})
        before = store_digest(module_inproc.store)
        r = c.post("/admin/gateway/apply", json={"bundle": good_bundle()}).json()
        assert r["changed"] is False
        assert r["counts"] == {"create": 0, "update": 0, "skip": 3, "delete": 0, "error": 0}
        assert store_digest(module_inproc.store) == before


def big_bundle(n: int, model: str) -> dict[str, Any]:
    return {
        **API,
        "providers": [
            {"id": f"p{i:05d}", "provider_type": "openai", "default_model": model} for i in range(n)
        ],
        "llmRoutes": [
            {
                "id": f"r{i:05d}",
                "protocol": "openai",
                "match_policy": {"path_prefix": f"/r{i}"},
                "target_policy": {"provider_id": f"p{i:05d}"},
                "description": model,
            }
            for i in range(n)
        ],
    }


def test_kill_9_during_apply_leaves_old_or_new(agwd_factory: EngineAgwdLauncher) -> None:
    n = 1500
    agwd = agwd_factory.start()
    with agwd.client() as c:
        assert (
            c.post(
                "/admin/gateway/apply", json={"bundle": big_bundle(n, "old")}, timeout=120
            ).status_code
            == 200
        )
    outcomes: set[str] = set()
    # SQLite's apply is many page writes into one file: kills at six moments of it. On
    # PostgreSQL the server, not agwd, holds the transaction: three moments (before, during,
    # near the commit) keep the suite's time down.
    sqlite = isinstance(store_of(agwd), Path)
    delays = (0.05, 0.2, 0.4, 0.7, 1.0, 1.5) if sqlite else (0.1, 0.5, 1.0)
    for attempt, delay in enumerate(delays):
        model = f"new{attempt}"

        def post(m: str = model, url: str = agwd.admin_url, auth: str | None = agwd.auth) -> None:
            user, _, pw = (auth or ":").partition(":")
            with contextlib.suppress(httpx.HTTPError):
                httpx.post(
                    url + "/admin/gateway/apply",
                    json={"bundle": big_bundle(n, m)},
                    auth=(user, pw),
                    timeout=120,
                    trust_env=False,
                )

        t = threading.Thread(target=post, daemon=True)
        t.start()
        time.sleep(delay)
        agwd.kill()
        t.join(30)
        store = store_of(agwd)
        if isinstance(store, Path):
            with sqlite3.connect(store) as db:
                assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        agwd = agwd_factory.start(store=store)
        with agwd.client() as c:
            providers = c.get("/admin/llm/providers").json()["items"]
            routes = c.get("/admin/llm/routes").json()["items"]
        models = {p["default_model"] for p in providers} | {r["description"] for r in routes}
        assert len(providers) == n and len(routes) == n
        assert len(models) == 1, f"mixed config after kill -9: {sorted(models)[:5]}"
        outcomes.add("new" if models == {model} else "old")
    print("kill -9 outcomes:", sorted(outcomes))


GOOD_YAML = """apiVersion: gateway.agw/v1alpha1
kind: GatewayBundle
providers:
  - {id: p1, provider_type: openai, api_key: sk-good-123456}
llmRoutes:
  - {id: r1, protocol: openai, match_policy: {path_prefix: /v1}, target_policy: {provider_id: p1}}
"""
BAD_YAML = {
    "yaml_syntax": (GOOD_YAML + "  - {id: r2, protocol: [\n", "invalid YAML"),
    "unknown_field": (GOOD_YAML.replace("api_key:", "apikey:"), "did you mean api_key?"),
    "wrong_type": (GOOD_YAML + "virtualKeys:\n  - {id: k, disabled: perhaps}\n", "disabled"),
    "missing_env": (
        GOOD_YAML.replace("sk-good-123456", "'${AGW_TEST_UNSET_KEY}'"),
        'environment variable "AGW_TEST_UNSET_KEY" is not set',
    ),
    "duplicate_id": (
        GOOD_YAML.replace("providers:\n", "providers:\n  - {id: p1, provider_type: gemini}\n"),
        "duplicate provider id 'p1'",
    ),
    "dangling_reference": (
        GOOD_YAML.replace("{provider_id: p1}", "{provider_id: ghost}"),
        "provider 'ghost' does not exist",
    ),
    "server_side_dangling": (
        "apiVersion: gateway.agw/v1alpha1\nkind: GatewayBundle\n"
        "mcpRoutes:\n  - {service_id: ghost}\n",
        "mcp service 'ghost' does not exist",
    ),
}


@pytest.mark.parametrize("name", sorted(BAD_YAML))
def test_bad_bundle_through_agwctl_changes_no_byte(
    module_agwd: Agwd, tmp_path: Path, name: str
) -> None:
    from tests.support.agwctl import run_agwctl

    good = tmp_path / "good.yaml"
    good.write_text(GOOD_YAML)
    assert (
        run_agwctl(
            "gateway", "apply", "-f", str(good), env=module_agwd.env, cwd=tmp_path
        ).returncode
        == 0
    )
    before = store_digest(store_of(module_agwd))
    text, expected = BAD_YAML[name]
    bad = tmp_path / "bad.yaml"
    bad.write_text(text)
    proc = run_agwctl("gateway", "apply", "-f", str(bad), env=module_agwd.env, cwd=tmp_path)
    assert proc.returncode != 0
    assert expected in proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    assert store_digest(store_of(module_agwd)) == before
