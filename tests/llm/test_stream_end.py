"""A stream the gateway cuts (a limit's ``on_exceed: cut``) ends cleanly, as the SDKs see it.

An upstream stream prefix (event shapes as tests/fakes/llm_upstream.py and the providers send
them), cut mid-answer, is closed by :class:`agw.llm.stream_end.StreamCloser` (passthrough) or
:meth:`agw.llm.translate.StreamTranslator.cut` (translated); prefix and tail are served by a
loopback aiohttp server to the official ``openai``, ``anthropic`` and ``google-genai`` clients,
which must finish without error, report the "too many tokens" stop and keep the text so far.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import anthropic
import openai
import pytest
from aiohttp import web

from agw.llm.providers.tokens import Usage
from agw.llm.stream_end import StreamCloser
from agw.llm.translate import StreamTranslator
from agw.llm.translate.canonical import Ids
from agw.sse import SSESplitter
from tests.support import sse

T = TypeVar("T")
CREATED = 1_760_000_000
USAGE = Usage(input_tokens=25, output_tokens=7, cached_input_tokens=4)
WORDS = ["The ", "quick ", "brown "]
TEXT = "".join(WORDS)
MESSAGES: Any = [{"role": "user", "content": "hi"}]


# ------------------------------------------------------------------------------- plumbing


@contextlib.asynccontextmanager
async def serve(body: bytes) -> AsyncIterator[str]:
    """A loopback server answering every request with ``body`` as an SSE stream, event by
    event; its base URL."""

    async def answer(request: web.Request) -> web.StreamResponse:
        await request.read()
        resp = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await resp.prepare(request)
        for event in SSESplitter().feed(body):
            await resp.write(event.raw)
        await resp.write_eof()
        return resp

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", answer)
    runner = web.AppRunner(app, handle_signals=False, access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        host, port = runner.addresses[0][:2]
        yield f"http://{host}:{port}"
    finally:
        await runner.cleanup()


def play(body: bytes, client: Callable[[str], Awaitable[T]]) -> T:
    """``client(base_url)`` run against a server that answers ``body``."""

    async def main() -> T:
        async with serve(body) as url:
            return await asyncio.wait_for(client(url), 30)

    return asyncio.run(main())


def closed(wire: str, prefix: bytes, usage: Usage | None = USAGE, **kw: Any) -> bytes:
    """``prefix`` relayed through a StreamCloser, then its tail."""
    closer = StreamCloser(wire, include_usage=kw.pop("include_usage", False), **kw)
    for event in SSESplitter().feed(prefix):
        closer.see(event)
    assert not closer.finished
    tail = closer.close(usage)
    assert closer.finished
    assert closer.close(usage) == b""
    return prefix + tail


def cut(src: str, dst: str, prefix: bytes, usage: Usage | None = USAGE) -> bytes:
    """``prefix`` translated from ``src`` to ``dst``, then cut."""
    translator = StreamTranslator(src, dst, model="m", ids=Ids(seed=1, now=CREATED))
    out = [translator.feed(e.name or None, e.data) for e in SSESplitter().feed(prefix)]
    assert not translator.finished
    out.append(translator.cut(usage))
    assert translator.finished
    assert translator.cut(usage) == b""
    return b"".join(out)


def events(body: bytes) -> list[tuple[str | None, Any]]:
    """Every event of a stream: its name and its data as JSON (or the text)."""
    out: list[tuple[str | None, Any]] = []
    for name, data in sse.parse(body.decode()):
        out.append((name, data if data == "[DONE]" else json.loads(data)))
    return out


def _sse(data: Any, name: str | None = None, *, compact: bool = True) -> bytes:
    text = json.dumps(data, separators=(",", ":")) if compact else json.dumps(data)
    return (f"event: {name}\n" if name else "").encode() + f"data: {text}\n\n".encode()


# ------------------------------------------------------------------------- upstream prefixes


def chat_prefix(*, compact: bool = True, usage_null: bool = False, call: bool = False) -> bytes:
    base = {
        "id": "chatcmpl-up1",
        "object": "chat.completion.chunk",
        "created": CREATED,
        "model": "gpt-up",
        "system_fingerprint": "fp_1",
    }

    def chunk(delta: dict[str, Any]) -> bytes:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": None}
        extra = {"usage": None} if usage_null else {}
        return _sse({**base, "choices": [choice], **extra}, compact=compact)

    out = [chunk({"role": "assistant", "content": "", "refusal": None})]
    if call:
        start = {"index": 0, "id": "call_1", "type": "function"}
        out.append(chunk({"tool_calls": [{**start, "function": {"name": "f", "arguments": ""}}]}))
        out.append(chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"a": "x'}}]}))
    else:
        out.extend(chunk({"content": w}) for w in WORDS)
    return b"".join(out)


def messages_prefix(shape: str = "text") -> bytes:
    """An Anthropic stream cut: ``text`` in a text block, ``thinking`` in a text block after a
    finished thinking block, ``tool`` in a tool_use block's arguments, ``between`` after a
    finished block."""
    usage = {
        "input_tokens": 21,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 4,
        "output_tokens": 1,
    }
    message: dict[str, Any] = {
        "id": "msg_up1",
        "type": "message",
        "role": "assistant",
        "model": "claude-up",
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": usage,
    }

    def ev(kind: str, **fields: Any) -> bytes:
        return _sse({"type": kind, **fields}, kind)

    out = [ev("message_start", message=message)]
    index = 0
    if shape == "thinking":
        empty = {"type": "thinking", "thinking": "", "signature": ""}
        out.append(ev("content_block_start", index=0, content_block=empty))
        delta = {"type": "thinking_delta", "thinking": "Let me think."}
        out.append(ev("content_block_delta", index=0, delta=delta))
        delta = {"type": "signature_delta", "signature": "sig1"}
        out.append(ev("content_block_delta", index=0, delta=delta))
        out.append(ev("content_block_stop", index=0))
        index = 1
    out.append(ev("content_block_start", index=index, content_block={"type": "text", "text": ""}))
    out.append(ev("ping"))
    for w in WORDS:
        delta = {"type": "text_delta", "text": w}
        out.append(ev("content_block_delta", index=index, delta=delta))
    if shape in ("tool", "between"):
        out.append(ev("content_block_stop", index=index))
    if shape == "tool":
        block = {"type": "tool_use", "id": "toolu_1", "name": "f", "input": {}}
        out.append(ev("content_block_start", index=index + 1, content_block=block))
        delta = {"type": "input_json_delta", "partial_json": '{"a": "x'}
        out.append(ev("content_block_delta", index=index + 1, delta=delta))
    return b"".join(out)


def responses_prefix(shape: str = "text", *, seq: bool = True) -> bytes:
    """A Responses stream cut: ``text`` in a message's text, ``reasoning`` in a message after
    a finished reasoning item, ``thinking`` in a reasoning summary, ``call`` in a function
    call's arguments, ``between`` after a finished message item."""
    n = 0

    def ev(kind: str, **fields: Any) -> bytes:
        nonlocal n
        head: dict[str, Any] = {"type": kind}
        if seq:
            head["sequence_number"] = n
        n += 1
        return _sse({**head, **fields}, kind)

    response = {
        "id": "resp_up1",
        "object": "response",
        "created_at": CREATED,
        "status": "in_progress",
        "error": None,
        "incomplete_details": None,
        "instructions": None,
        "max_output_tokens": None,
        "model": "gpt-up",
        "output": [],
        "parallel_tool_calls": True,
        "previous_response_id": None,
        "reasoning": {"effort": None, "summary": None},
        "store": True,
        "temperature": 1.0,
        "text": {"format": {"type": "text"}},
        "tool_choice": "auto",
        "tools": [],
        "top_p": 1.0,
        "truncation": "disabled",
        "usage": None,
        "user": None,
        "metadata": {},
    }
    out = [ev("response.created", response=response), ev("response.in_progress", response=response)]
    index = 0
    if shape in ("reasoning", "thinking"):
        item = {"id": "rs_1", "type": "reasoning", "summary": []}
        out.append(ev("response.output_item.added", output_index=0, item=item))
        at = {"item_id": "rs_1", "output_index": 0, "summary_index": 0}
        part = {"type": "summary_text", "text": ""}
        out.append(ev("response.reasoning_summary_part.added", **at, part=part))
        out.append(ev("response.reasoning_summary_text.delta", **at, delta="Hm"))
        out.append(ev("response.reasoning_summary_text.delta", **at, delta="m."))
        if shape == "thinking":
            return b"".join(out)
        out.append(ev("response.reasoning_summary_text.done", **at, text="Hmm."))
        part = {"type": "summary_text", "text": "Hmm."}
        out.append(ev("response.reasoning_summary_part.done", **at, part=part))
        done = {**item, "summary": [part]}
        out.append(ev("response.output_item.done", output_index=0, item=done))
        index = 1
    if shape == "call":
        item = {
            "id": "fc_1",
            "type": "function_call",
            "status": "in_progress",
            "arguments": "",
            "call_id": "call_1",
            "name": "f",
        }
        out.append(ev("response.output_item.added", output_index=index, item=item))
        at = {"item_id": "fc_1", "output_index": index}
        out.append(ev("response.function_call_arguments.delta", **at, delta='{"a": '))
        out.append(ev("response.function_call_arguments.delta", **at, delta='"x'))
        return b"".join(out)
    item = {"id": "msg_1", "type": "message", "status": "in_progress", "role": "assistant"}
    out.append(ev("response.output_item.added", output_index=index, item={**item, "content": []}))
    at = {"item_id": "msg_1", "output_index": index, "content_index": 0}
    empty: dict[str, Any] = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
    out.append(ev("response.content_part.added", **at, part=empty))
    for w in WORDS:
        out.append(ev("response.output_text.delta", **at, delta=w, logprobs=[]))
    if shape == "between":
        part = {**empty, "text": TEXT}
        out.append(ev("response.output_text.done", **at, text=TEXT, logprobs=[]))
        out.append(ev("response.content_part.done", **at, part=part))
        done = {**item, "status": "completed", "content": [part]}
        out.append(ev("response.output_item.done", output_index=index, item=done))
    return b"".join(out)


