"""Type registries (provider types, LLM API handler types) and cliauth authenticators."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.support.admin import assert_error, bundle, everything, uid
from tests.support.engine_launchers import EngineInprocLauncher
from tests.support.inproc import InprocGateway, InprocLauncher

ALL_TYPES = [
    "anthropic",
    "claudecode",
    "codex",
    "deepseek",
    "gemini",
    "ollama",
    "openai",
    "openrouter",
    "zhipu",
]
AUTHENTICATORS = ["claudecode", "codex", "gemini"]


@pytest.fixture(scope="module")
def restricted(module_inproc_factory: InprocLauncher) -> Iterator[httpx.Client]:
    gateway = module_inproc_factory.start(provider_types=("openai", "anthropic"))
    with gateway.client() as client:
        yield client


def test_provider_types_all_enabled_by_default(api: httpx.Client) -> None:
    r = api.get("/admin/llm/provider_types")
    assert r.status_code == 200
    assert r.json() == {"items": [{"provider_type": t, "enabled": True} for t in ALL_TYPES]}


def test_provider_types_restricted_at_startup(restricted: httpx.Client) -> None:
    got = restricted.get("/admin/llm/provider_types").json()["items"]
    assert [i["provider_type"] for i in got] == ALL_TYPES
    assert [i["provider_type"] for i in got if i["enabled"]] == ["anthropic", "openai"]


@pytest.mark.parametrize("ptype", ["openai", "anthropic", "OpenAI"])
def test_enabled_types_can_be_created(restricted: httpx.Client, ptype: str) -> None:
    r = restricted.post("/admin/llm/providers", json={"id": uid("ok"), "provider_type": ptype})
    assert r.status_code == 201, r.text
    assert r.json()["provider_type"] == ptype.lower()


@pytest.mark.parametrize("ptype", ["gemini", "deepseek", "codex"])
def test_disabled_types_are_rejected(restricted: httpx.Client, ptype: str) -> None:
    before = everything(restricted)
    pid = uid("off")
    r = restricted.post("/admin/llm/providers", json={"id": pid, "provider_type": ptype})
    assert_error(r, 400, None, ptype)
    # nor via PUT onto an existing provider, nor via apply
    ok = uid("ok")
    restricted.post("/admin/llm/providers", json={"id": ok, "provider_type": "openai"})
    before = everything(restricted)
    r = restricted.put(f"/admin/llm/providers/{ok}", json={"id": ok, "provider_type": ptype})
    assert_error(r, 400, None, ptype)
    r = restricted.post(
        "/admin/gateway/apply",
        json={"bundle": bundle(providers=[{"id": pid, "provider_type": ptype}])},
    )
    assert r.status_code == 400, r.text
    assert r.json()["status"] == "error"
    assert ("provider", pid) in {(a["kind"], a["id"]) for a in r.json()["actions"]}
    assert everything(restricted) == before


def test_unknown_provider_type_is_400(api: httpx.Client) -> None:
    r = api.post("/admin/llm/providers", json={"id": uid("x"), "provider_type": "bedrock"})
    body = assert_error(r, 400, "config_invalid")
    assert [p["path"] for p in body["problems"]] == ["provider_type"]


def test_api_handler_types(api: httpx.Client) -> None:
    r = api.get("/admin/llm/api_handler_types")
    assert r.status_code == 200
    assert r.json() == {
        "items": [{"llm_api_handler_type": t} for t in ("anthropic", "cc", "gemini", "openai")]
    }


# ------------------------------------------------------------------------------------ cliauth


def test_authenticators_list_and_get(inproc: InprocGateway) -> None:
    with inproc.client() as c:
        listed = c.get("/admin/cliauth/authenticators").json()["items"]
        assert [a["name"] for a in listed] == AUTHENTICATORS
        assert all(a["enabled"] is False and a["config"] is None for a in listed)
        for name in AUTHENTICATORS:
            one = c.get(f"/admin/cliauth/authenticators/{name}")
            assert one.status_code == 200
            assert one.json()["name"] == name and one.json()["enabled"] is False
        assert_error(c.get("/admin/cliauth/authenticators/github"), 404, "not_found", "github")
        assert_error(c.put("/admin/cliauth/authenticators/github", json={"enabled": True}), 404)


def test_authenticator_put_lifecycle_is_runtime_only(inproc_factory: EngineInprocLauncher) -> None:
    first = inproc_factory.start()
    url = "/admin/cliauth/authenticators/claudecode"
    with first.client() as c:
        r = c.put(url, json={"enabled": True, "config": {}})
        assert r.status_code == 201, r.text
        assert r.json()["status"] == "enabled"
        auth = r.json()["authenticator"]
        assert auth["name"] == "claudecode" and auth["enabled"] is True
        assert auth["config"]["callback_port"] == 0  # factory defaults filled

        r = c.put(url, json={"config": {"transport_profile": "browser_like_tls"}})
        assert r.status_code == 200, r.text
        assert r.json()["status"] == "updated"
        assert r.json()["authenticator"]["config"]["transport_profile"] == "browser_like_tls"
        assert c.get(url).json()["config"]["transport_profile"] == "browser_like_tls"
        listed = {a["name"]: a for a in c.get("/admin/cliauth/authenticators").json()["items"]}
        assert listed["claudecode"]["enabled"] is True and listed["codex"]["enabled"] is False
    first.stop()

    again = inproc_factory.start(store=first.store)
    with again.client() as c:
        assert c.get(url).json()["enabled"] is False  # not persisted
        r = c.put(url, json={"enabled": True, "config": {"no_browser": True}})
        assert r.status_code == 201
        r = c.put(url, json={"enabled": False})
        assert r.status_code == 200 and r.json()["status"] == "disabled"
        assert r.json()["authenticator"]["enabled"] is False
        assert c.get(url).json()["enabled"] is False


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        ({}, "enabled"),
        ({"enabled": True}, "config"),
        ({"enabled": False, "config": {}}, "config"),
        ({"enabled": True, "config": {"callback_port": -1}}, "callback_port"),
        ({"enabled": True, "config": {"no_browsr": True}}, "did you mean no_browser"),
        ({"enabled": True, "config": {}, "confg": {}}, "confg"),
        ({"enabled": "no", "config": {}}, "enabled"),
        ({"enabled": "yes", "config": {}}, "enabled"),
    ],
)
def test_authenticator_put_rejections(api: httpx.Client, body: dict[str, Any], needle: str) -> None:
    url = "/admin/cliauth/authenticators/gemini"
    before = api.get(url).json()
    assert_error(api.put(url, json=body), 400, None, needle)
    assert api.get(url).json() == before
