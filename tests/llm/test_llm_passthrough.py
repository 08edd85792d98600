"""The LLM plane with the official SDKs, through a real agwd, to a fake upstream process.

Same-format traffic passes through: real upstream ids, every field, usage read on the side and
recorded exactly as the upstream reported it.
"""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import pytest
from openai.types.chat import ChatCompletionFunctionToolParam

from tests.fakes.run import FakeUpstream, start_fake_upstream
from tests.support.agwd import Agwd, AgwdLauncher
from tests.support.llm import settle, tp

UPSTREAM_KEY = "sk-upstream-secret-0001"


@pytest.fixture(scope="module")
def fake(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeUpstream]:
    with start_fake_upstream(tmp_path_factory.mktemp("fake"), "--require-key", UPSTREAM_KEY) as f:
        yield f


@pytest.fixture(autouse=True)
def clean_knobs(fake: FakeUpstream) -> Iterator[None]:
    yield
    fake.configure(status=0, delay_ms=0, chunk_delay_ms=0, cut_after=-1, fail_first=0)
    fake.reset()


@pytest.fixture(scope="module")
def gw(module_agwd_factory: AgwdLauncher, fake: FakeUpstream) -> Agwd:
    agwd = module_agwd_factory.start()
    bundle = {
        "apiVersion": "gateway.agw/v1alpha1",
        "kind": "GatewayBundle",
        "providers": [
            {
                "id": "oa",
                "provider_type": "openai",
                "base_url": f"{fake.url}/v1",
                "api_key": UPSTREAM_KEY,
                "network": {"request_timeout_seconds": 2},
            },
            {
                "id": "an",
                "provider_type": "anthropic",
                "base_url": fake.url,
                "api_key": UPSTREAM_KEY,
            },
            {
                "id": "dead",
                "provider_type": "openai",
                "base_url": "http://127.0.0.1:9/v1",
                "api_key": "x",
                "network": {"max_retries": 0},
            },
            {
                "id": "flaky",
                "provider_type": "openai",
                "base_url": f"{fake.url}/v1",
                "api_key": UPSTREAM_KEY,
                "network": {"max_retries": 2, "retry_delay_seconds": 0},
            },
        ],
        "llmRoutes": [
            {
                "id": "flaky",
                "protocol": "openai",
                "match_policy": {"path_prefix": "/flaky"},
                "target_policy": {"provider_id": "flaky"},
            },
            {
                "id": "oa",
                "protocol": "openai",
                "match_policy": {"path_prefix": "/oa"},
                "auth_policy": {"require_virtual_key": True},
                "target_policy": {"provider_id": "oa"},
            },
            {
                "id": "an",
                "protocol": "anthropic",
                "match_policy": {"path_prefix": "/an"},
                "auth_policy": {"require_virtual_key": True},
                "target_policy": {"provider_id": "an"},
            },
            {
                "id": "dead",
                "protocol": "openai",
                "match_policy": {"path_prefix": "/dead"},
                "target_policy": {"provider_id": "dead"},
            },
        ],
        "virtualKeys": [
            {"id": "team", "allowed_route_ids": ["oa", "an"]},
            {"id": "off", "disabled": True},
            {"id": "narrow", "allowed_route_ids": ["an"]},
        ],
    }
    with agwd.client() as c:
        r = c.post("/admin/gateway/apply", json={"bundle": bundle})
        assert r.status_code == 200, r.text
        agwd.env["VK"] = c.get("/admin/virtual_keys/team").json()["key"]
        agwd.env["VK_OFF"] = c.get("/admin/virtual_keys/off").json()["key"]
        agwd.env["VK_NARROW"] = c.get("/admin/virtual_keys/narrow").json()["key"]
    return agwd


def oa(gw: Agwd, **kw: Any) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=f"{gw.data_url}/oa/v1",
        api_key=gw.env["VK"],
        max_retries=0,
        timeout=20,
        default_headers=tp(),
        **kw,
    )