def gemini_prefix() -> bytes:
    def chunk(text: str) -> bytes:
        candidate = {"content": {"parts": [{"text": text}], "role": "model"}, "index": 0}
        return _sse({"candidates": [candidate], "modelVersion": "gemini-up", "responseId": "r1"})

    return b"".join(chunk(w) for w in WORDS)


# ----------------------------------------------------------------------------- SDK clients


async def chat_chunks(url: str, include_usage: bool = True) -> list[Any]:
    async with openai.AsyncOpenAI(api_key="k", base_url=f"{url}/v1", max_retries=0) as client:
        stream = await client.chat.completions.create(
            model="m",
            messages=MESSAGES,
            stream=True,
            stream_options={"include_usage": include_usage},
        )
        return [chunk async for chunk in stream]


async def chat_final(url: str) -> Any:
    """The completion the SDK's stream helper accumulates. For a ``length`` stop it raises
    LengthFinishReasonError carrying it, as it does for OpenAI's own."""
    async with (
        openai.AsyncOpenAI(api_key="k", base_url=f"{url}/v1", max_retries=0) as client,
        client.chat.completions.stream(model="m", messages=MESSAGES) as stream,
    ):
        try:
            return await stream.get_final_completion()
        except openai.LengthFinishReasonError as exc:
            return exc.completion


