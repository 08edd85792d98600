"""ACP ``session/update`` notifications as the SSE events of a turn, the tail drain, and the
transcript of a replayed session.

An SSE frame (:func:`agw.sse.frame`) is ``event: <name>\\ndata: <json>\\n\\n``; the JSON
object has the fields ``session_id``, ``request_id``, ``text``, ``stop_reason``, ``message``,
``data``, each omitted when empty. Mapping (``params.update.sessionUpdate``):

=============================  =====================  =============================================
ACP update                     event                  payload
=============================  =====================  =============================================
agent_message_chunk (text)     ``delta``              ``text`` (empty text dropped)
agent_message_chunk (other)    ``content``            ``data`` = the content block
agent_thought_chunk            ``reasoning``          ``text`` (``data`` = the block if not text)
plan                           ``plan``               ``data`` = the update
tool_call, tool_call_update    ``tool_call``          ``data``
usage_update                   ``usage``              ``data``
available_commands_update      ``available_commands`` ``data``
session_info_update            ``session_info``       ``data``
current_mode_update            ``mode``               ``data``
config_option_update           ``config_options``     ``data``
user_message_chunk, unknown    (dropped)
=============================  =====================  =============================================
"""

from __future__ import annotations

import asyncio
import collections
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from agw import sse
from agw.types import JsonObj

DRAIN_QUIET_S = 0.25  # the tail ends after this long without an update...
DRAIN_CAP_S = 2.0  # ...or this long after the prompt's result, whichever comes first

_DATA_EVENTS = {
    "plan": "plan",
    "tool_call": "tool_call",
    "tool_call_update": "tool_call",
    "usage_update": "usage",
    "available_commands_update": "available_commands",
    "session_info_update": "session_info",
    "current_mode_update": "mode",
    "config_option_update": "config_options",
}
_CHUNK_ROLES = {
    "user_message_chunk": "user",
    "agent_message_chunk": "assistant",
    "agent_thought_chunk": "reasoning",
}


@dataclass(frozen=True, slots=True)
class Event:
    """One SSE event of a turn."""

    name: str
    payload: JsonObj

    def frame(self) -> bytes:
        """The event as :func:`agw.sse.frame` writes it, its empty fields left out."""
        body = {k: v for k, v in self.payload.items() if v not in (None, "", {}, [])}
        return sse.frame(json.dumps(body, separators=(",", ":"), ensure_ascii=False), self.name)


def chunk_text(content: Any) -> str | None:
    """The text of a chunk's content (a text block or a bare string); None if not text."""
    if isinstance(content, str):
        return content
    if isinstance(content, dict) and content.get("type", "text") == "text":
        text = content.get("text")
        if isinstance(text, str):
            return text
    return None


def update_of(params: Any, session_id: str = "") -> JsonObj | None:
    """The update object of ``session/update`` params; None when malformed or (``session_id``
    given) of another session."""
    if not isinstance(params, dict):
        return None
    sid = params.get("sessionId")
    if session_id and isinstance(sid, str) and sid and sid != session_id:
        return None
    update = params.get("update")
    if not isinstance(update, dict) or not isinstance(update.get("sessionUpdate"), str):
        return None
    return update


def map_update(update: JsonObj) -> Event | None:
    """The SSE event of one ACP update, None when it is not shown in a live turn."""
    kind = update["sessionUpdate"]
    if kind in ("agent_message_chunk", "agent_thought_chunk"):
        content = update.get("content")
        text = chunk_text(content)
        if kind == "agent_message_chunk":
            if text is not None:
                return Event("delta", {"text": text}) if text else None
            return Event("content", {"data": content}) if content is not None else None
        if text is not None:
            return Event("reasoning", {"text": text}) if text else None
        return Event("reasoning", {"data": content}) if content is not None else None
    name = _DATA_EVENTS.get(kind)
    if name is None:
        return None
    return Event(name, {"data": update})


QUEUE_EVENTS = 1024  # a turn's queued events: beyond this the agent waits (backpressure)...
QUEUE_BYTES = 4 * 1024 * 1024  # ...or beyond this many bytes of rendered frames


