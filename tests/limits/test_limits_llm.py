"""Limits on the LLM plane (docs/limits.md), through a real agwd: the fake upstream as a real
server, the official SDKs as clients. Requests, tokens and dollars per key; the 429 in each
dialect with ``Retry-After`` and the RateLimit headers; the clamp of ``max_tokens``; the atomic
race of 200 requests against a budget of 10; streams cut or let finish; shadow mode; the soft
warning; unpriced models; bad input.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from collections.abc import Iterator
from typing import Any

import anthropic
import httpx
import httpx2
import openai
import pytest
from anthropic.types import MessageParam
from openai.types.chat import ChatCompletionMessageParam

from tests.fakes.run import FakeUpstream
from tests.support.agwd import Agwd, AgwdLauncher
from tests.support.limits import away_from_minute_end

# a price that makes the arithmetic plain: a token costs a tenth of a cent either way
PRICE = {"input": 1000.0, "output": 1000.0}
PER_TOKEN = 0.001


@pytest.fixture(scope="module")
def gw(module_agwd_factory: AgwdLauncher) -> Agwd:
    return module_agwd_factory.start()


@pytest.fixture(autouse=True)
def _clean(gw: Agwd, fake: FakeUpstream) -> Iterator[None]:
    fake.configure(reply_words=0, delay_ms=0, chunk_delay_ms=0)
    fake.clear()
    time.sleep(0.3)  # the previous test's rows are written
    MARK["llm_usage_events"] = last_rowid(gw)
    yield
    while CLIENTS:
        CLIENTS.pop().close()
    with gw.client() as c:  # the next test applies its own limits
        apply(c, fake, [])


def bundle(fake: FakeUpstream, limits: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "apiVersion": "gateway.agw/v1alpha1",
        "kind": "GatewayBundle",
        "providers": [
            {"id": "oa", "provider_type": "openai", "base_url": f"{fake.url}/v1", "api_key": "k"},
            {"id": "an", "provider_type": "anthropic", "base_url": fake.url, "api_key": "k"},
        ],
        "managedModels": [
            {"provider_id": "oa", "upstream_model": "fake-gpt", "pricing": PRICE},
            {"provider_id": "an", "upstream_model": "fake-claude", "pricing": PRICE},
        ],
        "llmRoutes": [
            {
                "id": "oa",
                "protocol": "openai",
                "match_policy": {"path_prefix": "/oa"},
                "target_policy": {"provider_id": "oa"},
                "auth_policy": {"require_virtual_key": True},
            },
            {
                "id": "an",
                "protocol": "anthropic",
                "match_policy": {"path_prefix": "/an"},
                "target_policy": {"provider_id": "an"},
                "auth_policy": {"require_virtual_key": True},
            },
        ],
        "virtualKeys": [{"id": "team-a", "tag": "team-a"}, {"id": "team-b", "tag": "team-b"}],
        "limits": limits,
    }


def apply(c: httpx.Client, fake: FakeUpstream, limits: list[dict[str, Any]]) -> None:
    r = c.post("/admin/gateway/apply", json={"bundle": bundle(fake, limits), "prune": True})
    assert r.status_code == 200, r.text


def setup(gw: Agwd, fake: FakeUpstream, limits: list[dict[str, Any]]) -> dict[str, str]:
    """Applies the limits; the bearer of each key."""
    with gw.client() as c:
        apply(c, fake, limits)
        return {k: c.get(f"/admin/virtual_keys/{k}").json()["key"] for k in ("team-a", "team-b")}


CLIENTS: list[openai.OpenAI | anthropic.Anthropic] = []  # closed after each test


SENT: list[int] = []  # the input estimate of each request the openai clients sent


def _sent(request: httpx2.Request) -> None:
    SENT.append(len(request.content) // 4)  # agw reserves the body's bytes / 4 of input


def oa(gw: Agwd, key: str) -> openai.OpenAI:
    client = openai.OpenAI(
        base_url=f"{gw.data_url}/oa/v1",
        api_key=key,
        max_retries=0,
        http_client=httpx2.Client(event_hooks={"request": [_sent]}),
    )
    CLIENTS.append(client)
    return client


def estimate(body: dict[str, Any]) -> int:
    """The input tokens agw reserves for ``body`` sent as httpx sends ``json=``."""
    return len(httpx.Request("POST", "http://x", json=body).content) // 4


def an(gw: Agwd, key: str) -> anthropic.Anthropic:
    client = anthropic.Anthropic(base_url=f"{gw.data_url}/an", api_key=key, max_retries=0)
    CLIENTS.append(client)
    return client


def post(
    gw: Agwd, key: str, body: dict[str, Any], path: str = "/oa/v1/chat/completions"
) -> httpx.Response:
    with httpx.Client(base_url=gw.data_url, timeout=30) as c:
        return c.post(path, json=body, headers={"authorization": f"Bearer {key}"})


def last_rowid(gw: Agwd, table: str = "llm_usage_events") -> int:
    with sqlite3.connect(gw.db_path) as db:
        return int(db.execute(f"SELECT coalesce(max(rowid), 0) FROM {table}").fetchone()[0])


MARK: dict[str, int] = {}


def rows(gw: Agwd, n: int, table: str = "llm_usage_events") -> list[dict[str, Any]]:
    """The test's first ``n`` usage rows (written after the autouse fixture's mark), oldest
    first, once the recorder has written them."""
    deadline = time.monotonic() + 5
    while True:
        with sqlite3.connect(gw.db_path) as db:
            db.row_factory = sqlite3.Row
            got = [
                dict(r)
                for r in db.execute(
                    f"SELECT * FROM {table} WHERE rowid > ? ORDER BY rowid", (MARK.get(table, 0),)
                )
            ]
        if len(got) >= n or time.monotonic() > deadline:
            assert len(got) >= n, got
            return got[:n]
        time.sleep(0.05)


HI: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hi"}]
AHI: list[MessageParam] = [{"role": "user", "content": "hi"}]


# ------------------------------------------------------------------------------ requests


def test_a_limit_matching_one_model_counts_that_model_only(gw: Agwd, fake: FakeUpstream) -> None:
    """A match list (here ``models``) decides per request, also when the charges of the same
    subjects are kept from one request to the next: one key alternating two models."""
    limit = {"id": "gpt-only", "subject": "key", "window": "1h", "requests": 1}
    keys = setup(gw, fake, [{**limit, "match": {"models": ["fake-gpt"]}}])
    client = oa(gw, keys["team-a"])
    first = client.chat.completions.with_raw_response.create(model="fake-gpt", messages=HI)
    assert first.headers["ratelimit"].startswith('"gpt-only";r=0')
    other = client.chat.completions.with_raw_response.create(model="fake-other", messages=HI)
    assert "ratelimit" not in other.headers  # no limit charges it
    with pytest.raises(openai.RateLimitError):
        client.chat.completions.create(model="fake-gpt", messages=HI)
    client.chat.completions.create(model="fake-other", messages=HI)  # still not counted


def test_a_request_limit_refuses_in_the_openai_dialect_with_retry_after(
    gw: Agwd, fake: FakeUpstream
) -> None:
    keys = setup(
        gw,
        fake,
        [{"id": "rpm", "subject": "key", "window": "1m", "requests": 2}],
    )
    away_from_minute_end()
    client = oa(gw, keys["team-a"])
    first = client.chat.completions.with_raw_response.create(model="fake-gpt", messages=HI)
    assert first.headers["ratelimit-policy"] == '"rpm";q=2;qu="requests";w=60'
    assert first.headers["ratelimit"].startswith('"rpm";r=1;t=')
    client.chat.completions.create(model="fake-gpt", messages=HI)
    with pytest.raises(openai.RateLimitError) as info:
        client.chat.completions.create(model="fake-gpt", messages=HI)
    resp = info.value.response
    assert resp.status_code == 429
    assert 1 <= int(resp.headers["retry-after"]) <= 60
    assert resp.headers["ratelimit"].startswith('"rpm";r=0;t=')
    error = resp.json()["error"]
    assert error["type"] == "rate_limit_error" and error["code"] == "rate_limit_exceeded"
    assert error["limit"]["id"] == "rpm" and error["limit"]["subject"] == "team-a"
    assert error["limit"]["meter"] == "requests" and error["limit"]["remaining"] == 0
    assert error["limit"]["resets_at"].endswith("Z")
    assert 'limit "rpm" reached for team-a' in error["message"]
    # another key has its own counter
    oa(gw, keys["team-b"]).chat.completions.create(model="fake-gpt", messages=HI)
    refused = rows(gw, 4)[2]
    assert refused["status_code"] == 429 and refused["limit_id"] == "rpm"
    assert refused["limit_action"] == "refused" and refused["error_type"] == "rate_limited"
    assert len(fake.requests()) == 3  # the refused request never went upstream


def test_the_anthropic_sdk_raises_its_rate_limit_error(gw: Agwd, fake: FakeUpstream) -> None:
    keys = setup(gw, fake, [{"id": "one", "subject": "user", "requests": 1, "window": "1h"}])
    client = an(gw, keys["team-a"])
    # a virtual key names no user: a per-user limit does not apply to it
    for _ in range(2):
        client.messages.create(model="fake-claude", max_tokens=50, messages=AHI)
    keys = setup(gw, fake, [{"id": "one", "subject": "key", "requests": 1, "window": "1h"}])
    client = an(gw, keys["team-a"])
    client.messages.create(model="fake-claude", max_tokens=50, messages=AHI)
    with pytest.raises(anthropic.RateLimitError) as info:
        client.messages.create(model="fake-claude", max_tokens=50, messages=AHI)
    body = info.value.response.json()
    assert body["type"] == "error" and body["error"]["type"] == "rate_limit_error"
    assert body["error"]["limit"]["id"] == "one"
    assert info.value.response.headers["retry-after"]


def test_a_lifetime_limit_tells_the_sdks_not_to_retry(gw: Agwd, fake: FakeUpstream) -> None:
    keys = setup(gw, fake, [{"id": "life", "requests": 1}])
    client = openai.OpenAI(base_url=f"{gw.data_url}/oa/v1", api_key=keys["team-a"], max_retries=3)
    CLIENTS.append(client)
    client.chat.completions.create(model="fake-gpt", messages=HI)
    started = time.monotonic()
    with pytest.raises(openai.RateLimitError) as info:
        client.chat.completions.create(model="fake-gpt", messages=HI)
    assert time.monotonic() - started < 2  # no retries with backoff
    assert info.value.response.headers["x-should-retry"] == "false"
    assert "retry-after" not in info.value.response.headers
    assert len(fake.requests()) == 1


# ------------------------------------------------------------------------------- dollars


def test_a_budget_lowers_max_tokens_to_what_it_can_pay_for(gw: Agwd, fake: FakeUpstream) -> None:
    fake.configure(reply_words=500)
    # the input is estimated at the body's bytes / 4 ($0.001 each): $1 pays for the rest
    keys = setup(
        gw, fake, [{"id": "budget", "subject": "key", "cost_usd": 1.0, "min_output_tokens": 100}]
    )
    client = oa(gw, keys["team-a"])
    raw = client.chat.completions.with_raw_response.create(
        model="fake-gpt", messages=HI, max_tokens=4096
    )
    est = SENT[-1]
    assert 10 < est < 40
    assert raw.headers["x-agw-max-tokens"] == f'{1000 - est}; limit="budget"'
    assert fake.requests()[-1]["body"]["max_tokens"] == 1000 - est
    answer = raw.parse()
    assert answer.usage is not None
    row = rows(gw, 1)[0]
    assert row["limit_action"] == "clamped" and row["limit_id"] == "budget"
    spent = (answer.usage.prompt_tokens + answer.usage.completion_tokens) * PER_TOKEN
    assert row["cost_usd"] == pytest.approx(spent)
    # a request the budget can pay for goes as asked; the RateLimit header says what is left
    # once it is held (in millionths of a dollar)
    raw = client.chat.completions.with_raw_response.create(
        model="fake-gpt", messages=HI, max_tokens=10
    )
    assert "x-agw-max-tokens" not in raw.headers
    assert fake.requests()[-1]["body"]["max_tokens"] == 10
    remaining = int(raw.headers["ratelimit"].split(";r=")[1].split(";")[0])
    assert remaining == pytest.approx((1.0 - spent - (SENT[-1] + 10) * PER_TOKEN) * 1e6, abs=2)
    # each next request is lowered to what is left, until that is under min_output_tokens
    for _ in range(10):
        try:
            raw = client.chat.completions.with_raw_response.create(
                model="fake-gpt", messages=HI, max_tokens=4096
            )
        except openai.RateLimitError as exc:
            error = exc.response.json()["error"]
            assert error["limit"]["meter"] == "cost_usd"
            assert error["limit"]["remaining"] < 100 * PER_TOKEN + PER_TOKEN
            break
        assert int(raw.headers["x-agw-max-tokens"].split(";")[0]) >= 100
    else:
        pytest.fail("the budget never ran out")
    got = rows(gw, len(fake.requests()) + 1)  # the admitted ones and the refusal
    total = sum(r["cost_usd"] or 0 for r in got)
    # never over: the input is over-estimated (the fake counts 7 tokens, agw reserved ~20),
    # and the output never passes its (lowered) max_tokens
    assert total <= 1.0 + 1e-9


def test_a_request_without_max_tokens_reserves_the_default_and_is_clamped_when_short(
    gw: Agwd, fake: FakeUpstream
) -> None:
    fake.configure(reply_words=50)
    keys = setup(
        gw,
        fake,
        [
            {
                "id": "small",
                "cost_usd": 0.05,
                "default_output_tokens": 4096,
                "min_output_tokens": 10,
            }
        ],
    )
    raw = oa(gw, keys["team-a"]).chat.completions.with_raw_response.create(
        model="fake-gpt", messages=HI
    )
    pays = 50 - SENT[-1]  # injected: $0.05 less the input's estimate
    assert pays >= 10
    assert fake.requests()[-1]["body"]["max_tokens"] == pays
    assert raw.headers["x-agw-max-tokens"].startswith(f"{pays};")
    # enough budget: a request without max_tokens goes up without one
    keys = setup(gw, fake, [{"id": "big", "cost_usd": 100}])
    oa(gw, keys["team-a"]).chat.completions.create(model="fake-gpt", messages=HI)
    assert "max_tokens" not in fake.requests()[-1]["body"]


def test_absurd_and_invalid_max_tokens(gw: Agwd, fake: FakeUpstream) -> None:
    keys = setup(gw, fake, [{"id": "b", "cost_usd": 1, "min_output_tokens": 10}])
    absurd = {"model": "fake-gpt", "messages": HI, "max_tokens": 10**9}
    r = post(gw, keys["team-a"], absurd)
    assert r.status_code == 200, r.text
    # what $1 pays, not 10^9
    assert fake.requests()[-1]["body"]["max_tokens"] == 1000 - estimate(absurd)
    for bad in ("12", -1, 0, 1.5, True):
        r = post(gw, keys["team-a"], {"model": "fake-gpt", "messages": HI, "max_tokens": bad})
        assert r.status_code == 400, (bad, r.text)
        assert "max_tokens must be a positive integer" in r.json()["error"]["message"]


def test_an_unpriced_model_under_a_dollar_limit(gw: Agwd, fake: FakeUpstream) -> None:
    keys = setup(gw, fake, [{"id": "usd", "cost_usd": 1}])
    r = post(gw, keys["team-a"], {"model": "no-such-price", "messages": HI})
    assert r.status_code == 403
    assert r.json()["error"]["message"].startswith('limit "usd" counts dollars, and model')
    keys = setup(gw, fake, [{"id": "usd", "cost_usd": 1, "unpriced": "allow"}])
    r = post(gw, keys["team-a"], {"model": "no-such-price", "messages": HI})
    assert r.status_code == 200, r.text


# ------------------------------------------------------------------------- concurrency


def test_200_concurrent_requests_against_a_budget_for_10_admit_at_most_10(
    gw: Agwd, fake: FakeUpstream
) -> None:
    fake.configure(delay_ms=300)
    # each request reserves its input estimate and 80 output tokens; the budget pays for 10.5
    body = {"model": "fake-gpt", "messages": HI, "max_tokens": 80}
    each = (estimate(body) + 80) * PER_TOKEN
    keys = setup(
        gw,
        fake,
        [{"id": "ten", "subject": "key", "cost_usd": 10.5 * each, "min_output_tokens": 80}],
    )

    async def burst() -> list[int]:
        headers = {"authorization": f"Bearer {keys['team-a']}"}
        limits = httpx.Limits(max_connections=250)
        async with httpx.AsyncClient(base_url=gw.data_url, timeout=30, limits=limits) as c:
            answers = await asyncio.gather(
                *(c.post("/oa/v1/chat/completions", json=body, headers=headers) for _ in range(200))
            )
        return [a.status_code for a in answers]

    statuses = asyncio.run(burst())
    assert statuses.count(200) == 10
    assert statuses.count(429) == 190
    assert len(fake.requests()) == 10
    # in flight, the others were told to come back soon: the holds may free budget
    # (answers settle at their real cost, less than the reservation)


def test_a_concurrency_limit_counts_requests_in_flight(gw: Agwd, fake: FakeUpstream) -> None:
    fake.configure(delay_ms=300)
    keys = setup(gw, fake, [{"id": "par", "concurrent": 3}])
    body = {"model": "fake-gpt", "messages": HI}

    async def burst() -> list[httpx.Response]:
        headers = {"authorization": f"Bearer {keys['team-a']}"}
        limits = httpx.Limits(max_connections=250)
        async with httpx.AsyncClient(base_url=gw.data_url, timeout=30, limits=limits) as c:
            return list(
                await asyncio.gather(
                    *(
                        c.post("/oa/v1/chat/completions", json=body, headers=headers)
                        for _ in range(8)
                    )
                )
            )

    answers = asyncio.run(burst())
    assert sorted(a.status_code for a in answers) == [200] * 3 + [429] * 5
    refused = next(a for a in answers if a.status_code == 429)
    assert refused.headers["retry-after"] == "1"
    assert refused.json()["error"]["limit"]["meter"] == "concurrent"
    # released when they ended: three more fit
    assert asyncio.run(burst())[0].status_code in (200, 429)
    assert [a.status_code for a in asyncio.run(burst())].count(200) == 3


# --------------------------------------------------------------------- shadow and warning


def test_shadow_mode_counts_and_reports_but_never_refuses(gw: Agwd, fake: FakeUpstream) -> None:
    keys = setup(gw, fake, [{"id": "watch", "requests": 1, "enforce": False}])
    client = oa(gw, keys["team-a"])
    for _ in range(3):
        raw = client.chat.completions.with_raw_response.create(model="fake-gpt", messages=HI)
        assert "ratelimit" not in raw.headers  # a shadow limit is not announced to clients
    got = rows(gw, 3)
    assert [r["limit_action"] for r in got] == [None, "shadow", "shadow"]
    assert all(r["status_code"] == 200 for r in got)


def test_the_soft_warning_once_a_subject_passes_its_share(gw: Agwd, fake: FakeUpstream) -> None:
    keys = setup(gw, fake, [{"id": "five", "requests": 5, "window": "1d", "warn_at": 0.6}])
    client = oa(gw, keys["team-a"])
    seen = []
    for _ in range(4):
        raw = client.chat.completions.with_raw_response.create(model="fake-gpt", messages=HI)
        seen.append(raw.headers.get("x-agw-limit-warning"))
    assert seen[:2] == [None, None]
    assert seen[2] == "five 60% used" and seen[3] == "five 80% used"


# -------------------------------------------------------------------------- bad config


@pytest.mark.parametrize(
    ("limit", "message"),
    [
        ({"id": "w", "window": "7x", "requests": 1}, "unknown window '7x'"),
        ({"id": "a\rb", "requests": 1}, "must not contain control characters"),
        ({"id": "a\x01b", "requests": 1}, "must not contain control characters"),
        ({"id": "w", "window": "0s", "requests": 1}, "unknown window '0s'"),
        ({"id": "z", "cost_usd": 0}, "greater than 0"),
        ({"id": "n", "requests": -5}, "greater than 0"),
        ({"id": "t", "tokens": {}}, "tokens needs total, input or output"),
        ({"id": "e", "window": "1d"}, "a limit needs cost_usd, tokens, requests or concurrent"),
        ({"id": "u", "requests": 1, "unpriced": "allow"}, "unpriced applies to a cost_usd"),
        ({"id": "s", "requests": 1, "subject": "team"}, "subject"),
        ({"id": "c", "requests": 1, "when": "principal.nope("}, "when"),
        ({"id": "r", "requests": 1, "match": {"route_ids": ["ghost"]}}, "route 'ghost'"),
        (
            {"id": "m", "requests": 1, "match": {"models": ["x"], "route_kinds": ["mcp"]}},
            "apply to LLM routes only",
        ),
    ],
)
def test_a_bad_limit_is_refused_and_nothing_changes(
    gw: Agwd, fake: FakeUpstream, limit: dict[str, Any], message: str
) -> None:
    keys = setup(gw, fake, [{"id": "keep", "requests": 100}])
    with gw.client() as c:
        r = c.post(
            "/admin/gateway/apply",
            json={"bundle": bundle(fake, [{"id": "keep", "requests": 100}, limit])},
        )
        assert r.status_code == 400, r.text
        assert message in r.text
    assert post(gw, keys["team-a"], {"model": "fake-gpt", "messages": HI}).status_code == 200


# ------------------------------------------------------------------------------- streams

CUT = {
    "id": "cutter",
    "tokens": {"output": 60},
    "on_exceed": "cut",
    "default_output_tokens": 20,  # what a request without max_tokens reserves
    "min_output_tokens": 1,
}


def test_a_cut_limit_ends_an_openai_stream_cleanly_at_the_cap(gw: Agwd, fake: FakeUpstream) -> None:
    fake.configure(reply_words=400)
    keys = setup(gw, fake, [CUT])
    stream = oa(gw, keys["team-a"]).chat.completions.create(
        model="fake-gpt",
        messages=HI,
        stream=True,
        stream_options={"include_usage": True},
    )
    text, finish, usage = "", None, None
    for chunk in stream:  # the SDK parses every event, the gateway's last ones included
        if chunk.choices:
            text += chunk.choices[0].delta.content or ""
            finish = chunk.choices[0].finish_reason or finish
        if chunk.usage is not None:
            usage = chunk.usage
    assert finish == "length"
    words = text.split()
    assert 40 < len(words) < 70  # cut near 60 tokens (counted as characters / 4)
    assert usage is not None and usage.completion_tokens <= 66
    row = rows(gw, 1)[0]
    assert row["limit_action"] == "cut" and row["limit_id"] == "cutter"
    assert row["status_code"] == 200 and row["error_type"] is None
    assert row["usage_source"] == "estimated"
    # the budget is spent: the next request is refused
    with pytest.raises(openai.RateLimitError):
        oa(gw, keys["team-a"]).chat.completions.create(model="fake-gpt", messages=HI)


def test_a_cut_limit_ends_an_anthropic_stream_with_max_tokens(gw: Agwd, fake: FakeUpstream) -> None:
    fake.configure(reply_words=400)
    # the prompt is estimated at about 770 tokens (the body's bytes / 4); the fake counts about
    # 1,010 (7 + characters / 3), reported in message_start: the stream holds 770 + 300 and has
    # used 1,010 before its first word, so it takes more as it flows, and is cut at 1,100
    keys = setup(
        gw,
        fake,
        [{"id": "cutter", "tokens": {"total": 1100}, "on_exceed": "cut", "min_output_tokens": 1}],
    )
    long: list[MessageParam] = [{"role": "user", "content": "x" * 2996}]
    with an(gw, keys["team-a"]).messages.stream(
        model="fake-claude", max_tokens=300, messages=long
    ) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert fake.requests()[-1]["body"]["max_tokens"] == 300  # admitted as asked
    assert final.stop_reason == "max_tokens"
    assert 60 < len(text.split()) < 110  # 1,100 - 1,007 tokens of words, give or take a read
    row = rows(gw, 1)[0]
    assert row["limit_action"] == "cut" and row["input_tokens"] > 1000


def test_a_finish_limit_lets_the_stream_end_and_refuses_the_next(
    gw: Agwd, fake: FakeUpstream
) -> None:
    fake.configure(reply_words=200)
    keys = setup(gw, fake, [CUT | {"on_exceed": "finish"}])
    stream = oa(gw, keys["team-a"]).chat.completions.create(
        model="fake-gpt", messages=HI, stream=True
    )
    text, finish = "", None
    for chunk in stream:
        if chunk.choices:
            text += chunk.choices[0].delta.content or ""
            finish = chunk.choices[0].finish_reason or finish
    assert finish == "stop" and len(text.split()) == 201  # the whole answer
    row = rows(gw, 1)[0]
    assert row["limit_action"] == "exceeded" and row["limit_id"] == "cutter"
    assert row["output_tokens"] > 60
    with pytest.raises(openai.RateLimitError) as info:
        oa(gw, keys["team-a"]).chat.completions.create(model="fake-gpt", messages=HI)
    assert info.value.response.json()["error"]["limit"]["remaining"] == 0


# ------------------------------------------------------------------------ SDK retries


@pytest.mark.parametrize("sdk", ["openai", "anthropic"])
def test_the_sdks_honour_retry_after_and_get_through(
    gw: Agwd, fake: FakeUpstream, sdk: str
) -> None:
    """One request in flight holds a concurrency limit of 1; a second is refused with
    ``Retry-After: 1``, and the SDK's own retry, a second later, gets through."""
    fake.configure(delay_ms=600)
    keys = setup(gw, fake, [{"id": "one-at-a-time", "concurrent": 1}])

    def first() -> None:
        oa(gw, keys["team-a"]).chat.completions.create(model="fake-gpt", messages=HI)

    holder = threading.Thread(target=first)
    holder.start()
    try:
        time.sleep(0.2)  # the first is in flight
        started = time.monotonic()
        if sdk == "openai":
            client = openai.OpenAI(
                base_url=f"{gw.data_url}/oa/v1", api_key=keys["team-a"], max_retries=2
            )
            CLIENTS.append(client)
            client.chat.completions.create(model="fake-gpt", messages=HI)
        else:
            aclient = anthropic.Anthropic(
                base_url=f"{gw.data_url}/an", api_key=keys["team-a"], max_retries=2
            )
            CLIENTS.append(aclient)
            aclient.messages.create(model="fake-claude", max_tokens=20, messages=AHI)
        waited = time.monotonic() - started
    finally:
        holder.join(timeout=30)
    assert 0.9 <= waited < 10  # refused once, retried after the Retry-After second
    got = rows(gw, 3)
    assert sorted(r["status_code"] for r in got) == [200, 200, 429]


