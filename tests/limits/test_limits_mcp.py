"""Limits on MCP tool calls (docs/limits.md, "Limits on MCP and ACP"), through a real agwd: the
fake MCP server as a real process, the official ``mcp`` client and raw JSON-RPC over httpx.
Requests and dollars per key on ``tools/call`` (the refusal is JSON-RPC error -32029 with
``data.limit``; the lists are not counted); the answer's ``Retry-After`` and RateLimit headers;
each request of a batch admitted on its own; shadow mode; and one session budget spent half by
LLM calls (the fake LLM upstream, the ``openai`` SDK) and half by MCP tool calls, after which
both planes refuse that session and no other.
"""

from __future__ import annotations

import contextlib
import sqlite3
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import openai
import pytest
from mcp import Client
from mcp.shared.exceptions import MCPError
from openai.types.chat import ChatCompletionMessageParam

from tests.fakes.run import FakeUpstream
from tests.support.agwd import Agwd, AgwdLauncher
from tests.support.limits import away_from_minute_end
from tests.support.mcp import initialize, post, rpc, sync
from tests.support.mcp_server import McpServerHandle, run_mcp_server

RATE_LIMITED = -32029
PRICE_PER_CALL = 0.012  # what one answered tools/call costs (``add`` is free)
# the LLM's price: a token costs a tenth of a cent, so a "hi" (7 input + 5 output tokens with
# the fake's echo answer) costs $0.012, as much as one tool call
LLM_PRICE = {"input": 1000.0, "output": 1000.0}
CALL = "tools/call"
KEYS = ("team-a", "team-b")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[McpServerHandle]:
    with run_mcp_server(tmp_path_factory.mktemp("mcp"), "streamable-http", "alpha") as srv:
        yield srv


@pytest.fixture(scope="module")
def gw(module_agwd_factory: AgwdLauncher) -> Agwd:
    return module_agwd_factory.start()


MARK: dict[str, int] = {}


@pytest.fixture(autouse=True)
def _clean(gw: Agwd, fake: FakeUpstream, server: McpServerHandle) -> Iterator[None]:
    time.sleep(0.3)  # the previous test's rows are written
    for table in ("mcp_usage_events", "llm_usage_events"):
        with contextlib.closing(sqlite3.connect(gw.db_path)) as db:
            MARK[table] = int(
                db.execute(f"SELECT coalesce(max(rowid), 0) FROM {table}").fetchone()[0]
            )
    yield
    with gw.client() as c:  # the next test applies its own limits
        apply(c, fake, server, [])


def bundle(
    fake: FakeUpstream, server: McpServerHandle, limits: list[dict[str, Any]]
) -> dict[str, Any]:
    keyed = {"require_virtual_key": True}
    return {
        "apiVersion": "gateway.agw/v1alpha1",
        "kind": "GatewayBundle",
        "providers": [
            {"id": "oa", "provider_type": "openai", "base_url": f"{fake.url}/v1", "api_key": "k"}
        ],
        "managedModels": [
            {"provider_id": "oa", "upstream_model": "fake-gpt", "pricing": LLM_PRICE}
        ],
        "llmRoutes": [
            {
                "id": "oa",
                "protocol": "openai",
                "match_policy": {"path_prefix": "/oa"},
                "target_policy": {"provider_id": "oa"},
                "auth_policy": keyed,
            }
        ],
        "mcpServices": [
            server.service_config("alpha", price_per_call=PRICE_PER_CALL, tool_prices={"add": 0})
        ],
        "mcpRoutes": [
            {
                "id": "tools",
                "service_id": "alpha",
                "match_policy": {"path_prefix": "/tools"},
                "auth_policy": keyed,
            }
        ],
        "virtualKeys": [{"id": k, "tag": k} for k in KEYS],
        "limits": limits,
    }


def apply(
    c: httpx.Client, fake: FakeUpstream, server: McpServerHandle, limits: list[dict[str, Any]]
) -> None:
    r = c.post("/admin/gateway/apply", json={"bundle": bundle(fake, server, limits), "prune": True})
    assert r.status_code == 200, r.text


def setup(
    gw: Agwd, fake: FakeUpstream, server: McpServerHandle, limits: list[dict[str, Any]]
) -> dict[str, str]:
    """Applies the limits; the bearer of each key."""
    with gw.client() as c:
        apply(c, fake, server, limits)
        return {k: c.get(f"/admin/virtual_keys/{k}").json()["key"] for k in KEYS}


