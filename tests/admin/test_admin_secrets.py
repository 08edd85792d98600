"""Secrets are masked as <redacted> in every admin response unless ?reveal=true, a PUT that
sends <redacted> back keeps the stored secret, and no secret ever reaches the log."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from tests.support.admin import (
    REDACTED,
    REVEAL,
    assert_error,
    bundle,
    created,
    items,
    make_provider,
    put_body,
    uid,
)
from tests.support.agwd import AgwdLauncher

# Every secret is unique, so a grep of the log finds it wherever it leaked.
SECRETS = {
    "provider": "sk-prov-SECRET-4f1d2a",
    "header": "Bearer hdr-SECRET-77aa1",
    "xkey": "xkey-SECRET-0b9c3",
    "credential": "sk-cred-SECRET-91e0",
    "mcp_api_key": "mcp-SECRET-token-5521",
    "mcp_password": "mcp-SECRET-pass-8812",
    "mcp_env": "ghp_SECRET_envtoken_3301",
    "acp_env": "sk-acp-SECRET-env-6610",
}


def get(node: Any, path: str) -> Any:
    for part in path.split("."):
        node = node[part]
    return node


def _objects(client: httpx.Client) -> list[tuple[str, dict[str, Any], dict[str, str]]]:
    """(url, view, {path: secret}) for one object of each family that holds secrets."""
    out: list[tuple[str, dict[str, Any], dict[str, str]]] = []
    pid = uid("sec-prov")
    created(
        client,
        "/admin/llm/providers",
        {
            "id": pid,
            "provider_type": "openai",
            "api_key": SECRETS["provider"],
            "network": {
                "extra_headers": {
                    "Authorization": SECRETS["header"],
                    "X-Api-Key": SECRETS["xkey"],
                    "X-Team": "visible-team",
                }
            },
        },
    )
    out.append(
        (
            f"/admin/llm/providers/{pid}",
            {"network.extra_headers.X-Team": "visible-team"},
            {
                "api_key": SECRETS["provider"],
                "network.extra_headers.Authorization": SECRETS["header"],
                "network.extra_headers.X-Api-Key": SECRETS["xkey"],
            },
        )
    )
    cid = uid("sec-cred")
    created(
        client,
        "/admin/credentials",
        {
            "id": cid,
            "type": "api_key",
            "provider_id": pid,
            "attributes": {"api_key": SECRETS["credential"], "priority": 3},
        },
    )
    out.append(
        (
            f"/admin/credentials/{cid}",
            {"attributes.priority": 3},
            {"attributes.api_key": SECRETS["credential"]},
        )
    )
    for auth, path, secret in (
        ({"type": "bearer", "api_key": SECRETS["mcp_api_key"]}, "auth.api_key", "mcp_api_key"),
        (
            {"type": "basic", "username": "bob", "password": SECRETS["mcp_password"]},
            "auth.password",
            "mcp_password",
        ),
    ):
        sid = uid("sec-mcp")
        created(
            client,
            "/admin/mcp/services",
            {"id": sid, "name": "m", "transport": "streamable_http", "url": "http://x/mcp"}
            | {"auth": auth},
        )
        out.append((f"/admin/mcp/services/{sid}", {}, {path: SECRETS[secret]}))
    sid = uid("sec-mcp")
    created(
        client,
        "/admin/mcp/services",
        {
            "id": sid,
            "name": "m",
            "transport": "stdio",
            "command": "mcp-server",
            "env": {"GITHUB_TOKEN": SECRETS["mcp_env"], "LOG_LEVEL": "debug"},
        },
    )
    out.append(
        (
            f"/admin/mcp/services/{sid}",
            {"env.LOG_LEVEL": "debug"},
            {"env.GITHUB_TOKEN": SECRETS["mcp_env"]},
        )
    )
    sid = uid("sec-acp")
    created(
        client,
        "/admin/acp/services",
        {
            "id": sid,
            "name": "a",
            "agent_type": "codex",
            "cwd": "/tmp",
            "env": {"OPENAI_API_KEY": SECRETS["acp_env"], "HOME": "/tmp"},
        },
    )
    out.append(
        (
            f"/admin/acp/services/{sid}",
            {"env.HOME": "/tmp"},
            {"env.OPENAI_API_KEY": SECRETS["acp_env"]},
        )
    )
    return out


def _assert_no_secret(text: str) -> None:
    leaked = [name for name, value in SECRETS.items() if value in text]
    assert not leaked, f"secrets {leaked} leaked into: {text[:2000]}"


@pytest.mark.parametrize("level", ["info", "debug"])
def test_secrets_redacted_revealed_kept_and_never_logged(
    agwd_factory: AgwdLauncher, level: str
) -> None:
    agwd = agwd_factory.start("--log-level", level)
    with agwd.client() as admin:
        objects = _objects(admin)
        for url, plain, secrets in objects:
            base = url.rsplit("/", 1)[0]
            oid = url.rsplit("/", 1)[1]
            one = admin.get(url)
            listed = [v for v in items(admin, base) if v["id"] == oid]
            for view in (one.json(), *listed):
                for path in secrets:
                    assert get(view, path) == REDACTED, (url, path)
                for path, value in plain.items():
                    assert get(view, path) == value, (url, path)
            _assert_no_secret(one.text)
            _assert_no_secret(admin.get(base).text)

            for revealed in (
                admin.get(url, params={"reveal": "true"}, headers=REVEAL).json(),
                next(v for v in items(admin, base, reveal="true") if v["id"] == oid),
            ):
                for path, value in secrets.items():
                    assert get(revealed, path) == value, (url, path)

            # a PUT that sends the redacted view back keeps every stored secret
            view = one.json()
            edit = {"default_model": "m2"} if "/providers/" in url else {"description": "x"}
            if "/credentials/" in url:
                edit = {"label": "edited"}
            r = admin.put(url, json={**put_body(view), **edit})
            assert r.status_code == 200, r.text
            _assert_no_secret(r.text)
            revealed = admin.get(url, params={"reveal": "true"}, headers=REVEAL).json()
            for path, value in secrets.items():
                assert get(revealed, path) == value, (url, path)

        # export hides them too; include_secrets shows them
        exported = admin.get("/admin/gateway/export")
        assert exported.status_code == 200
        _assert_no_secret(exported.text)
        assert REDACTED in exported.text
        full = admin.get(
            "/admin/gateway/export", params={"include_secrets": "true"}, headers=REVEAL
        ).text
        for name, value in SECRETS.items():
            if name != "credential":  # credentials are not a bundle family
                assert value in full, name

        # apply of the redacted export keeps the secrets (all skips)
        r = admin.post("/admin/gateway/apply", json={"bundle": exported.json()})
        assert r.status_code == 200, r.text
        assert r.json()["counts"]["create"] == r.json()["counts"]["update"] == 0
        pid = objects[0][0].rsplit("/", 1)[1]
        revealed = admin.get(
            f"/admin/llm/providers/{pid}", params={"reveal": "1"}, headers=REVEAL
        ).json()
        assert revealed["api_key"] == SECRETS["provider"]

        # requests that fail carry secrets too; they must not be logged either
        bad = {"id": uid("p"), "provider_type": "nope", "api_key": SECRETS["provider"]}
        assert_error(admin.post("/admin/llm/providers", json=bad), 400)
        bad_json = json.dumps({"api_key": SECRETS["provider"]})[:-1]
        assert_error(
            admin.post(
                "/admin/llm/providers",
                content=bad_json,
                headers={"Content-Type": "application/json"},
            ),
            400,
        )
        assert_error(
            admin.post(
                "/admin/gateway/apply",
                json={
                    "bundle": bundle(
                        providers=[
                            {"id": uid("p"), "provider_type": "gemini", "api_key": SECRETS["xkey"]}
                        ],
                        llmRoutes=[
                            {
                                "id": uid("r"),
                                "protocol": "openai",
                                "target_policy": {"provider_id": "missing"},
                            }
                        ],
                    )
                },
            ),
            400,
        )
        with httpx.Client(base_url=agwd.admin_url, trust_env=False) as anon:
            r = anon.get("/admin/llm/providers", auth=("admin", SECRETS["mcp_password"]))
            assert r.status_code == 401
            r = anon.get("/admin/llm/providers", headers={"Authorization": SECRETS["header"]})
            assert r.status_code == 401
    assert agwd.stop() == 0
    logs = agwd.logs()
    assert "config_committed" in logs  # the log is really being written
    _assert_no_secret(logs)


@pytest.mark.parametrize(
    ("url_of", "body_of"),
    [
        (
            lambda pid: "/admin/llm/providers",
            lambda pid: {"id": uid("p"), "provider_type": "openai", "api_key": REDACTED},
        ),
        (
            lambda pid: "/admin/credentials",
            lambda pid: {
                "type": "api_key",
                "provider_id": pid,
                "attributes": {"api_key": REDACTED},
            },
        ),
        (
            lambda pid: "/admin/mcp/services",
            lambda pid: {
                "id": uid("m"),
                "name": "m",
                "transport": "stdio",
                "command": "x",
                "env": {"API_TOKEN": REDACTED},
            },
        ),
    ],
)
def test_redacted_placeholder_without_stored_secret_is_400(
    api: httpx.Client, url_of: Any, body_of: Any
) -> None:
    pid = make_provider(api)
    url = url_of(pid)
    before = items(api, url, reveal="true")
    assert_error(api.post(url, json=body_of(pid)), 400, None, REDACTED)
    assert items(api, url, reveal="true") == before


def test_put_with_a_new_secret_replaces_it(api: httpx.Client) -> None:
    pid = make_provider(api, api_key="sk-old-value")
    url = f"/admin/llm/providers/{pid}"
    r = api.put(url, json={"id": pid, "provider_type": "openai", "api_key": "sk-new-value"})
    assert r.status_code == 200 and r.json()["api_key"] == REDACTED
    assert (
        api.get(url, params={"reveal": "true"}, headers=REVEAL).json()["api_key"] == "sk-new-value"
    )
    # an omitted secret is cleared (PUT replaces the object), and empty is not redacted
    r = api.put(url, json={"id": pid, "provider_type": "openai"})
    assert r.status_code == 200 and r.json()["api_key"] == ""