async def messages_final(url: str) -> anthropic.types.Message:
    async with (
        anthropic.AsyncAnthropic(api_key="k", base_url=url, max_retries=0) as client,
        client.messages.stream(model="m", max_tokens=100, messages=MESSAGES) as stream,
    ):
        return await stream.get_final_message()


async def messages_events(url: str) -> list[Any]:
    async with anthropic.AsyncAnthropic(api_key="k", base_url=url, max_retries=0) as client:
        stream = await client.messages.create(
            model="m", max_tokens=100, messages=MESSAGES, stream=True
        )
        return [event async for event in stream]


async def responses_events(url: str) -> list[Any]:
    async with openai.AsyncOpenAI(api_key="k", base_url=f"{url}/v1", max_retries=0) as client:
        stream = await client.responses.create(model="m", input="hi", stream=True)
        return [event async for event in stream]


async def responses_helper_events(url: str) -> list[Any]:
    """Through the SDK's stream accumulator (output identity and order checks)."""
    async with (
        openai.AsyncOpenAI(api_key="k", base_url=f"{url}/v1", max_retries=0) as client,
        client.responses.stream(model="m", input="hi") as stream,
    ):
        return [event async for event in stream]


async def gemini_chunks(url: str) -> list[Any]:
    """The sync client, in a thread (the async one subclasses aiohttp's ClientSession, which
    aiohttp deprecates: a warning, so an error here)."""
    genai = pytest.importorskip("google.genai")

    def run() -> list[Any]:
        options = genai.types.HttpOptions(base_url=url)
        with genai.Client(api_key="k", http_options=options) as client:
            return list(client.models.generate_content_stream(model="g", contents="hi"))

    return await asyncio.to_thread(run)


