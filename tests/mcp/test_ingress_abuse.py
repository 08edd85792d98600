"""Attacks on the MCP plane of a real agwd (docs/security.md, "MCP plane"): one tenant's
notifications reaching another through a shared stdio server, notification floods, session-store
floods, oversized client ids, and upstreams that answer without end."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from agw.mcp.sessions import Stream
from agw.mcp.state import McpState
from tests.support.agwd import AgwdLauncher
from tests.support.mcp import BOTH, Gateway, initialize, post, rpc, start_gateway
from tests.support.mcp_server import McpServerHandle, run_mcp_server

PER_PRINCIPAL = 20  # AGW_MCP_SESSIONS_PER_PRINCIPAL for this module's gateway
INIT_PARAMS = {
    "protocolVersion": "2025-11-25",
    "capabilities": {},
    "clientInfo": {"name": "flood", "version": "1"},
}
ROUTES: dict[str, tuple[list[str], dict[str, Any]]] = {
    "/shared": (["chat"], {"auth_policy": {"require_virtual_key": True}}),
    "/solo": (["solo"], {}),
    "/mine": (["mine"], {"auth_policy": {"require_virtual_key": True}}),
    "/flood": (["alpha"], {}),
    "/open": (["cheap"], {}),
    "/keyed": (["cheap"], {"auth_policy": {"require_virtual_key": True}}),
    "/bad": (["alpha"], {}),
    "/badio": (["badio"], {}),
}  # fmt: skip


@pytest.fixture(scope="module")
def gw(
    module_agwd_factory: AgwdLauncher, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Gateway]:
    tmp = tmp_path_factory.mktemp("mcp-abuse")
    with contextlib.ExitStack() as stack:
        servers: dict[str, McpServerHandle] = {
            name: stack.enter_context(run_mcp_server(tmp, transport, name))
            for name, transport in (
                ("alpha", "streamable-http"),
                ("chat", "stdio"),
                ("solo", "stdio"),
                ("mine", "stdio"),
                ("cheap", "stdio"),
                ("badio", "stdio"),
            )
        }
        services = [srv.service_config() for srv in servers.values()]
        agwd = start_gateway(
            _Launcher(module_agwd_factory, {"AGW_MCP_SESSIONS_PER_PRINCIPAL": str(PER_PRINCIPAL)}),
            tmp,
            services,
            ROUTES,
        )
        gateway = Gateway(agwd, servers)
        with gateway.admin() as admin:
            for name in ("one", "two"):
                r = admin.post("/admin/virtual_keys", json={"id": f"vk-{name}"})
                assert r.status_code in (200, 201), r.text
                gateway.keys[name] = r.json()["key"]
        yield gateway


class _Launcher(AgwdLauncher):
    """``start_gateway``'s launcher with environment variables added."""

    def __init__(self, inner: AgwdLauncher, env: dict[str, str]) -> None:
        self.__dict__ = inner.__dict__
        self._env = env

    def start(self, *args: str, **kw: Any) -> Any:
        kw["env"] = {**self._env, **(kw.get("env") or {})}
        return AgwdLauncher.start(self, *args, **kw)


@pytest.fixture
def http(gw: Gateway) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=gw.agwd.data_url, timeout=60, trust_env=False) as client:
        yield client


def bearer(gw: Gateway, name: str) -> dict[str, str]:
    return {"authorization": f"Bearer {gw.keys[name]}"}


def counters(gw: Gateway) -> dict[str, int]:
    with gw.admin() as admin:
        r = admin.get("/admin/mcp/runtime")
        assert r.status_code == 200, r.text
        found: dict[str, int] = r.json().get("counters", {})  # (none before issue 12)
        return found


def events(resp: httpx.Response) -> list[dict[str, Any]]:
    """The JSON-RPC messages of an answer (SSE or JSON)."""
    if resp.headers["content-type"].startswith("application/json"):
        return [resp.json()]
    out = []
    for block in resp.text.split("\n\n"):
        for line in block.splitlines():
            if line.startswith("data: "):
                out.append(json.loads(line[6:]))
    return out


