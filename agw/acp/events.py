"""ACP ``session/update`` notifications as the SSE events of a turn, the tail drain, and the
transcript of a replayed session.

An SSE frame is ``event: <name>\\ndata: <json>\\n\\n``; the JSON object has the fields
``session_id``, ``request_id``, ``text``, ``stop_reason``, ``message``, ``data``, each omitted
when empty. Mapping (``params.update.sessionUpdate``):

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
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

JsonObj = dict[str, Any]

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
        return sse_frame(self.name, self.payload)


def sse_frame(name: str, payload: JsonObj) -> bytes:
    body = {k: v for k, v in payload.items() if v not in (None, "", {}, [])}
    data = json.dumps(body, separators=(",", ":"), ensure_ascii=False)
    return f"event: {name}\ndata: {data}\n\n".encode()


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


class UpdateQueue:
    """A turn's subscription: the updates of one session in arrival order, plus the events the
    turn itself interleaves (permission requests), for one consumer."""

    def __init__(self, session_id: str) -> None:
        self.session_id = session_id
        self._queue: asyncio.Queue[Event] = asyncio.Queue()

    async def on_update(self, params: JsonObj) -> None:
        """The connection's :data:`UpdateHandler`."""
        update = update_of(params, self.session_id)
        if update is None:
            return
        event = map_update(update)
        if event is not None:
            self._queue.put_nowait(event)

    def put(self, event: Event) -> None:
        self._queue.put_nowait(event)

    def get_nowait(self) -> Event | None:
        try:
            return self._queue.get_nowait()
        except asyncio.QueueEmpty:
            return None

    async def get(self) -> Event:
        return await self._queue.get()

    async def drain(
        self,
        emit: Callable[[Event], Any],
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
                event = await asyncio.wait_for(self._queue.get(), min(quiet_s, left))
            except TimeoutError:
                return
            await emit(event)


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
