"""agw.sse's splitter: the events it finds, the limit on one event, and linear time.

Pure functions, called directly; tests/llm/test_llm_limits.py attacks the same through agwd.
"""

from __future__ import annotations

import random
import time

import pytest

from agw.sse import EVENT_LIMIT, EventTooLarge, SSESplitter


def _reference(data: bytes) -> tuple[list[bytes], bytes]:
    """The events of a whole text, split at once: what any feeding must find."""
    parts = data.replace(b"\r\n", b"\n").split(b"\n\n")
    return [p + b"\n\n" for p in parts[:-1] if (p + b"\n\n").strip()], parts[-1]


def test_any_split_of_the_bytes_gives_the_same_events() -> None:
    rng = random.Random(12)
    bodies = [b"data: x", b"event: a\r\ndata: {}", b": comment", b"data: " + b"y" * 40]
    for _ in range(2000):
        events = [
            rng.choice(bodies) + rng.choice([b"\n\n", b"\r\n\r\n"])
            for _ in range(rng.randint(0, 8))
        ]
        data = b"".join(events) + rng.choice([b"", b"data: tail", b"data: t\r"])
        splitter = SSESplitter()
        got: list[bytes] = []
        i = 0
        while i < len(data):
            n = rng.randint(1, 7)  # CRLF pairs and separators split every possible way
            got += [e.raw for e in splitter.feed(data[i : i + n])]
            i += n
        want, rest = _reference(data)
        assert got == want, data
        assert splitter.rest().replace(b"\r\n", b"\n") == rest, data


def test_an_event_over_the_limit_raises() -> None:
    splitter = SSESplitter(limit=1000)
    assert splitter.feed(b"data: " + b"x" * 900) == []
    with pytest.raises(EventTooLarge):
        splitter.feed(b"x" * 200)
    # one piece with a whole event under the limit and a tail over it
    with pytest.raises(EventTooLarge):
        SSESplitter(limit=1000).feed(b"data: ok\n\n" + b"x" * 1001)
    ok = SSESplitter(limit=1000)
    assert [e.data for e in ok.feed(b"data: " + b"y" * 990 + b"\n\n")] == ["y" * 990]
    assert EVENT_LIMIT == 16 * 1024 * 1024


def test_an_event_held_in_many_pieces_costs_linear_time() -> None:
    """Rescanning (and copying) everything held on each read made 4 MiB in 4 KiB reads take
    seconds, and 16 MiB minutes, on the event loop that serves every client."""
    splitter = SSESplitter()
    assert splitter.feed(b"data: ") == []
    piece = b"x" * 4096
    fed = 0
    deadline = time.monotonic() + 2
    while fed < 8 * 1024 * 1024 and time.monotonic() < deadline:
        assert splitter.feed(piece) == []
        fed += len(piece)
    assert fed == 8 * 1024 * 1024, f"only {fed} bytes in 2 s"
    assert [e.data for e in splitter.feed(b"\n\ndata: next\n\n")] == ["x" * fed, "next"]