class StandaloneStream:
    """A session's GET stream over a plain socket, read in a thread until closed (at most
    30 s)."""

    def __init__(
        self, gw: Gateway, path: str, session: str | None, headers: dict[str, str]
    ) -> None:
        self.text = ""
        self.ended = False  # the server closed the stream
        self._stop = threading.Event()
        host, port = gw.agwd.data_url.removeprefix("http://").rsplit(":", 1)
        self._sock = socket.create_connection((host, int(port)), timeout=10)
        fields = {"host": f"{host}:{port}", "accept": "text/event-stream"}
        fields |= ({"mcp-session-id": session} if session else {}) | headers
        head = [f"GET {path} HTTP/1.1", *(f"{k}: {v}" for k, v in fields.items())]
        self._sock.sendall(("\r\n".join(head) + "\r\n\r\n").encode())
        self._sock.settimeout(0.1)
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()
        assert self.wait_for("200 OK", 1), self.text

    def _read(self) -> None:
        deadline = time.monotonic() + 30
        while not self._stop.is_set() and time.monotonic() < deadline:
            try:
                data = self._sock.recv(65536)
            except TimeoutError:
                continue
            if not data:
                self.ended = True
                break
            self.text += data.decode(errors="replace")
            if self.text.endswith("\r\n0\r\n\r\n"):  # the last chunk: the stream ended
                self.ended = True

    def wait_for(self, needle: str, count: int, timeout: float = 10) -> bool:
        deadline = time.monotonic() + timeout
        while self.text.count(needle) < count and time.monotonic() < deadline:
            time.sleep(0.05)
        return self.text.count(needle) >= count

    def close(self) -> str:
        self._stop.set()
        self._thread.join(5)
        self._sock.close()
        return self.text


def call(name: str, arguments: dict[str, Any], msg_id: Any = 1, token: Any = None) -> Any:
    params: dict[str, Any] = {"name": name, "arguments": arguments}
    if token is not None:
        params["_meta"] = {"progressToken": token}
    return rpc("tools/call", params, msg_id)


# ------------------------------------------------------------------ notifications: attribution


def test_a_shared_stdio_servers_logs_never_reach_another_key(
    http: httpx.Client, gw: Gateway
) -> None:
    """Key one makes the shared server log in the background; key two's call, then the only
    one in flight on that process, gets none of it (it used to get all of it), nor does key
    two's standalone stream; its own progress still reaches it."""
    a_headers, b_headers = bearer(gw, "one"), bearer(gw, "two")
    sa, _ = initialize(http, "/shared", headers=a_headers)
    sb, _ = initialize(http, "/shared", headers=b_headers)
    b_stream = StandaloneStream(gw, "/shared", sb, b_headers)
    before = counters(gw).get("notifications_dropped_unattributed", 0)
    chatter = {"count": 400, "message": "secret-of-one", "background": True, "interval": 0.004}
    r = post(http, "/shared", call("chatter", chatter), session=sa, headers=a_headers)
    assert r.status_code == 200 and "chattering" in r.text, r.text
    r = post(
        http,
        "/shared",
        call("slow", {"seconds": 1.0, "steps": 4}, token="mine"),
        session=sb,
        headers=b_headers,
    )
    assert r.status_code == 200, r.text
    got = events(r)
    assert "secret-of-one" not in r.text
    assert [m["params"]["progress"] for m in got if m.get("method") == "notifications/progress"]
    assert got[-1]["result"]["content"][0]["text"] == "slept 1.0s in 4 steps"
    assert all(m["params"]["progressToken"] == "mine" for m in got if "method" in m)
    time.sleep(0.5)  # the rest of the chatter, had it gone anywhere
    assert "secret-of-one" not in b_stream.close()
    deadline = time.monotonic() + 10
    while counters(gw).get("notifications_dropped_unattributed", 0) <= before:
        assert time.monotonic() < deadline, "the dropped messages were not counted"
        time.sleep(0.05)


