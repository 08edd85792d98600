"""agwd as a process: store file, flags, listeners, auth refusal, systemd notify, signals."""

from __future__ import annotations

import json
import signal
import socket
import sqlite3
import stat
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from agw.store.db import migrations_dir
from tests.support.agwd import Agwd, AgwdLauncher, base_env

HEAD = "apiVersion: gateway.agw/v1alpha1\nkind: GatewayBundle\n"

REVEAL = {"X-AGW-Reveal-Secrets": "true"}  # ?reveal=true needs it


def run_agwd(
    *args: str, cwd: Path, env: dict[str, str] | None = None, timeout: float = 20
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agwd.main", *args],
        cwd=cwd,
        env={**base_env(), **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def test_default_store_is_created_0600_with_schema(
    agwd_factory: AgwdLauncher, tmp_path: Path
) -> None:
    agwd = agwd_factory.start()
    assert agwd.db_path.exists()
    assert stat.S_IMODE(agwd.db_path.stat().st_mode) == 0o600
    with sqlite3.connect(agwd.db_path) as conn:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        latest = max(int(p.name[:4]) for p in migrations_dir().glob("[0-9]*_*.sql"))
        assert conn.execute("PRAGMA user_version").fetchone()[0] == latest
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert {
        "providers",
        "routes",
        "virtual_keys",
        "model_configs",
        "mcp_services",
        "acp_services",
        "agents",
        "cliauth_credentials",
        "llm_usage_events",
        "mcp_usage_events",
        "acp_usage_events",
    } <= tables
    assert agwd.stop() == 0


def test_refuses_a_newer_schema(tmp_path: Path) -> None:
    db = tmp_path / "c.db"
    with sqlite3.connect(db) as conn:
        conn.execute("PRAGMA user_version = 99")
    before = db.read_bytes()
    proc = run_agwd(
        "--config-store",
        str(db),
        "--addr",
        "127.0.0.1:0",
        "--admin-addr",
        "127.0.0.1:0",
        cwd=tmp_path,
    )
    assert proc.returncode == 1
    latest = max(int(p.name[:4]) for p in migrations_dir().glob("[0-9]*_*.sql"))
    assert f"schema version 99, newer than this agw supports ({latest})" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert db.read_bytes() == before


def test_admin_off_loopback_without_a_hash_takes_the_generated_password(
    tmp_path: Path, agwd_factory: AgwdLauncher
) -> None:
    generated = agwd_factory.start("--admin-addr", "0.0.0.0:0", auth="generated")
    with generated.client(auth=False) as c:
        assert c.get("/admin/llm/providers").status_code == 401
    agwd = agwd_factory.start("--admin-addr", "0.0.0.0:0", "--admin-insecure", auth=False)
    with agwd.client() as c:
        assert c.get("/admin/llm/providers").status_code == 200


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--admin-basic-auth-hash", "admin:not-a-hash"], "not a bcrypt hash"),
        (["--admin-basic-auth-hash", "nocolon"], "must be user:bcrypt-hash"),
        (["--provider-type", "openai", "--provider-type", "openai"], "must not repeat"),
        (["--provider-type", "nope"], "is not a provider type"),
        (["--addr", "nonsense"], "--addr: address 'nonsense' must be host:port"),
    ],
)
def test_bad_flags_fail_with_one_line(tmp_path: Path, args: list[str], message: str) -> None:
    proc = run_agwd("--config-store", str(tmp_path / "c.db"), *args, cwd=tmp_path)
    assert proc.returncode != 0
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr


def test_listener_in_use_is_a_clear_error(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        proc = run_agwd(
            "--config-store",
            str(tmp_path / "c.db"),
            "--addr",
            f"127.0.0.1:{port}",
            "--admin-addr",
            "127.0.0.1:0",
            cwd=tmp_path,
        )
    assert proc.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}" in proc.stderr


def test_one_listener_when_addresses_are_equal(agwd_factory: AgwdLauncher) -> None:
    agwd = agwd_factory.start(same_listener=True)
    assert agwd.admin_url == agwd.data_url
    with agwd.client() as c:
        assert c.get("/admin/health").json() == {"status": "ok"}
        assert c.get("/admin/llm/providers").status_code == 200
        r = c.get("/v1/chat/completions")
        assert r.status_code == 404 and "no route matches" in r.json()["error"]


def test_two_listeners_keep_planes_apart(agwd: Agwd) -> None:
    assert agwd.admin_url != agwd.data_url
    r = httpx.get(agwd.data_url + "/admin/health", trust_env=False)
    assert r.status_code == 404


