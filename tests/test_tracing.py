"""Traces (agw/tracing.py): usage events become OTLP spans at a real collector process.

The exporter runs as a tap of a real UsageRecorder on a temp store and sends to the fake OTLP
receiver (tests/fakes/otlp_receiver.py), which decodes the protobuf the way a collector does. Then
agwd itself: an OpenAI SDK call carrying a ``traceparent`` is exported as the gateway's span, a
child of the caller's, and the upstream call is a child of that span. Content (prompt,
completion) is on a span only when asked for; a collector that is down or never answers slows
neither the request path nor the shutdown.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from agw.clock import now_ms
from agw.store.db import Database
from agw.tracing import TraceExporter, traces_url
from agw.usage.events import AcpUsageEvent, LlmUsageEvent, McpUsageEvent, UsageEvent
from agw.usage.recorder import UsageRecorder
from tests.fakes.otlp_receiver import OtlpReceiver, start_otlp_receiver
from tests.fakes.run import FakeUpstream, start_fake_upstream
from tests.support.agwd import Agwd, AgwdLauncher, free_port, usage_rows

CALLER_SPAN = "00f067aa0ba902b7"
SECRET = "sk-live-do-not-export-0001"
UPSTREAM_KEY = "sk-upstream-secret-0002"


@pytest.fixture(scope="module")
def otlp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OtlpReceiver]:
    with start_otlp_receiver(tmp_path_factory.mktemp("otlp")) as receiver:
        yield receiver


def trace_id(n: int) -> str:
    return f"{time.time_ns() & (2**64 - 1):016x}{n:016x}"


def events(trace: str) -> list[UsageEvent]:
    """One LLM call (with the content --trace-content would add), one failed MCP tool call and
    one ACP turn, all in ``trace``."""
    now = now_ms()
    llm = LlmUsageEvent(
        trace_id=trace, parent_span_id=CALLER_SPAN, started_at=now - 250, finished_at=now,
        route_id="chat", route_protocol="openai", virtual_key_id="team", success=True,
        status_code=200, api_operation="chat_completions", provider_id="oa",
        provider_type="openai", logical_model="smart", upstream_model="gpt-4o", stream=True,
        input_tokens=11, output_tokens=5, total_tokens=16, cached_input_tokens=2,
        reasoning_tokens=1, usage_source="provider", session_id="sess-1", agent_id="coder",
        http_method="POST", http_path="/chat/v1/chat/completions", overhead_ms=0.4321,
        ttft_ms=12.5,
    )  # fmt: skip
    llm.trace_content = {"input": '{"messages":[{"role":"user","content":"hi"}]}', "output": "yo"}
    mcp = McpUsageEvent(
        trace_id=trace, parent_span_id=CALLER_SPAN, started_at=now - 40, finished_at=now - 10,
        route_id="tools", virtual_key_id="team", success=False, status_code=200,
        error_type="upstream_failed", method="tools/call", tool_name="search",
        service_id="web", result_status="error", session_id="sess-1", mcp_session_id="m-1",
        tool_args_json={"api_key": SECRET},
    )  # fmt: skip
    acp = AcpUsageEvent(
        trace_id=trace, started_at=now - 900, finished_at=now, route_id="agents",
        success=True, status_code=200, operation="turn", service_id="opencode",
        agent_type="opencode", session_id="sess-1", result_status="ok", stop_reason="end_turn",
    )  # fmt: skip
    return [llm, mcp, acp]


def test_traces_url_follows_the_otlp_endpoint_convention() -> None:
    assert traces_url("http://collector:4318") == "http://collector:4318/v1/traces"
    assert traces_url("http://collector:4318/") == "http://collector:4318/v1/traces"
    assert traces_url("https://h/otlp") == "https://h/otlp/v1/traces"
    assert traces_url("http://h:4318/v1/traces") == "http://h:4318/v1/traces"
    assert traces_url(" http://h:4318/v1/traces/ ") == "http://h:4318/v1/traces"
    with pytest.raises(ValueError, match="http:// or https://"):
        traces_url("collector:4318")


def test_usage_events_arrive_as_spans_content_only_when_enabled(
    tmp_path: Path, otlp: OtlpReceiver
) -> None:
    trace = trace_id(1)
    sent = events(trace)

    async def run() -> tuple[TraceExporter, TraceExporter]:
        db = await Database.open(tmp_path / "usage.db")
        recorder = UsageRecorder(db)
        plain = TraceExporter(otlp.url, service_name="agw-plain", schedule_delay_ms=50)
        full = TraceExporter(otlp.url, content=True, service_name="agw-full")
        recorder.add_tap(plain)
        recorder.add_tap(full)
        recorder.start()
        for event in sent:
            assert recorder.emit(event)
        await recorder.close()
        await plain.aclose()
        await full.aclose()
        assert recorder.written_events == 3 and recorder.dropped_events == 0
        await db.close()
        return plain, full

    plain, full = asyncio.run(asyncio.wait_for(run(), 30))
    assert (plain.exported_spans, full.exported_spans) == (3, 3)
    assert plain.failed_spans == full.failed_spans == 0
    spans = otlp.wait_spans(lambda s: s["trace_id"] == trace, count=6)
    by = {(s["resource"]["service.name"], s["attributes"]["agw.route_kind"]): s for s in spans}
    assert len(spans) == 6 and len(by) == 6
    llm, mcp, acp = (by["agw-plain", kind] for kind in ("llm", "mcp", "acp"))
    for span, event in zip((llm, mcp, acp), sent, strict=True):
        assert span["span_id"] == event.span_id
        assert (span["start_ns"], span["end_ns"]) == (
            event.started_at * 1_000_000,
            event.finished_at * 1_000_000,
        )
        assert span["kind"] == "SPAN_KIND_SERVER"
        assert span["scope"]["name"] == "agw"
        assert span["attributes"]["agw.event_id"] == event.event_id
        assert span["attributes"]["session.id"] == "sess-1"
        assert span["attributes"]["http.response.status_code"] == 200
    assert llm["parent_span_id"] == mcp["parent_span_id"] == CALLER_SPAN
    assert acp["parent_span_id"] == ""

    assert llm["name"] == "llm chat_completions"
    assert llm["status"]["code"] == "STATUS_CODE_OK"
    assert llm["attributes"] == {
        "openinference.span.kind": "LLM",
        "llm.model_name": "gpt-4o",
        "llm.provider": "openai",
        "llm.token_count.prompt": 11,
        "llm.token_count.completion": 5,
        "llm.token_count.total": 16,
        "llm.token_count.prompt_details.cache_read": 2,
        "llm.token_count.completion_details.reasoning": 1,
        "session.id": "sess-1",
        "agw.route_id": "chat",
        "agw.route_kind": "llm",
        "agw.route_protocol": "openai",
        "agw.virtual_key_id": "team",
        "agw.agent_id": "coder",
        "agw.provider_id": "oa",
        "agw.logical_model": "smart",
        "agw.api_operation": "chat_completions",
        "agw.stream": True,
        "agw.usage_source": "provider",
        "agw.error_class": "none",
        "agw.event_id": sent[0].event_id,
        "agw.overhead_ms": 0.432,
        "agw.ttft_ms": 12.5,
        "http.request.method": "POST",
        "url.path": "/chat/v1/chat/completions",
        "http.response.status_code": 200,
    }

    assert mcp["name"] == "mcp tools/call search"
    assert mcp["status"] == {"code": "STATUS_CODE_ERROR", "message": "upstream_failed"}
    attrs = mcp["attributes"]
    assert attrs["openinference.span.kind"] == "TOOL" and attrs["tool.name"] == "search"
    assert attrs["mcp.method.name"] == "tools/call" and attrs["mcp.session.id"] == "m-1"
    assert (attrs["error.type"], attrs["agw.error_class"]) == ("upstream_failed", "provider")
    assert (attrs["agw.service_id"], attrs["agw.result_status"]) == ("web", "error")

    assert acp["name"] == "acp turn"
    attrs = acp["attributes"]
    assert attrs["openinference.span.kind"] == "AGENT" and attrs["agent.name"] == "opencode"
    assert (attrs["agw.acp_operation"], attrs["agw.stop_reason"]) == ("turn", "end_turn")

    # content: only on the exporter built with content=True, and only where the event has it
    for kind in ("llm", "mcp", "acp"):
        assert not {"input.value", "output.value"} & set(by["agw-plain", kind]["attributes"])
    full_llm = by["agw-full", "llm"]["attributes"]
    assert full_llm["input.value"] == sent[0].trace_content["input"]  # type: ignore[index]
    assert (full_llm["input.mime_type"], full_llm["output.mime_type"]) == (
        "application/json",
        "text/plain",
    )
    assert full_llm["output.value"] == "yo"
    assert by["agw-full", "llm"]["span_id"] == llm["span_id"]
    assert "input.value" not in by["agw-full", "mcp"]["attributes"]
    # tool arguments never leave as attributes, even with content on
    assert SECRET not in json.dumps(spans)


def test_a_dead_collector_costs_the_request_path_nothing(tmp_path: Path) -> None:
    """A collector that accepts connections and never answers, and one that is not there: the
    tap stays cheap while exports hang or fail, and close() returns within its budget."""
    with socket.socket() as blackhole:
        blackhole.bind(("127.0.0.1", 0))
        blackhole.listen(64)  # the kernel completes connections; nobody ever reads or answers
        hung = f"http://127.0.0.1:{blackhole.getsockname()[1]}"
        refused = f"http://127.0.0.1:{free_port()}"

        async def run(endpoint: str) -> tuple[float, float, TraceExporter]:
            db = await Database.open(tmp_path / f"usage-{endpoint.rsplit(':', 1)[1]}.db")
            recorder = UsageRecorder(db)
            exporter = TraceExporter(endpoint, schedule_delay_ms=20, timeout=30)
            recorder.add_tap(exporter)
            recorder.start()
            batch = [e for n in range(700) for e in events(trace_id(n))]  # 2100 events
            spent = 0.0
            for part in (batch[:600], batch[600:]):
                start = time.perf_counter()
                for event in part:
                    recorder.emit(event)
                spent += time.perf_counter() - start
                await asyncio.sleep(0.2)  # the first export is now in flight (hung or retrying)
            per_event = spent / len(batch)
            start = time.perf_counter()
            await exporter.aclose(timeout=0.5)
            closing = time.perf_counter() - start
            exporter(batch[0])  # closed: a no-op
            await recorder.close()
            assert recorder.written_events == len(batch)
            await db.close()
            return per_event, closing, exporter

        for endpoint in (hung, refused):
            per_event, closing, exporter = asyncio.run(asyncio.wait_for(run(endpoint), 30))
            # emit (tap + queue put) stays in the microseconds; a generous bound for slow CI
            assert per_event < 0.0005, f"{endpoint}: {per_event * 1e6:.1f} us per event"
            assert closing < 2.0, f"{endpoint}: close took {closing:.2f} s"
            assert exporter.exported_spans == 0


# ---------------------------------------------------------------------------------- agwd


@pytest.fixture(scope="module")
def fake(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeUpstream]:
    with start_fake_upstream(tmp_path_factory.mktemp("fake"), "--require-key", UPSTREAM_KEY) as f:
        yield f


def configure(agwd: Agwd, fake: FakeUpstream) -> tuple[str, str]:
    """Once ``agwd`` is ready: one keyed OpenAI route to the fake upstream; the data URL and
    the virtual key."""
    agwd.wait_ready()
    bundle: dict[str, Any] = {
        "apiVersion": "gateway.agw/v1alpha1",
        "kind": "GatewayBundle",
        "providers": [
            {"id": "oa", "provider_type": "openai", "base_url": f"{fake.url}/v1",
             "api_key": UPSTREAM_KEY},
        ],
        "llmRoutes": [
            {"id": "chat", "protocol": "openai", "match_policy": {"path_prefix": "/chat"},
             "auth_policy": {"require_virtual_key": True},
             "target_policy": {"provider_id": "oa"}},
        ],
        "virtualKeys": [{"id": "team", "allowed_route_ids": ["chat"]}],
    }  # fmt: skip
    with agwd.client() as admin:
        r = admin.post("/admin/gateway/apply", json={"bundle": bundle})
        assert r.status_code == 200, r.text
        key: str = admin.get("/admin/virtual_keys/team").json()["key"]
    return agwd.data_url, key


def chat(data_url: str, key: str, trace: str, text: str) -> tuple[str, str]:
    """One chat completion with the OpenAI SDK under the caller's span of ``trace``; the
    gateway's span id and the reply."""
    with openai.OpenAI(
        base_url=f"{data_url}/chat/v1",
        api_key=key,
        max_retries=0,
        timeout=20,
        default_headers={"traceparent": f"00-{trace}-{CALLER_SPAN}-01"},
    ) as client:
        raw = client.chat.completions.with_raw_response.create(
            model="fake-gpt", messages=[{"role": "user", "content": text}]
        )
    reply = raw.parse().choices[0].message.content or ""
    return raw.headers["x-span-id"], reply


