"""Frozen process settings, built once by the entry point (agwd flags, env)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_ADDR = "127.0.0.1:8080"
DEFAULT_ADMIN_ADDR = "localhost:8019"
DEFAULT_CONFIG_STORE = "./data/configstore.db"
ADMIN_REALM = "agent-gateway-admin"
# ?reveal=true and ?include_secrets=true take effect only with this header set to "true": a page
# cannot add it without a CORS preflight, which unlisted origins fail (docs/security.md)
REVEAL_HEADER = "X-AGW-Reveal-Secrets"
MAX_ADMIN_BODY = 16 * 1024 * 1024
# Listener limits (both listeners; docs/security.md, "Listener limits")
DEFAULT_MAX_HEADER_BYTES = 64 * 1024  # the request line and all headers together
DEFAULT_MAX_HEADERS = 100
DEFAULT_HEADER_TIMEOUT_S = 15.0  # from connect (or the end of the last answer) to the full head
DEFAULT_KEEP_ALIVE_TIMEOUT_S = 30.0  # an idle kept-alive connection is closed after this
ADMIN_PASSWORD_FILE = "admin-password"  # beside the store: user:password, mode 0600


@dataclass(frozen=True)
class Settings:
    addr: str = DEFAULT_ADDR
    admin_addr: str = DEFAULT_ADMIN_ADDR
    admin_basic_auth_hash: str = ""
    admin_insecure: bool = False
    config_store: Path = Path(DEFAULT_CONFIG_STORE)
    store_url: str = ""  # a PostgreSQL config store (postgresql://...) in place of the file
    static_config: Path | None = None
    provider_types: tuple[str, ...] = ()  # empty: every provider type is enabled
    metrics_retention_days: int = 30
    max_agent_depth: int = 0
    shutdown_grace_seconds: float = 10.0
    data_server: str = "uvicorn"  # uvicorn | hypercorn (the admin API is always hypercorn)
    access_log: str = "stderr"  # stderr | off | a file path
    otlp_endpoint: str = ""  # OTLP/HTTP base URL; empty: no trace export
    trace_content: bool = False  # prompts and completions on LLM spans
    redis_url: str = ""  # the shared limit counters; empty: in this process
    # where the limit counters live: auto | process | store | redis (docs/scale-out.md)
    limit_counters: str = "auto"
    workers: int = 1  # agwd --workers: the processes that serve the data listener
    replica_id: str = ""  # names this replica in its ACP ids (agw.acp.replica); empty: untagged
    # the usage spool's directory (agw.usage.spool): empty: usage-spool beside the SQLite store
    # (./data/usage-spool with a PostgreSQL store); "off": no spool
    usage_spool: str = ""
    # what the listeners trust (agw.edge): names for Host, origins for Origin and admin CORS
    admin_hosts: tuple[str, ...] = ()
    admin_cors_origins: tuple[str, ...] = ()
    allowed_hosts: tuple[str, ...] = ()
    allowed_origins: tuple[str, ...] = ()
    # where the generated admin password lives (no --admin-basic-auth-hash, no --admin-insecure);
    # None: ADMIN_PASSWORD_FILE beside the config store
    admin_password_file: Path | None = None
    max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES
    max_headers: int = DEFAULT_MAX_HEADERS
    header_timeout_s: float = DEFAULT_HEADER_TIMEOUT_S
    keep_alive_timeout_s: float = DEFAULT_KEEP_ALIVE_TIMEOUT_S
    max_connections: int = 0  # per listener; 0: derived from the open-file limit at start
    # the store's secret key (AGW_SECRET_KEY, 32 bytes); None: the key file beside the store
    # (docs/security.md, "Secrets at rest")
    secret_key: bytes | None = field(default=None, repr=False)

    @property
    def limit_mode(self) -> str:
        """Where the limit counters live: ``redis`` (``--redis-url``), ``store`` (leased from
        the config store that several processes share: a PostgreSQL store, or ``--workers``
        above 1) or ``process``; ``--limit-counters`` other than ``auto`` says it outright."""
        if self.limit_counters != "auto":
            return self.limit_counters
        if self.redis_url:
            return "redis"
        return "store" if self.store_url or self.workers > 1 else "process"

    @property
    def password_file(self) -> Path:
        return self.admin_password_file or self.config_store.parent / ADMIN_PASSWORD_FILE


LIMIT_MODES = ("auto", "process", "store", "redis")


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