def test_env_file_supplies_the_admin_hash(agwd_factory: AgwdLauncher, admin_hash: str) -> None:
    workdir = agwd_factory.base / f"agwd{agwd_factory.count + 1}"
    workdir.mkdir(parents=True)
    (workdir / ".env").write_text(f"AGW_ADMIN_BASIC_AUTH_HASH='{admin_hash}'\n")
    agwd = agwd_factory.start(auth=False)
    agwd.auth = "admin:test-password"
    with agwd.client(auth=False) as c:
        assert c.get("/admin/llm/providers").status_code == 401
    with agwd.client() as c:
        assert c.get("/admin/llm/providers").status_code == 200


def test_systemd_notify_ready_and_stopping(agwd_factory: AgwdLauncher, tmp_path: Path) -> None:
    path = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        sock.settimeout(20)
        agwd = agwd_factory.start(env={"NOTIFY_SOCKET": str(path)})
        ready = sock.recv(4096).decode()
        assert ready.startswith("READY=1")
        assert f"MAINPID={agwd.proc.pid}" in ready
        # READY came after both listeners answered
        with agwd.client() as c:
            assert c.get("/admin/health").status_code == 200
        agwd.proc.send_signal(signal.SIGTERM)
        assert sock.recv(4096).decode() == "STOPPING=1"
        assert agwd.proc.wait(15) == 0


def test_sigterm_drains_a_request_in_flight(agwd: Agwd) -> None:
    body = json.dumps({"id": "drained", "provider_type": "openai"}).encode()
    host, port = agwd.admin_url.removeprefix("http://").rsplit(":", 1)
    import base64

    token = base64.b64encode(agwd.auth.encode()).decode() if agwd.auth else ""
    with socket.create_connection((host, int(port)), timeout=10) as conn:
        conn.sendall(
            b"POST /admin/llm/providers HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Content-Type: application/json\r\n"
            + f"Authorization: Basic {token}\r\nContent-Length: {len(body)}\r\n\r\n".encode()
            + body[:10]
        )
        time.sleep(0.3)
        agwd.proc.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        assert agwd.proc.poll() is None, "agwd exited with a request in flight"
        conn.sendall(body[10:])
        reply = conn.recv(65536).decode()
    assert reply.startswith("HTTP/1.1 201"), reply[:200]
    assert agwd.proc.wait(15) == 0
    with sqlite3.connect(agwd.db_path) as db:
        assert db.execute("SELECT id FROM providers").fetchall() == [("drained",)]


def test_config_survives_restart(agwd_factory: AgwdLauncher) -> None:
    agwd = agwd_factory.start()
    with agwd.client() as c:
        assert (
            c.post(
                "/admin/llm/providers",
                json={"id": "p", "provider_type": "openai", "api_key": "sk-keepme123"},
            ).status_code
            == 201
        )
        key = c.post("/admin/virtual_keys", json={"id": "k"}).json()["key"]
    assert agwd.stop() == 0
    again = agwd_factory.start(db_path=agwd.db_path)
    with again.client() as c:
        shown = c.get("/admin/llm/providers/p", params={"reveal": "true"}, headers=REVEAL)
        assert shown.json()["api_key"] == "sk-keepme123"
        assert c.get("/admin/virtual_keys/k").json()["key"] == key
    logs = agwd.logs() + again.logs()
    assert "sk-keepme123" not in logs and key not in logs


STATIC = (
    HEAD
    + """
providers:
  - {id: static-p, provider_type: openai, api_key: sk-static-secret}
llmRoutes:
  - id: static-r
    protocol: openai
    match_policy: {path_prefix: /s}
    target_policy: {provider_id: static-p}
mcpServices:
  - {id: static-m, name: m, transport: stdio, command: "true"}
mcpRoutes:
  - {service_id: static-m, match_policy: {path_prefix: /mcp}}
acpServices:
  - {id: static-a, name: a, agent_type: opencode, cwd: /srv}
acpRoutes:
  - {id: static-ar, service_id: static-a, match_policy: {path_prefix: /acp}}
agents:
  - {id: static-agent, name: ag, runtime: {type: acp, acp: {service_id: static-a}}}
"""
)


def test_static_config_loads_every_family_read_only(
    agwd_factory: AgwdLauncher, tmp_path: Path
) -> None:
    static = tmp_path / "static.yaml"
    static.write_text(STATIC)
    agwd = agwd_factory.start(static=static)
    with agwd.client() as c:
        for path, oid in [
            ("/admin/llm/providers", "static-p"),
            ("/admin/llm/routes", "static-r"),
            ("/admin/mcp/services", "static-m"),
            ("/admin/mcp/routes", "mcp:static-m:mcp"),
            ("/admin/acp/services", "static-a"),
            ("/admin/acp/routes", "static-ar"),
            ("/admin/agents", "static-agent"),
        ]:
            (item,) = c.get(path).json()["items"]
            assert (item["id"], item["source"], item["read_only"]) == (oid, "static", True)
            assert c.delete(f"{path}/{oid}").status_code == 409
            assert c.post(f"{path}/{oid}/disable").status_code == 409
    with sqlite3.connect(agwd.db_path) as db:
        assert db.execute("SELECT count(*) FROM providers").fetchone()[0] == 0
        assert db.execute("SELECT count(*) FROM routes").fetchone()[0] == 0


