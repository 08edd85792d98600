"""A fake LLM provider (OpenAI, Anthropic, Gemini dialects) run as a real process for tests.

    python -m tests.fakes.llm_upstream --port 0 --log requests.jsonl
    python tests/fakes/llm_upstream.py --port 0 --log requests.jsonl

Prints ``LISTENING <port>`` on stdout once it accepts connections, then nothing more there.
Every request (except the ``/_fake/`` control endpoints) is appended to the log as one JSON
line ``{method, path, query, headers, body}`` before it is answered: header names lower-case,
the body parsed as JSON when it is JSON, else raw text.

Endpoints (deterministic answers):

- OpenAI: ``POST /v1/chat/completions``, ``POST /v1/responses``, ``POST /v1/embeddings``,
  ``GET /v1/models``, ``GET /v1/models/{id}`` (JSON, or SSE with ``stream: true``).
- Anthropic: ``POST /v1/messages`` (JSON or SSE), ``POST /v1/messages/count_tokens``;
  ``GET /v1/models`` answers in Anthropic's shape when the request carries ``anthropic-version``.
- Gemini: ``POST /v1beta/models/{model}:generateContent``, ``:streamGenerateContent``
  (``?alt=sse`` for SSE, else one JSON array), ``:countTokens``; ``GET /v1beta/models`` lists
  the models in Gemini's shape, ``GET /v1beta/models/{model}`` answers one (any id exists).
- JSON answers are gzip- or deflate-compressed when the request's ``Accept-Encoding`` allows
  it, as real providers' are; SSE streams never are.
- ``GET|HEAD /health`` and ``GET|HEAD /``: 200 ``ok`` (logged, but no knobs apply and they do
  not count as requests). Anything else: 404 in OpenAI's error shape.

Token counts (see :func:`prompt_tokens`, :func:`completion_tokens`): prompt = 7 + characters of
all message text // 3; completion = words in the reply + 3; cached = 2, reasoning = 1,
Anthropic cache creation = 4. A chat model named ``deepseek-*`` reports usage as DeepSeek does
(:func:`deepseek_usage`): cache hits (3) as ``prompt_cache_hit_tokens`` and the rest as
``prompt_cache_miss_tokens``, no ``prompt_tokens_details``.

The reply is ``"echo: " + last user text[:60]``. With tools offered and no tool result in the
conversation, the answer is one call of the first tool with arguments ``{"text": last user
text[:60]}``; env ``FAKE_LLM_TOOL=<suffix>`` picks the first offered tool whose name ends with
it instead (none matching: no call) and ``FAKE_LLM_TOOL_ARGS`` gives the arguments JSON. The
functions of a Responses ``namespace`` tool (Codex offers MCP servers' tools so) count as
offered too: their call names the function and carries the ``namespace``; so does every
declaration of a Gemini tool's ``functionDeclarations`` (the Gemini CLI offers all its tools in
one).
Anthropic ``thinking: {type: enabled}`` adds a thinking block first.

Knobs, per process (CLI flag, or env var ``FAKE_LLM_<FLAG>`` such as ``FAKE_LLM_FAIL_FIRST``)
or per request (header, wins). A gateway need not forward ``x-fake-*`` headers: behind one, set
the process knobs (flags, env, or ``POST /_fake/config``). Per request, in this order: log,
count, delay, key check, fail-first, status, answer.

=========================  ========================  ===================================
header                     flag / env                effect
=========================  ========================  ===================================
``x-fake-status: N``       ``--status`` / STATUS     answer N with the dialect's error
``x-fake-delay-ms: N``     ``--delay-ms``            sleep N ms before answering
``x-fake-chunk-delay-ms``  ``--chunk-delay-ms``      sleep N ms between stream events
``x-fake-cut-after: N``    ``--cut-after``           stream: drop the connection after N
                                                     events (no [DONE] / message_stop)
``x-fake-fail-first: N``   ``--fail-first``          the first N requests of this process
                                                     answer 503 (counter: POST /_fake/reset)
(none)                     ``--require-key KEY``     401 unless ``Authorization: Bearer KEY``
                                                     or ``x-api-key: KEY`` (Gemini:
                                                     ``x-goog-api-key`` or ``?key=``)
(none)                     ``--error-message TEXT``  the message of the dialect's error
                                                     (``status``, ``fail_first``) instead
                                                     of ``fake status N``
``x-fake-flood-bytes: N``  ``--flood-bytes``         answer with N bytes of ``x`` instead
                                                     (status ``status`` or 200): a JSON
                                                     answer ``{"pad": "xxx...`` never
                                                     closed, a stream ``data: xxx...``
                                                     with no event separator
``x-fake-flood-length: 1`` ``--flood-length``        the flood says its ``Content-Length``
                                                     (else it is sent chunked)
``x-fake-flood-block: N``  ``--flood-block``         the flood's bytes per write (default
                                                     1 MiB; small: many small reads), with
                                                     ``chunk_delay_ms`` between writes
``x-fake-reply-words: N``  ``--reply-words``         the reply is N words (``w1 w2 ...``)
                                                     after the prefix, cut to fit the
                                                     request's max_tokens (completion =
                                                     words + 3); streamed a word an event
=========================  ========================  ===================================

Control endpoints (not logged): ``GET|POST /_fake/config`` reads / updates the process knobs
(JSON keys ``status delay_ms chunk_delay_ms cut_after fail_first require_key error_message
flood_bytes flood_length flood_block reply_words answer_header``; ``answer_header`` is
``"Name: value"``, added to JSON chat answers),
``POST /_fake/reset`` zeroes the request counter.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import dataclasses
import hashlib
import json
import os
import re
import signal
import struct
from collections.abc import Awaitable, Callable
from typing import IO, Any

from aiohttp import web

CREATED = 1_767_225_600  # 2026-01-01T00:00:00Z: fixed so answers are reproducible
FINGERPRINT = "fp_fake0001"
CACHED_TOKENS = 2
REASONING_TOKENS = 1
CACHE_CREATION_TOKENS = 4
DEEPSEEK_CACHE_HIT_TOKENS = 3
REPLY_PREFIX = "echo: "
THINKING_TEXT = "Let me think about this request step by step."
EMBEDDING_DIM = 8
MODELS = ("fake-gpt", "fake-claude", "fake-gemini")

ANTHROPIC_ERRORS = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    503: "overloaded_error",
    529: "overloaded_error",
}
OPENAI_ERRORS = {
    401: ("invalid_request_error", "invalid_api_key"),
    404: ("invalid_request_error", None),
    429: ("requests", "rate_limit_exceeded"),
    500: ("server_error", None),
    503: ("server_error", "service_unavailable"),
}
GEMINI_STATUS = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    503: "UNAVAILABLE",
}
KNOB_HEADERS = {
    "status": "x-fake-status",
    "delay_ms": "x-fake-delay-ms",
    "chunk_delay_ms": "x-fake-chunk-delay-ms",
    "cut_after": "x-fake-cut-after",
    "fail_first": "x-fake-fail-first",
    "flood_bytes": "x-fake-flood-bytes",
    "flood_length": "x-fake-flood-length",
    "flood_block": "x-fake-flood-block",
    "reply_words": "x-fake-reply-words",
}
STRING_KNOBS = ("require_key", "error_message", "answer_header")
FLOOD_BLOCK = b"x" * (1024 * 1024)


# ------------------------------------------------------------------------------ token counting


def message_texts(value: Any) -> list[str]:
    """The text of one message's content: a string, or text / tool-result parts of a list."""
    if isinstance(value, str):
        return [value]
    out: list[str] = []
    if isinstance(value, list):
        for part in value:
            if isinstance(part, str):
                out.append(part)
            elif isinstance(part, dict):
                if isinstance(part.get("text"), str):
                    out.append(part["text"])
                elif "content" in part:
                    out += message_texts(part["content"])
                elif isinstance(part.get("output"), str):
                    out.append(part["output"])
    return out