def rows(
    gw: Agwd, n: int, table: str = "mcp_usage_events", where: str = "1"
) -> list[dict[str, Any]]:
    """The test's first ``n`` rows of ``table`` matching ``where``, oldest first, once written."""
    deadline = time.monotonic() + 10
    sql = f"SELECT * FROM {table} WHERE rowid > ? AND {where} ORDER BY rowid"
    while True:
        with contextlib.closing(sqlite3.connect(gw.db_path)) as db:
            db.row_factory = sqlite3.Row
            got = [dict(r) for r in db.execute(sql, (MARK[table],))]
        if len(got) >= n or time.monotonic() > deadline:
            assert len(got) >= n, got
            return got[:n]
        time.sleep(0.05)


def calls(gw: Agwd, n: int) -> list[dict[str, Any]]:
    return rows(gw, n, where=f"method = '{CALL}'")


@contextlib.asynccontextmanager
async def connect(gw: Agwd, key: str, session: str | None = None) -> AsyncIterator[Client]:
    """The official client on the tools route, with the key (and the session header)."""
    import httpx2
    from mcp.client.streamable_http import streamable_http_client

    headers = {"authorization": f"Bearer {key}"}
    if session is not None:
        headers["agent-session-id"] = session
    async with (
        httpx2.AsyncClient(headers=headers, timeout=30) as http,
        Client(streamable_http_client(f"{gw.data_url}/tools", http_client=http)) as client,
    ):
        yield client


async def refused(call: Any) -> MCPError:
    """The -32029 error ``call`` (an awaitable) is answered with."""
    with pytest.raises(MCPError) as info:
        await call
    assert info.value.code == RATE_LIMITED, info.value.error
    return info.value


def tool_calls_seen(server: McpServerHandle) -> int:
    return len(server.events("call"))


# ------------------------------------------------------------------------------ requests


def test_a_request_limit_refuses_the_third_tool_call_with_32029(
    gw: Agwd, fake: FakeUpstream, server: McpServerHandle
) -> None:
    keys = setup(
        gw,
        fake,
        server,
        [{"id": "calls", "subject": "key", "window": "1m", "requests": 2}],
    )
    away_from_minute_end()
    seen = tool_calls_seen(server)

    @sync
    async def case() -> None:
        async with connect(gw, keys["team-a"]) as client:
            await client.list_tools()  # lists are not counted
            for _ in range(2):
                await client.call_tool("echo", {"message": "hi"})
            error = await refused(client.call_tool("echo", {"message": "hi"}))
            limit = error.data["limit"]
            assert limit["id"] == "calls" and limit["subject"] == "team-a"
            assert limit["meter"] == "requests" and limit["remaining"] == 0
            assert limit["limit"] == 2 and limit["resets_at"].endswith("Z")
            assert 1 <= limit["retry_after_s"] <= 60
            assert 'limit "calls" reached for team-a' in error.message
            assert {t.name for t in (await client.list_tools()).tools} >= {"echo", "add"}
        async with connect(gw, keys["team-b"]) as client:  # another key, its own counter
            await client.call_tool("echo", {"message": "hi"})

    case()
    got = calls(gw, 4)
    assert [r["limit_action"] for r in got] == [None, None, "refused", None]
    refusal = got[2]
    assert refusal["limit_id"] == "calls" and refusal["error_type"] == "rate_limited"
    assert refusal["success"] == 0 and refusal["cost_usd"] is None
    assert refusal["executed_tool_name"] == "echo"
    assert tool_calls_seen(server) == seen + 3  # the refused call never reached the server
    lists = rows(gw, 2, where="method = 'tools/list'")
    assert {r["limit_action"] for r in lists} == {None}


def test_the_json_answer_carries_retry_after_and_the_ratelimit_headers(
    gw: Agwd, fake: FakeUpstream, server: McpServerHandle
) -> None:
    keys = setup(gw, fake, server, [{"id": "one", "subject": "key", "window": "1m", "requests": 1}])
    away_from_minute_end()
    auth = {"authorization": f"Bearer {keys['team-a']}"}
    with httpx.Client(base_url=gw.data_url, timeout=30) as http:
        sid, _ = initialize(http, "/tools", headers=auth)
        listed = post(http, "/tools", rpc("tools/list", {}), session=sid, headers=auth)
        assert listed.status_code == 200 and "ratelimit" not in listed.headers
        echo = rpc(CALL, {"name": "echo", "arguments": {"message": "hi"}}, 2)
        first = post(http, "/tools", echo, session=sid, headers=auth)
        assert first.status_code == 200 and "result" in first.json(), first.text
        assert first.headers["ratelimit-policy"] == '"one";q=1;qu="requests";w=60'
        assert first.headers["ratelimit"].startswith('"one";r=0;t=')
        second = post(http, "/tools", {**echo, "id": 3}, session=sid, headers=auth)
    assert second.status_code == 200  # as every JSON-RPC error answer of a call
    assert second.headers["content-type"] == "application/json"
    error = second.json()["error"]
    assert second.json()["id"] == 3
    assert error["code"] == RATE_LIMITED and error["data"]["limit"]["id"] == "one"
    assert 1 <= int(second.headers["retry-after"]) <= 60
    assert second.headers["ratelimit-policy"] == '"one";q=1;qu="requests";w=60'
    assert second.headers["ratelimit"].startswith('"one";r=0;t=')