class UpdateQueue:
    """A turn's subscription: the updates of one session in arrival order, plus the events the
    turn itself interleaves (permission requests), for one consumer.

    Bounded: while :data:`QUEUE_EVENTS` events or :data:`QUEUE_BYTES` bytes of their frames wait
    for a slow client, :meth:`on_update` waits too, and with it the connection's read loop, so
    the agent's updates stay in its pipe (the agent blocks on its own writes). :meth:`close`
    (the turn ended, or its client left) drops what waits and lets the read loop go on."""

    def __init__(
        self, session_id: str, *, max_events: int = QUEUE_EVENTS, max_bytes: int = QUEUE_BYTES
    ) -> None:
        self.session_id = session_id
        self.max_events = max_events
        self.max_bytes = max_bytes
        self._items: collections.deque[tuple[Event, bytes]] = collections.deque()
        self._bytes = 0
        self._ready = asyncio.Event()  # something to get
        self._room = asyncio.Event()  # below both bounds
        self._room.set()
        self.closed = False
        self.waited = 0  # how many times the agent was held back (for tests and logs)

    @property
    def size(self) -> tuple[int, int]:
        """(events, bytes) waiting."""
        return len(self._items), self._bytes

    async def on_update(self, params: JsonObj) -> None:
        """The connection's :data:`UpdateHandler`: waits while the queue is full."""
        update = update_of(params, self.session_id)
        if update is None:
            return
        event = map_update(update)
        if event is None:
            return
        if not self._room.is_set() and not self.closed:
            self.waited += 1
            await self._room.wait()
        self._push(event)

    def put(self, event: Event) -> None:
        """An event of the turn's own (never waits; a permission request is one per agent
        request, which the agent is waiting on)."""
        self._push(event)

    def _push(self, event: Event) -> None:
        if self.closed:
            return
        frame = event.frame()
        self._items.append((event, frame))
        self._bytes += len(frame)
        self._ready.set()
        if len(self._items) >= self.max_events or self._bytes >= self.max_bytes:
            self._room.clear()

    def _pop(self) -> tuple[Event, bytes]:
        event, frame = self._items.popleft()
        self._bytes -= len(frame)
        if not self._items:
            self._ready.clear()
        if len(self._items) < self.max_events and self._bytes < self.max_bytes:
            self._room.set()
        return event, frame

    def close(self) -> None:
        """Drop what waits and everything that comes; a waiting :meth:`on_update` returns."""
        self.closed = True
        self._items.clear()
        self._bytes = 0
        self._ready.clear()
        self._room.set()

    def get_nowait(self) -> tuple[Event, bytes] | None:
        return self._pop() if self._items else None

    async def get(self) -> tuple[Event, bytes]:
        while not self._items:
            await self._ready.wait()
        return self._pop()

    async def drain(
        self,
        emit: Callable[[Event, bytes], Any],
        *,
        quiet_s: float = DRAIN_QUIET_S,
        cap_s: float = DRAIN_CAP_S,
    ) -> None:
        """Forward what arrives until ``quiet_s`` pass with nothing, at most ``cap_s`` in all:
        agents send tail chunks after the prompt's result."""
        deadline = time.monotonic() + cap_s
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            try:
                event, frame = await asyncio.wait_for(self.get(), min(quiet_s, left))
            except TimeoutError:
                return
            await emit(event, frame)


@dataclass(slots=True)
class Transcript:
    """The messages of a replayed session (``session/load``): user, assistant and reasoning
    text, consecutive chunks of one role joined."""

    session_id: str = ""
    messages: list[JsonObj] = field(default_factory=list)
    updates: int = 0

    async def on_update(self, params: JsonObj) -> None:
        update = update_of(params, self.session_id)
        if update is None:
            return
        self.updates += 1
        role = _CHUNK_ROLES.get(update["sessionUpdate"])
        if role is None:
            return
        text = chunk_text(update.get("content"))
        if not text:
            return
        if self.messages and self.messages[-1]["role"] == role:
            self.messages[-1]["text"] += text
        else:
            self.messages.append({"role": role, "text": text})
