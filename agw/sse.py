"""Server-Sent Events, the one module every plane uses: one framer, two readers.

- :func:`frame`: one event, as every stream the gateway writes frames it.
- :class:`SSESplitter`: bytes in, complete events out, each keeping its raw bytes. Passthrough
  streams (LLM) forward the upstream's own bytes, event by event; the gateway only looks inside
  an event when it must (usage, tool names, the usage chunk it asked for itself).
- :class:`SseParser`: the WHATWG rules in full (``id``, ``retry``, comments, every line ending,
  a BOM), for streams whose events the gateway consumes (MCP upstreams over HTTP and SSE).
"""

from __future__ import annotations

import codecs
import json
import re
from dataclasses import dataclass
from typing import Any


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


def frame(data: Any, name: str | None = None) -> bytes:
    """One SSE event; ``data`` is a JSON value, or a string sent as it is (one line)."""
    text = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)
    head = f"event: {name}\n" if name else ""
    return f"{head}data: {text}\n\n".encode()


# ------------------------------------------------------------------------ the WHATWG parser


DEFAULT_MAX_EVENT_BYTES = 16 * 1024 * 1024
# what each further ``data`` line of an event counts beyond its characters (its list slot and
# string object), so an event of millions of empty lines is held to the limit too
LINE_COST = 64
_EOL = re.compile(r"\r\n|\r|\n")


class SseError(ValueError):
    """The stream broke a limit of the parser."""


@dataclass(frozen=True, slots=True)
class SseEvent:
    event: str = "message"
    data: str = ""
    id: str | None = None
    retry: int | None = None


class SseParser:
    """An incremental parser: bytes in, events out.

    An incremental Server-Sent Events parser: bytes in, events out (the WHATWG rules).

        parser = SseParser()
        for chunk in stream:
            for event in parser.feed(chunk):
                ...  # event.event, event.data, event.id, event.retry
        for event in parser.close():
            ...

    Lines end with ``\\r\\n``, ``\\n`` or ``\\r`` (also split across chunks); ``:`` lines are
    comments; a field without a colon has an empty value; one space after the colon is dropped.
    ``data`` lines are joined with ``\\n``; an event is dispatched at a blank line when it had at
    least one ``data`` line (so an event with only ``id:`` or ``retry:`` updates
    :attr:`SseParser.last_event_id` / :attr:`SseParser.retry_ms` but yields nothing). ``id`` is the
    last event id in force when the event was dispatched (the stream's, as browsers keep it);
    ``retry`` is the value this event block set, if any. Unlike a browser, :meth:`SseParser.close`
    also dispatches an event cut short by the end of the stream (a server that closes right after
    its last ``data:`` line loses nothing). An event (or a line) larger than ``max_event_bytes``
    raises :class:`SseError`; a long line arriving in many chunks is kept as pieces until its end
    arrives, so each chunk costs only its own length.
    """

    def __init__(self, max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES) -> None:
        self.max_event_bytes = max_event_bytes
        self.last_event_id: str | None = None
        self.retry_ms: int | None = None
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._buf = ""  # text not yet split into lines
        self._pending: list[str] = []  # more of the unfinished line, not yet joined to _buf
        self._pending_len = 0
        self._first = True  # a BOM is dropped at the very start only
        self._event = ""
        self._data: list[str] = []
        self._size = 0  # characters held for the pending event
        self._retry: int | None = None

    def feed(self, chunk: bytes) -> list[SseEvent]:
        """Parse a chunk; the events it completed, in order."""
        text = self._decoder.decode(chunk)
        if not text:
            return []
        if self._first:
            self._first = False
            if text.startswith("\ufeff"):
                text = text[1:]
        out: list[SseEvent] = []
        if self._buf and _EOL.search(text) is None and not self._buf.endswith("\r"):
            # the middle of a long line: kept as pieces, never re-scanned or re-joined per chunk
            self._pending.append(text)
            self._pending_len += len(text)
            self._check_pending()
            return out
        buf = self._take_partial() + text
        pos = 0
        end = len(buf)
        for match in _EOL.finditer(buf):
            if match.group() == "\r" and match.end() == end:
                break  # maybe the first half of \r\n: wait for the next chunk
            self._line(buf[pos : match.start()], out)
            pos = match.end()
        self._buf = buf[pos:]
        self._check_pending()
        return out

    def _take_partial(self) -> str:
        """The unfinished line so far, joined once (when its end has arrived)."""
        if self._pending:
            self._buf += "".join(self._pending)
            self._pending = []
            self._pending_len = 0
        buf, self._buf = self._buf, ""
        return buf

    def _check_pending(self) -> None:
        if len(self._buf) + self._pending_len + self._size > self.max_event_bytes:
            raise SseError(self._too_large())

    def _too_large(self) -> str:
        return f"an SSE event over the {_size(self.max_event_bytes)} limit"

    def close(self) -> list[SseEvent]:
        """The end of the stream: flush what is pending (see module docstring)."""
        out: list[SseEvent] = []
        rest = self._take_partial() + self._decoder.decode(b"", final=True)
        for line in _EOL.split(rest):
            if line:
                self._line(line, out)
        self._dispatch(out)
        return out

    def _line(self, line: str, out: list[SseEvent]) -> None:
        if not line:
            self._dispatch(out)
            return
        if line[0] == ":":
            return
        name, colon, value = line.partition(":")
        if colon and value.startswith(" "):
            value = value[1:]
        if name == "data":
            self._data.append(value)
            self._size += len(value) + (1 if len(self._data) == 1 else LINE_COST)
            if self._size > self.max_event_bytes:
                raise SseError(self._too_large())
        elif name == "event":
            self._event = value
        elif name == "id":
            if "\x00" not in value:
                self.last_event_id = value
        elif name == "retry" and value.isascii() and value.isdigit():
            self._retry = self.retry_ms = int(value)

    def _dispatch(self, out: list[SseEvent]) -> None:
        if self._data:
            out.append(
                SseEvent(
                    event=self._event or "message",
                    data="\n".join(self._data),
                    id=self.last_event_id,
                    retry=self._retry,
                )
            )
        self._event = ""
        self._data = []
        self._size = 0
        self._retry = None


def _size(n: int) -> str:
    """``n`` bytes as a limit reads: 16 MiB, 64 KiB, 100 bytes."""
    for unit, scale in (("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale and n % scale == 0:
            return f"{n // scale} {unit}"
    return f"{n} bytes"