def test_each_request_of_a_batch_is_admitted_on_its_own(
    gw: Agwd, fake: FakeUpstream, server: McpServerHandle
) -> None:
    keys = setup(gw, fake, server, [{"id": "two", "subject": "key", "window": "1h", "requests": 2}])
    auth = {"authorization": f"Bearer {keys['team-a']}"}
    batch = [rpc(CALL, {"name": "echo", "arguments": {"message": f"m{i}"}}, i) for i in range(3)]
    batch.append(rpc("tools/list", {}, 9))
    with httpx.Client(base_url=gw.data_url, timeout=30) as http:
        sid, _ = initialize(http, "/tools", "2025-03-26", headers=auth)
        r = post(http, "/tools", batch, session=sid, version="2025-03-26", headers=auth)
    assert r.status_code == 200, r.text
    answers = {a["id"]: a for a in r.json()}
    assert "result" in answers[9]  # the list is not counted
    errors = [a["error"] for i, a in answers.items() if i != 9 and "error" in a]
    assert len(errors) == 1 and errors[0]["code"] == RATE_LIMITED
    assert errors[0]["data"]["limit"]["id"] == "two"
    assert "retry-after" in r.headers  # a refusal's headers on the batch's answer
    got = calls(gw, 3)
    assert sorted(str(r["limit_action"]) for r in got) == ["None", "None", "refused"]
    refused_row = next(r for r in got if r["limit_action"] == "refused")
    assert refused_row["request_id"] == str(next(i for i, a in answers.items() if "error" in a))
    assert refused_row["limit_id"] == "two" and refused_row["error_type"] == "rate_limited"


def test_a_batch_answer_carries_the_last_admissions_ratelimit_fields_once(
    gw: Agwd, fake: FakeUpstream, server: McpServerHandle
) -> None:
    """Each call of a batch is admitted on its own, and each admission's fields replace the
    one's before: the seventh call's come as rendered head lines, the eighth's and ninth's
    (past the 80 % warning) as fields; the answer has the ninth's, once."""
    keys = setup(
        gw, fake, server, [{"id": "ten", "subject": "key", "window": "1h", "requests": 10}]
    )
    auth = {"authorization": f"Bearer {keys['team-a']}"}
    batch = [rpc(CALL, {"name": "echo", "arguments": {"message": f"m{i}"}}, i) for i in range(9)]
    with httpx.Client(base_url=gw.data_url, timeout=30) as http:
        sid, _ = initialize(http, "/tools", "2025-03-26", headers=auth)
        r = post(http, "/tools", batch, session=sid, version="2025-03-26", headers=auth)
    assert r.status_code == 200, r.text
    assert all("result" in a for a in r.json())
    assert r.headers.get_list("ratelimit-policy") == ['"ten";q=10;qu="requests";w=3600']
    (state,) = r.headers.get_list("ratelimit")
    assert state.startswith('"ten";r=1;t='), state
    assert r.headers.get_list("x-agw-limit-warning") == ["ten 90% used"]


# ------------------------------------------------------------------------------- dollars


def test_a_dollar_limit_counts_each_answered_calls_price(
    gw: Agwd, fake: FakeUpstream, server: McpServerHandle
) -> None:
    keys = setup(
        gw, fake, server, [{"id": "usd", "subject": "key", "window": "1d", "cost_usd": 0.03}]
    )

    @sync
    async def case() -> None:
        async with connect(gw, keys["team-a"]) as client:
            await client.call_tool("echo", {"message": "hi"})  # $0.012
            result = await client.call_tool("fail", {"message": "no"})  # it ran: $0.012
            assert result.is_error
            for _ in range(3):
                await client.call_tool("add", {"a": 1, "b": 2})  # free
            error = await refused(client.call_tool("echo", {"message": "hi"}))
            limit = error.data["limit"]
            assert limit["id"] == "usd" and limit["meter"] == "cost_usd"
            assert limit["limit"] == 0.03 and limit["used"] == pytest.approx(0.024)
            assert limit["remaining"] == pytest.approx(0.006)

    case()
    got = calls(gw, 6)
    assert [r["cost_usd"] for r in got] == [PRICE_PER_CALL, PRICE_PER_CALL, 0, 0, 0, None]
    assert [r["limit_action"] for r in got] == [None] * 5 + ["refused"]


