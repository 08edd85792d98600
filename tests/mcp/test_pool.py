"""The upstream pool (agw/mcp/pool.py) starts the stdio servers a config routes to when the
config loads, all at once, in the background: agwd's start and a config apply do not wait for
them, the first client waits for the slowest (not their sum), and one that cannot start breaks
none of the others."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from tests.support.agwd import Agwd, AgwdLauncher
from tests.support.mcp import META, MODERN, rpc

FAKE = Path(__file__).resolve().parent.parent / "fakes" / "mcp_server.py"
DELAY_S = 2.5  # each fake sleeps this long before it serves anything
SLOW = ("s1", "s2", "s3")


def slow_service(sid: str) -> dict[str, Any]:
    return {
        "id": sid,
        "name": sid,
        "transport": "stdio",
        "command": sys.executable,
        "args": [str(FAKE), "--transport", "stdio", "--name", sid, "--start-delay", str(DELAY_S)],
    }


def bundle(services: list[dict[str, Any]], routes: dict[str, list[str]]) -> dict[str, Any]:
    return {
        "apiVersion": "gateway.agw/v1alpha1",
        "kind": "GatewayBundle",
        "mcpServices": services,
        "mcpRoutes": [
            {"id": f"r-{prefix}", "service_ids": ids, "match_policy": {"path_prefix": f"/{prefix}"}}
            for prefix, ids in routes.items()
        ],
    }


def stdio_states(agwd: Agwd) -> dict[str, str]:
    with agwd.client() as admin:
        view = admin.get("/admin/mcp/runtime").json()
    return {p["service_id"]: p["state"] for p in view["stdio"]}


def wait_ready(agwd: Agwd, ids: tuple[str, ...], deadline_s: float) -> float:
    """Seconds until every one of ``ids`` is ready, with no client having asked for any."""
    started = time.monotonic()
    while time.monotonic() - started < deadline_s:
        states = stdio_states(agwd)
        if all(states.get(sid) == "ready" for sid in ids):
            return time.monotonic() - started
        time.sleep(0.1)
    raise AssertionError(f"not ready after {deadline_s}s: {stdio_states(agwd)}")


def tools_list(agwd: Agwd, prefix: str) -> set[str]:
    headers = {
        "accept": "application/json, text/event-stream",
        "mcp-protocol-version": MODERN,
        "mcp-method": "tools/list",
    }
    body = rpc("tools/list", {"_meta": META})
    with httpx.Client(base_url=agwd.data_url, timeout=30, trust_env=False) as http:
        r = http.post(f"/{prefix}/mcp", json=body, headers=headers)
    assert r.status_code == 200, r.text
    return {t["name"] for t in r.json()["result"]["tools"]}


def test_stdio_servers_start_at_config_load_in_parallel(
    agwd_factory: AgwdLauncher, tmp_path: Path
) -> None:
    broken = {
        "id": "broken",
        "name": "broken",
        "transport": "stdio",
        "command": str(tmp_path / "no-such-mcp-server"),
    }
    services = [slow_service(s) for s in SLOW] + [broken]
    routes = {"all": [*SLOW, "broken"]}
    static = tmp_path / "bundle.yaml"
    static.write_text(json.dumps(bundle(services, routes)))
    began = time.monotonic()
    agwd = agwd_factory.start(static=static, auth=False)
    # agwd is ready before the servers are (it never waits for them) ...
    assert any(s != "ready" for s in stdio_states(agwd).values()) or (
        time.monotonic() - began >= DELAY_S
    )
    # ... which start on their own, side by side: the slowest's time, not the sum of theirs
    took = wait_ready(agwd, SLOW, deadline_s=30)
    assert took < len(SLOW) * DELAY_S, f"{took:.1f}s: started one after the other?"
    assert stdio_states(agwd)["broken"] != "ready"  # failed alone
    names = tools_list(agwd, "all")
    assert {f"{s}_echo" for s in SLOW} <= names, names

    # a config apply starts what it adds, and returns before it is up
    added = bundle([*services, slow_service("s4")], {**routes, "later": ["s4", "s1"]})
    with agwd.client() as admin:
        applied = time.monotonic()
        r = admin.post("/admin/gateway/apply", json={"bundle": added})
        assert r.status_code == 200, r.text
        assert time.monotonic() - applied < DELAY_S, "the apply waited for the server to start"
    wait_ready(agwd, ("s4",), deadline_s=30)
    assert {"s4_echo", "s1_echo"} <= tools_list(agwd, "later")