def test_a_stdio_server_used_by_one_session_alone_still_logs_to_it(
    http: httpx.Client, gw: Gateway
) -> None:
    sid, _ = initialize(http, "/solo")
    r = post(http, "/solo", call("chatter", {"count": 5, "message": "for-me"}), session=sid)
    assert r.status_code == 200, r.text
    logs = [m for m in events(r) if m.get("method") == "notifications/message"]
    assert [m["params"]["data"] for m in logs] == ["for-me"] * 5


def test_a_keys_new_session_gets_what_its_own_earlier_calls_left_running(
    http: httpx.Client, gw: Gateway
) -> None:
    """A tenant is a key: a client that reconnects (a new session) on a stdio server only its
    key uses still gets the logs of its calls, and what they send after returning reaches its
    standalone stream."""
    key = bearer(gw, "one")
    initialize(http, "/mine", headers=key)  # an earlier session of the same key
    sid, _ = initialize(http, "/mine", headers=key)
    stream = StandaloneStream(gw, "/mine", sid, key)
    try:
        r = post(http, "/mine", call("chatter", {"count": 3, "message": "now"}), session=sid,
                 headers=key)  # fmt: skip
        assert [m["params"]["data"] for m in events(r) if "method" in m] == ["now"] * 3
        later = {"count": 4, "message": "later", "background": True}
        r = post(http, "/mine", call("chatter", later), session=sid, headers=key)
        assert "chattering" in r.text, r.text
        on_answer = r.text.count('"data":"later"')  # those sent before the result was
        assert stream.wait_for('"data":"later"', 4 - on_answer), stream.text
    finally:
        stream.close()


def test_a_notification_flood_is_rate_limited_per_session(http: httpx.Client, gw: Gateway) -> None:
    sid, _ = initialize(http, "/flood")
    before = counters(gw).get("notifications_dropped_rate_limited", 0)
    started = time.monotonic()
    r = post(http, "/flood", call("chatter", {"count": 3000}), session=sid)
    took = time.monotonic() - started
    assert r.status_code == 200, r.text
    got = events(r)
    logs = [m for m in got if m.get("method") == "notifications/message"]
    assert got[-1]["result"]["content"][0]["text"] == "chattered"
    # 200 saved up, 100 a second after that (and some slack for the clock)
    assert 150 <= len(logs) <= 200 + 100 * took + 50, (len(logs), took)
    assert counters(gw).get("notifications_dropped_rate_limited", 0) - before >= 3000 - len(logs)


# -------------------------------------------------------------------------- the session store


def test_an_anonymous_flood_never_evicts_a_keyed_session(http: httpx.Client, gw: Gateway) -> None:
    """Anonymous initializes on an open route, far past the per-principal quota: each evicts
    only the oldest anonymous session of that route; the key's session on the other route
    (the same shared server) keeps working."""
    key = bearer(gw, "one")
    keyed, _ = initialize(http, "/keyed", headers=key)
    first, _ = initialize(http, "/open")
    for _ in range(3 * PER_PRINCIPAL):
        initialize(http, "/open")
    with gw.admin() as admin:
        sessions = admin.get("/admin/mcp/sessions").json()["items"]
    anonymous = [s for s in sessions if s["route_id"] == "r-open"]
    assert len(anonymous) == PER_PRINCIPAL
    assert f"{first[:8]}****" not in {s["id"] for s in anonymous}  # the oldest made room
    r = post(http, "/open", rpc("ping"), session=first)
    assert r.status_code == 200  # its sealed id rebuilds it (evicting the next oldest)
    r = post(http, "/keyed", call("echo", {"message": "still here"}), session=keyed, headers=key)
    assert r.status_code == 200 and "still here" in r.text, r.text
    assert counters(gw).get("sessions_evicted", 0) >= 2 * PER_PRINCIPAL


