"""Clients whose format differs from their provider's: the official SDKs through agwd to a fake
upstream of another dialect, translated both ways, streaming included, usage exact."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import anthropic
import httpx
import openai
import pytest
from openai.types.chat import ChatCompletionToolParam

from tests.fakes.llm_upstream import DEEPSEEK_CACHE_HIT_TOKENS, REASONING_TOKENS
from tests.fakes.run import FakeUpstream, start_fake_upstream
from tests.support.agwd import Agwd, AgwdLauncher
from tests.support.llm import settle, tp

KEY = "sk-upstream-secret-0002"


@pytest.fixture(scope="module")
def fake(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeUpstream]:
    with start_fake_upstream(tmp_path_factory.mktemp("fake"), "--require-key", KEY) as f:
        yield f


@pytest.fixture(scope="module")
def gw(module_agwd_factory: AgwdLauncher, fake: FakeUpstream) -> Agwd:
    agwd = module_agwd_factory.start()

    def route(rid: str, proto: str, provider: str) -> dict[str, Any]:
        return {
            "id": rid,
            "protocol": proto,
            "match_policy": {"path_prefix": f"/{rid}"},
            "target_policy": {"provider_id": provider},
        }

    bundle = {
        "apiVersion": "gateway.agw/v1alpha1",
        "kind": "GatewayBundle",
        "providers": [
            {"id": "oa", "provider_type": "openai", "base_url": f"{fake.url}/v1", "api_key": KEY},
            {"id": "ds", "provider_type": "deepseek", "base_url": f"{fake.url}/v1", "api_key": KEY},
            {"id": "an", "provider_type": "anthropic", "base_url": fake.url, "api_key": KEY},
            {"id": "gm", "provider_type": "gemini", "base_url": fake.url, "api_key": KEY},
            {
                "id": "dead",
                "provider_type": "openai",
                "base_url": "http://127.0.0.1:9/v1",
                "api_key": KEY,
            },
        ],
        "llmRoutes": [
            route("oa2an", "openai", "an"),
            route("oa2gm", "openai", "gm"),
            route("oa2ds", "openai", "ds"),
            route("an2oa", "anthropic", "oa"),
            route("an2ds", "anthropic", "ds"),
            route("cc2gm", "cc", "gm"),
            route("oa2oa", "openai", "oa"),
            {
                "id": "smart",
                "protocol": "openai",
                "match_policy": {"path_prefix": "/smart"},
                "target_policy": {
                    "model_selector_strategy": "priority",
                    "fallback": {"enabled": True, "max_num": 1},
                    "model_targets": [
                        {
                            "name": "smart",
                            "candidates": [
                                {
                                    "provider_id": "dead",
                                    "upstream_model": "fake-gpt",
                                    "priority": 10,
                                },
                                {
                                    "provider_id": "an",
                                    "upstream_model": "fake-claude",
                                    "priority": 1,
                                },
                            ],
                        },
                        {
                            "name": "cheap",
                            "candidates": [
                                {"provider_id": "oa", "upstream_model": "not-managed"},
                            ],
                        },
                    ],
                },
            },
        ],
        "managedModels": [
            {"provider_id": "dead", "upstream_model": "fake-gpt"},
            {"provider_id": "an", "upstream_model": "fake-claude"},
        ],
    }
    with agwd.client() as c:
        r = c.post("/admin/gateway/apply", json={"bundle": bundle})
        assert r.status_code == 200, r.text
    return agwd


# The SDK clients a test opened, closed when it ends (a kept-alive connection left to the
# garbage collector is an unclosed-socket warning, an error here, in whichever test it lands).
_opened: list[openai.OpenAI | anthropic.Anthropic] = []


@pytest.fixture(autouse=True)
def close_clients() -> Iterator[None]:
    yield
    while _opened:
        _opened.pop().close()


def oa(gw: Agwd, rid: str) -> openai.OpenAI:
    client = openai.OpenAI(
        base_url=f"{gw.data_url}/{rid}/v1",
        api_key="unused",
        max_retries=0,
        default_headers=tp(),
        timeout=20,
    )
    _opened.append(client)
    return client


def claude(gw: Agwd, rid: str) -> anthropic.Anthropic:
    client = anthropic.Anthropic(
        base_url=f"{gw.data_url}/{rid}", api_key="unused", max_retries=0, default_headers=tp()
    )
    _opened.append(client)
    return client


@pytest.mark.parametrize("rid", ["oa2an", "oa2gm"])
def test_openai_client_to_other_dialects(gw: Agwd, fake: FakeUpstream, rid: str) -> None:
    client = oa(gw, rid)
    r = client.chat.completions.create(
        model="fake-x",
        messages=[
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": "translate me"},
        ],
    )
    assert r.choices[0].message.content == "echo: translate me"
    assert r.choices[0].finish_reason == "stop"
    assert r.usage is not None and r.usage.prompt_tokens > 0
    (row,) = settle(gw, 1)
    assert (row["input_tokens"], row["output_tokens"]) == (
        r.usage.prompt_tokens,
        r.usage.completion_tokens,
    )
    assert row["usage_source"] == "provider"
    sent = fake.requests()[-1]
    if rid == "oa2an":
        assert sent["path"] == "/v1/messages" and sent["body"]["system"]
    else:
        assert sent["path"] == "/v1beta/models/fake-x:generateContent"
    chunks = list(
        client.chat.completions.create(
            model="fake-x",
            messages=[{"role": "user", "content": "stream translated"}],
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "echo: stream translated"
    assert chunks[-1].usage is not None
    _, row = settle(gw, 2)
    assert row["output_tokens"] == chunks[-1].usage.completion_tokens
    assert row["usage_finalized"] == 1 and row["stream"] == 1


def test_openai_tool_call_to_anthropic(gw: Agwd) -> None:
    tools: list[ChatCompletionToolParam] = [
        {
            "type": "function",
            "function": {
                "name": "lookup",
                "parameters": {"type": "object", "properties": {"text": {"type": "string"}}},
            },
        }
    ]
    r = oa(gw, "oa2an").chat.completions.create(
        model="fake-x", messages=[{"role": "user", "content": "find"}], tools=tools
    )
    call = r.choices[0].message.tool_calls[0]  # type: ignore[index]
    assert call.function.name == "lookup" and r.choices[0].finish_reason == "tool_calls"  # type: ignore[union-attr]
    chunks = list(
        oa(gw, "oa2an").chat.completions.create(
            model="fake-x", messages=[{"role": "user", "content": "find"}], tools=tools, stream=True
        )
    )
    args = "".join(
        tc.function.arguments or ""
        for c in chunks
        if c.choices
        for tc in (c.choices[0].delta.tool_calls or [])
        if tc.function
    )
    assert args == '{"text": "find"}' or args.replace(" ", "") == '{"text":"find"}'


def test_anthropic_client_to_openai_provider(gw: Agwd) -> None:
    client = claude(gw, "an2oa")
    msg = client.messages.create(
        model="fake-gpt", max_tokens=50, messages=[{"role": "user", "content": "from claude"}]
    )
    assert msg.content[0].text == "echo: from claude"  # type: ignore[union-attr]
    assert msg.stop_reason == "end_turn" and msg.usage.input_tokens > 0
    with client.messages.stream(
        model="fake-gpt",
        max_tokens=50,
        messages=[{"role": "user", "content": "stream from claude"}],
    ) as s:
        assert "".join(s.text_stream) == "echo: stream from claude"
        final = s.get_final_message()
    assert final.usage.output_tokens > 0


def test_cc_client_to_gemini_and_openai_to_deepseek(gw: Agwd) -> None:
    client = claude(gw, "cc2gm")
    with client.messages.stream(
        model="fake-gemini", max_tokens=50, messages=[{"role": "user", "content": "gemini please"}]
    ) as s:
        assert "".join(s.text_stream) == "echo: gemini please"
    r = oa(gw, "oa2ds").responses.create(model="fake-ds", input="responses to chat")
    assert r.output_text == "echo: responses to chat"
    events = list(oa(gw, "oa2ds").responses.create(model="fake-ds", input="stream it", stream=True))
    assert events[-1].type == "response.completed"
    assert (
        "".join(e.delta for e in events if e.type == "response.output_text.delta")
        == "echo: stream it"
    )


def test_translated_upstream_error_in_client_dialect(gw: Agwd, fake: FakeUpstream) -> None:
    fake.configure(status=400)
    try:
        with pytest.raises(openai.BadRequestError) as info:
            oa(gw, "oa2an").chat.completions.create(
                model="m", messages=[{"role": "user", "content": "x"}]
            )
        assert info.value.status_code == 400
    finally:
        fake.configure(status=0)


def test_missing_model_is_a_clear_400(gw: Agwd) -> None:
    r = httpx.post(
        f"{gw.data_url}/oa2an/v1/chat/completions",
        json={"messages": [{"role": "user", "content": "x"}]},
    )
    assert r.status_code == 400
    assert (
        r.json()["error"]["message"]
        == "model is required (the route's provider has no default_model)"
    )


@pytest.mark.parametrize("stream", [False, True])
def test_responses_passthrough_usage_is_exact(gw: Agwd, stream: bool) -> None:
    client = oa(gw, "oa2oa")
    if stream:
        events = list(client.responses.create(model="fake-gpt", input="count these", stream=True))
        usage = events[-1].response.usage  # type: ignore[union-attr]
    else:
        usage = client.responses.create(model="fake-gpt", input="count these").usage
    assert usage is not None
    (row,) = settle(gw, 1)
    assert (row["input_tokens"], row["output_tokens"], row["total_tokens"]) == (
        usage.input_tokens,
        usage.output_tokens,
        usage.total_tokens,
    )
    assert row["cached_input_tokens"] == usage.input_tokens_details.cached_tokens
    assert row["reasoning_tokens"] == usage.output_tokens_details.reasoning_tokens
    assert row["api_operation"] == "responses" and row["usage_finalized"] == 1


@pytest.mark.parametrize("stream", [False, True])
def test_deepseek_cache_hits_recorded_alike_passed_through_and_translated(
    gw: Agwd, fake: FakeUpstream, stream: bool
) -> None:
    """DeepSeek reports cache hits as ``usage.prompt_cache_hit_tokens``: one parser per wire
    reads them whether the answer passes through (an OpenAI client) or is translated (an
    Anthropic client), so both record the same cached input tokens."""
    content = "cache me if you can"
    client = oa(gw, "oa2ds")
    if stream:
        chunks = list(
            client.chat.completions.create(
                model="deepseek-chat",
                messages=[{"role": "user", "content": content}],
                stream=True,
                stream_options={"include_usage": True},
            )
        )
        usage = chunks[-1].usage
    else:
        usage = client.chat.completions.create(
            model="deepseek-chat", messages=[{"role": "user", "content": content}]
        ).usage
    assert usage is not None and usage.prompt_tokens_details is None  # DeepSeek's own shape
    assert (usage.model_extra or {})["prompt_cache_hit_tokens"] == DEEPSEEK_CACHE_HIT_TOKENS
    (passed,) = settle(gw, 1)
    assert fake.requests()[-1]["body"]["thinking"] == {"type": "disabled"}  # a deepseek call

    ask: dict[str, Any] = {
        "model": "deepseek-chat",
        "max_tokens": 50,
        "messages": [{"role": "user", "content": content}],
    }
    if stream:
        with claude(gw, "an2ds").messages.stream(**ask) as s:
            msg = s.get_final_message()
    else:
        msg = claude(gw, "an2ds").messages.create(**ask)
    assert msg.usage.cache_read_input_tokens == DEEPSEEK_CACHE_HIT_TOKENS
    _, translated = settle(gw, 2)
    assert fake.requests()[-1]["path"] == "/v1/chat/completions"

    for row in (passed, translated):
        assert row["usage_source"] == "provider" and row["stream"] == int(stream)
        assert row["cached_input_tokens"] == DEEPSEEK_CACHE_HIT_TOKENS
        assert row["reasoning_tokens"] == REASONING_TOKENS
        assert row["input_tokens"] == usage.prompt_tokens
    assert translated["input_tokens"] == msg.usage.input_tokens + DEEPSEEK_CACHE_HIT_TOKENS
    assert (passed["provider_type"], translated["provider_type"]) == ("deepseek", "deepseek")
    assert (passed["llm_api"], translated["llm_api"]) == ("openai", "anthropic")


def test_logical_model_priority_and_fallback(gw: Agwd, fake: FakeUpstream) -> None:
    client = oa(gw, "smart")
    r = client.chat.completions.create(
        model="smart", messages=[{"role": "user", "content": "pick"}]
    )
    assert r.choices[0].message.content == "echo: pick"
    # the dead provider has the higher priority: the answer came from the fallback candidate
    (row,) = settle(gw, 1)
    assert (row["logical_model"], row["provider_id"], row["upstream_model"]) == (
        "smart",
        "an",
        "fake-claude",
    )
    assert fake.requests()[-1]["body"]["model"] == "fake-claude"
    with pytest.raises(openai.PermissionDeniedError, match='model "other" is not allowed'):
        client.chat.completions.create(model="other", messages=[{"role": "user", "content": "x"}])
    assert [m.id for m in client.models.list()] == ["smart", "cheap"]
    with pytest.raises(openai.APIStatusError, match="has no eligible bindings"):
        client.chat.completions.create(model="cheap", messages=[{"role": "user", "content": "x"}])
