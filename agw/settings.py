"""Frozen process settings, built once by the entry point (agwd flags, env)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

DEFAULT_ADDR = "127.0.0.1:8080"
DEFAULT_ADMIN_ADDR = "localhost:8019"
DEFAULT_CONFIG_STORE = "./data/configstore.db"
ADMIN_REALM = "agent-gateway-admin"
MAX_ADMIN_BODY = 16 * 1024 * 1024


@dataclass(frozen=True)
class Settings:
    addr: str = DEFAULT_ADDR
    admin_addr: str = DEFAULT_ADMIN_ADDR
    admin_basic_auth_hash: str = ""
    admin_insecure: bool = False
    config_store: Path = Path(DEFAULT_CONFIG_STORE)
    static_config: Path | None = None
    provider_types: tuple[str, ...] = ()  # empty: every provider type is enabled
    metrics_retention_days: int = 30
    max_agent_depth: int = 0
    shutdown_grace_seconds: float = 10.0
    data_server: str = "uvicorn"  # uvicorn | hypercorn (the admin API is always hypercorn)
    access_log: str = "stderr"  # stderr | off | a file path
    otlp_endpoint: str = ""  # OTLP/HTTP base URL; empty: no trace export
    trace_content: bool = False  # prompts and completions on LLM spans


def split_host_port(addr: str) -> tuple[str, int]:
    """``host:port`` (``[::1]:8080`` for IPv6, ``:8080`` for every interface)."""
    host, sep, port = addr.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"address {addr!r} must be host:port")
    host = host.strip("[]")
    return host, int(port)


def is_loopback(host: str) -> bool:
    import ipaddress

    if host in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