def prompt_texts(body: dict[str, Any], dialect: str) -> list[str]:
    """Every piece of message text of a request, system / instructions included."""
    texts: list[str] = []
    if dialect == "gemini":
        system = body.get("systemInstruction") or body.get("system_instruction") or {}
        texts += message_texts(system.get("parts") if isinstance(system, dict) else None)
        for content in _list(body.get("contents")):
            if isinstance(content, dict):
                texts += message_texts(content.get("parts"))
        return texts
    if dialect == "responses":
        texts += message_texts(body.get("instructions"))
        items = body.get("input")
        if isinstance(items, str):
            return [*texts, items]
        for item in _list(items):
            if isinstance(item, dict):
                if item.get("type") == "function_call_output":
                    texts += message_texts(item.get("output"))
                else:
                    texts += message_texts(item.get("content"))
        return texts
    if dialect == "anthropic":
        texts += message_texts(body.get("system"))
    for message in _list(body.get("messages")):
        if isinstance(message, dict):
            texts += message_texts(message.get("content"))
    return texts


def prompt_tokens(body: dict[str, Any], dialect: str) -> int:
    """7 + characters of all message text // 3 (dialect: openai, responses, anthropic, gemini)."""
    return 7 + sum(len(t) for t in prompt_texts(body, dialect)) // 3


def completion_tokens(reply: str) -> int:
    """Words in the reply + 3 (also for answers that carry a tool call instead of the text)."""
    return len(reply.split()) + 3


def last_user_text(body: dict[str, Any], dialect: str) -> str:
    if dialect == "gemini":
        turns = [c for c in _list(body.get("contents")) if isinstance(c, dict)]
        users = [c for c in turns if c.get("role", "user") == "user"]
        return " ".join(message_texts(users[-1].get("parts"))) if users else ""
    if dialect == "responses":
        items = body.get("input")
        if isinstance(items, str):
            return items
        users = [i for i in _list(items) if isinstance(i, dict) and i.get("role", "user") == "user"]
        users = [i for i in users if i.get("type", "message") == "message"]
        return " ".join(message_texts(users[-1].get("content"))) if users else ""
    users = [
        m for m in _list(body.get("messages")) if isinstance(m, dict) and m.get("role") == "user"
    ]
    return " ".join(message_texts(users[-1].get("content"))) if users else ""


_MAX_FIELDS = {
    "openai": ("max_completion_tokens", "max_tokens"),
    "responses": ("max_output_tokens",),
    "anthropic": ("max_tokens",),
}


def reply_text(body: dict[str, Any], dialect: str, reply_words: int = 0) -> str:
    if reply_words <= 0:
        return REPLY_PREFIX + last_user_text(body, dialect)[:60]
    cap: Any = None
    if dialect == "gemini":
        config = body.get("generationConfig")
        cap = config.get("maxOutputTokens") if isinstance(config, dict) else None
    else:
        for name in _MAX_FIELDS.get(dialect, ()):
            if isinstance(body.get(name), int):
                cap = body[name]
                break
    n = reply_words
    if isinstance(cap, int):  # completion = words + 3, with "echo:" one of the words
        n = max(0, min(n, cap - 4))
    return REPLY_PREFIX + " ".join(f"w{i}" for i in range(1, n + 1))