def test_sighup_reloads_static_and_keeps_running_config_on_error(
    agwd_factory: AgwdLauncher, tmp_path: Path
) -> None:
    static = tmp_path / "static.yaml"
    static.write_text(STATIC)
    agwd = agwd_factory.start(static=static)
    static.write_text(HEAD + "providers:\n  - {id: reloaded, provider_type: anthropic}\n")
    agwd.proc.send_signal(signal.SIGHUP)
    with agwd.client() as c:
        for _ in range(100):
            ids = [p["id"] for p in c.get("/admin/llm/providers").json()["items"]]
            if ids == ["reloaded"]:
                break
            time.sleep(0.05)
        assert ids == ["reloaded"]
        assert c.get("/admin/agents").json()["items"] == []
        static.write_text(HEAD + "providers:\n  - {id: broken, provider_typo: x}\n")
        agwd.proc.send_signal(signal.SIGHUP)
        for _ in range(100):
            if any(e.get("event") == "config_reload_failed" for e in agwd.log_events()):
                break
            time.sleep(0.05)
        failed = [e for e in agwd.log_events() if e.get("event") == "config_reload_failed"]
        assert failed and "provider_typo (line 4): unknown field" in failed[0]["error"]
        assert [p["id"] for p in c.get("/admin/llm/providers").json()["items"]] == ["reloaded"]


def test_static_config_rejects_virtual_keys_and_store_collisions(
    agwd_factory: AgwdLauncher, tmp_path: Path
) -> None:
    static = tmp_path / "static.yaml"
    static.write_text(HEAD + "virtualKeys:\n  - {id: k}\n")
    proc = run_agwd(
        "--config-store",
        str(tmp_path / "a.db"),
        "--static-config",
        str(static),
        "--addr",
        "127.0.0.1:0",
        "--admin-addr",
        "127.0.0.1:0",
        cwd=tmp_path,
    )
    assert proc.returncode == 1 and "virtualKeys: not allowed in a static config" in proc.stderr

    agwd = agwd_factory.start()
    with agwd.client() as c:
        c.post("/admin/llm/providers", json={"id": "dup", "provider_type": "openai"})
    agwd.stop()
    static.write_text(HEAD + "providers:\n  - {id: dup, provider_type: openai}\n")
    proc = run_agwd(
        "--config-store",
        str(agwd.db_path),
        "--static-config",
        str(static),
        "--addr",
        "127.0.0.1:0",
        "--admin-addr",
        "127.0.0.1:0",
        cwd=tmp_path,
    )
    assert proc.returncode == 1
    assert 'provider "dup": defined in the static config and also stored' in proc.stderr


def test_hash_password_output_is_accepted_and_the_hash_is_not_a_password(
    agwd_factory: AgwdLauncher,
) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "agw.cli", "hash-password", "--plaintext", "hunter2-long"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
        env=base_env(),
    )
    hashed = out.stdout.strip()
    assert hashed.startswith("$2b$12$") and len(hashed) == 60
    agwd = agwd_factory.start("--admin-basic-auth-hash", f"ops:{hashed}", auth=False)
    url = agwd.admin_url + "/admin/llm/providers"
    ok = httpx.get(url, auth=("ops", "hunter2-long"), trust_env=False)
    assert ok.status_code == 200
    for user, password in (("ops", hashed), ("ops", "wrong"), ("admin", "hunter2-long")):
        r = httpx.get(url, auth=(user, password), trust_env=False)
        assert r.status_code == 401
        assert r.headers["www-authenticate"] == 'Basic realm="agent-gateway-admin"'
        assert "items" not in r.text
    assert hashed not in agwd.logs()


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (
            ("--access-log", "/proc/agw-no-such-dir/access.log"),
            "agwd: cannot open access log /proc/agw-no-such-dir/access.log:",
        ),
        (("--access-log", " "), "--access-log must be stderr, off or a file path"),
        (("--otlp-endpoint", "ftp://127.0.0.1:4318"), "--otlp-endpoint must be an http://"),
        (("--trace-content",), "--trace-content needs --otlp-endpoint"),
    ],
)
def test_observability_flags_are_checked(
    tmp_path: Path, flags: tuple[str, ...], message: str
) -> None:
    db = tmp_path / "c.db"
    proc = run_agwd(
        "--config-store", str(db), "--addr", "127.0.0.1:0", "--admin-addr", "127.0.0.1:0", *flags,
        cwd=tmp_path, env={"OTEL_EXPORTER_OTLP_ENDPOINT": ""},
    )  # fmt: skip
    assert proc.returncode == 1, proc.stderr
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr
