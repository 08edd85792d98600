"""A trap for a client's traffic beyond loopback: a proxy on 127.0.0.1 that forwards nothing and
records the first line of every request it gets (``CONNECT github.com:443 HTTP/1.1``).

    with egress_trap() as trap:
        subprocess.run([...], env={**env, **trap.env()})
    assert trap.attempts == []

:meth:`EgressTrap.env` points ``HTTPS_PROXY`` / ``HTTP_PROXY`` / ``ALL_PROXY`` (both cases) at
it and names loopback in ``NO_PROXY``: what a CLI tries to reach outside this machine (an update
check, telemetry, a plugin sync) lands here instead of the network, the CLI gets its connection
closed, and the test sees the host it wanted."""

from __future__ import annotations

import socketserver
import threading
from collections.abc import Iterator
from contextlib import contextmanager

READ_TIMEOUT_S = 2.0


class EgressTrap:
    def __init__(self, port: int) -> None:
        self.url = f"http://127.0.0.1:{port}"
        self.attempts: list[str] = []  # the first line of each request, in arrival order

    def env(self) -> dict[str, str]:
        """The proxy variables that send everything but loopback to the trap."""
        out = {"NO_PROXY": "127.0.0.1,localhost,::1", "no_proxy": "127.0.0.1,localhost,::1"}
        for name in ("HTTPS_PROXY", "HTTP_PROXY", "ALL_PROXY"):
            out[name] = out[name.lower()] = self.url
        return out


@contextmanager
def egress_trap() -> Iterator[EgressTrap]:
    """A running trap on an ephemeral loopback port, stopped on exit."""
    attempts: list[str] = []

    class Handler(socketserver.BaseRequestHandler):
        def handle(self) -> None:
            self.request.settimeout(READ_TIMEOUT_S)
            try:
                head = self.request.recv(1024)
            except OSError:
                head = b""
            attempts.append(head.split(b"\r\n", 1)[0].decode("latin-1"))

    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1})
    thread.start()
    trap = EgressTrap(server.server_address[1])
    trap.attempts = attempts
    try:
        yield trap
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
