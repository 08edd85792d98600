"""Upstream answers agwd holds are bounded (issue 12), attacked through a real agwd.

The fake upstream misbehaves on purpose (``flood_bytes``: a huge JSON answer, a huge error
body, a stream with no event separator), fast over loopback. Each test checks the client gets
the documented error quickly, agwd's peak memory (``VmHWM`` of /proc/<pid>/status) stays far
below what the upstream offered, and another client is served meanwhile.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import anthropic
import httpx
import openai
import pytest
from anthropic.types import MessageParam

from agw.llm.providers import ERROR_BODY_LIMIT, RESPONSE_LIMIT
from agw.sse import EVENT_LIMIT
from tests.fakes.run import FakeUpstream, start_fake_upstream
from tests.support.agwd import Agwd, AgwdLauncher
from tests.support.llm import settle, tp

MiB = 1024 * 1024
OFFERED = 320 * MiB  # what the misbehaving upstream offers: five times RESPONSE_LIMIT
# agwd may hold one limit's worth (plus aiohttp's buffers) before it refuses: the allowance
# over its resident size at start leaves room for that, and is far below what reading OFFERED
# whole takes (three times OFFERED, measured before the limits).
PEAK_ALLOWANCE = 2 * RESPONSE_LIMIT


@pytest.fixture(scope="module")
def fake(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeUpstream]:
    with start_fake_upstream(tmp_path_factory.mktemp("fake")) as f:
        yield f


@pytest.fixture(scope="module")
def calm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeUpstream]:
    """A second, well-behaved upstream: the bystander's."""
    with start_fake_upstream(tmp_path_factory.mktemp("calm")) as f:
        yield f


@pytest.fixture(autouse=True)
def clean_knobs(fake: FakeUpstream) -> Iterator[None]:
    yield
    fake.configure(status=0, chunk_delay_ms=0, flood_bytes=0, flood_length=0, error_message="")


@pytest.fixture(scope="module")
def gw(module_agwd_factory: AgwdLauncher, fake: FakeUpstream, calm: FakeUpstream) -> Agwd:
    agwd = module_agwd_factory.start()
    net = {"max_retries": 0, "request_timeout_seconds": 20}
    bundle = {
        "apiVersion": "gateway.agw/v1alpha1",
        "kind": "GatewayBundle",
        "providers": [
            {"id": "oa", "provider_type": "openai", "base_url": f"{fake.url}/v1", "network": net},
            {"id": "an", "provider_type": "anthropic", "base_url": fake.url, "network": net},
            {"id": "calm", "provider_type": "openai", "base_url": f"{calm.url}/v1"},
        ],
        "llmRoutes": [
            {
                "id": "oa",
                "protocol": "openai",
                "match_policy": {"path_prefix": "/oa"},
                "target_policy": {"provider_id": "oa"},
            },
            {
                "id": "an",
                "protocol": "anthropic",
                "match_policy": {"path_prefix": "/an"},
                "target_policy": {"provider_id": "an"},
            },
            {
                "id": "calm",
                "protocol": "openai",
                "match_policy": {"path_prefix": "/calm"},
                "target_policy": {"provider_id": "calm"},
            },
            {  # an Anthropic client on the OpenAI provider: the translated stream
                "id": "xan",
                "protocol": "anthropic",
                "match_policy": {"path_prefix": "/xan"},
                "target_policy": {"provider_id": "oa"},
            },
        ],
    }
    with agwd.client() as c:
        r = c.post("/admin/gateway/apply", json={"bundle": bundle})
        assert r.status_code == 200, r.text
    agwd.env["BASE_RSS"] = str(vm(agwd, "VmRSS"))
    return agwd


def assert_peak_bounded(gw: Agwd) -> None:
    """agwd's peak resident size (``VmHWM``, its whole life) stayed within the allowance over
    what it was once started."""
    peak = vm(gw, "VmHWM")
    assert peak < int(gw.env["BASE_RSS"]) + PEAK_ALLOWANCE, f"peak {peak // MiB} MiB"