def an(gw: Agwd) -> anthropic.Anthropic:
    return anthropic.Anthropic(
        base_url=f"{gw.data_url}/an",
        api_key=gw.env["VK"],
        max_retries=0,
        timeout=20,
        default_headers=tp(),
    )


def test_openai_chat_passes_through_with_real_ids_and_exact_usage(
    gw: Agwd, fake: FakeUpstream
) -> None:
    fake.clear()
    resp = oa(gw).chat.completions.create(
        model="fake-gpt", messages=[{"role": "user", "content": "hello there"}]
    )
    assert resp.id.startswith("chatcmpl-") and resp.system_fingerprint == "fp_fake0001"
    assert resp.choices[0].message.content == "echo: hello there"
    (sent,) = fake.requests()
    assert sent["headers"]["authorization"] == f"Bearer {UPSTREAM_KEY}"
    assert gw.env["VK"] not in json.dumps(sent)
    assert sent["body"]["model"] == "fake-gpt"
    # the fake compresses what the request accepts, as providers do: agw reads every answer, so
    # it asks for none (the openai SDK's own accept-encoding stays between it and agw)
    assert sent["headers"]["accept-encoding"] == "identity"
    assert sent["headers"]["user-agent"].startswith("agw/")
    (row,) = settle(gw, 1)
    assert resp.usage is not None
    assert (row["input_tokens"], row["output_tokens"], row["total_tokens"]) == (
        resp.usage.prompt_tokens,
        resp.usage.completion_tokens,
        resp.usage.total_tokens,
    )
    assert row["cached_input_tokens"] == 2 and row["reasoning_tokens"] == 1
    assert row["usage_source"] == "provider" and row["usage_finalized"] == 1
    assert (row["route_id"], row["virtual_key_id"], row["provider_id"]) == ("oa", "team", "oa")
    assert (row["api_operation"], row["status_code"], row["success"]) == (
        "chat_completions",
        200,
        1,
    )
    assert row["credential_source"] == "static"


def test_stream_without_include_usage_is_asked_upstream_and_stripped(
    gw: Agwd, fake: FakeUpstream
) -> None:
    fake.clear()
    chunks = list(
        oa(gw).chat.completions.create(
            model="fake-gpt",
            messages=[{"role": "user", "content": "stream me please"}],
            stream=True,
        )
    )
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == (
        "echo: stream me please"
    )
    assert all(c.choices for c in chunks), "the usage-only chunk the client did not ask for leaked"
    assert all(c.usage is None for c in chunks)
    (sent,) = fake.requests()
    assert sent["body"]["stream_options"] == {"include_usage": True}
    full = oa(gw).chat.completions.create(
        model="fake-gpt", messages=[{"role": "user", "content": "stream me please"}]
    )
    row, _ = settle(gw, 2)
    assert full.usage is not None
    assert (row["input_tokens"], row["output_tokens"]) == (
        full.usage.prompt_tokens,
        full.usage.completion_tokens,
    )
    assert row["stream"] == 1 and row["usage_finalized"] == 1 and row["usage_source"] == "provider"