def test_an_upstreams_malformed_ratelimit_header_is_ignored_and_logged(
    gw: Agwd, fake: FakeUpstream
) -> None:
    fake.configure(answer_header="RateLimit: garbage ;;; r=lots")
    keys = setup(gw, fake, [{"id": "rpm", "requests": 100, "window": "1m"}])
    try:
        for _ in range(2):
            raw = oa(gw, keys["team-a"]).chat.completions.with_raw_response.create(
                model="fake-gpt", messages=HI
            )
            assert raw.http_response.status_code == 200
            assert raw.headers.get_list("ratelimit") == [raw.headers["ratelimit"]]
            assert raw.headers["ratelimit"].startswith('"rpm";r=')  # the gateway's own
        fake.configure(answer_header='RateLimit: "up";r=5;t=9')  # well-formed: not passed either
        raw = oa(gw, keys["team-a"]).chat.completions.with_raw_response.create(
            model="fake-gpt", messages=HI
        )
        assert raw.headers["ratelimit"].startswith('"rpm";r=')
    finally:
        fake.configure(answer_header="")
    logged = [e for e in gw.log_events() if e.get("event") == "upstream_ratelimit_header_malformed"]
    assert len(logged) == 1 and logged[0]["header"] == "ratelimit"
    assert rows(gw, 3)[2]["status_code"] == 200


