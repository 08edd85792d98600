"""Incremental Server-Sent Events splitting that keeps each event's raw bytes.

Passthrough streams forward the upstream's own bytes, event by event; the gateway only looks
inside an event when it must (usage, tool names, the usage chunk it asked for itself).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class Event:
    raw: bytes  # the whole event, terminator included
    name: str  # "" when the event has no ``event:`` line
    data: str  # ``data:`` lines joined with "\n"


def parse_event(raw: bytes) -> Event:
    name = ""
    data: list[str] = []
    for line in raw.decode("utf-8", "replace").splitlines():
        if line.startswith("data:"):
            data.append(line[6:] if line.startswith("data: ") else line[5:])
        elif line.startswith("event:"):
            name = line[6:].strip()
    return Event(raw, name, "\n".join(data))


class SSESplitter:
    """Feed bytes, get complete events. Accepts ``\\n\\n`` and ``\\r\\n\\r\\n`` separators."""

    __slots__ = ("_buf",)

    def __init__(self) -> None:
        self._buf = b""

    def feed(self, chunk: bytes) -> list[Event]:
        buf = self._buf + chunk if self._buf else chunk
        if b"\r" in buf:
            buf = buf.replace(b"\r\n", b"\n")
        events: list[Event] = []
        start = 0
        while True:
            end = buf.find(b"\n\n", start)
            if end < 0:
                break
            raw = buf[start : end + 2]
            if raw.strip():
                events.append(parse_event(raw))
            start = end + 2
        self._buf = buf[start:]
        return events

    def rest(self) -> bytes:
        """Whatever arrived after the last complete event (an upstream cut mid-event)."""
        rest, self._buf = self._buf, b""
        return rest


def frame(data: str, name: str = "") -> bytes:
    head = f"event: {name}\n" if name else ""
    return f"{head}data: {data}\n\n".encode()
