"""The A2A families in the control plane: admin CRUD with secrets redacted, validation naming
the place, bundle apply / export round trips, ``agwctl gateway a2a-service|a2a-route``, and a
store of schema 10 migrated to 11 with its routes kept."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
import uuid
from pathlib import Path
from typing import Any

from agw.store.db import Database, migration_files, migrations_dir
from tests.a2a.conftest import UPSTREAM_TOKEN, A2aGateway
from tests.support.agwctl import run_agwctl

BUNDLE_HEAD = {"apiVersion": "gateway.agw/v1alpha1", "kind": "GatewayBundle"}


def test_crud_with_secrets_redacted(gw: A2aGateway) -> None:
    sid = f"svc-{uuid.uuid4().hex[:8]}"
    service = {
        "id": sid,
        "card_url": gw.agent.card_url,
        "auth": {"type": "bearer", "api_key": UPSTREAM_TOKEN},
        "description": "planner for tests",
    }
    route = {"id": f"r-{sid}", "service_id": sid, "match_policy": {"path_prefix": f"/x/{sid}"}}
    with gw.agwd.client() as admin:
        made = admin.post("/admin/a2a/services", json=service)
        assert made.status_code == 201, made.text
        view = made.json()
        assert view["auth"]["api_key"] == "<redacted>" and view["name"] == sid
        assert view["card_refresh_interval"] == 300 * 10**9 and view["source"] == "config_store"
        assert UPSTREAM_TOKEN not in admin.get(f"/admin/a2a/services/{sid}").text
        assert admin.post("/admin/a2a/routes", json=route).status_code == 201
        assert {r["id"] for r in admin.get("/admin/a2a/routes").json()["items"]} >= {route["id"]}

        # an update that sends the redacted secret back keeps the stored one
        changed = {**view, "description": "renamed"}
        for key in ("created_at", "updated_at", "source", "read_only"):
            changed.pop(key)
        assert admin.put(f"/admin/a2a/services/{sid}", json=changed).status_code == 200
        with gw.data() as http:
            assert http.get(f"/x/{sid}/.well-known/agent-card.json").status_code == 200
            assert admin.post(f"/admin/a2a/services/{sid}/disable").status_code == 200
            off = http.get(f"/x/{sid}/tasks/t", headers={"a2a-version": "1.0"})
            assert off.status_code == 403 and "disabled" in off.json()["error"]["message"]
            assert admin.post(f"/admin/a2a/services/{sid}/enable").status_code == 200
            sent = http.post(
                f"/x/{sid}",
                json={"jsonrpc": "2.0", "id": 1, "method": "GetTask", "params": {"id": "n"}},
                headers={"a2a-version": "1.0"},
            )
            assert sent.json()["error"]["code"] == -32001  # reached the agent
        # the secret the update sent back as <redacted> is the one still used
        assert gw.agent.requests()[-1]["headers"]["authorization"] == f"Bearer {UPSTREAM_TOKEN}"

        in_use = admin.delete(f"/admin/a2a/services/{sid}")
        assert in_use.status_code == 409 and route["id"] in in_use.json()["error"]
        assert admin.delete(f"/admin/a2a/routes/{route['id']}").status_code in (200, 204)
        assert admin.delete(f"/admin/a2a/services/{sid}").status_code in (200, 204)
        assert admin.get(f"/admin/a2a/services/{sid}").status_code == 404


def test_invalid_objects_are_refused_naming_the_place(gw: A2aGateway) -> None:
    cases: list[tuple[str, dict[str, Any], str]] = [
        ("/admin/a2a/services", {"id": "b1", "card_url": "ftp://x/card"}, "card_url"),
        ("/admin/a2a/services", {"id": "b2"}, "card_url"),
        (
            "/admin/a2a/services",
            {"id": "b3", "card_url": "http://x/c", "auth": {"type": "bearer"}},
            "api_key",
        ),
        (
            "/admin/a2a/services",
            {"id": "b4", "card_url": "http://x/c", "card_refresh_interval": "10ms"},
            "card_refresh_interval",
        ),
        ("/admin/a2a/services", {"id": "b5", "card_url": "http://x/c", "extra": 1}, "extra"),
        ("/admin/a2a/routes", {"id": "b6", "service_id": "nope"}, "nope"),
    ]
    with gw.agwd.client() as admin:
        for path, body, place in cases:
            r = admin.post(path, json=body)
            assert r.status_code == 400, (body, r.text)
            assert place in r.json()["error"], r.text


def test_bundle_apply_and_export_round_trip(gw: A2aGateway) -> None:
    u = uuid.uuid4().hex[:8]
    bundle = {
        **BUNDLE_HEAD,
        "a2aServices": [
            {
                "id": f"b-{u}",
                "card_url": gw.agent.card_url,
                "auth": {"type": "api_key", "api_key": "bundle-secret"},
                "card_refresh_interval": "2m",
            }
        ],
        "a2aRoutes": [
            {
                "id": f"br-{u}",
                "service_id": f"b-{u}",
                "match_policy": {"path_prefix": f"/b/{u}"},
                "auth_policy": {"require_virtual_key": True},
            }
        ],
    }
    with gw.agwd.client() as admin:
        first = admin.post("/admin/gateway/apply", json={"bundle": bundle})
        assert first.status_code == 200, first.text
        assert [(a["kind"], a["action"]) for a in first.json()["actions"]] == [
            ("a2a_service", "create"),
            ("a2a_route", "create"),
        ]
        again = admin.post("/admin/gateway/apply", json={"bundle": bundle}).json()
        assert again["changed"] is False and again["counts"]["skip"] == 2
        exported = admin.get("/admin/gateway/export").json()
    (service,) = [s for s in exported["a2aServices"] if s["id"] == f"b-{u}"]
    assert service["auth"]["api_key"] == "<redacted>"
    assert service["card_refresh_interval"] == 120 * 10**9
    (route,) = [r for r in exported["a2aRoutes"] if r["id"] == f"br-{u}"]
    assert route["auth_policy"]["require_virtual_key"] is True
    keys = list(exported)
    assert keys.index("a2aServices") < keys.index("a2aRoutes")
    # the export, secrets redacted, applies as a no-op
    with gw.agwd.client() as admin:
        back = admin.post("/admin/gateway/apply", json={"bundle": exported}).json()
        assert back["changed"] is False
        admin.delete(f"/admin/a2a/routes/br-{u}")
        admin.delete(f"/admin/a2a/services/b-{u}")


def test_agwctl_lists_and_shows_a2a_objects(gw: A2aGateway, tmp_path: Path) -> None:
    services = run_agwctl("gateway", "a2a-service", "list", env=gw.agwd.env, cwd=tmp_path)
    assert services.returncode == 0, services.stderr
    assert "planner" in services.stdout and "CARD-URL" in services.stdout
    routes = run_agwctl("gateway", "a2a-route", "list", env=gw.agwd.env, cwd=tmp_path)
    assert routes.returncode == 0 and "a2a-keyed" in routes.stdout and "/a2a/keyed" in routes.stdout
    one = run_agwctl("gateway", "a2a-service", "get", "planner", env=gw.agwd.env, cwd=tmp_path)
    assert one.returncode == 0 and json.loads(one.stdout)["auth"]["api_key"] == "<redacted>"


def test_a_schema_10_store_is_migrated_with_its_routes(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    with contextlib.closing(sqlite3.connect(path)) as conn:
        for migration in sorted(migrations_dir().glob("00*.sql"))[:10]:
            conn.executescript(migration.read_text())
        conn.execute(
            "INSERT INTO routes (id, tag, kind, config, created_at, updated_at) "
            "VALUES ('m1', '', 'mcp', '{}', 1, 2)"
        )
        conn.execute("PRAGMA user_version = 10")
        conn.commit()

    async def open_and_close() -> None:
        db = await Database.open(path)
        await db.close()

    asyncio.run(open_and_close())
    with contextlib.closing(sqlite3.connect(path)) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == migration_files()[-1][0]
        assert conn.execute("SELECT id, kind, updated_at FROM routes").fetchall() == [
            ("m1", "mcp", 2)
        ]
        conn.execute(
            "INSERT INTO routes (id, tag, kind, config, created_at, updated_at) "
            "VALUES ('a1', '', 'a2a', '{}', 1, 1)"
        )
        indexes = {r[1] for r in conn.execute("PRAGMA index_list(routes)")}
        assert "idx_routes_kind" in indexes
