"""agw.procgroup: the stdio line framing shared by stdio MCP servers and ACP agents."""

from __future__ import annotations

import asyncio
import math
import sys

import pytest

from agw.procgroup import (
    LineTooLong,
    decode_line,
    encode_line,
    read_line,
    start_group,
    stop_group,
)


def reader(data: bytes, buffer: int = 8) -> asyncio.StreamReader:
    stream = asyncio.StreamReader(limit=buffer)
    stream.feed_data(data)
    stream.feed_eof()
    return stream


def test_read_line_assembles_lines_longer_than_the_buffer() -> None:
    async def main() -> list[bytes]:
        stream = reader(b'{"a":1}\n' + b"x" * 40 + b"\n\nlast without end")
        return [await read_line(stream, limit=64) for _ in range(5)]

    assert asyncio.run(main()) == [
        b'{"a":1}\n',
        b"x" * 40 + b"\n",
        b"\n",
        b"last without end",
        b"",
    ]


def test_read_line_refuses_a_line_over_the_limit() -> None:
    async def main() -> None:
        stream = reader(b"y" * 100 + b"\n", buffer=16)
        with pytest.raises(LineTooLong, match="over the 0 MiB limit") as err:
            await read_line(stream, limit=64)
        assert err.value.limit == 64 and isinstance(err.value, ValueError)

    asyncio.run(main())


def test_decode_line_blank_batch_noise() -> None:
    assert decode_line(b"  \r\n") == []
    assert decode_line(b'{"jsonrpc":"2.0","method":"x"}\n') == [{"jsonrpc": "2.0", "method": "x"}]
    assert decode_line(b'[{"id":1},{"id":2}]') == [{"id": 1}, {"id": 2}]
    assert math.isnan(decode_line(b"NaN")[0])  # what json accepts (orjson does not) decodes
    with pytest.raises(ValueError):
        decode_line(b"starting up (not JSON)")


def test_encode_line_is_compact_utf8_and_one_line() -> None:
    line = encode_line({"text": "héllo\nworld", "n": [1, 2]})
    assert line == '{"text":"héllo\\nworld","n":[1,2]}\n'.encode()
    assert decode_line(line) == [{"text": "héllo\nworld", "n": [1, 2]}]


def test_a_child_round_trips_lines_in_its_own_group() -> None:
    echo = "import sys\nfor line in sys.stdin: sys.stdout.write(line); sys.stdout.flush()\n"

    async def main() -> None:
        proc = await start_group([sys.executable, "-c", echo], env={})
        assert proc.stdin is not None and proc.stdout is not None
        try:
            big = {"data": "z" * (3 << 20)}  # past the stdout buffer: assembled by read_line
            proc.stdin.write(encode_line({"id": 1}) + encode_line(big))
            await proc.stdin.drain()
            assert decode_line(await read_line(proc.stdout)) == [{"id": 1}]
            assert decode_line(await read_line(proc.stdout)) == [big]
        finally:
            await stop_group(proc)
        assert proc.returncode is not None

    asyncio.run(main())