def test_agwd_exports_the_request_span_with_the_callers_trace(
    agwd_factory: AgwdLauncher, otlp: OtlpReceiver, fake: FakeUpstream
) -> None:
    quick = {"OTEL_BSP_SCHEDULE_DELAY": "50"}  # export every 50 ms, not every second
    plain = agwd_factory.start("--otlp-endpoint", otlp.url, env=quick, wait=False)
    full = agwd_factory.start(
        "--trace-content", env={"OTEL_EXPORTER_OTLP_ENDPOINT": otlp.url, **quick}, wait=False
    )
    (plain_url, plain_key), (full_url, full_key) = configure(plain, fake), configure(full, fake)
    plain_trace, full_trace = trace_id(101), trace_id(102)

    fake.clear()
    span_id, reply = chat(plain_url, plain_key, plain_trace, "hello traces")
    assert reply == "echo: hello traces"
    (upstream,) = fake.requests()
    # the upstream call is a child of the gateway's span, in the caller's trace
    assert upstream["headers"]["traceparent"] == f"00-{plain_trace}-{span_id}-01"
    (span,) = otlp.wait_spans(lambda s: s["trace_id"] == plain_trace)
    assert (span["span_id"], span["parent_span_id"]) == (span_id, CALLER_SPAN)
    assert span["name"] == "llm chat_completions" and span["kind"] == "SPAN_KIND_SERVER"
    assert span["status"]["code"] == "STATUS_CODE_OK"
    assert span["resource"]["service.name"] == "agw"
    attrs = span["attributes"]
    assert attrs["openinference.span.kind"] == "LLM"
    assert attrs["llm.model_name"] == "fake-gpt" and attrs["llm.provider"] == "openai"
    (row,) = usage_rows(plain.db_path, "llm_usage_events", f"trace_id = '{plain_trace}'")
    assert (attrs["llm.token_count.prompt"], attrs["llm.token_count.completion"]) == (
        row["input_tokens"],
        row["output_tokens"],
    )
    assert attrs["agw.route_id"] == "chat" and attrs["agw.virtual_key_id"] == "team"
    assert attrs["http.response.status_code"] == 200 and attrs["agw.error_class"] == "none"
    assert "input.value" not in attrs and "output.value" not in attrs
    assert "hello traces" not in json.dumps(span)

    span_id, _ = chat(full_url, full_key, full_trace, "tell me everything")
    (span,) = otlp.wait_spans(lambda s: s["trace_id"] == full_trace)
    assert (span["span_id"], span["parent_span_id"]) == (span_id, CALLER_SPAN)
    assert "tell me everything" in span["attributes"]["input.value"]
    assert span["attributes"]["output.value"] == "echo: tell me everything"

    everything = json.dumps(otlp.spans())
    for secret in (plain_key, full_key, UPSTREAM_KEY):
        assert secret not in everything