def words(text: str) -> list[str]:
    """Stream pieces: each word with the whitespace after it, so the pieces join to the text."""
    return re.findall(r"\S+\s*", text) or [text]


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _thirds(text: str) -> list[str]:
    a, b = len(text) // 3, 2 * len(text) // 3
    return [text[:a], text[a:b], text[b:]]


# ------------------------------------------------------------------------------------ knobs


@dataclasses.dataclass
class Knobs:
    status: int = 0
    delay_ms: int = 0
    chunk_delay_ms: int = 0
    cut_after: int = -1  # -1: never cut
    fail_first: int = 0
    require_key: str = ""
    error_message: str = ""
    flood_bytes: int = 0
    flood_length: int = 0
    flood_block: int = 0  # 0: FLOOD_BLOCK
    reply_words: int = 0  # 0: the echo reply
    answer_header: str = ""  # "Name: value" added to a JSON chat answer

    def for_request(self, request: web.Request) -> Knobs:
        """The process knobs, overridden by the request's x-fake-* headers."""
        values = dataclasses.asdict(self)
        for name, header in KNOB_HEADERS.items():
            raw = request.headers.get(header)
            if raw is not None:
                try:
                    values[name] = int(raw)
                except ValueError:
                    raise BadKnob(f"{header} must be an integer, got {raw!r}") from None
        return Knobs(**values)


class BadKnob(Exception):
    pass


@dataclasses.dataclass
class Fake:
    knobs: Knobs
    log: IO[str] | None
    requests_seen: int = 0  # what fail_first counts against; POST /_fake/reset zeroes it
    serial: int = 0  # never reset: ids stay unique for the life of the process

    def next_id(self, prefix: str, size: int = 24) -> str:
        digest = hashlib.sha256(f"{prefix}:{self.serial}".encode()).hexdigest()
        return prefix + digest[:size]


FAKE_KEY = web.AppKey("fake", Fake)


# ------------------------------------------------------------------------------------ HTTP


POST_PATHS = (
    "/v1/chat/completions",
    "/v1/responses",
    "/v1/embeddings",
    "/v1/messages",
    "/v1/messages/count_tokens",
)
GEMINI_PREFIX = "/v1beta/models/"
GEMINI_ACTIONS = ("generateContent", "streamGenerateContent", "countTokens")


def wants_json_object(path: str) -> bool:
    """Whether POST on this path is an endpoint of the fake (its body must be a JSON object)."""
    if path in POST_PATHS:
        return True
    tail = path[len(GEMINI_PREFIX) :] if path.startswith(GEMINI_PREFIX) else ""
    return ":" in tail and tail.rsplit(":", 1)[1] in GEMINI_ACTIONS


def dialect_of(path: str) -> str:
    if path.startswith("/v1/messages"):
        return "anthropic"
    if path.startswith("/v1beta/"):
        return "gemini"
    if path.startswith("/v1/responses"):
        return "responses"
    return "openai"


def error_response(dialect: str, status: int, message: str, fake: Fake) -> web.Response:
    if dialect == "anthropic":
        body: dict[str, Any] = {
            "type": "error",
            "error": {"type": ANTHROPIC_ERRORS.get(status, "api_error"), "message": message},
            "request_id": fake.next_id("req_"),
        }
    elif dialect == "gemini":
        body = {
            "error": {
                "code": status,
                "message": message,
                "status": GEMINI_STATUS.get(status, "UNKNOWN"),
            }
        }
    else:
        etype, code = OPENAI_ERRORS.get(status, ("invalid_request_error", None))
        body = {"error": {"message": message, "type": etype, "param": None, "code": code}}
    return web.json_response(body, status=status)


def authorized(request: web.Request, dialect: str, key: str) -> bool:
    if dialect == "gemini":
        offered = {request.headers.get("x-goog-api-key"), request.query.get("key")}
    else:
        auth = request.headers.get("authorization", "")
        bearer = auth[7:] if auth.lower().startswith("bearer ") else None
        offered = {bearer, request.headers.get("x-api-key")}
    return key in offered


def log_request(fake: Fake, request: web.Request, raw: bytes) -> Any:
    text = raw.decode("utf-8", errors="replace")
    try:
        body: Any = json.loads(text) if text else ""
    except ValueError:
        body = text
    if fake.log is not None:
        entry = {
            "method": request.method,
            "path": request.path,
            "query": dict(request.query),
            "headers": {k.lower(): v for k, v in request.headers.items()},
            "body": body,
        }
        fake.log.write(json.dumps(entry) + "\n")
        fake.log.flush()
    return body


