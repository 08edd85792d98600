"""Head lines an app renders and checks itself (agw/head.py): what a server would refuse is
refused when they are rendered, once, and they read back as the fields they came from."""

from __future__ import annotations

import hashlib
import inspect

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


def test_the_uvicorn_code_agw_copies_is_the_installed_uvicorns() -> None:
    """agw/listener_cycle.py follows uvicorn 0.55's ``on_headers_complete`` and the start of its
    cycle's ``send`` line for line. A uvicorn (a patch release included) whose own code differs
    must be read against the copy before it is let in: this fails until the copy is checked
    and these digests updated."""
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle

    functions = (
        HttpToolsProtocol.on_headers_complete,
        RequestResponseCycle.send,
        RequestResponseCycle.__init__,
    )
    digests = {
        fn.__qualname__: hashlib.sha256(inspect.getsource(fn).encode()).hexdigest()[:16]
        for fn in functions
    }
    assert digests == {
        "HttpToolsProtocol.on_headers_complete": "1ea8589acfad92d8",
        "RequestResponseCycle.send": "abdd8601b326a8da",
        "RequestResponseCycle.__init__": "4d2f220910c33c12",
    }
