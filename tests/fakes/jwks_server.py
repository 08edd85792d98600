"""A JWKS / OIDC discovery server for tests: a real HTTP server on 127.0.0.1 in a thread of the
test process, whose answers the test switches (``mode``): ``ok`` serves the JWK set,
``down`` answers 503, ``slow`` waits ``delay_s`` first, ``garbage`` sends bytes that are not a
JWK set. ``hits`` counts the JWK set requests."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class JwksServer:
    def __init__(self, jwks: Callable[[], dict[str, Any]]) -> None:
        self.jwks = jwks
        self.mode = "ok"
        self.delay_s = 10.0
        self.hits = 0
        self.discovery_hits = 0
        self._server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    @property
    def jwks_uri(self) -> str:
        return f"{self.url}/jwks"

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _send(self, status: int, body: bytes) -> None:
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:
                if self.path == "/.well-known/openid-configuration":
                    server.discovery_hits += 1
                    if server.mode == "down":
                        self._send(503, b"{}")
                        return
                    meta = {"issuer": server.url, "jwks_uri": server.jwks_uri}
                    self._send(200, json.dumps(meta).encode())
                    return
                if self.path != "/jwks":
                    self._send(404, b"{}")
                    return
                server.hits += 1
                if server.mode == "down":
                    self._send(503, b'{"error":"down"}')
                elif server.mode == "garbage":
                    self._send(200, b"\x00\xffnot json at all")
                else:
                    if server.mode == "slow":
                        time.sleep(server.delay_s)
                    self._send(200, json.dumps(server.jwks()).encode())

        return Handler

    @contextmanager
    def running(self) -> Iterator[JwksServer]:
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        thread.start()
        try:
            yield self
        finally:
            self._server.shutdown()
            self._server.server_close()
            thread.join(timeout=5)