async def handle(request: web.Request) -> web.StreamResponse:
    fake = request.app[FAKE_KEY]
    path = request.path
    if path.startswith("/_fake/"):
        return await control(request, fake)
    raw = await request.read()
    body = log_request(fake, request, raw)
    if request.method in ("GET", "HEAD") and path in ("/", "/health"):
        return web.Response(text="ok")  # probes: no knobs, no key, not counted
    fake.requests_seen += 1
    fake.serial += 1
    dialect = dialect_of(path)
    try:
        knobs = fake.knobs.for_request(request)
    except BadKnob as exc:
        return error_response(dialect, 400, str(exc), fake)
    if knobs.delay_ms > 0:
        await asyncio.sleep(knobs.delay_ms / 1000)
    if knobs.require_key and not authorized(request, dialect, knobs.require_key):
        return error_response(dialect, 401, "invalid or missing API key (fake upstream)", fake)
    if fake.requests_seen <= knobs.fail_first:
        message = f"fake failure {fake.requests_seen} of {knobs.fail_first} (x-fake-fail-first)"
        return error_response(dialect, 503, knobs.error_message or message, fake)
    if knobs.flood_bytes > 0:
        return await flood(request, knobs, isinstance(body, dict) and body.get("stream") is True)
    if knobs.status >= 400:
        message = knobs.error_message or f"fake status {knobs.status}"
        return error_response(dialect, knobs.status, message, fake)
    if request.method == "GET" and (path == "/v1/models" or path.startswith("/v1/models/")):
        return list_models(request, path)
    if request.method == "GET" and path == "/v1beta/models":
        return web.json_response({"models": [gemini_model(m) for m in MODELS]})
    if request.method == "GET" and path.startswith(GEMINI_PREFIX) and ":" not in path:
        return web.json_response(gemini_model(path[len(GEMINI_PREFIX) :]))  # any id exists
    if request.method == "POST" and wants_json_object(path):
        if not isinstance(body, dict):
            return error_response(dialect, 400, "request body must be a JSON object", fake)
        if path == "/v1/chat/completions":
            answer = await chat_completions(request, fake, knobs, body)
            if knobs.answer_header and not answer.prepared:
                name, _, value = knobs.answer_header.partition(":")
                answer.headers[name.strip()] = value.strip()
            return answer
        if path == "/v1/responses":
            return await responses(request, fake, knobs, body)
        if path == "/v1/embeddings":
            return embeddings(fake, body)
        if path == "/v1/messages":
            return await messages(request, fake, knobs, body)
        if path == "/v1/messages/count_tokens":
            return web.json_response({"input_tokens": prompt_tokens(body, "anthropic")})
        model, action = path[len(GEMINI_PREFIX) :].rsplit(":", 1)
        return await gemini(request, fake, knobs, body, model, action)
    return error_response("openai", 404, f"Invalid URL ({request.method} {path})", fake)


def gemini_model(name: str) -> dict[str, Any]:
    """One model in Gemini's ``models`` shape."""
    return {
        "name": f"models/{name}",
        "displayName": name.replace("-", " ").title(),
        "description": f"the fake's {name}",
        "inputTokenLimit": 32768,
        "outputTokenLimit": 8192,
        "supportedGenerationMethods": ["generateContent", "streamGenerateContent"],
    }


async def control(request: web.Request, fake: Fake) -> web.Response:
    if request.path == "/_fake/reset" and request.method == "POST":
        fake.requests_seen = 0
        return web.json_response({"requests_seen": 0})
    if request.path == "/_fake/config":
        if request.method == "POST":
            update = await request.json()
            fields = {f.name for f in dataclasses.fields(Knobs)}
            unknown = set(update) - fields
            if unknown:
                return web.json_response({"error": f"unknown knobs {sorted(unknown)}"}, status=400)
            try:
                typed: dict[str, Any] = {
                    k: str(v) if k in STRING_KNOBS else int(v) for k, v in update.items()
                }
            except (TypeError, ValueError) as exc:
                return web.json_response({"error": f"bad knob value: {exc}"}, status=400)
            fake.knobs = dataclasses.replace(fake.knobs, **typed)
        state = dataclasses.asdict(fake.knobs) | {"requests_seen": fake.requests_seen}
        return web.json_response(state)
    return web.json_response({"error": "no such control endpoint"}, status=404)


def list_models(request: web.Request, path: str) -> web.Response:
    anthropic = "anthropic-version" in request.headers
    if anthropic:
        data: list[dict[str, Any]] = [
            {
                "type": "model",
                "id": m,
                "display_name": m,
                "created_at": "2026-01-01T00:00:00Z",
            }
            for m in MODELS
        ]
    else:
        data = [
            {"id": m, "object": "model", "created": CREATED, "owned_by": "fake"} for m in MODELS
        ]
    wanted = path[len("/v1/models/") :] if path.startswith("/v1/models/") else ""
    if wanted:
        for item in data:
            if item["id"] == wanted:
                return web.json_response(item)
        item = dict(data[0], id=wanted)  # any model id exists on the fake
        return web.json_response(item)
    if anthropic:
        return web.json_response(
            {"data": data, "has_more": False, "first_id": MODELS[0], "last_id": MODELS[-1]}
        )
    return web.json_response({"object": "list", "data": data})


async def flood(request: web.Request, knobs: Knobs, stream: bool) -> web.StreamResponse:
    """``flood_bytes`` bytes, fast: a JSON answer that never ends, or an SSE stream with no
    event separator. Stops quietly when the client hangs up."""
    head = b"data: " if stream else b'{"pad": "'
    response = web.StreamResponse(
        status=knobs.status or 200,
        headers={"content-type": "text/event-stream" if stream else "application/json"},
    )
    if knobs.flood_length:
        response.content_length = knobs.flood_bytes
    left = knobs.flood_bytes
    full = FLOOD_BLOCK[: knobs.flood_block] if knobs.flood_block > 0 else FLOOD_BLOCK
    try:
        await response.prepare(request)
        await response.write(head[:left])
        left -= len(head[:left])
        while left > 0:
            block = full if left >= len(full) else full[:left]
            await response.write(block)
            left -= len(block)
            if knobs.chunk_delay_ms > 0:
                await asyncio.sleep(knobs.chunk_delay_ms / 1000)
        await response.write_eof()
    except (ConnectionError, RuntimeError):
        pass  # the gateway stopped reading: what it should do
    return response


