"""Listener limits (agw/listener.py) against a real agwd, on the data listener (uvicorn, and
hypercorn with ``--data-server hypercorn``) and the admin listener (hypercorn): oversized and
overlong heads get 431 and agwd keeps serving, half-sent and silent connections are closed after
the header timeout, idle kept-alive ones after the keep-alive timeout, connections over
``--max-connections`` get 503 until a place frees up; a long answer is never cut by the header
timer. Raw sockets, as an attacker would use them."""

from __future__ import annotations

import base64
import json
import socket
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from agw.listener import connection_caps
from tests.fakes.run import FakeUpstream, start_fake_upstream
from tests.support.agwd import Agwd, AgwdLauncher

HEADER_TIMEOUT_S = 1.0
KEEP_ALIVE_TIMEOUT_S = 2.0
MAX_CONNECTIONS = 4
LISTENERS = ["data", "admin"]


@pytest.fixture(scope="module")
def fake(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeUpstream]:
    with start_fake_upstream(tmp_path_factory.mktemp("fake")) as f:
        yield f


@pytest.fixture(scope="module", params=["uvicorn", "hypercorn"])
def gw(
    request: pytest.FixtureRequest, module_agwd_factory: AgwdLauncher, fake: FakeUpstream
) -> Agwd:
    agwd = module_agwd_factory.start(
        "--data-server",
        request.param,
        "--header-timeout",
        str(HEADER_TIMEOUT_S),
        "--keep-alive-timeout",
        str(KEEP_ALIVE_TIMEOUT_S),
        "--max-connections",
        str(MAX_CONNECTIONS),
    )
    bundle = {
        "apiVersion": "gateway.agw/v1alpha1",
        "kind": "GatewayBundle",
        "providers": [{"id": "fake", "provider_type": "openai", "base_url": f"{fake.url}/v1"}],
        "llmRoutes": [
            {
                "id": "llm",
                "protocol": "openai",
                "match_policy": {"path_prefix": "/llm"},
                "target_policy": {"provider_id": "fake"},
            }
        ],
    }
    with agwd.client() as admin:
        r = admin.post("/admin/gateway/apply", json={"bundle": bundle})
        assert r.status_code == 200, r.text
    return agwd


def addr_of(gw: Agwd, listener: str) -> tuple[str, int]:
    url = gw.data_url if listener == "data" else gw.admin_url
    host, _, port = url.removeprefix("http://").rpartition(":")
    return host, int(port)


def path_of(listener: str) -> bytes:
    return b"/admin/health" if listener == "admin" else b"/nothing-here"


def connect(gw: Agwd, listener: str) -> socket.socket:
    return socket.create_connection(addr_of(gw, listener), timeout=5)


def request(listener: str, extra: bytes = b"") -> bytes:
    return b"GET " + path_of(listener) + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n" + extra + b"\r\n"


def read_until_closed(sock: socket.socket, limit_s: float = 5.0) -> tuple[bytes, float]:
    """Everything the server sends until it closes (bounded), and when it closed."""
    start = time.monotonic()
    sock.settimeout(limit_s)
    out = b""
    try:
        while time.monotonic() - start < limit_s:
            chunk = sock.recv(65536)
            if not chunk:
                break
            out += chunk
    except ConnectionResetError:
        pass
    return out, time.monotonic() - start


def read_response(sock: socket.socket) -> int:
    """One whole answer (framed by Content-Length) on a kept-alive connection; its status."""
    sock.settimeout(5)
    data = b""
    while b"\r\n\r\n" not in data and len(data) < 1 << 20:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return status_of(head)