# ------------------------------------------------------------------------ passthrough: chat


@pytest.mark.parametrize("compact", [True, False], ids=["compact", "spaced"])
@pytest.mark.parametrize("include_usage", [True, False], ids=["usage", "no-usage"])
def test_chat_cut_ends_with_length(compact: bool, include_usage: bool) -> None:
    body = closed(
        "chat", chat_prefix(compact=compact, usage_null=include_usage), include_usage=include_usage
    )
    chunks = play(body, lambda url: chat_chunks(url, include_usage))
    with_choices = [c for c in chunks if c.choices]
    assert "".join(c.choices[0].delta.content or "" for c in with_choices) == TEXT
    assert with_choices[-1].choices[0].finish_reason == "length"
    assert {(c.id, c.model, c.created, c.system_fingerprint) for c in chunks} == {
        ("chatcmpl-up1", "gpt-up", CREATED, "fp_1")
    }
    if include_usage:
        assert not chunks[-1].choices
        usage = chunks[-1].usage
        assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (25, 7, 32)
    else:
        assert chunks[-1].usage is None


def test_chat_cut_plays_to_the_stream_helper() -> None:
    completion = play(closed("chat", chat_prefix()), chat_final)
    assert completion.id == "chatcmpl-up1"
    assert completion.choices[0].finish_reason == "length"
    assert completion.choices[0].message.content == TEXT


def test_chat_cut_in_a_tool_call_keeps_the_call() -> None:
    completion = play(closed("chat", chat_prefix(call=True)), chat_final)
    choice = completion.choices[0]
    assert choice.finish_reason == "length"
    calls = choice.message.tool_calls or []
    assert [(c.id, c.function.name, c.function.arguments) for c in calls] == [
        ("call_1", "f", '{"a": "x')
    ]


def test_chat_tail_respects_what_the_upstream_already_sent() -> None:
    head = {
        "id": "chatcmpl-up1",
        "object": "chat.completion.chunk",
        "created": CREATED,
        "model": "gpt-up",
        "system_fingerprint": "fp_1",
    }
    finish = {"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"}
    stopped = chat_prefix() + _sse({**head, "choices": [finish]})
    tail = closed("chat", stopped, include_usage=True)[len(stopped) :]
    usage = {
        "prompt_tokens": 25,
        "completion_tokens": 7,
        "total_tokens": 32,
        "prompt_tokens_details": {"cached_tokens": 4},
        "completion_tokens_details": {"reasoning_tokens": 0},
    }
    assert [d for _, d in events(tail)] == [{**head, "choices": [], "usage": usage}, "[DONE]"]
    usage_chunk = _sse({**head, "choices": [], "usage": {"prompt_tokens": 1}})
    body = closed("chat", stopped + usage_chunk, include_usage=True)
    assert body == stopped + usage_chunk + b"data: [DONE]\n\n"
    body = closed("chat", stopped, usage=None, include_usage=True)
    assert body == stopped + b"data: [DONE]\n\n"
    with_usage = _sse({**head, "choices": [finish], "usage": {"prompt_tokens": 1}})
    body = closed("chat", chat_prefix() + with_usage, include_usage=True)
    assert body == chat_prefix() + with_usage + b"data: [DONE]\n\n"
    assert play(body, chat_final).choices[0].finish_reason == "stop"