class EventStream:
    """Writes SSE events with the per-request chunk delay and cut-after knobs."""

    def __init__(self, request: web.Request, knobs: Knobs) -> None:
        self.request = request
        self.knobs = knobs
        self.sent = 0
        self.cut = False
        self.response = web.StreamResponse(
            headers={"content-type": "text/event-stream", "cache-control": "no-cache"}
        )

    async def start(self) -> None:
        await self.response.prepare(self.request)

    async def send(self, data: str, event: str | None = None) -> None:
        if self.cut:
            return
        if self.knobs.cut_after >= 0 and self.sent >= self.knobs.cut_after:
            self.cut = True
            transport = self.request.transport
            if transport is not None:
                transport.close()  # flushes what was written, then drops the connection
            return
        if self.sent and self.knobs.chunk_delay_ms > 0:
            await asyncio.sleep(self.knobs.chunk_delay_ms / 1000)
        frame = (f"event: {event}\n" if event else "") + f"data: {data}\n\n"
        await self.response.write(frame.encode())
        self.sent += 1

    async def json(self, obj: Any, event: str | None = None) -> None:
        await self.send(json.dumps(obj, separators=(",", ":")), event)

    async def finish(self) -> web.StreamResponse:
        if not self.cut:
            await self.response.write_eof()
        return self.response


# --------------------------------------------------------------------------- OpenAI chat


def offered_tool(body: dict[str, Any], dialect: str) -> str | None:
    """The name of the first offered function tool (with ``FAKE_LLM_TOOL`` set: the first whose
    name ends with it, as agents prefix MCP tool names), or None."""
    wanted = os.environ.get("FAKE_LLM_TOOL", "")
    for tool in _list(body.get("tools")):
        if not isinstance(tool, dict):
            continue
        if dialect == "openai" and isinstance(tool.get("function"), dict):
            name = tool["function"].get("name")
        elif dialect == "gemini":
            name = gemini_function(tool, wanted)
        elif dialect == "responses" and tool.get("type") == "namespace":
            name = namespaced_tool(tool, wanted)
        elif dialect == "responses" and tool.get("type") != "function":
            name = None
        else:
            name = tool.get("name")
        if isinstance(name, str) and name and (not wanted or name.endswith(wanted)):
            return name
    return None


def namespaced_tool(tool: dict[str, Any], wanted: str) -> str | None:
    """The first function of a Responses ``namespace`` tool (Codex offers MCP servers' tools
    so), as ``<namespace>.<name>``; with ``wanted``: the first whose name ends with it."""
    for inner in _list(tool.get("tools")):
        if not (isinstance(inner, dict) and inner.get("type") == "function"):
            continue
        name = inner.get("name")
        if isinstance(name, str) and name and name.endswith(wanted):
            return f"{tool.get('name')}.{name}"
    return None


def gemini_function(tool: dict[str, Any], wanted: str) -> str | None:
    """The first of a Gemini tool's ``functionDeclarations``; with ``wanted``: the first
    whose name ends with it."""
    for decl in _list(tool.get("functionDeclarations") or tool.get("function_declarations")):
        name = decl.get("name") if isinstance(decl, dict) else None
        if isinstance(name, str) and name and name.endswith(wanted):
            return name
    return None


def has_tool_result(body: dict[str, Any], dialect: str) -> bool:
    if dialect == "openai":
        return any(
            isinstance(m, dict) and m.get("role") == "tool" for m in _list(body.get("messages"))
        )
    if dialect == "responses":
        items = _list(body.get("input"))
        return any(isinstance(i, dict) and i.get("type") == "function_call_output" for i in items)
    if dialect == "gemini":
        parts = [
            p
            for c in _list(body.get("contents"))
            if isinstance(c, dict)
            for p in _list(c.get("parts"))
        ]
        return any(isinstance(p, dict) and "functionResponse" in p for p in parts)
    blocks = [
        b
        for m in _list(body.get("messages"))
        if isinstance(m, dict)
        for b in _list(m.get("content"))
    ]
    return any(isinstance(b, dict) and b.get("type") == "tool_result" for b in blocks)


def tool_call(body: dict[str, Any], dialect: str) -> tuple[str, str] | None:
    """(tool name, arguments JSON) when the fake should call a tool, else None."""
    name = offered_tool(body, dialect)
    if name is None or has_tool_result(body, dialect):
        return None
    args = os.environ.get("FAKE_LLM_TOOL_ARGS") or json.dumps(
        {"text": last_user_text(body, dialect)[:60]}
    )
    return name, args


def openai_usage(prompt: int, completion: int) -> dict[str, Any]:
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": CACHED_TOKENS, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": REASONING_TOKENS,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }


def deepseek_usage(prompt: int, completion: int) -> dict[str, Any]:
    """DeepSeek's usage object: cache hits and misses at the top level."""
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_cache_hit_tokens": DEEPSEEK_CACHE_HIT_TOKENS,
        "prompt_cache_miss_tokens": prompt - DEEPSEEK_CACHE_HIT_TOKENS,
        "completion_tokens_details": {"reasoning_tokens": REASONING_TOKENS},
    }