def status_of(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/1.1 ") else 0


def served(gw: Agwd, listener: str) -> int:
    """The status of one ordinary request on a new connection."""
    with connect(gw, listener) as sock:
        sock.sendall(request(listener, b"Connection: close\r\n"))
        return status_of(read_until_closed(sock)[0])


@pytest.mark.parametrize("listener", LISTENERS)
def test_a_one_mib_header_gets_431_at_once_and_agwd_keeps_serving(gw: Agwd, listener: str) -> None:
    with connect(gw, listener) as sock:
        start = time.monotonic()
        sock.sendall(request(listener, b"X-Big: " + b"a" * (1 << 20) + b"\r\n"))
        answer, _ = read_until_closed(sock)
        assert status_of(answer) == 431, answer[:200]
        assert time.monotonic() - start < 2
    assert served(gw, listener) in (200, 404)


@pytest.mark.parametrize("listener", LISTENERS)
def test_ten_thousand_small_headers_get_431(gw: Agwd, listener: str) -> None:
    with connect(gw, listener) as sock:
        sock.sendall(request(listener, b"a:b\r\n" * 10_000))
        answer, _ = read_until_closed(sock)
    assert status_of(answer) == 431, answer[:200]
    assert served(gw, listener) in (200, 404)


@pytest.mark.parametrize("listener", LISTENERS)
def test_a_trailer_flood_is_cut_off(gw: Agwd, listener: str) -> None:
    """Trailer fields come after a chunked body: the parser buffers them as it does the head's
    fields, so they are bounded by the same size."""
    head = post_head(gw, listener, b"").replace(
        b"Content-Length: 0\r\n", b"Transfer-Encoding: chunked\r\n"
    )
    start = time.monotonic()
    with connect(gw, listener) as sock:
        try:
            sock.sendall(head + b"2\r\n{}\r\n0\r\nX-Trailer: ")
            for _ in range(16):  # 1 MiB
                sock.sendall(b"a" * 65536)
        except OSError:
            pass  # closed while we were still sending: what we want
        answer, _ = read_until_closed(sock)
    assert status_of(answer) in (0, 431), answer[:200]
    assert time.monotonic() - start < 3
    assert served(gw, listener) in (200, 404)


@pytest.mark.parametrize("listener", LISTENERS)
def test_a_head_within_the_limits_is_served(gw: Agwd, listener: str) -> None:
    fields = b"".join(b"X-F%d: %s\r\n" % (i, b"v" * 500) for i in range(90))  # 90 fields, 46 KB
    with connect(gw, listener) as sock:
        sock.sendall(request(listener, fields + b"Connection: close\r\n"))
        answer, _ = read_until_closed(sock)
    assert status_of(answer) in (200, 404), answer[:200]


@pytest.mark.parametrize("listener", LISTENERS)
@pytest.mark.parametrize("sent", [b"", b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n"])
def test_a_silent_or_half_sent_connection_is_closed_after_the_header_timeout(
    gw: Agwd, listener: str, sent: bytes
) -> None:
    with connect(gw, listener) as sock:
        sock.sendall(sent)
        answer, closed_after = read_until_closed(sock)
    assert answer == b""
    assert HEADER_TIMEOUT_S * 0.8 < closed_after < HEADER_TIMEOUT_S + 1.5


@pytest.mark.parametrize("listener", LISTENERS)
def test_a_trickled_head_is_closed_after_the_header_timeout(gw: Agwd, listener: str) -> None:
    """Slowloris: a byte now and then does not extend the header timeout."""
    head = request(listener)
    start = time.monotonic()
    with connect(gw, listener) as sock:
        closed = False
        for i in range(len(head) - 2):
            try:
                sock.sendall(head[i : i + 1])
            except OSError:
                closed = True
                break
            sock.settimeout(0.2)
            try:
                if sock.recv(1) == b"":
                    closed = True
                    break
            except TimeoutError:
                pass
            if time.monotonic() - start > HEADER_TIMEOUT_S + 2:
                break
    assert closed
    assert time.monotonic() - start < HEADER_TIMEOUT_S + 1.5


def post_head(gw: Agwd, listener: str, body: bytes) -> bytes:
    """A POST head for ``body``: an LLM call on the data listener, a new virtual key on the
    admin listener."""
    if listener == "data":
        path, auth = b"/llm/v1/chat/completions", b""
    else:
        user, _, password = (gw.auth or ":").partition(":")
        token = base64.b64encode(f"{user}:{password}".encode())
        path, auth = b"/admin/virtual_keys", b"Authorization: Basic " + token + b"\r\n"
    return (
        b"POST "
        + path
        + b" HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        + auth
        + b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body)
    )


def post_body(listener: str) -> bytes:
    if listener == "data":
        return json.dumps({"model": "m", "messages": [{"role": "user", "content": "x"}]}).encode()
    return json.dumps({"id": f"slow-{uuid.uuid4().hex[:8]}"}).encode()


@pytest.mark.parametrize("listener", LISTENERS)
def test_a_stalled_body_is_closed_after_the_header_timeout(gw: Agwd, listener: str) -> None:
    body = post_body(listener)
    with connect(gw, listener) as sock:
        sock.sendall(post_head(gw, listener, body) + body[:5])
        _, closed_after = read_until_closed(sock)
    assert closed_after < HEADER_TIMEOUT_S + 1.5


@pytest.mark.parametrize("listener", LISTENERS)
def test_a_slow_but_moving_body_is_served(gw: Agwd, listener: str) -> None:
    body = post_body(listener)
    with connect(gw, listener) as sock:
        sock.sendall(post_head(gw, listener, body))
        pieces = [body[i : i + len(body) // 4 + 1] for i in range(0, len(body), len(body) // 4 + 1)]
        for piece in pieces:  # 4-5 pieces, 0.4 s apart: longer than the header timeout in all
            time.sleep(HEADER_TIMEOUT_S * 0.4)
            sock.sendall(piece)
        answer, _ = read_until_closed(sock)
    assert status_of(answer) in (200, 201), answer[:300]


@pytest.mark.parametrize("listener", LISTENERS)
def test_an_idle_kept_alive_connection_is_closed_after_the_keep_alive_timeout(
    gw: Agwd, listener: str
) -> None:
    with connect(gw, listener) as sock:
        for _ in range(2):  # kept alive: a second request on it is served
            sock.sendall(request(listener))
            assert read_response(sock) in (200, 404)
        answer, idle = read_until_closed(sock)
    assert answer == b""
    # the keep-alive timeout, not the (shorter) header timeout
    assert KEEP_ALIVE_TIMEOUT_S * 0.8 < idle < KEEP_ALIVE_TIMEOUT_S + 1.5


@pytest.mark.parametrize("listener", LISTENERS)
def test_connections_over_the_cap_get_503_until_one_closes(gw: Agwd, listener: str) -> None:
    held: list[socket.socket] = []
    try:
        for _ in range(20):  # the previous tests' connections may still be closing
            for sock in held:
                sock.close()
            held = [connect(gw, listener) for _ in range(MAX_CONNECTIONS)]
            statuses = []
            for sock in held:
                sock.sendall(request(listener))
                statuses.append(read_response(sock))
            if 503 not in statuses:
                break
            time.sleep(0.2)
        assert 503 not in statuses
        with connect(gw, listener) as extra:
            extra.sendall(request(listener))
            answer, closed_after = read_until_closed(extra)
        assert status_of(answer) == 503, answer[:200]
        assert closed_after < 1
        held.pop().close()
        status = 503
        for _ in range(20):  # the server sees the close a moment later
            status = served(gw, listener)
            if status != 503:
                break
            time.sleep(0.1)
        assert status in (200, 404)
    finally:
        for sock in held:
            sock.close()


def test_a_stream_longer_than_the_header_timeout_is_not_cut(gw: Agwd, fake: FakeUpstream) -> None:
    fake.configure(chunk_delay_ms=200)
    try:
        body: dict[str, Any] = {
            "model": "m",
            "stream": True,
            "messages": [{"role": "user", "content": "one two three four five"}],
        }
        start = time.monotonic()
        with (
            httpx.Client(trust_env=False, timeout=20) as http,
            http.stream("POST", f"{gw.data_url}/llm/v1/chat/completions", json=body) as r,
        ):
            text = "".join(r.iter_text())
        assert r.status_code == 200
        assert time.monotonic() - start > HEADER_TIMEOUT_S + 0.5
        assert text.rstrip().endswith("data: [DONE]"), text[-200:]
        fake.configure(chunk_delay_ms=0, delay_ms=int(HEADER_TIMEOUT_S * 1500))
        with httpx.Client(trust_env=False, timeout=20) as http:
            r = http.post(f"{gw.data_url}/llm/v1/chat/completions", json={**body, "stream": False})
        assert r.status_code == 200, r.text
    finally:
        fake.configure(chunk_delay_ms=0, delay_ms=0)


def test_the_caps_are_logged_and_derived_from_the_open_file_limit(gw: Agwd) -> None:
    events = [e for e in gw.log_events() if e.get("event") == "listener_limits"]
    assert events and events[0]["max_connections"] == MAX_CONNECTIONS
    data, admin = connection_caps(0)
    assert data >= 16 and admin >= 16
    assert connection_caps(7) == (7, 7)
    assert json.dumps(events[0])  # plain JSON values


def data_server(gw: Agwd) -> str:
    args = gw.proc.args
    return "hypercorn" if isinstance(args, list) and "hypercorn" in args else "uvicorn"


@pytest.mark.parametrize("listener", LISTENERS)
def test_a_websocket_handshake_gets_a_clear_answer_and_the_connection_closes(
    gw: Agwd, listener: str
) -> None:
    """No route speaks WebSocket. uvicorn's data listener runs without it: the handshake is
    served as the plain GET it also is, in the route's dialect; hypercorn (the admin listener,
    ``--data-server hypercorn``) answers 400 ``websocket_not_supported``. Before, both answered
    500 and logged a traceback (hypercorn) or an error (uvicorn) per handshake."""
    before = len(gw.logs())
    path = b"/admin/health" if listener == "admin" else b"/llm/v1/chat/completions"
    key = base64.b64encode(uuid.uuid4().bytes)
    handshake = (
        b"GET " + path + b" HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
        b"Connection: Upgrade\r\nSec-WebSocket-Key: " + key + b"\r\n"
        b"Sec-WebSocket-Version: 13\r\nOrigin: http://127.0.0.1\r\n\r\n"
    )
    with connect(gw, listener) as sock:
        sock.sendall(handshake)
        answer, took = read_until_closed(sock)
    head, _, body = answer.partition(b"\r\n\r\n")
    assert b"connection: close" in head.lower() and took < 4, answer[:300]
    if listener == "data" and data_server(gw) == "uvicorn":
        assert status_of(head) == 405, answer[:300]
        error = json.loads(body)["error"]  # the OpenAI dialect of the route
        assert error["type"] == "invalid_request_error" and "GET" in error["message"]
    else:
        assert status_of(head) == 400, answer[:300]
        assert json.loads(body)["error"]["code"] == "websocket_not_supported"
    logged = gw.logs()[before:]
    for sign in ("Traceback", "ASGI callable returned", "Unsupported upgrade", "Error in ASGI"):
        assert sign not in logged, logged[-2000:]
    assert served(gw, listener) in (200, 404)
