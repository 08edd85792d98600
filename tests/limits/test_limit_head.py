"""The RateLimit fields as the answer's head carries them, on both data servers: uvicorn writes
the lines the limits rendered and checked once (agw/head.py, the ``agw.head`` extension),
hypercorn gets them back as fields. Read off the wire: each field once, well formed, the
message framed right on a kept-alive connection, in whole and streamed answers."""

from __future__ import annotations

import re
import socket

import httpx
import pytest

from tests.fakes.run import FakeUpstream
from tests.support.agwd import Agwd, AgwdLauncher
from tests.support.limits import away_from_minute_end

RPM = 1000
STATE = rb'"rpm";r=(\d+);t=(\d+), "usd";r=(\d+);t=(\d+)'


@pytest.fixture(scope="module", params=["uvicorn", "hypercorn"])
def gw(
    request: pytest.FixtureRequest, module_agwd_factory: AgwdLauncher, fake: FakeUpstream
) -> Agwd:
    agwd = module_agwd_factory.start("--data-server", request.param)
    bundle = {
        "apiVersion": "gateway.agw/v1alpha1",
        "kind": "GatewayBundle",
        "providers": [{"id": "p", "provider_type": "openai", "base_url": f"{fake.url}/v1"}],
        "managedModels": [
            {"provider_id": "p", "upstream_model": "m", "pricing": {"input": 1, "output": 2}}
        ],
        "llmRoutes": [
            {
                "id": "r",
                "protocol": "openai",
                "match_policy": {"path_prefix": "/r"},
                "target_policy": {"provider_id": "p"},
            }
        ],
        "limits": [
            {"id": "rpm", "subject": "route", "window": "1m", "requests": RPM},
            {"id": "usd", "subject": "global", "window": "1d", "cost_usd": 1000},
        ],
    }
    with agwd.client() as admin:
        r = admin.post("/admin/gateway/apply", json={"bundle": bundle})
        assert r.status_code == 200, r.text
    return agwd


def read_answer(sock: socket.socket) -> tuple[list[bytes], bytes]:
    """One answer with a Content-Length off the socket: its head's lines and its body."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed mid-head: {data!r}"
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    head_lines = head.split(b"\r\n")
    lengths = [x.split(b":")[1] for x in head_lines if x.lower().startswith(b"content-length:")]
    (length,) = [int(x) for x in lengths]
    while len(rest) < length:
        chunk = sock.recv(65536)
        assert chunk
        rest += chunk
    assert len(rest) == length, "bytes past the answer: the next one would be misread"
    return head_lines, rest


def test_each_field_once_and_well_formed_on_a_kept_alive_connection(gw: Agwd) -> None:
    away_from_minute_end()
    host, port = gw.data_url.removeprefix("http://").split(":")
    body = b'{"model": "m", "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]}'
    request = (
        b"POST /r/v1/chat/completions HTTP/1.1\r\nhost: %s\r\ncontent-type: application/json\r\n"
        b"content-length: %d\r\n\r\n%s" % (gw.data_url[7:].encode(), len(body), body)
    )
    left = []
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        for _ in range(2):
            sock.sendall(request)
            head_lines, answer = read_answer(sock)
            assert head_lines[0].startswith(b"HTTP/1.1 200 ")  # hypercorn: no reason phrase
            assert b'"chat.completion"' in answer
            named = {}
            for line in head_lines[1:]:
                name, sep, value = line.partition(b": ")
                assert sep and re.fullmatch(rb"[a-z0-9-]+", name.lower()), line
                assert name.lower() not in named, f"{name!r} twice"
                named[name.lower()] = value
            assert named[b"ratelimit-policy"] == (
                b'"rpm";q=1000;qu="requests";w=60, "usd";q=1000000000;qu="usd-micros";w=86400'
            )
            state = re.fullmatch(STATE, named[b"ratelimit"])
            assert state is not None, named[b"ratelimit"]
            left.append(int(state[1]))
            assert b"traceparent" in named and b"content-type" in named
    assert left[0] < RPM and left[1] == left[0] - 1


def test_a_streamed_answer_carries_the_fields(gw: Agwd) -> None:
    body = {"model": "m", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    with httpx.stream("POST", f"{gw.data_url}/r/v1/chat/completions", json=body, timeout=20) as r:
        text = r.read().decode()
        assert r.status_code == 200
        assert r.headers["ratelimit-policy"].startswith('"rpm";q=1000;')
        assert re.fullmatch(r'"rpm";r=\d+;t=\d+, "usd";r=\d+;t=\d+', r.headers["ratelimit"])
        assert r.headers["transfer-encoding"] == "chunked"
    assert text.rstrip().endswith("data: [DONE]")
