"""agwctl's connection options and its errors: one ``agwctl: ...`` line, exit 1, no traceback."""

from __future__ import annotations

import base64
import json
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from agwctl.main import hoist_persistent
from tests.support.agwctl import Agwctl, assert_one_line_error, run_agwctl


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def gateway(module_agwd: Any) -> Any:
    return module_agwd


def test_unreachable_admin_api(tmp_path: Path) -> None:
    addr = f"http://127.0.0.1:{closed_port()}"
    proc = run_agwctl(
        "gateway", "provider", "list", env={"PATH": "/usr/bin:/bin", "AGW_ADMIN_ADDR": addr},
        cwd=tmp_path,
    )  # fmt: skip
    assert_one_line_error(proc, f"cannot reach admin API at {addr}: connection refused")

    # the address may omit the scheme; --admin-addr overrides the environment
    port = closed_port()
    proc = run_agwctl(
        "gateway", "--admin-addr", f"127.0.0.1:{port}", "provider", "list",
        env={"PATH": "/usr/bin:/bin", "AGW_ADMIN_ADDR": addr}, cwd=tmp_path,
    )  # fmt: skip
    assert_one_line_error(
        proc, f"cannot reach admin API at http://127.0.0.1:{port}: connection refused"
    )


def test_default_admin_address_is_localhost_8019(tmp_path: Path) -> None:
    proc = run_agwctl("gateway", "--help", env={"PATH": "/usr/bin:/bin"}, cwd=tmp_path)
    assert "http://localhost:8019" in proc.stdout
    assert "AGW_ADMIN_ADDR" in proc.stdout and "AGW_ADMIN_BASIC_AUTH" in proc.stdout


def test_wrong_or_missing_credentials(gateway: Any, tmp_path: Path) -> None:
    ctl = Agwctl(gateway.env, tmp_path)
    expected = (
        "admin API rejected the credentials (401); set --admin-basic-auth or "
        "AGW_ADMIN_BASIC_AUTH, or AGW_ADMIN_PASSWORD_FILE to agwd's password file"
    )
    assert_one_line_error(
        ctl("gateway", "--admin-basic-auth", "admin:wrong", "provider", "list"), expected
    )
    no_auth = {k: v for k, v in gateway.env.items() if k != "AGW_ADMIN_BASIC_AUTH"}
    assert_one_line_error(
        run_agwctl("gateway", "provider", "list", env=no_auth, cwd=tmp_path), expected
    )
    # the right ones, from the environment
    assert ctl.ok("gateway", "provider", "list").startswith("ID")


def test_http_errors_name_the_request(gateway: Any, tmp_path: Path) -> None:
    ctl = Agwctl(gateway.env, tmp_path)
    assert_one_line_error(
        ctl("gateway", "provider", "get", "nope"),
        "GET /admin/llm/providers/nope: 404 provider not found",
    )
    assert_one_line_error(
        ctl("gateway", "llm-route", "delete", "nope"),
        "DELETE /admin/llm/routes/nope: 404 llm route not found",
    )


def test_bad_options_are_usage_errors(tmp_path: Path) -> None:
    env = {"PATH": "/usr/bin:/bin"}
    proc = run_agwctl(
        "gateway", "--admin-header", "no-colon", "provider", "list", env=env, cwd=tmp_path
    )
    assert proc.returncode == 2
    assert "--admin-header" in proc.stderr and "Name: value" in proc.stderr
    proc = run_agwctl(
        "gateway", "--admin-basic-auth", "nocolon", "provider", "list", env=env, cwd=tmp_path
    )
    assert proc.returncode == 2
    assert "user:password" in proc.stderr
    proc = run_agwctl("-o", "yaml", "gateway", "provider", "list", env=env, cwd=tmp_path)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr


class Recorder(BaseHTTPRequestHandler):
    """A stand-in admin API that records what it was sent and answers an empty list."""

    seen: list[dict[str, Any]] = []

    def do_GET(self) -> None:
        Recorder.seen.append({"path": self.path, "headers": dict(self.headers)})
        body = json.dumps({"items": []}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def recorder() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    Recorder.seen = []
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    thread.join()


def test_headers_and_basic_auth_are_sent(recorder: str, tmp_path: Path) -> None:
    env = {"PATH": "/usr/bin:/bin", "AGW_ADMIN_ADDR": recorder, "AGW_ADMIN_BASIC_AUTH": "u:p:w"}
    proc = run_agwctl(
        "gateway", "credential", "list", "--type", "api_key", "--provider-id", "p1",
        "--admin-header", "X-Proxy-Token: abc 123", "--admin-header", "X-Other:two",
        env=env, cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[0].split()[0] == "ID"
    [request] = Recorder.seen
    assert request["path"] == "/admin/credentials?type=api_key&provider_id=p1"
    headers = {k.lower(): v for k, v in request["headers"].items()}
    assert headers["x-proxy-token"] == "abc 123"
    assert headers["x-other"] == "two"
    assert headers["authorization"] == "Basic " + base64.b64encode(b"u:p:w").decode()


def test_managed_model_path_keeps_slashes(recorder: str, tmp_path: Path) -> None:
    env = {"PATH": "/usr/bin:/bin", "AGW_ADMIN_ADDR": recorder + "/"}
    proc = run_agwctl(
        "gateway", "model", "managed", "get", "p1", "org/model:free", env=env, cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr
    assert Recorder.seen[0]["path"] == "/admin/llm/models/managed/p1/org/model:free"


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (
            ["gateway", "provider", "list", "-o", "json"],
            ["-o", "json", "gateway", "provider", "list"],
        ),
        (
            ["gateway", "apply", "-f", "x", "--output=json"],
            ["--output=json", "gateway", "apply", "-f", "x"],
        ),
        (["gateway", "provider", "list", "-ojson"], ["-ojson", "gateway", "provider", "list"]),
        (
            ["gateway", "provider", "list", "--admin-addr", "h:1", "--admin-header", "A: b"],
            ["gateway", "--admin-addr", "h:1", "--admin-header", "A: b", "provider", "list"],
        ),
        (["gateway", "x", "--admin-addr"], ["gateway", "x", "--admin-addr"]),
        (["gateway", "x", "--", "-o", "json"], ["gateway", "x", "--", "-o", "json"]),
    ],
)
def test_persistent_options_may_come_after_the_subcommand(
    argv: list[str], expected: list[str]
) -> None:
    assert hoist_persistent(argv) == expected