def test_a_flood_of_legacy_streams_evicts_the_floods_oldest_stream(gw: Gateway) -> None:
    """Legacy ``GET /sse`` sessions are never idle (their stream is open); past the quota the
    oldest of the same principal is closed (its stream ends), nobody else's."""
    streams = [StandaloneStream(gw, "/open/sse", None, {}) for _ in range(PER_PRINCIPAL + 3)]
    try:
        for stream in streams:
            assert stream.wait_for("event: endpoint", 1), stream.text
        deadline = time.monotonic() + 10
        while sum(s.ended for s in streams) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert [s.ended for s in streams[:3]] == [True] * 3
        assert not any(s.ended for s in streams[-PER_PRINCIPAL:])
    finally:
        for stream in streams:
            stream.close()


def test_a_keys_flood_evicts_only_its_own_sessions(http: httpx.Client, gw: Gateway) -> None:
    one, two = bearer(gw, "one"), bearer(gw, "two")
    kept, _ = initialize(http, "/keyed", headers=two)
    for _ in range(PER_PRINCIPAL + 5):
        initialize(http, "/keyed", headers=one)
    r = post(http, "/keyed", rpc("ping"), session=kept, headers=two)
    assert r.status_code == 200, r.text


# ------------------------------------------------------------------ client-supplied values


@pytest.mark.parametrize(
    "body",
    [
        rpc("ping", None, "x" * 5000),
        rpc("ping", None, 10**300),
        rpc("ping", None, {"nested": "id"}),
        rpc("ping", None, [1]),
        rpc("ping", None, 1.5),
        rpc("m" * 5000, None, 1),
        rpc("tools/call", {"name": "echo", "_meta": {"progressToken": "t" * 5000}}, 1),
        rpc("tools/call", {"name": "echo", "_meta": {"progressToken": {"a": 1}}}, 1),
        {"jsonrpc": "2.0", "id": "r" * 5000, "result": {}},
    ],
    ids=["long-id", "huge-int-id", "object-id", "array-id", "float-id", "long-method",
         "long-token", "object-token", "long-response-id"],
)  # fmt: skip
def test_oversized_or_odd_ids_are_refused(
    http: httpx.Client, gw: Gateway, body: dict[str, Any]
) -> None:
    sid, _ = initialize(http, "/open")
    r = post(http, "/open", body, session=sid)
    assert r.status_code == 400, r.text
    answer = r.json()
    assert answer["error"]["code"] == -32600, answer
    assert answer["id"] == (body["id"] if isinstance(body["id"], int) and body["id"] < 10 else None)
    assert len(r.content) < 1000


def test_a_sessions_client_info_is_kept_bounded(http: httpx.Client, gw: Gateway) -> None:
    """``clientInfo`` and capabilities live as long as the session: a client cannot park
    megabytes in each of its thousand sessions."""
    info = {"name": "n" * 1_000_000, "version": "1", "junk": ["j" * 1000] * 1000}
    params = {**INIT_PARAMS, "clientInfo": info, "capabilities": {"x": "c" * 1_000_000}}
    r = post(http, "/open", rpc("initialize", params))
    assert r.status_code == 200, r.text
    sid = r.headers["mcp-session-id"]
    with gw.admin() as admin:
        sessions = admin.get("/admin/mcp/sessions").json()["items"]
    mine = [s for s in sessions if s["id"] == sid[:8] + "****"]
    assert mine and mine[0]["client_info"] == {"name": "n" * 200, "version": "1"}, str(mine)[:300]


