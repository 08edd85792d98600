"""Provider specifics through a real agwd: deepseek thinking, compact modes, codex shaping,
claudecode's Claude Code headers and Codex tool-name aliasing (both ways, streams included)."""

from __future__ import annotations

from collections.abc import Iterator

import anthropic
import httpx
import openai
import pytest
from openai.types.chat import ChatCompletionToolParam

from tests.fakes.run import FakeUpstream, start_fake_upstream
from tests.support.agwd import Agwd, AgwdLauncher

KEY = "sk-upstream-secret-0003"


@pytest.fixture(scope="module")
def fake(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeUpstream]:
    with start_fake_upstream(tmp_path_factory.mktemp("fake"), "--require-key", KEY) as f:
        yield f


@pytest.fixture(scope="module")
def gw(module_agwd_factory: AgwdLauncher, fake: FakeUpstream) -> Agwd:
    agwd = module_agwd_factory.start()

    def route(rid: str, proto: str, provider: str) -> dict[str, object]:
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
            {
                "id": "ds",
                "provider_type": "deepseek",
                "base_url": f"{fake.url}/v1",
                "api_key": KEY,
                "options": {"compact": "cc", "response_format_type": "text", "temperature": 0.3},
            },
            {
                "id": "zp",
                "provider_type": "zhipu",
                "base_url": f"{fake.url}/v1",
                "api_key": KEY,
                "options": {"thinking_type": "none"},
            },
            {
                "id": "cx",
                "provider_type": "codex",
                "base_url": f"{fake.url}/v1",
                "api_key": KEY,
                "options": {"compact": "cc"},
            },
            {
                "id": "cc",
                "provider_type": "claudecode",
                "base_url": fake.url,
                "api_key": KEY,
                "options": {"compact": "codex", "api_key_header": "x-api-key"},
            },
        ],
        "llmRoutes": [
            route("ds", "openai", "ds"),
            route("zp", "openai", "zp"),
            route("cx", "openai", "cx"),
            route("cc", "anthropic", "cc"),
        ],
    }
    with agwd.client() as c:
        r = c.post("/admin/gateway/apply", json={"bundle": bundle})
        assert r.status_code == 200, r.text
    return agwd


def client(gw: Agwd, rid: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gw.data_url}/{rid}/v1", api_key="x", max_retries=0, timeout=20)


def test_deepseek_thinking_compact_and_tuning(gw: Agwd, fake: FakeUpstream) -> None:
    fake.clear()
    r = client(gw, "ds").chat.completions.create(
        model="deepseek-chat",
        messages=[{"role": "user", "content": "hi"}],
        user="u1",
        metadata={"user_id": "x"},
        temperature=0.9,
    )
    assert r.choices[0].message.content == "echo: hi"
    body = fake.requests()[-1]["body"]
    assert body["thinking"] == {"type": "disabled"}
    assert "metadata" not in body and "user" not in body
    assert body["response_format"] == {"type": "text"}
    assert body["temperature"] == 0.9  # the request's own value wins over the option
    client(gw, "zp").chat.completions.create(
        model="glm", messages=[{"role": "user", "content": "x"}]
    )
    assert "thinking" not in fake.requests()[-1]["body"]


def test_codex_provider_shaping(gw: Agwd, fake: FakeUpstream) -> None:
    fake.clear()
    tools: list[ChatCompletionToolParam] = [
        {"type": "function", "function": {"name": "Task", "parameters": {"type": "object"}}},
        {"type": "function", "function": {"name": "shell", "parameters": {"type": "object"}}},
    ]
    r = client(gw, "cx").chat.completions.create(
        model="gpt-5-codex",
        messages=[{"role": "user", "content": "run"}],
        tools=tools,
        max_tokens=100,
        tool_choice={"type": "function", "function": {"name": "Task"}},
    )
    sent = fake.requests()[-1]
    assert sent["path"] == "/v1/responses"
    body = sent["body"]
    assert body["store"] is False and body["parallel_tool_calls"] is False
    assert "max_output_tokens" not in body and "metadata" not in body
    assert [t["name"] for t in body["tools"]] == ["shell"]
    assert body["tool_choice"] == "auto"
    assert r.choices[0].message.tool_calls[0].function.name == "shell"  # type: ignore[index,union-attr]


def test_claudecode_headers_and_codex_tool_aliases(gw: Agwd, fake: FakeUpstream) -> None:
    fake.clear()
    an = anthropic.Anthropic(base_url=f"{gw.data_url}/cc", api_key="x", max_retries=0)
    tools = [{"name": "exec_command", "input_schema": {"type": "object"}}]
    msg = an.messages.create(
        model="claude",
        max_tokens=50,
        tools=tools,  # type: ignore[arg-type]
        messages=[{"role": "user", "content": "ls"}],
    )
    sent = fake.requests()[-1]
    assert sent["body"]["tools"][0]["name"] == "Bash"
    assert sent["headers"]["x-app"] == "cli"
    assert sent["headers"]["user-agent"].startswith("claude-cli/")
    assert sent["headers"]["x-api-key"] == KEY
    assert msg.content[-1].name == "exec_command"  # type: ignore[union-attr]
    with an.messages.stream(
        model="claude",
        max_tokens=50,
        tools=tools,  # type: ignore[arg-type]
        messages=[{"role": "user", "content": "ls"}],
    ) as s:
        final = s.get_final_message()
    assert final.content[-1].name == "exec_command"  # type: ignore[union-attr]
    clash = [*tools, {"name": "Bash", "input_schema": {"type": "object"}}]
    r = httpx.post(
        f"{gw.data_url}/cc/v1/messages",
        json={
            "model": "c",
            "max_tokens": 5,
            "tools": clash,
            "messages": [{"role": "user", "content": "x"}],
        },
    )
    assert r.status_code == 400 and "both present" in r.json()["error"]["message"]