def test_a_when_expression_sees_its_own_variables_beside_the_routes_rules(
    gw: Agwd, fake: FakeUpstream
) -> None:
    """The route's authorization names ``principal``, the limit's ``when`` names ``key`` and
    ``llm``: each sees what it names, built once per request."""
    limits = [
        {
            "id": "team-a-gpt",
            "requests": 1,
            "when": '"team-a" in key.tags && llm.model == "fake-gpt"',
        }
    ]
    doc = bundle(fake, limits)
    doc["llmRoutes"][0]["authorization"] = {"allow": ['principal.kind == "virtual_key"']}
    with gw.client() as c:
        r = c.post("/admin/gateway/apply", json={"bundle": doc, "prune": True})
        assert r.status_code == 200, r.text
        keys = {k: c.get(f"/admin/virtual_keys/{k}").json()["key"] for k in ("team-a", "team-b")}
    body = {"model": "fake-gpt", "messages": HI}
    assert post(gw, keys["team-a"], body).status_code == 200
    refused = post(gw, keys["team-a"], body)
    assert refused.status_code == 429, refused.text
    assert refused.json()["error"]["limit"]["id"] == "team-a-gpt"
    assert post(gw, keys["team-b"], body).status_code == 200  # not team-a: not counted
    assert post(gw, keys["team-b"], body).status_code == 200