async def chat_completions(
    request: web.Request, fake: Fake, knobs: Knobs, body: dict[str, Any]
) -> web.StreamResponse:
    model = str(body.get("model") or "fake-gpt")
    reply = reply_text(body, "openai", knobs.reply_words)
    counted = (prompt_tokens(body, "openai"), completion_tokens(reply))
    usage = deepseek_usage(*counted) if model.startswith("deepseek-") else openai_usage(*counted)
    call = tool_call(body, "openai")
    cid = fake.next_id("chatcmpl-", 29)
    call_id = fake.next_id("call_", 24)
    base = {"id": cid, "created": CREATED, "model": model, "system_fingerprint": FINGERPRINT}
    if not body.get("stream"):
        message: dict[str, Any] = {"role": "assistant", "content": reply, "refusal": None}
        message["annotations"] = []
        if call:
            message["content"] = None
            message["tool_calls"] = [
                {
                    "id": call_id,
                    "type": "function",
                    "function": {"name": call[0], "arguments": call[1]},
                }
            ]
        choice = {
            "index": 0,
            "message": message,
            "logprobs": None,
            "finish_reason": "tool_calls" if call else "stop",
        }
        return web.json_response(
            {
                **base,
                "object": "chat.completion",
                "choices": [choice],
                "usage": usage,
                "service_tier": "default",
            },
            headers={"x-request-id": fake.next_id("req_")},
        )
    options = body.get("stream_options")
    include_usage = isinstance(options, dict) and options.get("include_usage") is True
    stream = EventStream(request, knobs)
    await stream.start()

    def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        out = {**base, "object": "chat.completion.chunk", "choices": [choice]}
        return out | ({"usage": None} if include_usage else {})

    if call:
        await stream.json(chunk({"role": "assistant", "content": None, "refusal": None}))
        start = {
            "index": 0,
            "id": call_id,
            "type": "function",
            "function": {"name": call[0], "arguments": ""},
        }
        await stream.json(chunk({"tool_calls": [start]}))
        for fragment in _thirds(call[1]):
            await stream.json(
                chunk({"tool_calls": [{"index": 0, "function": {"arguments": fragment}}]})
            )
        await stream.json(chunk({}, "tool_calls"))
    else:
        await stream.json(chunk({"role": "assistant", "content": "", "refusal": None}))
        for piece in words(reply):
            await stream.json(chunk({"content": piece}))
        await stream.json(chunk({}, "stop"))
    if include_usage:
        await stream.json(
            {**base, "object": "chat.completion.chunk", "choices": [], "usage": usage}
        )
    await stream.send("[DONE]")
    return await stream.finish()


# ------------------------------------------------------------------------ OpenAI responses


async def responses(
    request: web.Request, fake: Fake, knobs: Knobs, body: dict[str, Any]
) -> web.StreamResponse:
    model = str(body.get("model") or "fake-gpt")
    reply = reply_text(body, "responses", knobs.reply_words)
    prompt, completion = prompt_tokens(body, "responses"), completion_tokens(reply)
    usage = {
        "input_tokens": prompt,
        "input_tokens_details": {"cached_tokens": CACHED_TOKENS},
        "output_tokens": completion,
        "output_tokens_details": {"reasoning_tokens": REASONING_TOKENS},
        "total_tokens": prompt + completion,
    }
    call = tool_call(body, "responses")
    rid = fake.next_id("resp_", 32)
    if call:
        namespace, _, name = call[0].rpartition(".")
        item: dict[str, Any] = {
            "id": fake.next_id("fc_", 32),
            "type": "function_call",
            "status": "completed",
            "call_id": fake.next_id("call_", 24),
            "name": name,
            "arguments": call[1],
        }
        if namespace:
            item["namespace"] = namespace
    else:
        part = {"type": "output_text", "text": reply, "annotations": [], "logprobs": []}
        item = {
            "id": fake.next_id("msg_", 32),
            "type": "message",
            "status": "completed",
            "role": "assistant",
            "content": [part],
        }

    def response(status: str, output: list[Any], with_usage: bool) -> dict[str, Any]:
        return {
            "id": rid,
            "object": "response",
            "created_at": CREATED,
            "status": status,
            "error": None,
            "incomplete_details": None,
            "instructions": body.get("instructions"),
            "max_output_tokens": body.get("max_output_tokens"),
            "model": model,
            "output": output,
            "parallel_tool_calls": True,
            "previous_response_id": body.get("previous_response_id"),
            "reasoning": {"effort": None, "summary": None},
            "store": body.get("store", True),
            "temperature": 1.0,
            "text": {"format": {"type": "text"}},
            "tool_choice": body.get("tool_choice", "auto"),
            "tools": _list(body.get("tools")),
            "top_p": 1.0,
            "truncation": "disabled",
            "usage": usage if with_usage else None,
            "user": None,
            "metadata": {},
        }

    if not body.get("stream"):
        return web.json_response(
            response("completed", [item], True), headers={"x-request-id": fake.next_id("req_")}
        )
    stream = EventStream(request, knobs)
    await stream.start()
    seq = 0

    async def event(kind: str, **fields: Any) -> None:
        nonlocal seq
        await stream.json({"type": kind, "sequence_number": seq, **fields}, kind)
        seq += 1

    await event("response.created", response=response("in_progress", [], False))
    await event("response.in_progress", response=response("in_progress", [], False))
    where = {"item_id": item["id"], "output_index": 0}
    if call:
        added = dict(item, status="in_progress", arguments="")
        await event("response.output_item.added", output_index=0, item=added)
        for fragment in _thirds(call[1]):
            await event("response.function_call_arguments.delta", **where, delta=fragment)
        await event("response.function_call_arguments.done", **where, name=name, arguments=call[1])
    else:
        added = dict(item, status="in_progress", content=[])
        await event("response.output_item.added", output_index=0, item=added)
        empty = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
        await event("response.content_part.added", **where, content_index=0, part=empty)
        for piece in words(reply):
            await event(
                "response.output_text.delta", **where, content_index=0, delta=piece, logprobs=[]
            )
        await event("response.output_text.done", **where, content_index=0, text=reply, logprobs=[])
        await event("response.content_part.done", **where, content_index=0, part=item["content"][0])
    await event("response.output_item.done", output_index=0, item=item)
    await event("response.completed", response=response("completed", [item], True))
    return await stream.finish()


