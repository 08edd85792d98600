"""MCP sessions any replica can serve: three agwd replicas (the same static bundle, the same
secret key, each its own store) behind a round-robin balancer; the official ``mcp`` client opens
a session through it and continues it on every replica, in both eras. A tampered id, an id of
another route, key or owner, and an expired one are unknown (404); a restarted replica serves
the session it never saw. The sealed ids themselves: agw.mcp.session_id and McpState."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from mcp import Client

from agw.clock import now_ms
from agw.mcp.session_id import (
    ID_MAX,
    MAX_AGE_MS,
    Sealed,
    SessionSealer,
    UpstreamRef,
    env_session_key,
)
from agw.mcp.state import McpState
from tests.support.agwd import Agwd, AgwdLauncher
from tests.support.balancer import Balancer
from tests.support.mcp import ALPHA_TOOLS, initialize, post, rpc, start_gateway, sync
from tests.support.mcp_server import McpServerHandle, run_mcp_server

KEY = base64.b64encode(bytes(range(32))).decode()
ROUTES: dict[str, tuple[list[str], dict[str, Any]]] = {
    "/mcp": (["alpha", "local"], {}),
    "/keyed": (["alpha"], {"auth_policy": {"require_virtual_key": True}}),
    "/other": (["alpha"], {}),
}
REPLICAS = 3
# virtual keys of the same ids on every replica (each its own store: their own bearers)
KEY_IDS = ("vk-one", "vk-two")


@dataclass
class Cluster:
    replicas: list[Agwd]
    lb: Balancer
    alpha: McpServerHandle
    factory: AgwdLauncher
    bundle: Path
    bearers: list[dict[str, str]]  # per replica: key id -> its bearer there

    def url(self, prefix: str) -> str:
        return self.lb.url + prefix

    def rebuilt(self, agwd: Agwd) -> int:
        return sum(1 for e in agwd.log_events() if e.get("event") == "mcp_session_rebuilt")


@pytest.fixture(scope="module")
def cluster(
    module_agwd_factory: AgwdLauncher, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Cluster]:
    tmp = tmp_path_factory.mktemp("mcp-replicas")
    with contextlib.ExitStack() as stack:
        alpha = stack.enter_context(run_mcp_server(tmp, "streamable-http", "alpha"))
        local = stack.enter_context(run_mcp_server(tmp, "stdio", "local"))
        services = [alpha.service_config(), local.service_config()]
        first = start_gateway(
            module_agwd_factory, tmp, services, ROUTES, env={"AGW_SECRET_KEY": KEY}
        )
        bundle = tmp / "bundle.yaml"
        replicas = [first] + [
            module_agwd_factory.start(static=bundle, env={"AGW_SECRET_KEY": KEY})
            for _ in range(REPLICAS - 1)
        ]
        bearers: list[dict[str, str]] = []
        for replica in replicas:
            with replica.client() as admin:
                made = [admin.post("/admin/virtual_keys", json={"id": v}) for v in KEY_IDS]
                assert all(r.status_code in (200, 201) for r in made), [r.text for r in made]
                bearers.append({r.json()["id"]: r.json()["key"] for r in made})
        lb = stack.enter_context(Balancer([r.data_url for r in replicas]))
        yield Cluster(replicas, lb, alpha, module_agwd_factory, bundle, bearers)


def whoami(result: object) -> str:
    text = result.content[0].text  # type: ignore[attr-defined]
    found = json.loads(text)["mcp_session_id"]
    assert isinstance(found, str) and found
    return found


async def continue_session(client: Client, calls: int) -> set[str]:
    """tools/list and ``calls`` tools/call; the upstream session ids alpha saw."""
    names = {t.name for t in (await client.list_tools()).tools}
    assert names >= ALPHA_TOOLS and "local_echo" in names, names
    seen = set()
    for i in range(calls):
        result = await client.call_tool("alpha_add", {"a": i, "b": 1})
        assert result.structured_content == {"result": i + 1}
        local = await client.call_tool("local_echo", {"message": f"m{i}"})
        assert local.content[0].text == f"m{i}"  # type: ignore[union-attr]
        seen.add(whoami(await client.call_tool("alpha_whoami", {})))
    return seen


def test_a_handshake_session_continues_on_every_replica(cluster: Cluster) -> None:
    before = dict(cluster.lb.hits)
    rebuilt = [cluster.rebuilt(r) for r in cluster.replicas]

    @sync
    async def case() -> None:
        async with Client(cluster.url("/mcp"), mode="legacy") as client:
            assert client.protocol_version == "2025-11-25"
            upstream_ids = await continue_session(client, 3)
            # every replica bound the same upstream session: the one the id carries
            assert len(upstream_ids) == 1, upstream_ids

    case()
    for replica in cluster.replicas:
        assert cluster.lb.hits[replica.data_url] - before.get(replica.data_url, 0) >= 3
    # the two replicas that did not initialize rebuilt it from the id, once each
    grown = sorted(cluster.rebuilt(r) - n for r, n in zip(cluster.replicas, rebuilt, strict=True))
    assert grown == [0, 1, 1], grown


def test_the_stateless_era_works_on_every_replica(cluster: Cluster) -> None:
    before = dict(cluster.lb.hits)

    @sync
    async def case() -> None:
        async with Client(cluster.url("/mcp"), mode="auto") as client:
            assert client.protocol_version == "2026-07-28"
            await continue_session(client, 2)

    case()
    for replica in cluster.replicas:
        assert cluster.lb.hits[replica.data_url] - before.get(replica.data_url, 0) >= 2


def tampered(sid: str) -> str:
    middle = len(sid) // 2
    return sid[:middle] + ("A" if sid[middle] != "A" else "B") + sid[middle + 1 :]


def test_tampered_foreign_and_other_route_ids_are_unknown(cluster: Cluster) -> None:
    with httpx.Client(base_url=cluster.lb.url, timeout=30, trust_env=False) as http:
        sid, _ = initialize(http, "/mcp")
        assert len(sid) <= ID_MAX
        foreign = SessionSealer(os.urandom(32)).seal(
            Sealed("r-mcp", None, "2025-11-25", (), None, now_ms(), ())
        )
        assert foreign is not None
        refused = [
            ("/mcp", tampered(sid)),  # altered
            ("/mcp", foreign),  # sealed with another key
            ("/other", sid),  # minted for /mcp
            ("/mcp", sid + "x" * ID_MAX),  # longer than any id: never decrypted
            ("/mcp", "not a session"),
        ]
        for _ in range(REPLICAS):  # every replica refuses each, and keeps serving
            for path, bad in refused:
                r = post(http, path, rpc("tools/list"), session=bad, version="2025-11-25")
                assert r.status_code == 404, (path, r.text)
                assert r.json()["error"]["message"] == "Session not found"
            r = post(http, "/mcp", rpc("tools/list"), session=sid, version="2025-11-25")
            assert r.status_code == 200, r.text
        r = http.request(
            "DELETE", "/mcp", headers={"mcp-session-id": tampered(sid)}
        )  # a DELETE with an altered id ends nothing
        assert r.status_code == 404


def test_a_deleted_session_is_not_rebuilt_where_it_was_deleted(cluster: Cluster) -> None:
    one = cluster.replicas[0]
    with httpx.Client(base_url=one.data_url, timeout=30, trust_env=False) as http:
        sid, _ = initialize(http, "/mcp")
        assert http.request("DELETE", "/mcp", headers={"mcp-session-id": sid}).status_code == 200
        r = post(http, "/mcp", rpc("tools/list"), session=sid, version="2025-11-25")
        assert r.status_code == 404, r.text


def test_an_id_works_only_with_the_key_that_opened_it(cluster: Cluster) -> None:
    """The owner is the key's id: replica 1's own bearer of ``vk-one`` continues a session
    ``vk-one`` opened on replica 0; ``vk-two`` gets 404 there."""

    def auth(replica: int, key_id: str) -> dict[str, str]:
        return {"authorization": f"Bearer {cluster.bearers[replica][key_id]}"}

    first, second = cluster.replicas[0], cluster.replicas[1]
    with httpx.Client(base_url=first.data_url, timeout=30, trust_env=False) as http:
        sid, _ = initialize(http, "/keyed", headers=auth(0, "vk-one"))
    with httpx.Client(base_url=second.data_url, timeout=30, trust_env=False) as http:
        r = post(http, "/keyed", rpc("tools/list"), session=sid, headers=auth(1, "vk-two"))
        assert r.status_code == 404, r.text
        r = post(http, "/keyed", rpc("tools/list"), session=sid, headers=auth(1, "vk-one"))
        assert r.status_code == 200, r.text


def test_a_restarted_replica_serves_the_session(cluster: Cluster) -> None:
    with httpx.Client(base_url=cluster.lb.url, timeout=30, trust_env=False) as http:
        sid, _ = initialize(http, "/mcp")
        old = cluster.replicas[1]
        assert old.stop() == 0
        fresh = cluster.factory.start(
            static=cluster.bundle, db_path=old.db_path, env={"AGW_SECRET_KEY": KEY}
        )
        cluster.replicas[1] = fresh
        cluster.lb.backends[1] = fresh.data_url
        for i in range(REPLICAS):
            body = rpc("tools/call", {"name": "alpha_add", "arguments": {"a": i, "b": 2}}, i)
            r = post(http, "/mcp", body, session=sid, version="2025-11-25")
            assert r.status_code == 200, r.text
            assert r.json()["result"]["structuredContent"] == {"result": i + 2}
        assert cluster.rebuilt(fresh) == 1


# ------------------------------------------------------------------------ the sealed ids


def sealed(**changes: object) -> Sealed:
    base = Sealed(
        "r1",
        "vk-1",
        "2025-11-25",
        ("sampling",),
        {"name": "client", "version": "1"},
        now_ms(),
        (UpstreamRef("alpha", "up-1", "2025-11-25", ("tools",)),),
    )
    return Sealed(**{**base.__dict__, **changes})


def test_sealed_ids_open_only_with_their_key_and_age() -> None:
    key = os.urandom(32)
    sealer = SessionSealer(key)
    token = sealer.seal(sealed())
    assert token is not None and SessionSealer(key).open(token) == sealed(
        issued_at_ms=SessionSealer(key).open(token).issued_at_ms  # type: ignore[union-attr]
    )
    assert SessionSealer(os.urandom(32)).open(token) is None
    assert sealer.open(tampered(token)) is None
    assert sealer.open(token[:-2]) is None
    old = sealer.seal(sealed(issued_at_ms=now_ms() - MAX_AGE_MS - 1000))
    assert old is not None and sealer.open(old) is None
    future = sealer.seal(sealed(issued_at_ms=now_ms() + MAX_AGE_MS))
    assert future is not None and sealer.open(future) is None
    for junk in ("", "=", "a" * 40, "!" * 60, "a" * (ID_MAX + 1)):
        assert sealer.open(junk) is None


def test_a_large_session_leaves_out_upstreams_then_client_info() -> None:
    sealer = SessionSealer(os.urandom(32))
    refs = tuple(UpstreamRef(f"svc{i}", "u" * 200, None, ()) for i in range(20))
    token = sealer.seal(sealed(upstreams=refs))
    assert token is not None and len(token) <= ID_MAX
    found = sealer.open(token)
    assert found is not None and 0 < len(found.upstreams) < 20 and found.client_info
    assert sealer.seal(sealed(owner="o" * 4000)) is None  # too large even bare: kept local


def test_a_rebuilt_session_is_bound_to_its_route_and_owner() -> None:
    key = os.urandom(32)

    async def case() -> None:
        one, two = McpState(session_key=key), McpState(session_key=key)
        try:
            session = one.new_session("handshake", "r1", "vk-1")
            session.protocol_version = "2025-11-25"
            session.client_capabilities = {"elicitation": {}}
            one.seal(session)
            sid = session.key
            assert one.find_session(sid) is session and session.portable
            assert two.rebuild(sid, "r2", "vk-1") is None
            assert two.rebuild(sid, "r1", "vk-2") is None
            assert two.rebuild(sid, "r1", None) is None
            rebuilt = two.rebuild(sid, "r1", "vk-1")
            assert rebuilt is not None and two.find_session(sid) is rebuilt
            assert rebuilt.protocol_version == "2025-11-25"
            assert rebuilt.supports("elicitation/create")
            assert McpState().rebuild(sid, "r1", "vk-1") is None  # no key: nothing opens
        finally:
            await asyncio.gather(one.close(), two.close())

    asyncio.run(case())


def test_a_malformed_session_key_stops_agwd_before_the_store_is_created(
    agwd_factory: AgwdLauncher,
) -> None:
    agwd = agwd_factory.start(env={"AGW_SESSION_KEY": "c2hvcnQ="}, wait=False)
    assert agwd.proc.wait(20) == 1
    assert "AGW_SESSION_KEY decodes to 5 bytes" in agwd.logs() and "c2hvcnQ" not in agwd.logs()
    assert not agwd.db_path.exists()
    assert env_session_key({"AGW_SESSION_KEY": KEY}) == bytes(range(32))
    assert env_session_key({}) is None
