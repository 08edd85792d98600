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


EVENT_LIMIT = 16 * 1024 * 1024  # one SSE event of an upstream stream (docs/llm.md#limits)


class EventTooLarge(Exception):
    """An upstream SSE event grew past the splitter's limit without its terminator."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"upstream stream event larger than {limit} bytes")
        self.limit = limit


class SSESplitter:
    """Feed bytes, get complete events. Accepts ``\\n\\n`` and ``\\r\\n\\r\\n`` separators.

    An event still incomplete is kept as the pieces that came, and each new piece is searched
    alone (plus the one byte before it that may start a separator): a stream that sends no
    separator costs linear time, not a rescan of everything held, and raises
    :class:`EventTooLarge` once the incomplete event holds more than ``limit`` bytes."""

    __slots__ = ("_cr", "_held", "_parts", "limit")

    def __init__(self, limit: int = EVENT_LIMIT) -> None:
        self.limit = limit
        self._parts: list[bytes] = []  # the incomplete event: no separator inside
        self._held = 0  # its size
        self._cr = False  # the last piece ended with a CR, kept back from it

    def feed(self, chunk: bytes) -> list[Event]:
        if self._cr:
            chunk = b"\r" + chunk
            self._cr = False
        if b"\r" in chunk:
            if chunk[-1:] == b"\r":  # maybe the first half of a CRLF split across reads
                chunk = chunk[:-1]
                self._cr = True
            chunk = chunk.replace(b"\r\n", b"\n")
        if not chunk:
            return []
        parts = self._parts
        if parts:
            # The held bytes contain no separator: only one that starts at their last byte or
            # lies in the new bytes can end the event.
            held = self._held
            if b"\n\n" not in chunk and not (chunk[0] == 10 and parts[-1][-1] == 10):
                held += len(chunk)
                if held > self.limit:
                    self._reset()
                    raise EventTooLarge(self.limit)
                parts.append(chunk)
                self._held = held
                return []
            buf = parts[0] + chunk if len(parts) == 1 else b"".join(parts) + chunk
            parts.clear()
            search = held - 1
        else:
            buf, search = chunk, 0
        events: list[Event] = []
        start = 0
        while True:
            end = buf.find(b"\n\n", search)
            if end < 0:
                break
            raw = buf[start : end + 2]
            if raw.strip():
                events.append(parse_event(raw))
            start = search = end + 2
        rest = len(buf) - start
        if rest > self.limit:
            self._reset()
            raise EventTooLarge(self.limit)
        if rest:
            parts.append(buf[start:])
        self._held = rest
        return events

    def _reset(self) -> None:
        self._parts, self._held, self._cr = [], 0, False

    def rest(self) -> bytes:
        """Whatever arrived after the last complete event (an upstream cut mid-event)."""
        rest = b"".join(self._parts) + (b"\r" if self._cr else b"")
        self._reset()
        return rest


def frame(data: str, name: str = "") -> bytes:
    head = f"event: {name}\n" if name else ""
    return f"{head}data: {data}\n\n".encode()