def embeddings(fake: Fake, body: dict[str, Any]) -> web.Response:
    raw = body.get("input")
    single = isinstance(raw, str) or (isinstance(raw, list) and raw and isinstance(raw[0], int))
    inputs = [raw] if single else _list(raw)
    dims = body["dimensions"] if isinstance(body.get("dimensions"), int) else EMBEDDING_DIM
    as_base64 = body.get("encoding_format") == "base64"
    data = []
    for index, value in enumerate(inputs):
        vector = embedding(json.dumps(value), dims)
        packed = base64.b64encode(struct.pack(f"<{dims}f", *vector)).decode()
        data.append(
            {"object": "embedding", "index": index, "embedding": packed if as_base64 else vector}
        )
    texts = [v if isinstance(v, str) else json.dumps(v) for v in inputs]
    tokens = 7 + sum(len(t) for t in texts) // 3
    return web.json_response(
        {
            "object": "list",
            "data": data,
            "model": str(body.get("model") or "fake-embedding"),
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }
    )


def embedding(text: str, dims: int) -> list[float]:
    """A deterministic unit-ish vector in [-1, 1] derived from the text's hash."""
    out: list[float] = []
    counter = 0
    while len(out) < dims and counter < dims:
        digest = hashlib.sha256(f"{counter}:{text}".encode()).digest()
        out += [(b - 127.5) / 127.5 for b in digest[: dims - len(out)]]
        counter += 1
    # float32 round trip so JSON and base64 answers carry the same numbers
    return [struct.unpack("<f", struct.pack("<f", v))[0] for v in out]


# ---------------------------------------------------------------------------- Anthropic


def thinking_requested(body: dict[str, Any]) -> bool:
    thinking = body.get("thinking")
    return isinstance(thinking, dict) and thinking.get("type") in ("enabled", "adaptive")


async def messages(
    request: web.Request, fake: Fake, knobs: Knobs, body: dict[str, Any]
) -> web.StreamResponse:
    model = str(body.get("model") or "fake-claude")
    reply = reply_text(body, "anthropic", knobs.reply_words)
    prompt, completion = prompt_tokens(body, "anthropic"), completion_tokens(reply)
    call = tool_call(body, "anthropic")
    mid = fake.next_id("msg_", 24)
    tool_id = fake.next_id("toolu_", 24)
    signature = fake.next_id("sig", 40)
    blocks: list[dict[str, Any]] = []
    if thinking_requested(body):
        blocks.append({"type": "thinking", "thinking": THINKING_TEXT, "signature": signature})
    if call:
        blocks.append(
            {"type": "tool_use", "id": tool_id, "name": call[0], "input": json.loads(call[1])}
        )
    else:
        blocks.append({"type": "text", "text": reply})
    stop_reason = "tool_use" if call else "end_turn"
    usage = {
        "input_tokens": prompt,
        "cache_creation_input_tokens": CACHE_CREATION_TOKENS,
        "cache_read_input_tokens": CACHED_TOKENS,
        "output_tokens": completion,
    }
    message: dict[str, Any] = {
        "id": mid,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": blocks,
        "stop_reason": stop_reason,
        "stop_sequence": None,
        "usage": usage,
    }
    headers = {"request-id": fake.next_id("req_")}
    if not body.get("stream"):
        return web.json_response(message, headers=headers)
    stream = EventStream(request, knobs)
    stream.response.headers.update(headers)
    await stream.start()

    async def event(kind: str, **fields: Any) -> None:
        await stream.json({"type": kind, **fields}, kind)

    start = dict(message, content=[], stop_reason=None, usage=dict(usage, output_tokens=1))
    await event("message_start", message=start)
    for index, block in enumerate(blocks):
        if block["type"] == "thinking":
            await event(
                "content_block_start",
                index=index,
                content_block={"type": "thinking", "thinking": "", "signature": ""},
            )
            deltas = [{"type": "thinking_delta", "thinking": p} for p in words(THINKING_TEXT)]
            deltas.append({"type": "signature_delta", "signature": signature})
        elif block["type"] == "tool_use":
            empty = dict(block, input={})
            await event("content_block_start", index=index, content_block=empty)
            fragments = _thirds(json.dumps(block["input"]))
            deltas = [{"type": "input_json_delta", "partial_json": f} for f in fragments]
        else:
            empty = {"type": "text", "text": ""}
            await event("content_block_start", index=index, content_block=empty)
            deltas = [{"type": "text_delta", "text": p} for p in words(reply)]
        if index == 0:
            await event("ping")
        for delta in deltas:
            await event("content_block_delta", index=index, delta=delta)
        await event("content_block_stop", index=index)
    await event(
        "message_delta",
        delta={"stop_reason": stop_reason, "stop_sequence": None},
        usage={"output_tokens": completion},
    )
    await event("message_stop")
    return await stream.finish()


# ------------------------------------------------------------------------------- Gemini