def test_a_refused_requests_long_id_is_not_stored(http: httpx.Client, gw: Gateway) -> None:
    """A request the dispatcher refuses (no key) still gets a usage row: without the id."""
    marker = "long-" + "i" * 100_000
    r = post(http, "/keyed", rpc("tools/call", {"name": "echo"}, marker))
    assert r.status_code == 401
    r = post(http, "/keyed", rpc("tools/call", {"name": "echo"}, "short-marker"))
    assert r.status_code == 401
    rows = gw.rows("route_id = 'r-keyed' AND status_code = 401", count=2)
    assert "short-marker" in [row["request_id"] for row in rows]
    assert all(len(row["request_id"] or "") <= 200 for row in rows)


def test_long_header_values_are_bounded(http: httpx.Client, gw: Gateway) -> None:
    r = post(http, "/open", rpc("ping"), session="s" * 4000)
    assert r.status_code == 404
    sid, _ = initialize(http, "/open")
    r = post(http, "/open", rpc("ping"), session=sid, version="v" * 4000)
    assert r.status_code == 400 and len(r.content) < 1000, r.text


# --------------------------------------------------------------------- upstream answer caps


@pytest.mark.parametrize("kind", ["json", "event"])
def test_an_endless_http_answer_is_cut_at_the_limit(
    http: httpx.Client, gw: Gateway, kind: str
) -> None:
    sid, _ = initialize(http, "/bad")
    started = time.monotonic()
    r = post(http, "/bad", call("misbehave", {"kind": kind, "mib": 48}), session=sid)
    assert r.status_code == 200, r.text
    error = r.json()["error"]
    assert error["code"] == -32001 and "32 MiB limit" in error["message"], error
    assert time.monotonic() - started < 20
    r = post(http, "/bad", call("echo", {"message": "after"}), session=sid)
    assert "after" in r.text, r.text


def test_a_stdio_line_without_end_is_cut_at_the_limit(http: httpx.Client, gw: Gateway) -> None:
    sid, _ = initialize(http, "/badio")
    r = post(http, "/badio", call("misbehave", {"kind": "line", "mib": 40}), session=sid)
    error = r.json()["error"]
    assert error["code"] == -32001 and "16 MiB limit" in error["message"], error
    deadline = time.monotonic() + 10  # restarted after its backoff
    while True:
        r = post(http, "/badio", call("echo", {"message": "back"}), session=sid)
        if "back" in r.text or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert "back" in r.text, r.text


