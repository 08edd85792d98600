"""agw.agw.sse: the incremental SSE parser, whole and cut at every byte."""

from __future__ import annotations

import random
import time

import pytest

from agw.sse import SseError, SseEvent, SseParser


def parse(data: bytes, cuts: list[int] | None = None) -> list[SseEvent]:
    parser = SseParser()
    out: list[SseEvent] = []
    start = 0
    for cut in [*(cuts or []), len(data)]:
        out += parser.feed(data[start:cut])
        start = cut
    return out + parser.close()


def every_split(data: bytes) -> list[list[SseEvent]]:
    """The events for the whole input, byte by byte, and for each single cut."""
    results = [parse(data), parse(data, list(range(1, len(data))))]
    results += [parse(data, [i]) for i in range(1, len(data))]
    return results


STREAM = (
    b": a comment\n"
    b"event: message\n"
    b"id: 7\n"
    b'data: {"jsonrpc":"2.0",\n'
    b'data:"id":1}\n'
    b"\n"
    b"data:  two spaces\r\n"
    b"data\r\n"
    b"\r\n"
    b"event: endpoint\r"
    b"data: /messages/?session_id=abc\r"
    b"\r"
    b"retry: 1500\n"
    b"id\n"
    b"data: \xc3\xa9t\xc3\xa9 \xe2\x9c\x93\n"
    b"\n"
)
EXPECTED = [
    SseEvent("message", '{"jsonrpc":"2.0",\n"id":1}', "7", None),
    SseEvent("message", " two spaces\n", "7", None),
    SseEvent("endpoint", "/messages/?session_id=abc", "7", None),
    SseEvent("message", "été ✓", "", 1500),
]


def test_parses_fields_line_endings_and_multiline_data() -> None:
    assert parse(STREAM) == EXPECTED


def test_same_events_whatever_the_chunking() -> None:
    for result in every_split(STREAM):
        assert result == EXPECTED


def test_random_chunkings_of_a_long_stream() -> None:
    rng = random.Random(4)
    body = b"".join(
        f'event: message\r\nid: {i}\r\ndata: {{"n": {i}}}\r\n\r\n'.encode() for i in range(200)
    )
    for _ in range(20):
        cuts = sorted(rng.sample(range(1, len(body)), 60))
        events = parse(body, cuts)
        assert [e.data for e in events] == [f'{{"n": {i}}}' for i in range(200)]
        assert [e.id for e in events] == [str(i) for i in range(200)]


def test_cr_at_chunk_end_then_lf_is_one_line_break() -> None:
    parser = SseParser()
    assert parser.feed(b"data: a\r") == []
    assert parser.feed(b"\ndata: b\r") == []
    assert parser.feed(b"\n\r") == []
    assert parser.feed(b"\n") == [SseEvent(data="a\nb")]
    # a lone CR at a chunk end is a line break once the next chunk shows no LF
    assert parser.feed(b"data: c\r") == []
    assert parser.feed(b"\r") == []
    assert parser.feed(b"x") == [SseEvent(data="c")]


def test_priming_event_is_dispatched_with_empty_data_and_its_id() -> None:
    events = parse(b"id: prime-1\ndata:\n\nid: 2\nretry: 3000\n\n")
    assert events == [SseEvent("message", "", "prime-1", None)]


def test_events_without_data_only_update_id_and_retry() -> None:
    parser = SseParser()
    assert parser.feed(b"id: 5\nretry: 250\nevent: ping\n\n") == []
    assert parser.last_event_id == "5"
    assert parser.retry_ms == 250
    assert parser.feed(b"data: x\n\n") == [SseEvent("message", "x", "5", None)]


def test_invalid_id_and_retry_are_ignored() -> None:
    parser = SseParser()
    events = parser.feed(b"id: a\x00b\nretry: 12x\ndata: y\n\n")
    assert events == [SseEvent("message", "y", None, None)]
    assert parser.retry_ms is None


def test_unknown_fields_and_colon_rules() -> None:
    events = parse(b"foo: bar\ndata:no-space\ndata:  two\nevent:e\n\n")
    assert events == [SseEvent("e", "no-space\n two", None, None)]


def test_bom_dropped_at_the_start_only() -> None:
    assert parse(b"\xef\xbb\xbfdata: a\n\n") == [SseEvent(data="a")]
    events = parse(b"data: a\n\n\xef\xbb\xbfdata: b\n\n")
    assert events == [SseEvent(data="a")]  # a later BOM is part of an unknown field name


def test_multibyte_character_split_between_chunks() -> None:
    data = "data: ✓é\n\n".encode()
    for result in every_split(data):
        assert result == [SseEvent(data="✓é")]


def test_close_dispatches_an_event_cut_short() -> None:
    parser = SseParser()
    assert parser.feed(b'event: message\ndata: {"id": 1}') == []
    assert parser.close() == [SseEvent("message", '{"id": 1}', None, None)]
    assert parser.close() == []


def test_oversized_event_and_line_raise() -> None:
    parser = SseParser(max_event_bytes=64)
    with pytest.raises(SseError):
        parser.feed(b"data: " + b"x" * 40 + b"\ndata: " + b"y" * 40 + b"\n")
    parser = SseParser(max_event_bytes=64)
    with pytest.raises(SseError):
        parser.feed(b"data: " + b"x" * 100)  # no line end yet: still bounded
    parser = SseParser(max_event_bytes=64)
    events = parser.feed(b"data: " + b"x" * 40 + b"\n\n" + b"data: " + b"y" * 40 + b"\n\n")
    assert [len(e.data) for e in events] == [40, 40]


def test_a_long_line_in_many_chunks_costs_each_chunk_only_its_length() -> None:
    """An upstream that streams one line without an end (the attack of issue 12): every chunk
    used to re-join and re-scan everything held so far (quadratic)."""
    parser = SseParser(max_event_bytes=32 * 1024 * 1024)
    chunk = b"x" * 2048
    started = time.perf_counter()
    assert parser.feed(b"data: ") == []
    for _ in range(2048):  # 4 MiB
        assert parser.feed(chunk) == []
    events = parser.feed(b"\r") + parser.feed(b"\n\n")
    took = time.perf_counter() - started
    assert [len(e.data) for e in events] == [4 * 1024 * 1024]
    assert took < 0.5, f"{took:.2f} s"


def test_a_line_without_end_is_refused_at_the_limit_naming_it() -> None:
    parser = SseParser(max_event_bytes=1024 * 1024)
    with pytest.raises(SseError, match="over the 1 MiB limit"):
        for _ in range(1000):
            parser.feed(b"y" * 4096)


def test_an_event_of_many_empty_data_lines_is_held_to_the_limit() -> None:
    parser = SseParser(max_event_bytes=1024 * 1024)
    with pytest.raises(SseError):
        for _ in range(100):
            parser.feed(b"data:\n" * 10_000)  # a million lines: 6 MB sent, 8 MB of list slots