def vm(gw: Agwd, field: str) -> int:
    """``VmRSS`` or ``VmHWM`` of agwd, in bytes."""
    with open(f"/proc/{gw.proc.pid}/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise AssertionError(f"no {field} for agwd")


class Bystander:
    """Another client asking agwd for small answers, one after another, while an attack runs:
    each must come back, and quickly."""

    def __init__(self, gw: Agwd) -> None:
        self.url = f"{gw.data_url}/calm/v1/chat/completions"
        self.latencies: list[float] = []
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        body = {"model": "fake-gpt", "messages": [{"role": "user", "content": "me too"}]}
        with httpx.Client(timeout=10, trust_env=False) as client:
            for _ in range(2000):  # bounded; stopped long before
                if self._stop.is_set():
                    return
                t0 = time.monotonic()
                try:
                    r = client.post(self.url, json=body)
                    if r.status_code != 200:
                        self.failures.append(f"{r.status_code} {r.text[:200]}")
                except httpx.HTTPError as exc:
                    self.failures.append(repr(exc))
                self.latencies.append(time.monotonic() - t0)
                time.sleep(0.02)

    def __enter__(self) -> Bystander:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(15)

    def check(self) -> None:
        assert not self.failures, self.failures
        assert self.latencies, "the bystander was never served"
        assert max(self.latencies) < 2.0, sorted(self.latencies)[-5:]


def chat(gw: Agwd, stream: bool = False) -> httpx.Response:
    body: dict[str, Any] = {
        "model": "fake-gpt",
        "messages": [{"role": "user", "content": "flood me"}],
        "stream": stream,
    }
    return httpx.post(f"{gw.data_url}/oa/v1/chat/completions", json=body, headers=tp(), timeout=30)


@pytest.mark.parametrize("length", [0, 1], ids=["chunked", "content-length"])
def test_a_huge_answer_is_a_502_naming_the_limit(gw: Agwd, fake: FakeUpstream, length: int) -> None:
    with Bystander(gw) as bystander:
        time.sleep(0.2)
        fake.configure(flood_bytes=OFFERED, flood_length=length)
        t0 = time.monotonic()
        r = chat(gw)
        took = time.monotonic() - t0
        fake.configure(flood_bytes=0)
        time.sleep(0.3)
    assert r.status_code == 502, r.text[:300]
    message = r.json()["error"]["message"]
    assert message.startswith("upstream answer larger than 64 MiB"), message
    assert took < 10, took
    assert_peak_bounded(gw)
    bystander.check()
    (row,) = settle(gw, 1)
    assert (row["status_code"], row["error_type"]) == (502, "provider_request_failed")


@pytest.mark.parametrize("length", [0, 1], ids=["chunked", "content-length"])
def test_a_huge_error_body_is_replaced_by_an_error_naming_the_limit(
    gw: Agwd, fake: FakeUpstream, length: int
) -> None:
    fake.configure(status=500, flood_bytes=OFFERED, flood_length=length)
    t0 = time.monotonic()
    r = chat(gw)
    a = httpx.post(
        f"{gw.data_url}/an/v1/messages",
        json={"model": "fake-claude", "max_tokens": 8, "messages": []},
        timeout=30,
    )
    took = time.monotonic() - t0
    assert took < 10, took
    assert_peak_bounded(gw)
    # the upstream's status, agw's message in the caller's dialect
    assert r.status_code == 500
    assert r.json()["error"]["message"] == (
        "upstream answered 500 with an error body larger than 1 MiB (the gateway's limit)"
    )
    assert a.status_code == 500 and a.json()["type"] == "error"
    assert "larger than 1 MiB" in a.json()["error"]["message"]
    assert MiB == ERROR_BODY_LIMIT


@pytest.mark.parametrize("length", [0, 1], ids=["chunked", "content-length"])
def test_the_error_body_limit_is_exact(gw: Agwd, fake: FakeUpstream, length: int) -> None:
    fake.configure(status=500, flood_bytes=ERROR_BODY_LIMIT, flood_length=length)
    r = chat(gw)
    assert r.status_code == 500 and len(r.content) == ERROR_BODY_LIMIT  # passed on as it came
    fake.configure(flood_bytes=ERROR_BODY_LIMIT + 1)
    r = chat(gw)
    assert r.status_code == 500 and "larger than 1 MiB" in r.json()["error"]["message"]


def test_an_error_body_under_the_limit_still_passes_through(gw: Agwd, fake: FakeUpstream) -> None:
    fake.configure(status=503, error_message="x" * (ERROR_BODY_LIMIT // 2))
    r = chat(gw)
    assert r.status_code == 503
    assert r.json()["error"] == {
        "message": "x" * (ERROR_BODY_LIMIT // 2),
        "type": "server_error",
        "param": None,
        "code": "service_unavailable",
    }


def test_a_stream_without_separators_is_cut_at_the_event_limit(
    gw: Agwd, fake: FakeUpstream
) -> None:
    offered = 3 * EVENT_LIMIT
    with Bystander(gw) as bystander:
        time.sleep(0.2)
        fake.configure(flood_bytes=offered)
        t0 = time.monotonic()
        r = chat(gw, stream=True)
        took = time.monotonic() - t0
        fake.configure(flood_bytes=0)
        time.sleep(0.3)
    assert r.status_code == 200
    text = r.text
    assert "upstream stream event larger than 16 MiB" in text, text[:300]
    assert text.rstrip().endswith("data: [DONE]")
    assert len(text) < 4096  # none of the flood reached the client
    assert took < 5, took
    assert_peak_bounded(gw)
    bystander.check()
    (row,) = settle(gw, 1)
    assert row["error_type"] == "provider_stream_failed" and row["usage_finalized"] == 0


def test_a_translated_stream_without_separators_ends_with_the_clients_error(
    gw: Agwd, fake: FakeUpstream
) -> None:
    fake.configure(flood_bytes=2 * EVENT_LIMIT)
    client = anthropic.Anthropic(
        base_url=f"{gw.data_url}/xan", api_key="unused", max_retries=0, timeout=30
    )
    with (
        pytest.raises(anthropic.APIStatusError, match="larger than 16 MiB"),
        client.messages.stream(
            model="fake-gpt", max_tokens=16, messages=[{"role": "user", "content": "x"}]
        ) as stream,
    ):
        for _ in stream:
            pass


def test_a_client_leaving_mid_stream_is_recorded_with_what_it_received(
    gw: Agwd, fake: FakeUpstream
) -> None:
    fake.configure(chunk_delay_ms=100)
    words = "alpha bravo charlie delta echo foxtrot golf hotel india juliet"
    client = openai.OpenAI(
        base_url=f"{gw.data_url}/oa/v1", api_key="unused", max_retries=0, timeout=20
    )
    received = ""
    with client.chat.completions.create(
        model="fake-gpt",
        messages=[{"role": "user", "content": words}],
        stream=True,
        extra_headers=tp(),
    ) as stream:
        for n, chunk in enumerate(stream):
            received += (chunk.choices[0].delta.content or "") if chunk.choices else ""
            if n == 3:
                break
    assert received
    (row,) = settle(gw, 1)
    assert (row["status_code"], row["error_type"]) == (499, "client_cancelled")
    assert row["usage_source"] == "estimated" and row["usage_finalized"] == 0
    assert row["output_tokens"] >= len(received) // 4 > 0
    assert row["output_tokens"] < len(words)  # an estimate of what was sent, not of the whole
    assert row["input_tokens"] > 0
    assert row["total_tokens"] == row["input_tokens"] + row["output_tokens"]


def test_an_anthropic_client_leaving_keeps_the_providers_input_count(
    gw: Agwd, fake: FakeUpstream
) -> None:
    prompt: list[MessageParam] = [
        {"role": "user", "content": "one two three four five six seven eight nine"}
    ]
    client = anthropic.Anthropic(
        base_url=f"{gw.data_url}/an", api_key="unused", max_retries=0, timeout=20
    )
    whole = client.messages.create(model="fake-claude", max_tokens=64, messages=prompt)
    fake.configure(chunk_delay_ms=100)
    received = ""
    with client.messages.stream(
        model="fake-claude", max_tokens=64, messages=prompt, extra_headers=tp()
    ) as stream:
        for text in stream.text_stream:
            received += text
            if len(received) > 8:
                break
    assert received
    (row,) = settle(gw, 1)
    assert (row["status_code"], row["usage_source"]) == (499, "estimated")
    u = whole.usage
    cache = (u.cache_read_input_tokens or 0) + (u.cache_creation_input_tokens or 0)
    assert row["input_tokens"] == u.input_tokens + cache  # message_start's, not an estimate
    assert 0 < row["output_tokens"] < u.output_tokens + 5


def test_a_translated_client_leaving_is_recorded_with_what_it_received(
    gw: Agwd, fake: FakeUpstream
) -> None:
    """An Anthropic client on the OpenAI provider: what it got is Anthropic events."""
    fake.configure(chunk_delay_ms=100)
    client = anthropic.Anthropic(
        base_url=f"{gw.data_url}/xan", api_key="unused", max_retries=0, timeout=20
    )
    received = ""
    with client.messages.stream(
        model="fake-gpt",
        max_tokens=64,
        messages=[{"role": "user", "content": "kilo lima mike november oscar papa quebec"}],
        extra_headers=tp(),
    ) as stream:
        for text in stream.text_stream:
            received += text
            if len(received) > 8:
                break
    (row,) = settle(gw, 1)
    assert (row["status_code"], row["usage_source"]) == (499, "estimated")
    assert row["output_tokens"] >= len(received) // 4 > 0


@pytest.mark.parametrize(
    "ctype",
    [
        "text/plain",
        "text/plain;charset=UTF-8",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
        None,
        "",
        "application/csp-report",  # what a page's CSP violation reports are sent as
        "application/reports+json",  # the Reporting API's
        "text/plain; application/json",
        "application/jsonp",
    ],
)
def test_a_body_a_browser_could_post_cross_site_is_415(gw: Agwd, ctype: str | None) -> None:
    """What a page may send without a CORS preflight never reaches the provider."""
    raw = b'{"model": "fake-gpt", "messages": [{"role": "user", "content": "spend"}]}'
    headers = {"content-type": ctype} if ctype is not None else {}
    r = httpx.post(f"{gw.data_url}/oa/v1/chat/completions", content=raw, headers=headers)
    assert r.status_code == 415
    assert r.json()["error"]["type"] == "invalid_request_error"
    assert r.json()["error"]["message"].startswith("Content-Type must be application/json")
    a = httpx.post(f"{gw.data_url}/an/v1/messages", content=raw, headers=headers)
    assert a.status_code == 415 and a.json()["type"] == "error"


@pytest.mark.parametrize(
    "ctype",
    [
        "application/json",
        "application/json; charset=utf-8",
        "Application/JSON",
    ],
)
def test_json_content_types_are_accepted(gw: Agwd, ctype: str) -> None:
    raw = b'{"model": "fake-gpt", "messages": [{"role": "user", "content": "fine"}]}'
    r = httpx.post(
        f"{gw.data_url}/oa/v1/chat/completions", content=raw, headers={"content-type": ctype}
    )
    assert r.status_code == 200, r.text


def test_the_sdks_still_work_with_the_content_type_check(gw: Agwd) -> None:
    client = openai.OpenAI(
        base_url=f"{gw.data_url}/oa/v1", api_key="unused", max_retries=0, timeout=20
    )
    r = client.chat.completions.create(
        model="fake-gpt", messages=[{"role": "user", "content": "sdk"}]
    )
    assert r.choices[0].message.content == "echo: sdk"
    assert client.embeddings.create(model="fake-embed", input="v").data
    assert client.responses.create(model="fake-gpt", input="resp").output_text == "echo: resp"
    ac = anthropic.Anthropic(
        base_url=f"{gw.data_url}/an", api_key="unused", max_retries=0, timeout=20
    )
    m = ac.messages.create(
        model="fake-claude", max_tokens=8, messages=[{"role": "user", "content": "sdk"}]
    )
    assert m.content[0].text == "echo: sdk"  # type: ignore[union-attr]
    n = ac.messages.count_tokens(model="fake-claude", messages=[{"role": "user", "content": "x"}])
    assert n.input_tokens > 0
