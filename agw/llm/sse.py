"""Incremental Server-Sent Events splitting that keeps each event's raw bytes.

Passthrough streams forward the upstream's own bytes, event by event; the gateway only looks
inside an event when it must (usage, tool names, the usage chunk it asked for itself).
"""

from __future__ import annotations


class Event:
    """One event: its raw bytes (terminator included), and its ``event:`` name ("" when none)
    and ``data:`` lines (joined with "\n"), decoded only when asked for: a passthrough stream
    forwards most events without ever looking inside."""

    __slots__ = ("_data", "_name", "raw")

    def __init__(self, raw: bytes, name: str | None = None, data: str | None = None) -> None:
        self.raw = raw
        self._name = name
        self._data = data

    def _parse(self) -> None:
        name = ""
        data: list[str] = []
        for line in self.raw.decode("utf-8", "replace").splitlines():
            if line.startswith("data:"):
                data.append(line[6:] if line.startswith("data: ") else line[5:])
            elif line.startswith("event:"):
                name = line[6:].strip()
        self._name, self._data = name, "\n".join(data)

    @property
    def name(self) -> str:
        if self._name is None:
            self._parse()
        assert self._name is not None
        return self._name

    @property
    def data(self) -> str:
        if self._data is None:
            self._parse()
        assert self._data is not None
        return self._data


def parse_event(raw: bytes) -> Event:
    return Event(raw)


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