# --------------------------------------------------------------------------------- shadow


def test_shadow_mode_counts_tool_calls_and_never_refuses(
    gw: Agwd, fake: FakeUpstream, server: McpServerHandle
) -> None:
    keys = setup(
        gw,
        fake,
        server,
        [{"id": "watch", "subject": "key", "window": "1h", "requests": 1, "enforce": False}],
    )
    auth = {"authorization": f"Bearer {keys['team-a']}"}
    with httpx.Client(base_url=gw.data_url, timeout=30) as http:
        sid, _ = initialize(http, "/tools", headers=auth)
        for i in range(3):
            echo = rpc(CALL, {"name": "echo", "arguments": {"message": "hi"}}, i + 2)
            r = post(http, "/tools", echo, session=sid, headers=auth)
            assert r.status_code == 200 and "result" in r.json(), r.text
            assert "ratelimit" not in r.headers  # shadow limits send no headers
    got = calls(gw, 3)
    assert [r["limit_action"] for r in got] == [None, "shadow", "shadow"]
    assert [r["limit_id"] for r in got] == [None, "watch", "watch"]
    assert all(r["success"] == 1 for r in got)


# ------------------------------------------------------------------ the cross-plane session


def test_a_session_budget_spent_by_llm_and_mcp_calls_stops_both(
    gw: Agwd, fake: FakeUpstream, server: McpServerHandle
) -> None:
    """$0.048 for the session: two LLM calls ($0.024) and two tool calls ($0.024) spend it;
    then both planes refuse that session of that key, and serve another session."""
    keys = setup(
        gw,
        fake,
        server,
        [{"id": "runaway", "subject": "session", "window": "lifetime", "cost_usd": 0.048}],
    )
    key = keys["team-a"]
    hi: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hi"}]

    def llm(session: str) -> openai.OpenAI:
        return openai.OpenAI(
            base_url=f"{gw.data_url}/oa/v1",
            api_key=key,
            max_retries=0,
            default_headers={"agent-session-id": session},
        )

    with llm("s1") as client:
        for _ in range(2):
            client.chat.completions.create(model="fake-gpt", messages=hi, max_tokens=16)
    spent = rows(gw, 2, "llm_usage_events")
    assert [r["cost_usd"] for r in spent] == [pytest.approx(0.012)] * 2
    assert {r["session_id"] for r in spent} == {"s1"}

    @sync
    async def tools() -> None:
        async with connect(gw, key, session="s1") as client:  # the session header
            await client.call_tool("echo", {"message": "one"})
        async with connect(gw, key) as client:  # the session in params._meta
            meta: Any = {"agent-session-id": "s1"}
            await client.call_tool("echo", {"message": "two"}, meta=meta)
            error = await refused(client.call_tool("echo", {"message": "three"}, meta=meta))
            assert error.data["limit"]["id"] == "runaway"
            assert error.data["limit"]["subject"] == "team-a/s1"
            assert error.data["limit"]["remaining"] == 0
        async with connect(gw, key, session="s2") as client:  # another session: its own
            await client.call_tool("echo", {"message": "other"})

    tools()
    with llm("s1") as client, pytest.raises(openai.RateLimitError) as info:
        client.chat.completions.create(model="fake-gpt", messages=hi, max_tokens=16)
    assert info.value.response.json()["error"]["limit"]["id"] == "runaway"
    with llm("s2") as client:
        client.chat.completions.create(model="fake-gpt", messages=hi, max_tokens=16)
    got = calls(gw, 4)
    assert [r["session_id"] for r in got] == ["s1", "s1", "s1", "s2"]
    assert [r["limit_action"] for r in got] == [None, None, "refused", None]
    assert got[2]["limit_id"] == "runaway"
    llm_rows = rows(gw, 4, "llm_usage_events")
    assert [(r["session_id"], r["limit_action"]) for r in llm_rows[2:]] == [
        ("s1", "refused"),
        ("s2", None),
    ]
    # another key's session of the same id is another counter
    with openai.OpenAI(
        base_url=f"{gw.data_url}/oa/v1",
        api_key=keys["team-b"],
        max_retries=0,
        default_headers={"agent-session-id": "s1"},
    ) as other:
        other.chat.completions.create(model="fake-gpt", messages=hi, max_tokens=16)
