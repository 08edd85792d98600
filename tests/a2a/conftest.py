"""One agwd and one fake A2A agent (the official ``a2a-sdk`` server, tests/fakes/a2a_agent.py)
for the A2A tests, made through the admin API:

- service ``planner``: the fake, which requires the bearer ``UPSTREAM_TOKEN`` (the service's
  ``auth``); service ``down``: a card URL where nothing listens;
- routes ``/a2a/open`` (anyone), ``/a2a/keyed`` (a virtual key), ``/a2a/down``;
- a virtual key (``gw.key``);
- a fake OpenTelemetry collector (``gw.otlp``) agwd exports its spans to.

Tests share them and must not depend on each other's requests: each finds its own usage rows
(by a context id it chose, or a task id it got).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from tests.fakes.otlp_receiver import OtlpReceiver, start_otlp_receiver
from tests.support.a2a import A2aAgent, run_a2a_agent
from tests.support.agwd import Agwd, AgwdLauncher, free_port, usage_rows

UPSTREAM_TOKEN = "up-secret-token"


@dataclass
class A2aGateway:
    agwd: Agwd
    agent: A2aAgent
    key: str
    otlp: OtlpReceiver

    def url(self, prefix: str) -> str:
        return self.agwd.data_url + prefix

    def data(self) -> httpx.Client:
        return httpx.Client(base_url=self.agwd.data_url, timeout=20, trust_env=False)

    def rows(self, where: str, args: tuple[Any, ...] = (), *, count: int = 1) -> list[Any]:
        """``a2a_usage_events`` rows matching ``where``, waiting (bounded) for ``count``."""
        return usage_rows(self.agwd.db_path, "a2a_usage_events", where, count, args)


def _create(admin: httpx.Client, path: str, body: dict[str, Any]) -> dict[str, Any]:
    r = admin.post(path, json=body)
    assert r.status_code == 201, r.text
    created: dict[str, Any] = r.json()
    return created


@pytest.fixture(scope="package")
def gw(tmp_path_factory: pytest.TempPathFactory, admin_hash: str) -> Iterator[A2aGateway]:
    tmp = tmp_path_factory.mktemp("a2a")
    launcher = AgwdLauncher(tmp, admin_hash)
    try:
        with run_a2a_agent(tmp, token=UPSTREAM_TOKEN) as agent, start_otlp_receiver(tmp) as otlp:
            agwd = launcher.start(
                "--otlp-endpoint", otlp.url, env={"OTEL_BSP_SCHEDULE_DELAY": "100"}
            )
            with agwd.client() as admin:
                _create(admin, "/admin/a2a/services", {
                    "id": "planner", "card_url": agent.card_url, "card_refresh_interval": "1h",
                    "auth": {"type": "bearer", "api_key": UPSTREAM_TOKEN},
                })  # fmt: skip
                down = f"http://127.0.0.1:{free_port()}/.well-known/agent-card.json"
                _create(admin, "/admin/a2a/services", {"id": "down", "card_url": down})
                for name, service, extra in (
                    ("open", "planner", {}),
                    ("keyed", "planner", {"auth_policy": {"require_virtual_key": True}}),
                    ("down", "down", {}),
                ):
                    _create(admin, "/admin/a2a/routes", {
                        "id": f"a2a-{name}", "service_id": service,
                        "match_policy": {"path_prefix": f"/a2a/{name}"}, **extra,
                    })  # fmt: skip
                key = _create(admin, "/admin/virtual_keys", {"id": "a2a-caller"})["key"]
            yield A2aGateway(agwd, agent, key, otlp)
    finally:
        launcher.close()
