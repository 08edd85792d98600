"""Head lines an app renders and checks itself (agw/head.py): what a server would refuse is
refused when they are rendered, once, and they read back as the fields they came from."""

from __future__ import annotations

import pytest

from agw.head import fields, lines


@pytest.mark.parametrize(
    "field",
    [
        (b"ratelimit", b'"a";r=1\r\nset-cookie: stolen=1'),  # a field smuggled in a value
        (b"ratelimit", b"a\nb"),
        (b"ratelimit", b"a\x00b"),
        (b"ratelimit", b"a\x7fb"),
        (b"rate limit", b"1"),
        (b"ratelimit:", b"1"),
        (b"", b"1"),
        (b"Content-Length", b"1"),  # fields that frame the message are the server's
        (b"transfer-encoding", b"chunked"),
        (b"connection", b"close"),
    ],
)
def test_a_field_a_server_would_refuse_is_refused_when_rendered(
    field: tuple[bytes, bytes],
) -> None:
    with pytest.raises(ValueError):
        lines([field])


def test_rendered_lines_read_back_as_their_fields() -> None:
    given = [(b"RateLimit-Policy", b'"rpm";q=2;w=60, "usd";q=5'), (b"ratelimit", b"a\tb")]
    rendered = lines(given)
    assert rendered == (b'ratelimit-policy: "rpm";q=2;w=60, "usd";q=5\r\nratelimit: a\tb\r\n')
    assert fields(rendered) == [(n.lower(), v) for n, v in given]
    assert fields(b"") == []