def test_stream_with_include_usage_keeps_the_usage_chunk(gw: Agwd) -> None:
    chunks = list(
        oa(gw).chat.completions.create(
            model="fake-gpt",
            messages=[{"role": "user", "content": "count"}],
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.prompt_tokens > 0
    settle(gw, 1)


def test_tool_call_stream_records_tool_names(gw: Agwd) -> None:
    tools: list[ChatCompletionFunctionToolParam] = [
        {"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}
    ]
    chunks = list(
        oa(gw).chat.completions.create(
            model="fake-gpt",
            messages=[{"role": "user", "content": "find it"}],
            tools=tools,
            stream=True,
        )
    )
    names = [
        tc.function.name
        for c in chunks
        if c.choices
        for tc in (c.choices[0].delta.tool_calls or [])
        if tc.function and tc.function.name
    ]
    assert names == ["lookup"]
    (row,) = settle(gw, 1)
    assert json.loads(row["request_tool_names"]) == ["lookup"]
    assert row["tool_call_count"] == 1 and json.loads(row["tool_names"]) == ["lookup"]


def test_responses_embeddings_and_models_pass_through(gw: Agwd) -> None:
    client = oa(gw)
    r = client.responses.create(model="fake-gpt", input="hi responses")
    assert r.id.startswith("resp_") and r.output_text == "echo: hi responses"
    events = list(client.responses.create(model="fake-gpt", input="hi", stream=True))
    assert events[-1].type == "response.completed"
    e = client.embeddings.create(model="fake-embed", input="vector me")
    assert len(e.data[0].embedding) == 8
    assert [m.id for m in client.models.list()] == ["fake-gpt", "fake-claude", "fake-gemini"]


def test_anthropic_messages_stream_and_count_tokens(gw: Agwd, fake: FakeUpstream) -> None:
    fake.clear()
    client = an(gw)
    msg = client.messages.create(
        model="fake-claude", max_tokens=64, messages=[{"role": "user", "content": "bonjour"}]
    )
    assert msg.id.startswith("msg_") and msg.content[0].text == "echo: bonjour"  # type: ignore[union-attr]
    sent = fake.requests()[0]
    assert sent["headers"]["x-api-key"] == UPSTREAM_KEY and "authorization" not in sent["headers"]
    with client.messages.stream(
        model="fake-claude", max_tokens=64, messages=[{"role": "user", "content": "stream bonjour"}]
    ) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == "echo: stream bonjour"
    count = client.messages.count_tokens(
        model="fake-claude", messages=[{"role": "user", "content": "how many"}]
    )
    assert count.input_tokens > 0
    assert fake.requests()[-1]["path"] == "/v1/messages/count_tokens"
    first, stream_row, count_row = settle(gw, 3)
    # rows count every input token: Anthropic's input_tokens plus cache reads and writes
    cache = (msg.usage.cache_read_input_tokens or 0) + (msg.usage.cache_creation_input_tokens or 0)
    assert cache > 0
    assert (first["input_tokens"], first["output_tokens"]) == (
        msg.usage.input_tokens + cache,
        msg.usage.output_tokens,
    )
    assert first["cached_input_tokens"] == msg.usage.cache_read_input_tokens
    assert first["cache_creation_input_tokens"] == msg.usage.cache_creation_input_tokens
    assert (stream_row["input_tokens"], stream_row["output_tokens"]) == (
        final.usage.input_tokens + cache,
        final.usage.output_tokens,
    )
    assert stream_row["stream"] == 1 and stream_row["usage_finalized"] == 1
    assert count_row["api_operation"] == "count_tokens"


def test_key_in_either_header(gw: Agwd) -> None:
    body = {"model": "fake-gpt", "messages": [{"role": "user", "content": "x"}]}
    url = f"{gw.data_url}/oa/v1/chat/completions"
    for headers in (
        {"x-api-key": gw.env["VK"]},
        {"authorization": f"Bearer {gw.env['VK']}"},
        {"x-api-key": "wrong", "authorization": f"Bearer {gw.env['VK']}"},
    ):
        assert httpx.post(url, json=body, headers=headers).status_code == 200


@pytest.mark.parametrize(
    ("headers", "status", "message"),
    [
        ({}, 401, "virtual key is required"),
        ({"authorization": "Bearer vk-nope"}, 401, "invalid virtual key"),
        ({"x-api-key": "VK_OFF"}, 403, "virtual key is disabled"),
        ({"x-api-key": "VK_NARROW"}, 403, "virtual key is not allowed to access this route"),
    ],
)
def test_key_rejections_in_dialect_and_recorded(
    gw: Agwd, headers: dict[str, str], status: int, message: str
) -> None:
    headers = {**{k: gw.env.get(v, v) for k, v in headers.items()}, **tp()}
    r = httpx.post(f"{gw.data_url}/oa/v1/chat/completions", json={}, headers=headers)
    assert r.status_code == status
    assert r.json()["error"]["message"] == message
    assert r.json()["error"]["type"] in ("authentication_error", "permission_error")
    a = httpx.post(f"{gw.data_url}/an/v1/messages", json={}, headers=headers)
    if message != "virtual key is not allowed to access this route":
        assert a.json() == {
            "type": "error",
            "error": {"type": r.json()["error"]["type"], "message": message},
        }
    rows_ = settle(gw, 2)
    assert {(x["status_code"], x["error_type"], x["success"]) for x in rows_} >= {
        (status, "virtual_key_rejected", 0)
    }
    assert r.headers["traceparent"].startswith("00-") and r.headers["x-agent-depth"] == "1"


def test_bad_requests_get_dialect_errors(gw: Agwd) -> None:
    h = {"x-api-key": gw.env["VK"], "content-type": "application/json"}
    url = f"{gw.data_url}/oa/v1/chat/completions"
    r = httpx.post(url, content=b"{not json", headers=h)
    assert r.status_code == 400 and "invalid JSON body" in r.json()["error"]["message"]
    r = httpx.post(url, json={"model": 5}, headers=h)
    assert r.status_code == 400 and r.json()["error"]["message"] == "model must be a string"
    r = httpx.post(url, json={"model": "m", "stream": "yes"}, headers=h)
    assert r.status_code == 400
    r = httpx.post(f"{gw.data_url}/oa/v1/nope", json={}, headers=h)
    assert r.status_code == 404 and r.json()["error"]["type"] == "not_found_error"
    r = httpx.get(url, headers=h)
    assert r.status_code == 405
    big = b'{"model": "m", "messages": [], "pad": "' + b"x" * (16 * 1024 * 1024) + b'"}'
    r = httpx.post(url, content=big, headers=h, timeout=30)
    assert r.status_code == 413
    r = httpx.post(f"{gw.data_url}/an/v1/messages", content=b"[1]", headers=h)
    assert r.status_code == 400 and r.json()["type"] == "error"
    assert httpx.post(url, json={"model": "fake-gpt", "messages": []}, headers=h).status_code == 200


def test_dead_and_slow_upstreams(gw: Agwd, fake: FakeUpstream) -> None:
    r = httpx.post(f"{gw.data_url}/dead/v1/chat/completions", json={"model": "m", "messages": []})
    assert r.status_code == 502 and "unreachable" in r.json()["error"]["message"]
    fake.configure(delay_ms=4000)
    h = {"x-api-key": gw.env["VK"]}
    t0 = time.monotonic()
    r = httpx.post(
        f"{gw.data_url}/oa/v1/chat/completions",
        json={"model": "m", "messages": []},
        headers=h,
        timeout=30,
    )
    assert r.status_code == 504 and "timed out" in r.json()["error"]["message"]
    assert time.monotonic() - t0 < 3.9


def test_upstream_error_passes_through_unchanged(gw: Agwd, fake: FakeUpstream) -> None:
    fake.configure(status=400)
    r = httpx.post(
        f"{gw.data_url}/an/v1/messages",
        json={"model": "m", "max_tokens": 5, "messages": []},
        headers={"x-api-key": gw.env["VK"]},
    )
    assert r.status_code == 400
    assert r.json()["type"] == "error" and r.json()["error"]["type"] == "invalid_request_error"


def test_upstream_cut_mid_stream_gets_a_proper_end(gw: Agwd, fake: FakeUpstream) -> None:
    fake.configure(cut_after=3)
    with httpx.stream(
        "POST",
        f"{gw.data_url}/oa/v1/chat/completions",
        json={
            "model": "m",
            "stream": True,
            "messages": [{"role": "user", "content": "a b c d e f"}],
        },
        headers={"x-api-key": gw.env["VK"], **tp()},
        timeout=20,
    ) as r:
        text = r.read().decode()
    assert text.rstrip().endswith("data: [DONE]")
    assert "upstream stream ended early" in text
    (row,) = settle(gw, 1)
    assert row["usage_finalized"] == 0 and row["error_type"] == "provider_stream_failed"
    assert row["usage_source"] == "estimated" and row["input_tokens"] > 0


def test_retry_on_another_credential(gw: Agwd, fake: FakeUpstream) -> None:
    with gw.client() as c:
        for cid in ("c1", "c2"):
            r = c.post(
                "/admin/credentials",
                json={
                    "id": cid,
                    "type": "api_key",
                    "provider_id": "oa",
                    "attributes": {"api_key": UPSTREAM_KEY},
                },
            )
            assert r.status_code == 201, r.text
    try:
        fake.configure(fail_first=1)
        fake.reset()
        answer = oa(gw).chat.completions.create(
            model="fake-gpt", messages=[{"role": "user", "content": "retry"}]
        )
        assert answer.choices[0].message.content == "echo: retry"
        (row,) = settle(gw, 1)
        assert row["credential_source"] == "api_key" and row["credential_id"] in ("c1", "c2")
    finally:
        with gw.client() as c:
            c.delete("/admin/credentials/c1")
            c.delete("/admin/credentials/c2")


def test_client_disconnect_cancels_upstream_and_records_499(gw: Agwd, fake: FakeUpstream) -> None:
    fake.configure(chunk_delay_ms=300)
    with httpx.stream(
        "POST",
        f"{gw.data_url}/oa/v1/chat/completions",
        json={
            "model": "m",
            "stream": True,
            "messages": [{"role": "user", "content": "one two three four five six seven"}],
        },
        headers={"x-api-key": gw.env["VK"], **tp()},
        timeout=20,
    ) as r:
        it = r.iter_raw()
        next(it)
    (row,) = settle(gw, 1)
    assert row["status_code"] == 499 and row["error_type"] == "client_cancelled"
    assert row["usage_finalized"] == 0


def test_client_leaving_a_slow_answer_cancels_upstream_and_records_499(
    gw: Agwd, fake: FakeUpstream
) -> None:
    # Not a stream: the disconnect watcher starts after agw.request.WATCH_AFTER_S and must still
    # stop the wait on the provider long before the provider would answer.
    fake.configure(delay_ms=4000)
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(
            f"{gw.data_url}/oa/v1/chat/completions",
            json={"model": "m", "messages": [{"role": "user", "content": "slow"}]},
            headers={"x-api-key": gw.env["VK"], **tp()},
            timeout=httpx.Timeout(5, read=0.5),
        )
    (row,) = settle(gw, 1, timeout=3)
    assert row["status_code"] == 499 and row["error_type"] == "client_cancelled"
    assert row["latency_ms"] < 2500


def test_quick_answers_are_not_taken_for_disconnects(gw: Agwd, fake: FakeUpstream) -> None:
    # answers on both sides of the watcher's start: each is a success, none a 499
    client = oa(gw)
    for delay in (0, 30, 60, 120):
        fake.configure(delay_ms=delay)
        r = client.chat.completions.create(
            model="fake-gpt", messages=[{"role": "user", "content": f"wait {delay}"}]
        )
        assert r.choices[0].message.content == f"echo: wait {delay}"
    rows = settle(gw, 4)
    assert [(r["status_code"], r["success"]) for r in rows] == [(200, 1)] * 4


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["chat", "--base-url", "{url}/oa"], "echo: hi agwctl"),
        (["chat", "--base-url", "{url}/oa", "--stream"], "echo: hi agwctl"),
        (["chat", "--api", "anthropic", "--base-url", "{url}/an"], "echo: hi agwctl"),
        (
            ["chat", "--api", "anthropic", "--base-url", "{url}/an/v1", "--stream"],
            "echo: hi agwctl",
        ),
        (["responses", "--base-url", "{url}/oa"], "echo: hi agwctl"),
        (["responses", "--base-url", "{url}/oa", "--stream"], "echo: hi agwctl"),
    ],
)
def test_agwctl_chat_and_responses(
    gw: Agwd, tmp_path: Path, args: list[str], expected: str
) -> None:
    from tests.support.agwctl import run_agwctl

    argv = [a.format(url=gw.data_url) for a in args]
    env = {**gw.env, "AGW_API_KEY": gw.env["VK"], "AGW_MODEL": "fake-gpt"}
    proc = run_agwctl(*argv, "hi agwctl", env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    text, usage = proc.stdout.rstrip("\n").rsplit("\n", 1)
    assert text == expected
    assert usage.startswith("usage: input_tokens=") and "input_tokens=0 " not in usage


def test_agwctl_chat_errors_are_one_line(gw: Agwd, tmp_path: Path) -> None:
    from tests.support.agwctl import run_agwctl

    proc = run_agwctl(
        "chat",
        "--base-url",
        f"{gw.data_url}/oa",
        "--api-key",
        "vk-wrong",
        "x",
        env=gw.env,
        cwd=tmp_path,
    )
    assert proc.returncode == 1
    assert (
        proc.stderr.startswith("agwctl: API error 401: ") and "invalid virtual key" in proc.stderr
    )
    assert proc.stderr.count("\n") == 1


def test_network_max_retries_repeat_a_single_credential(gw: Agwd, fake: FakeUpstream) -> None:
    fake.configure(fail_first=2)
    fake.reset()
    fake.clear()
    url = f"{gw.data_url}/flaky/v1/chat/completions"
    body = {"model": "fake-gpt", "messages": [{"role": "user", "content": "third time"}]}
    r = httpx.post(url, json=body, headers=tp(), timeout=20)
    assert (
        r.status_code == 200 and r.json()["choices"][0]["message"]["content"] == "echo: third time"
    )
    assert len(fake.requests()) == 3
    fake.configure(fail_first=5)
    fake.reset()
    r = httpx.post(url, json=body, timeout=20)
    assert r.status_code == 503  # the upstream's own error, after 1 + 2 attempts


@pytest.mark.parametrize("server", ["uvicorn", "hypercorn"])
def test_sigterm_drains_a_stream_in_flight(
    agwd_factory: AgwdLauncher, fake: FakeUpstream, server: str
) -> None:
    static = agwd_factory.base / f"static-{server}.yaml"
    static.write_text(
        "apiVersion: gateway.agw/v1alpha1\nkind: GatewayBundle\nproviders:\n"
        f"  - {{id: p, provider_type: openai, base_url: '{fake.url}/v1', "
        f"api_key: {UPSTREAM_KEY}}}\n"
        "llmRoutes:\n  - {id: r, protocol: openai, match_policy: {path_prefix: /}, "
        "target_policy: {provider_id: p}}\n"
    )
    agwd = agwd_factory.start("--data-server", server, static=static)
    fake.configure(chunk_delay_ms=150)
    body = {
        "model": "m",
        "stream": True,
        "messages": [{"role": "user", "content": "one two three four five six"}],
    }
    with httpx.stream("POST", f"{agwd.data_url}/v1/chat/completions", json=body, timeout=20) as r:
        it = r.iter_bytes()
        first = next(it)
        agwd.proc.send_signal(signal.SIGTERM)
        rest = b"".join(it)
    text = (first + rest).decode()
    assert '"six"' in text or " six" in text
    assert text.rstrip().endswith("data: [DONE]")
    assert agwd.proc.wait(15) == 0


@pytest.mark.parametrize(
    "header",
    ["x-claude-code-session-id", "x-session-id", "session-id", "goose-session-id"],
)
def test_the_agents_own_session_id_is_recorded(gw: Agwd, header: str) -> None:
    """Claude Code, opencode, Codex and goose send their session id on every LLM request."""
    with oa(gw) as client:
        client.chat.completions.create(
            model="fake-gpt",
            messages=[{"role": "user", "content": "x"}],
            extra_headers={header: f"sess-{header}"},
        )
    (row,) = settle(gw, 1)
    assert row["session_id"] == f"sess-{header}"
    assert row["acp_session_id"] is None  # no ACP session of this gateway sent it