async def gemini(
    request: web.Request,
    fake: Fake,
    knobs: Knobs,
    body: dict[str, Any],
    model: str,
    action: str,
) -> web.StreamResponse:
    prompt = prompt_tokens(body, "gemini")
    if action == "countTokens":
        return web.json_response({"totalTokens": prompt})
    reply = reply_text(body, "gemini", knobs.reply_words)
    completion = completion_tokens(reply)
    usage = {
        "promptTokenCount": prompt,
        "candidatesTokenCount": completion,
        "totalTokenCount": prompt + completion + REASONING_TOKENS,
        "cachedContentTokenCount": CACHED_TOKENS,
        "thoughtsTokenCount": REASONING_TOKENS,
    }
    call = tool_call(body, "gemini")
    response_id = fake.next_id("", 22)
    if call:
        pieces: list[dict[str, Any]] = [
            {"functionCall": {"name": call[0], "args": json.loads(call[1])}}
        ]
    else:
        pieces = [{"text": p} for p in words(reply)]

    def chunk(parts: list[dict[str, Any]], last: bool) -> dict[str, Any]:
        candidate: dict[str, Any] = {"content": {"parts": parts, "role": "model"}, "index": 0}
        out: dict[str, Any] = {"candidates": [candidate]}
        if last:
            candidate["finishReason"] = "STOP"
            out["usageMetadata"] = usage
        return out | {"modelVersion": model, "responseId": response_id}

    if action == "generateContent":
        parts = pieces if call else [{"text": reply}]
        return web.json_response(chunk(parts, True))
    chunks = [chunk([p], i == len(pieces) - 1) for i, p in enumerate(pieces)]
    if request.query.get("alt") != "sse":
        return web.json_response(chunks)
    stream = EventStream(request, knobs)
    await stream.start()
    for c in chunks:
        await stream.json(c)
    return await stream.finish()


# --------------------------------------------------------------------------------- main


@web.middleware
async def compress_json(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """JSON answers are compressed when the request accepts gzip or deflate, as real providers'
    are (aiohttp's client asks for gzip unless told otherwise); streams are not."""
    response = await handler(request)
    if isinstance(response, web.Response) and response.content_type == "application/json":
        response.enable_compression()  # picks gzip/deflate from Accept-Encoding, or none
    return response


def create_fake_app(knobs: Knobs, log: IO[str] | None) -> web.Application:
    app = web.Application(client_max_size=64 * 1024 * 1024, middlewares=[compress_json])
    app[FAKE_KEY] = Fake(knobs=knobs, log=log)
    app.router.add_route("*", "/{tail:.*}", handle)
    return app


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(f"FAKE_LLM_{name}", "")
    return int(raw) if raw.strip() else default


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--host", default=os.environ.get("FAKE_LLM_HOST", "127.0.0.1"))
    ap.add_argument("--port", type=int, default=_env_int("PORT", 0), help="0: pick a free port")
    ap.add_argument("--log", default=os.environ.get("FAKE_LLM_LOG", ""), help="JSONL request log")
    knob = ap.add_argument_group("knobs (env FAKE_LLM_<NAME>; x-fake-* request headers win)")
    knob.add_argument(
        "--status",
        type=int,
        default=_env_int("STATUS", 0),
        help="answer with this error status, in the dialect's error shape (0: off)",
    )
    knob.add_argument(
        "--delay-ms", type=int, default=_env_int("DELAY_MS", 0), help="sleep before answering"
    )
    knob.add_argument(
        "--chunk-delay-ms",
        type=int,
        default=_env_int("CHUNK_DELAY_MS", 0),
        help="between stream events",
    )
    knob.add_argument(
        "--cut-after",
        type=int,
        default=_env_int("CUT_AFTER", -1),
        help="drop streams after N events (-1: never)",
    )
    knob.add_argument(
        "--fail-first",
        type=int,
        default=_env_int("FAIL_FIRST", 0),
        help="the first N requests answer 503",
    )
    knob.add_argument(
        "--error-message",
        default=os.environ.get("FAKE_LLM_ERROR_MESSAGE", ""),
        help="the message of error answers (default: fake status N)",
    )
    knob.add_argument(
        "--flood-bytes",
        type=int,
        default=_env_int("FLOOD_BYTES", 0),
        help="answer with this many bytes and no end (0: off)",
    )
    knob.add_argument(
        "--flood-length",
        type=int,
        default=_env_int("FLOOD_LENGTH", 0),
        help="1: the flood says its Content-Length",
    )
    knob.add_argument(
        "--flood-block",
        type=int,
        default=_env_int("FLOOD_BLOCK", 0),
        help="the flood's bytes per write (0: 1 MiB)",
    )
    knob.add_argument(
        "--reply-words",
        type=int,
        default=_env_int("REPLY_WORDS", 0),
        help="the reply is this many words, cut to the request's max_tokens (0: the echo)",
    )
    knob.add_argument(
        "--answer-header",
        default=os.environ.get("FAKE_LLM_ANSWER_HEADER", ""),
        help='"Name: value" added to JSON chat answers',
    )
    knob.add_argument(
        "--require-key",
        default=os.environ.get("FAKE_LLM_REQUIRE_KEY", ""),
        help="401 unless the request carries this key",
    )
    return ap.parse_args(argv)


async def serve(args: argparse.Namespace, log: IO[str] | None) -> None:
    app = create_fake_app(
        Knobs(**{f.name: getattr(args, f.name) for f in dataclasses.fields(Knobs)}), log
    )
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, args.host, args.port)
    await site.start()
    port = runner.addresses[0][1]
    print(f"LISTENING {port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    log = open(args.log, "a", encoding="utf-8") if args.log else None  # noqa: SIM115
    try:
        asyncio.run(serve(args, log))
    finally:
        if log is not None:
            log.close()


if __name__ == "__main__":
    main()