@pytest.mark.slow
def test_the_issues_flood_at_full_scale_with_the_defaults(
    module_agwd_factory: AgwdLauncher, tmp_path: Path
) -> None:
    """The reported attack as it was run: 10,100 anonymous initializes on an open route with
    the default limits (10,000 sessions in all) used to evict a keyed session of another
    route. About 20 s."""
    with run_mcp_server(tmp_path, "stdio", "cheap") as cheap:
        routes = {"/open": ROUTES["/open"], "/keyed": ROUTES["/keyed"]}
        agwd = start_gateway(module_agwd_factory, tmp_path, [cheap.service_config()], routes)
        with agwd.client() as admin:
            r = admin.post("/admin/virtual_keys", json={"id": "vk-flood"})
            key = {"authorization": f"Bearer {r.json()['key']}"}
        with httpx.Client(base_url=agwd.data_url, timeout=60, trust_env=False) as http:
            keyed, _ = initialize(http, "/keyed", headers=key)
        body = rpc("initialize", INIT_PARAMS)

        async def flood() -> None:
            async with httpx.AsyncClient(base_url=agwd.data_url, timeout=60, trust_env=False) as c:

                async def worker(n: int) -> None:
                    for _ in range(n):
                        r = await c.post("/open", json=body, headers={"accept": BOTH})
                        assert r.status_code == 200, r.text

                await asyncio.gather(*(worker(10_100 // 8 + 1) for _ in range(8)))

        asyncio.run(flood())
        with httpx.Client(base_url=agwd.data_url, timeout=60, trust_env=False) as http:
            r = post(http, "/keyed", rpc("ping"), session=keyed, headers=key)
        assert r.status_code == 200, r.text
        agwd.stop()


def test_the_store_never_lets_anonymous_sessions_evict_others() -> None:
    """The quotas in-process, at a small total limit: keyed sessions survive any anonymous
    flood; an anonymous caller at the total limit with nothing of its own is refused; a key's
    newcomer evicts from the largest bucket."""

    from agw.mcp.sessions import SessionRefused  # (a name of issue 12's fix)

    async def case() -> None:
        runtime = McpState(session_limit=10, per_principal=6)
        keyed = [runtime.new_session("handshake", "keyed", "vk-1") for _ in range(4)]
        for _ in range(50):
            runtime.new_session("handshake", "open", None)
        assert runtime.store.count("open", None) == 6
        assert all(runtime.find_session(s.key) is s for s in keyed)
        with pytest.raises(SessionRefused):  # full (4 + 6), and "other" has none of its own
            runtime.new_session("sse", "other", None)
        runtime.new_session("handshake", "keyed", "vk-2")  # from the largest: anonymous
        assert runtime.store.count("open", None) == 5
        assert all(runtime.find_session(s.key) is s for s in keyed)
        counters = runtime.view()["counters"]
        assert counters["sessions_refused"] == 1 and counters["sessions_evicted"] == 45
        await runtime.close()

    asyncio.run(case())


def test_a_standalone_stream_nobody_reads_holds_a_bounded_amount() -> None:
    """A client that opens its GET stream and never reads: what waits for it is capped in
    bytes, not only in messages (1000 messages of 4 MiB used to be held)."""

    async def case() -> None:
        stream = Stream()
        big = {
            "jsonrpc": "2.0",
            "method": "notifications/message",
            "params": {"data": "x" * (1 << 20)},
        }
        for _ in range(100):
            stream.put(big)
        assert stream.size <= 16 * 1024 * 1024 and stream.dropped >= 84
        stream.end()
        got = 0
        while await stream.get() is not None:
            got += 1
        assert got == 100 - stream.dropped and stream.size == 0

    asyncio.run(case())


@pytest.mark.parametrize("transport", ["streamable_http", "sse"])
def test_a_services_url_credentials_never_reach_a_client(
    agwd_factory: AgwdLauncher, transport: str
) -> None:
    """An MCP service whose URL carries credentials (``user:password@``, ``?api_key=``) and
    that cannot be reached (here an invalid port: aiohttp's error quotes the whole URL): the
    client of the open route gets the error without them, and so does the admin API's view
    (issue 12 variant: the error message was relayed as it was)."""
    password, key = "mcp-url-pa55word-0123", "mcp-query-key-0123456789"
    path = "/mcp" if transport == "streamable_http" else "/sse"
    url = f"http://agw:{password}@127.0.0.1:99999{path}?api_key={key}"
    gw = agwd_factory.start(auth=False)
    bundle = {
        "apiVersion": "gateway.agw/v1alpha1",
        "kind": "GatewayBundle",
        "mcpServices": [{"id": "creds", "name": "creds", "transport": transport, "url": url}],
        "mcpRoutes": [
            {"id": "r-creds", "service_id": "creds", "match_policy": {"path_prefix": "/creds"}}
        ],
    }
    with gw.client() as admin:
        r = admin.post("/admin/gateway/apply", json={"bundle": bundle})
        assert r.status_code == 200, r.text
    with httpx.Client(base_url=gw.data_url, timeout=30, trust_env=False) as http:
        session, _ = initialize(http, "/creds")
        answers = [
            post(http, "/creds", rpc(method, params, 2), session=session, version="2025-11-25")
            for method, params in (("tools/list", {}), ("resources/read", {"uri": "file:///x"}))
        ]
    with gw.client() as admin:
        views = [
            admin.get(p).text for p in ("/admin/mcp/runtime", "/admin/mcp/services/creds/tools")
        ]
    texts = [a.text for a in answers] + views
    assert any("unreachable" in t or "failed" in t for t in texts[:2]), texts
    for text in texts:
        assert password not in text and key not in text, text