def test_chat_cut_before_any_event() -> None:
    body = closed("chat", b"", include_usage=True, model="gpt-x", ids=Ids(seed=3, now=CREATED))
    chunks = play(body, chat_chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[1].choices[0].finish_reason == "length"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 7
    assert {(c.model, c.created) for c in chunks} == {("gpt-x", CREATED)}
    assert len({c.id for c in chunks}) == 1 and chunks[0].id.startswith("chatcmpl-")


# -------------------------------------------------------------------- passthrough: messages


@pytest.mark.parametrize("shape", ["text", "thinking", "between"])
def test_messages_cut_ends_with_max_tokens(shape: str) -> None:
    body = closed("messages", messages_prefix(shape))
    msg = play(body, messages_final)
    assert msg.id == "msg_up1"
    assert msg.stop_reason == "max_tokens"
    assert msg.stop_sequence is None
    assert "".join(b.text for b in msg.content if b.type == "text") == TEXT
    assert msg.usage.output_tokens == 7
    assert msg.usage.input_tokens == 21
    if shape == "thinking":
        assert [b.type for b in msg.content] == ["thinking", "text"]
    kinds = [e.type for e in play(body, messages_events)]
    tail = ["message_delta", "message_stop"]
    assert kinds[-3:] == (
        kinds[-3:-2] + tail if shape == "between" else ["content_block_stop", *tail]
    )
    if shape == "between":
        assert kinds.count("content_block_stop") == 1  # the upstream's own, none added


def test_messages_cut_in_a_tool_call() -> None:
    msg = play(closed("messages", messages_prefix("tool")), messages_final)
    assert msg.stop_reason == "max_tokens"
    assert [b.type for b in msg.content] == ["text", "tool_use"]
    tool = msg.content[1]
    assert tool.type == "tool_use" and tool.id == "toolu_1" and tool.name == "f"


def test_messages_tail_without_usage_keeps_the_last_count() -> None:
    prefix = messages_prefix()
    tail = closed("messages", prefix, usage=None)[len(prefix) :]
    delta = next(d for n, d in events(tail) if n == "message_delta")
    assert delta == {
        "type": "message_delta",
        "delta": {"stop_reason": "max_tokens", "stop_sequence": None},
        "usage": {"output_tokens": 1},
    }
    assert events(tail)[0] == ("content_block_stop", {"type": "content_block_stop", "index": 0})


def test_messages_tail_after_the_upstream_stop_reason_is_message_stop() -> None:
    prefix = messages_prefix("between") + _sse(
        {
            "type": "message_delta",
            "delta": {"stop_reason": "end_turn", "stop_sequence": None},
            "usage": {"output_tokens": 3},
        },
        "message_delta",
    )
    body = closed("messages", prefix)
    assert body[len(prefix) :] == b'event: message_stop\ndata: {"type": "message_stop"}\n\n'
    assert play(body, messages_final).stop_reason == "end_turn"


def test_messages_cut_before_any_event() -> None:
    msg = play(closed("messages", b"", model="claude-x"), messages_final)
    assert (msg.model, msg.stop_reason, msg.content) == ("claude-x", "max_tokens", [])
    assert msg.id.startswith("msg_")


# ------------------------------------------------------------------- passthrough: responses


@pytest.mark.parametrize("shape", ["text", "reasoning", "between"])
def test_responses_cut_ends_incomplete(shape: str) -> None:
    body = closed("responses", responses_prefix(shape))
    got = play(body, responses_events)
    assert [e.sequence_number for e in got] == list(range(len(got)))
    last = got[-1]
    assert last.type == "response.incomplete"
    resp = last.response
    assert resp.id == "resp_up1" and resp.model == "gpt-up" and resp.store is True
    assert resp.status == "incomplete"
    assert resp.incomplete_details is not None
    assert resp.incomplete_details.reason == "max_output_tokens"
    assert resp.output_text == TEXT
    assert resp.usage is not None
    assert (resp.usage.input_tokens, resp.usage.output_tokens, resp.usage.total_tokens) == (
        25,
        7,
        32,
    )
    assert resp.usage.input_tokens_details.cached_tokens == 4
    message = resp.output[-1]
    assert message.type == "message" and message.id == "msg_1"
    assert message.status == ("completed" if shape == "between" else "incomplete")
    if shape == "reasoning":
        assert [item.type for item in resp.output] == ["reasoning", "message"]
    kinds = [e.type for e in got]
    if shape != "between":
        assert kinds[-4:] == [
            "response.output_text.done",
            "response.content_part.done",
            "response.output_item.done",
            "response.incomplete",
        ]
        assert got[-4].text == TEXT
    helper = play(body, responses_helper_events)
    assert [e.type for e in helper][-1] == "response.incomplete"
    assert helper[-1].response.output_text == TEXT


def test_responses_cut_in_a_function_call() -> None:
    got = play(closed("responses", responses_prefix("call")), responses_helper_events)
    assert [e.type for e in got][-3:] == [
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.incomplete",
    ]
    assert got[-3].arguments == '{"a": "x'
    call = got[-1].response.output[0]
    assert call.type == "function_call"
    assert (call.call_id, call.name, call.arguments, call.status) == (
        "call_1",
        "f",
        '{"a": "x',
        "incomplete",
    )


def test_responses_cut_in_a_reasoning_summary() -> None:
    got = play(closed("responses", responses_prefix("thinking")), responses_helper_events)
    assert [e.type for e in got][-4:] == [
        "response.reasoning_summary_text.done",
        "response.reasoning_summary_part.done",
        "response.output_item.done",
        "response.incomplete",
    ]
    assert got[-4].text == "Hmm."
    item = got[-1].response.output[0]
    assert item.type == "reasoning" and item.status == "incomplete"
    assert [s.text for s in item.summary] == ["Hmm."]


def test_responses_tail_without_sequence_numbers_has_none() -> None:
    prefix = responses_prefix(seq=False)
    tail = closed("responses", prefix, usage=None)[len(prefix) :]
    datas = [d for _, d in events(tail)]
    assert datas and all("sequence_number" not in d for d in datas)
    assert datas[-1]["response"]["usage"] is None
    assert play(prefix + tail, responses_events)[-1].type == "response.incomplete"


def test_responses_cut_before_any_event() -> None:
    body = closed("responses", b"", model="gpt-x")
    got = play(body, responses_helper_events)
    assert [e.type for e in got] == [
        "response.created",
        "response.in_progress",
        "response.incomplete",
    ]
    assert [e.sequence_number for e in got] == [0, 1, 2]
    assert got[-1].response.model == "gpt-x"


# ---------------------------------------------------------------------- passthrough: gemini


def test_gemini_cut_ends_with_max_tokens() -> None:
    chunks = play(closed("gemini", gemini_prefix()), gemini_chunks)
    assert "".join(c.text or "" for c in chunks) == TEXT
    last = chunks[-1]
    assert last.candidates[0].finish_reason == "MAX_TOKENS"
    assert (last.model_version, last.response_id) == ("gemini-up", "r1")
    meta = last.usage_metadata
    assert (meta.prompt_token_count, meta.candidates_token_count) == (25, 7)


# ------------------------------------------------------------------ passthrough: already over


def _whole(wire: str) -> bytes:
    """A complete upstream stream in ``wire``."""
    if wire == "chat":
        base = {"id": "c1", "object": "chat.completion.chunk", "created": CREATED, "model": "g"}
        finish = {"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"}
        return chat_prefix() + _sse({**base, "choices": [finish]}) + b"data: [DONE]\n\n"
    if wire == "messages":
        stop = {"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {}}
        end = _sse(stop, "message_delta") + _sse({"type": "message_stop"}, "message_stop")
        return messages_prefix("between") + end
    if wire == "responses":
        done = {"type": "response.completed", "sequence_number": 99, "response": {"id": "r"}}
        return responses_prefix("between") + _sse(done, "response.completed")
    candidate = {"content": {"parts": [{"text": "."}]}, "finishReason": "STOP", "index": 0}
    return gemini_prefix() + _sse({"candidates": [candidate]})


_ERRORS = {
    "chat": _sse({"error": {"message": "boom", "type": "server_error"}}),
    "messages": _sse({"type": "error", "error": {"type": "overloaded_error"}}, "error"),
    "responses": _sse({"type": "error", "code": "server_error", "message": "boom"}, "error"),
    "gemini": _sse({"error": {"code": 500, "message": "boom", "status": "INTERNAL"}}),
}
_PREFIXES: dict[str, Callable[[], bytes]] = {
    "chat": chat_prefix,
    "messages": messages_prefix,
    "responses": responses_prefix,
    "gemini": gemini_prefix,
}


@pytest.mark.parametrize("wire", ["chat", "messages", "responses", "gemini"])
def test_a_finished_stream_gets_no_tail(wire: str) -> None:
    for body in (_whole(wire), _PREFIXES[wire]() + _ERRORS[wire]):
        closer = StreamCloser(wire, include_usage=True)
        for event in SSESplitter().feed(body):
            closer.see(event)
        assert closer.finished
        assert closer.close(USAGE) == b""


def test_text_that_quotes_the_markers_is_not_an_end() -> None:
    """Answer text that spells the events' own markers is escaped JSON, never structure."""
    sneaky = 'data: [DONE] "finish_reason":"stop" {"error": 1} message_stop" response.completed"'
    for wire, prefix in (
        ("chat", chat_prefix()),
        ("messages", messages_prefix()),
        ("responses", responses_prefix()),
        ("gemini", gemini_prefix()),
    ):
        closer = StreamCloser(wire, include_usage=True)
        for event in SSESplitter().feed(prefix):
            closer.see(event)
        for data in (
            {"choices": [{"index": 0, "delta": {"content": sneaky}, "finish_reason": None}]},
            {"type": "content_block_delta", "index": 0, "delta": {"text": sneaky}},
            {"type": "response.output_text.delta", "output_index": 0, "delta": sneaky},
            {"candidates": [{"content": {"parts": [{"text": sneaky}]}}]},
        ):
            for event in SSESplitter().feed(_sse(data)):
                closer.see(event)
        assert not closer.finished, wire
        assert closer.close(USAGE), wire


def test_unknown_wire_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown wire format"):
        StreamCloser("embeddings", include_usage=False)


# ------------------------------------------------------------------------ translated: cut()


def test_cut_chat_upstream_to_a_messages_client() -> None:
    msg = play(cut("chat", "messages", chat_prefix()), messages_final)
    assert msg.stop_reason == "max_tokens"
    assert [b.type for b in msg.content] == ["text"]
    assert "".join(b.text for b in msg.content if b.type == "text") == TEXT
    assert msg.usage.output_tokens == 7


def test_cut_messages_upstream_to_a_chat_client() -> None:
    body = cut("messages", "chat", messages_prefix("tool"))
    chunks = play(body, chat_chunks)
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].usage is not None
    assert (chunks[-1].usage.prompt_tokens, chunks[-1].usage.completion_tokens) == (25, 7)
    completion = play(body, chat_final)
    assert completion.choices[0].message.content == TEXT
    calls = completion.choices[0].message.tool_calls or []
    assert [c.function.arguments for c in calls] == ['{"a": "x']


def test_cut_messages_upstream_to_a_responses_client() -> None:
    got = play(cut("messages", "responses", messages_prefix("thinking")), responses_helper_events)
    last = got[-1]
    assert last.type == "response.incomplete"
    assert last.response.status == "incomplete"
    assert last.response.incomplete_details is not None
    assert last.response.incomplete_details.reason == "max_output_tokens"
    assert last.response.output_text == TEXT
    assert last.response.usage is not None and last.response.usage.output_tokens == 7


def test_cut_responses_upstream_to_a_gemini_client() -> None:
    chunks = play(cut("responses", "gemini", responses_prefix()), gemini_chunks)
    assert "".join(c.text or "" for c in chunks) == TEXT
    assert chunks[-1].candidates[0].finish_reason == "MAX_TOKENS"
    assert chunks[-1].usage_metadata.candidates_token_count == 7


def test_cut_without_usage_and_after_the_end() -> None:
    body = cut("messages", "chat", messages_prefix(), usage=None)
    chunks = play(body, chat_chunks)
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 1
    translator = StreamTranslator("gemini", "messages")
    for event in SSESplitter().feed(_whole("gemini")):
        translator.feed(None, event.data)
    translator.finish()
    assert translator.finished
    assert translator.cut(USAGE) == b""
