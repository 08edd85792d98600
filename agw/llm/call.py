"""What one LLM request has learned on its way: the plane, the attempts and the relays fill a
:class:`Call`, and the plane turns it into the request's usage event."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from agw.clock import now_ms
from agw.llm.content import Completion
from agw.llm.observe import Observer
from agw.llm.pricing import Price
from agw.llm.providers import Key
from agw.llm.routing import Target
from agw.policy.limit_types import Charge
from agw.policy.limits import RouteLimits
from agw.request import Request
from agw.types import JsonObj
from agw.usage.events import CostSource

# A client operation -> the wire format the client speaks (the rest: models, embeddings,
# count_tokens, are not chat-style).
CLIENT_WIRE = {
    "chat_completions": "chat",
    "responses": "responses",
    "messages": "messages",
    "generate_content": "gemini",
}


@dataclass(slots=True)
class Call:
    """What one request has learned so far: becomes the usage event."""

    req: Request
    operation: str = ""
    path_model: str = ""  # gemini: the model named in the URL (models/{model}:...)
    started_ms: int = field(default_factory=now_ms)
    t0: int = field(default_factory=time.perf_counter_ns)
    upstream_ns: int = 0  # time spent waiting on the provider (the rest is the gateway's)
    first_byte_ns: int = 0  # streams: when the first event went to the client
    completion: Completion | None = None  # the answer's text, only with --trace-content
    stream: bool = False
    target: Target | None = None
    key: Key | None = None
    observer: Observer | None = None
    body: JsonObj | None = None  # kept for the estimate when the provider reports none
    raw: bytes = b""  # the client's request body as it came
    request_tools: list[str] = field(default_factory=list)
    error_type: str | None = None
    status: int = 0
    finalized: bool = True
    recorded: bool = False  # its usage row was emitted (once: just before the answer went out)
    client_wants_usage: bool = False  # chat clients: stream_options.include_usage
    renamed: dict[str, str] = field(default_factory=dict)  # upstream tool name -> the client's
    answer: bytes = b""  # the JSON answer the client got
    relayed: list[bytes] | None = None  # the stream's pieces the client got (RELAYED_KEPT)
    relayed_size: int = 0  # bytes of the stream the client got, all of them
    cut: bool = False  # a limit ended the stream (on_exceed: cut)
    charges: list[Charge] | None = None  # the limits that apply, admitted before the forward
    limits: RouteLimits | None = None  # the route's limits (what is known before matching)
    price_of: Target | None = None  # the target whose model's price is known: price, source
    price: Price | None = None
    cost_source: CostSource | None = None
