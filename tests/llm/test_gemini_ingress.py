"""Gemini ingress (docs/llm.md, "Gemini"): the official ``google-genai`` SDK through agwd on
``protocol: gemini`` routes, to a gemini provider (passthrough) and to an OpenAI one
(translated), against the fake upstream as a real server: generate, stream, countTokens, the
model list, a function-calling round trip; the virtual key in ``x-goog-api-key`` and in
``?key=``, never forwarded; errors raised as genai's own; usage rows; limits (429, the clamp of
``maxOutputTokens``, a cut stream ending with ``MAX_TOKENS``).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from google import genai
from google.genai import errors, types

from tests.fakes.run import FakeUpstream, start_fake_upstream
from tests.support.agwd import Agwd, AgwdLauncher
from tests.support.llm import settle, tp

UPSTREAM_KEY = "sk-upstream-gemini-0016"
TOOLS = [
    types.Tool(
        function_declarations=[
            types.FunctionDeclaration(
                name="lookup",
                description="find a thing",
                parameters_json_schema={
                    "type": "object",
                    "properties": {"text": {"type": "string"}},
                },
            )
        ]
    )
]
NO_AUTO = types.AutomaticFunctionCallingConfig(disable=True)


def _route(rid: str, provider: str) -> dict[str, Any]:
    return {
        "id": rid,
        "protocol": "gemini",
        "match_policy": {"path_prefix": f"/{rid}"},
        "target_policy": {"provider_id": provider},
        "auth_policy": {"require_virtual_key": True},
    }


@pytest.fixture(scope="module")
def fake(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeUpstream]:
    with start_fake_upstream(tmp_path_factory.mktemp("fake"), "--require-key", UPSTREAM_KEY) as f:
        yield f


@pytest.fixture(scope="module")
def gw(module_agwd_factory: AgwdLauncher, fake: FakeUpstream) -> Agwd:
    agwd = module_agwd_factory.start()
    bundle = {
        "apiVersion": "gateway.agw/v1alpha1",
        "kind": "GatewayBundle",
        "providers": [
            {
                "id": "gm",
                "provider_type": "gemini",
                "base_url": fake.url,
                "api_key": UPSTREAM_KEY,
            },
            {
                "id": "oa",
                "provider_type": "openai",
                "base_url": f"{fake.url}/v1",
                "api_key": UPSTREAM_KEY,
            },
        ],
        "managedModels": [{"provider_id": "oa", "upstream_model": "fake-gpt"}],
        "llmRoutes": [
            _route("gem", "gm"),
            _route("gem2oa", "oa"),
            _route("glim", "gm"),
            _route("gcut", "gm"),
            {
                **_route("glog", "oa"),
                "target_policy": {
                    "default_model": "smart",
                    "model_targets": [
                        {
                            "name": "smart",
                            "candidates": [{"provider_id": "oa", "upstream_model": "fake-gpt"}],
                        }
                    ],
                },
            },
        ],
        "virtualKeys": [{"id": "gk"}],
        "limits": [
            {"id": "one", "match": {"route_ids": ["glim"]}, "requests": 1, "window": "1h"},
            {
                "id": "clamp",
                "match": {"route_ids": ["glim"]},
                "tokens": {"output": 50},
                "min_output_tokens": 1,
            },
            {
                "id": "cutter",
                "match": {"route_ids": ["gcut"]},
                "tokens": {"output": 60},
                "on_exceed": "cut",
                "default_output_tokens": 20,
                "min_output_tokens": 1,
            },
        ],
    }
    with agwd.client() as c:
        r = c.post("/admin/gateway/apply", json={"bundle": bundle})
        assert r.status_code == 200, r.text
        VK["key"] = c.get("/admin/virtual_keys/gk").json()["key"]
    return agwd


VK: dict[str, str] = {}  # the virtual key's bearer, once the bundle is applied


def vk(gw: Agwd) -> str:
    return VK["key"]


_opened: list[genai.Client] = []


@pytest.fixture(autouse=True)
def close_clients(fake: FakeUpstream) -> Iterator[None]:
    fake.clear()
    yield
    while _opened:
        _opened.pop().close()


def client(gw: Agwd, rid: str, key: str | None = None, **headers: str) -> genai.Client:
    """google-genai pointed at the route, the way docs/llm.md says."""
    c = genai.Client(
        api_key=key or vk(gw),
        http_options=types.HttpOptions(
            base_url=f"{gw.data_url}/{rid}", headers={**tp(), **headers}, timeout=20_000
        ),
    )
    _opened.append(c)
    return c


def upstream_calls(fake: FakeUpstream) -> list[dict[str, Any]]:
    return [r for r in fake.requests() if r["path"] not in ("/", "/health")]


def assert_not_forwarded(gw: Agwd, sent: dict[str, Any]) -> None:
    """The provider's key went up, the caller's did not (in no header, no query)."""
    assert sent["headers"].get("x-goog-api-key", UPSTREAM_KEY) == UPSTREAM_KEY
    assert (
        sent["headers"].get("authorization", f"Bearer {UPSTREAM_KEY}") == f"Bearer {UPSTREAM_KEY}"
    )
    assert "key" not in sent["query"]
    assert vk(gw) not in json.dumps(sent)


# ----------------------------------------------------------------------- generate and stream


@pytest.mark.parametrize("rid", ["gem", "gem2oa"])
def test_generate_and_stream_with_usage_rows(gw: Agwd, fake: FakeUpstream, rid: str) -> None:
    c = client(gw, rid, **{"agent-session-id": "sess-gemini-1"})
    r = c.models.generate_content(
        model="fake-gemini" if rid == "gem" else "fake-gpt",
        contents="hello there",
        config=types.GenerateContentConfig(system_instruction="be brief"),
    )
    assert r.text == "echo: hello there"
    assert r.candidates and r.candidates[0].finish_reason == types.FinishReason.STOP
    meta = r.usage_metadata
    assert meta is not None and meta.prompt_token_count and meta.candidates_token_count
    (sent,) = upstream_calls(fake)
    assert_not_forwarded(gw, sent)
    if rid == "gem":  # passthrough: the SDK's /v1 path becomes the provider's /v1beta
        assert sent["path"] == "/v1beta/models/fake-gemini:generateContent"
        assert "model" not in sent["body"] and sent["body"]["systemInstruction"]
    else:
        assert sent["path"] == "/v1/chat/completions"
        assert sent["body"]["model"] == "fake-gpt"
        assert sent["body"]["messages"][0] == {"role": "system", "content": "be brief"}
    (row,) = settle(gw, 1)
    assert row["llm_api"] == "gemini" and row["api_operation"] == "generate_content"
    assert row["session_id"] == "sess-gemini-1" and row["usage_source"] == "provider"
    assert row["input_tokens"] == meta.prompt_token_count
    assert row["output_tokens"] == (meta.candidates_token_count or 0) + (
        meta.thoughts_token_count or 0
    )
    assert row["cached_input_tokens"] == (meta.cached_content_token_count or 0)
    assert row["reasoning_tokens"] == (meta.thoughts_token_count or 0)
    if rid == "gem":
        assert (row["cached_input_tokens"], row["reasoning_tokens"]) == (2, 1)

    chunks = list(
        c.models.generate_content_stream(
            model="fake-gemini" if rid == "gem" else "fake-gpt", contents="stream me please"
        )
    )
    assert "".join(ch.text or "" for ch in chunks) == "echo: stream me please"
    last = chunks[-1]
    assert last.candidates and last.candidates[0].finish_reason == types.FinishReason.STOP
    assert last.usage_metadata is not None
    sent = upstream_calls(fake)[-1]
    assert_not_forwarded(gw, sent)
    if rid == "gem":
        assert sent["path"] == "/v1beta/models/fake-gemini:streamGenerateContent"
        assert sent["query"] == {"alt": "sse"}
    _, row = settle(gw, 2)
    assert row["stream"] == 1 and row["usage_finalized"] == 1
    assert row["output_tokens"] == (last.usage_metadata.candidates_token_count or 0) + (
        last.usage_metadata.thoughts_token_count or 0
    )


@pytest.mark.parametrize("rid", ["gem", "gem2oa"])
def test_a_function_call_round_trip(gw: Agwd, fake: FakeUpstream, rid: str) -> None:
    c = client(gw, rid)
    model = "fake-gemini" if rid == "gem" else "fake-gpt"
    config = types.GenerateContentConfig(tools=TOOLS, automatic_function_calling=NO_AUTO)
    question = types.Content(role="user", parts=[types.Part.from_text(text="find it")])
    r = c.models.generate_content(model=model, contents=[question], config=config)
    assert r.function_calls and r.function_calls[0].name == "lookup"
    assert r.function_calls[0].args == {"text": "find it"}
    assert r.candidates and r.candidates[0].content
    answer = types.Content(
        role="user",
        parts=[types.Part.from_function_response(name="lookup", response={"output": "found"})],
    )
    history = [question, r.candidates[0].content, answer]
    r2 = c.models.generate_content(model=model, contents=history, config=config)
    assert r2.text and r2.text.startswith("echo:") and not r2.function_calls
    sent = upstream_calls(fake)[-1]["body"]
    if rid == "gem":
        assert sent["contents"][2]["parts"][0]["functionResponse"]["name"] == "lookup"
    else:
        tool_turn = sent["messages"][-1]
        assert tool_turn["role"] == "tool" and "found" in tool_turn["content"]
        assert sent["messages"][-2]["tool_calls"][0]["function"]["name"] == "lookup"
    first, second = settle(gw, 2)
    assert first["tool_names"] == '["lookup"]' and first["request_tool_names"] == '["lookup"]'
    assert second["tool_call_count"] == 0


# --------------------------------------------------------------------- countTokens, models


def test_count_tokens_relayed_or_estimated(gw: Agwd, fake: FakeUpstream) -> None:
    relayed = client(gw, "gem").models.count_tokens(model="fake-gemini", contents="count these")
    assert relayed.total_tokens == 7 + len("count these") // 3  # the fake's own count
    sent = upstream_calls(fake)[-1]
    assert sent["path"] == "/v1beta/models/fake-gemini:countTokens"
    assert_not_forwarded(gw, sent)
    estimated = client(gw, "gem2oa").models.count_tokens(model="fake-gpt", contents="x" * 40)
    assert estimated.total_tokens == (40 + len("user")) // 4  # every string's characters / 4
    rows = settle(gw, 2)
    assert [r["api_operation"] for r in rows] == ["count_tokens", "count_tokens"]


def test_the_model_list_and_one_model(gw: Agwd, fake: FakeUpstream) -> None:
    passed = list(client(gw, "gem").models.list())
    assert [m.name for m in passed] == [
        "models/fake-gpt",
        "models/fake-claude",
        "models/fake-gemini",
    ]
    assert passed[0].input_token_limit == 32768
    assert_not_forwarded(gw, upstream_calls(fake)[-1])
    one = client(gw, "gem").models.get(model="fake-gemini")
    assert one.name == "models/fake-gemini" and one.display_name == "Fake Gemini"
    translated = list(client(gw, "gem2oa").models.list())
    assert "models/fake-gpt" in [m.name for m in translated]
    logical = client(gw, "glog")
    assert [m.name for m in logical.models.list()] == ["models/smart"]
    assert logical.models.get(model="smart").name == "models/smart"
    with pytest.raises(errors.ClientError) as caught:
        logical.models.get(model="nope")
    assert caught.value.code == 404 and caught.value.status == "NOT_FOUND"


# ---------------------------------------------------------------------------- credentials


def test_the_key_in_the_query_and_wrong_keys(gw: Agwd, fake: FakeUpstream) -> None:
    body = {"contents": [{"role": "user", "parts": [{"text": "by query"}]}]}
    with httpx.Client(base_url=gw.data_url, timeout=20) as h:
        r = h.post(
            f"/gem/v1beta/models/fake-gemini:generateContent?key={vk(gw)}", json=body, headers=tp()
        )
        assert r.status_code == 200, r.text
        assert r.json()["candidates"][0]["content"]["parts"][0]["text"] == "echo: by query"
        sent = upstream_calls(fake)[-1]
        assert sent["query"] == {} and sent["headers"]["x-goog-api-key"] == UPSTREAM_KEY
        assert_not_forwarded(gw, sent)
        r = h.post("/gem/v1beta/models/fake-gemini:generateContent", json=body)
        assert r.status_code == 401
        assert r.json() == {
            "error": {
                "code": 401,
                "message": "virtual key is required",
                "status": "UNAUTHENTICATED",
            }
        }
    with pytest.raises(errors.ClientError) as caught:
        client(gw, "gem", key="not-a-key").models.generate_content(
            model="fake-gemini", contents="hi"
        )
    assert caught.value.code == 401 and caught.value.status == "UNAUTHENTICATED"
    assert caught.value.message == "invalid virtual key"
    assert vk(gw) not in gw.logs()


# --------------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("method", "path", "content", "status", "message"),
    [
        ("POST", "/v1beta/models/m:generateContent", b"{not json", 400, "invalid JSON body"),
        ("POST", "/v1beta/models/m:generateContent", b"[1, 2]", 400, "must be a JSON object"),
        ("POST", "/v1beta/models/m:generateContent", b"{}", 400, "contents is required"),
        ("POST", "/v1beta/models/m:generateContent", b'{"contents": 1}', 400, "must be an array"),
        ("POST", "/v1beta/models/m:countTokens", b"{}", 400, "countTokens needs contents"),
        ("POST", "/v1beta/models/m:streamGenerateContent", b"{}", 400, "add ?alt=sse"),
        ("GET", "/v1beta/models/m:generateContent", b"", 405, "method GET not allowed"),
        ("POST", "/v1beta/models", b"{}", 405, "method POST not allowed"),
        ("POST", "/v1beta/models/m:embedContent", b"{}", 404, "no gemini endpoint"),
        ("GET", "/v1beta/tunedModels", b"", 404, "no gemini endpoint"),
        ("POST", "/v1/chat/completions", b"{}", 404, "no gemini endpoint"),
    ],
)
def test_bad_input_is_refused_in_googles_shape(
    gw: Agwd, fake: FakeUpstream, method: str, path: str, content: bytes, status: int, message: str
) -> None:
    with httpx.Client(base_url=gw.data_url, timeout=20) as h:
        r = h.request(
            method,
            "/gem" + path,
            content=content,
            headers={"x-goog-api-key": vk(gw), "content-type": "application/json"},
        )
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert error["code"] == status and message in error["message"]
    assert error["status"] == ("NOT_FOUND" if status == 404 else "INVALID_ARGUMENT")
    assert upstream_calls(fake) == []


def test_an_unknown_model_and_an_upstream_error_raise_genais_errors(
    gw: Agwd, fake: FakeUpstream
) -> None:
    with pytest.raises(errors.ClientError) as caught:
        client(gw, "glog").models.generate_content(model="nope", contents="hi")
    assert caught.value.code == 403 and caught.value.status == "PERMISSION_DENIED"
    assert 'model "nope" is not allowed' in (caught.value.message or "")
    fake.configure(status=400, error_message="bad things upstream")
    try:
        with pytest.raises(errors.ClientError) as caught:
            client(gw, "gem").models.generate_content(model="fake-gemini", contents="hi")
        assert caught.value.status == "INVALID_ARGUMENT"  # the provider's own body
        with pytest.raises(errors.ClientError) as caught:
            client(gw, "gem2oa").models.generate_content(model="fake-gpt", contents="hi")
        assert caught.value.code == 400 and caught.value.status == "INVALID_ARGUMENT"
        assert caught.value.message == "bad things upstream"  # the OpenAI error, in Google's shape
    finally:
        fake.configure(status=0, error_message="")


@pytest.mark.parametrize("rid", ["gem", "gem2oa"])
def test_a_stream_the_upstream_cuts_short_ends_with_googles_error(
    gw: Agwd, fake: FakeUpstream, rid: str
) -> None:
    fake.configure(reply_words=20, cut_after=3)
    got: list[str] = []
    try:
        with pytest.raises(errors.APIError) as caught:
            stream = client(gw, rid).models.generate_content_stream(
                model="fake-gemini", contents="hi"
            )
            got.extend(chunk.text or "" for chunk in stream)
    finally:
        fake.configure(reply_words=0, cut_after=-1)
    assert got and "".join(got).startswith("echo:")
    assert caught.value.code in (500, 502) and "ended" in (caught.value.message or "")
    (row,) = settle(gw, 1)
    assert row["error_type"] == "provider_stream_failed" and row["usage_finalized"] == 0


# --------------------------------------------------------------------------------- limits


def test_limits_clamp_max_output_tokens_then_refuse_with_429(gw: Agwd, fake: FakeUpstream) -> None:
    c = client(gw, "glim")
    r = c.models.generate_content(
        model="fake-gemini",
        contents="hi",
        config=types.GenerateContentConfig(max_output_tokens=1000),
    )
    assert r.text == "echo: hi"
    assert upstream_calls(fake)[-1]["body"]["generationConfig"]["maxOutputTokens"] == 50
    assert r.sdk_http_response is not None and r.sdk_http_response.headers is not None
    assert r.sdk_http_response.headers["x-agw-max-tokens"] == '50; limit="clamp"'
    with pytest.raises(errors.ClientError) as caught:
        c.models.generate_content(model="fake-gemini", contents="hi")
    error = caught.value
    assert error.code == 429 and error.status == "RESOURCE_EXHAUSTED"
    assert 'limit "one" reached' in (error.message or "")
    details = error.details["error"]["details"]
    assert details[0]["@type"] == "type.googleapis.com/google.rpc.ErrorInfo"
    assert details[0]["metadata"]["id"] == "one" and details[0]["domain"] == "agw"
    assert details[1]["@type"] == "type.googleapis.com/google.rpc.RetryInfo"
    assert details[1]["retryDelay"].endswith("s")
    ok, refused = settle(gw, 2)
    assert ok["limit_action"] == "clamped" and refused["status_code"] == 429


def test_a_cut_limit_ends_a_gemini_stream_with_max_tokens(gw: Agwd, fake: FakeUpstream) -> None:
    fake.configure(reply_words=400)
    try:
        chunks = list(
            client(gw, "gcut").models.generate_content_stream(model="fake-gemini", contents="hi")
        )
    finally:
        fake.configure(reply_words=0)
    text = "".join(ch.text or "" for ch in chunks)
    assert 40 < len(text.split()) < 70  # cut near 60 tokens (counted as characters / 4)
    last = chunks[-1]
    assert last.candidates and last.candidates[0].finish_reason == types.FinishReason.MAX_TOKENS
    assert last.usage_metadata is not None and last.usage_metadata.candidates_token_count
    (row,) = settle(gw, 1)
    assert row["limit_action"] == "cut" and row["limit_id"] == "cutter"
    assert row["status_code"] == 200 and row["usage_source"] == "estimated"
