"""agwd: the standalone gateway daemon (reference §2.2).

Flags and env as the Go agwd; ``.env.local`` and ``.env`` are loaded first without overriding the
environment. Under systemd (``NOTIFY_SOCKET`` set) it reports ``READY=1`` once both listeners
answer and ``STOPPING=1`` on shutdown; ``SIGTERM``/``SIGINT`` drain in-flight requests (bounded),
``SIGHUP`` reloads the static config. ``--workers N`` runs N worker processes under a
supervisor (:mod:`agw.workers`, docs/scale-out.md).
"""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import logging
import os
import signal
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer

from agw.acp import valid_replica_id
from agw.auth.admin_basic import AdminAuthConfigError, BasicAuth, password_file_auth
from agw.config.families import LIMIT
from agw.config.llm import PROVIDER_TYPES
from agw.edge import check_host_entry, check_origin_entry
from agw.envfile import load_env_files
from agw.errors import AgwError
from agw.logs import setup_logging
from agw.server import Gateway, bind, open_store, shares_listener
from agw.settings import (
    DEFAULT_ADDR,
    DEFAULT_ADMIN_ADDR,
    DEFAULT_CONFIG_STORE,
    DEFAULT_HEADER_TIMEOUT_S,
    DEFAULT_KEEP_ALIVE_TIMEOUT_S,
    DEFAULT_MAX_HEADER_BYTES,
    DEFAULT_MAX_HEADERS,
    LIMIT_MODES,
    Settings,
    is_loopback,
    split_host_port,
)
from agw.store.engine import is_postgres
from agw.store.secrets import KEY_ENV, parse_key
from agw.workers import MAX_WORKERS, Supervisor, WorkerSlot

log = logging.getLogger("agwd")
app = typer.Typer(add_completion=False, rich_markup_mode=None, pretty_exceptions_enable=False)


def sd_notify(message: str) -> None:
    """Send a systemd notification if NOTIFY_SOCKET is set (abstract sockets start with @)."""
    target = os.environ.get("NOTIFY_SOCKET")
    if not target:
        return
    if target.startswith("@"):
        target = "\0" + target[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.connect(target)
            sock.sendall(message.encode())
    except OSError as exc:
        log.warning("sd_notify_failed", extra={"error": str(exc)})


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop where it is installed (Linux, macOS): the faster event loop for both listeners."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def fail(message: str) -> None:
    typer.echo(f"agwd: {message}", err=True)
    raise typer.Exit(1)


def build_settings(
    addr: str,
    admin_addr: str,
    admin_basic_auth_hash: str,
    admin_insecure: bool,
    config_store: str,
    static_config: str,
    provider_type: list[str],
    metrics_retention_days: int,
    max_agent_depth: int,
    data_server: str = "uvicorn",
    *,
    access_log: str = "stderr",
    otlp_endpoint: str = "",
    trace_content: bool = False,
    redis_url: str = "",
    limit_counters: str = "auto",
    replica_id: str = "",
    usage_spool: str = "",
    admin_host: list[str] | None = None,
    admin_cors_origin: list[str] | None = None,
    allowed_host: list[str] | None = None,
    allowed_origin: list[str] | None = None,
    admin_password_file: str = "",
    max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES,
    max_headers: int = DEFAULT_MAX_HEADERS,
    header_timeout: float = DEFAULT_HEADER_TIMEOUT_S,
    keep_alive_timeout: float = DEFAULT_KEEP_ALIVE_TIMEOUT_S,
    max_connections: int = 0,
    secret_key: str = "",
) -> Settings:
    for name, value in (("--addr", addr), ("--admin-addr", admin_addr)):
        try:
            split_host_port(value)
        except ValueError as exc:
            fail(f"{name}: {exc}")
    types = [t.strip().lower() for t in provider_type]
    if any(not t for t in types):
        fail("--provider-type must not be empty")
    if len(set(types)) != len(types):
        fail("--provider-type must not repeat a type")
    unknown = sorted(set(types) - set(PROVIDER_TYPES))
    if unknown:
        fail(f"--provider-type {unknown[0]!r} is not a provider type ({', '.join(PROVIDER_TYPES)})")
    if data_server not in ("uvicorn", "hypercorn"):
        fail(f"--data-server must be uvicorn or hypercorn (got {data_server!r})")
    if metrics_retention_days < 0 or max_agent_depth < 0:
        fail("--metrics-retention-days and --max-agent-depth must not be negative")
    if not access_log.strip():
        fail("--access-log must be stderr, off or a file path")
    if otlp_endpoint and not otlp_endpoint.startswith(("http://", "https://")):
        fail(f"--otlp-endpoint must be an http:// or https:// URL (got {otlp_endpoint!r})")
    if trace_content and not otlp_endpoint:
        fail("--trace-content needs --otlp-endpoint (or OTEL_EXPORTER_OTLP_ENDPOINT)")
    if redis_url and not redis_url.startswith(("redis://", "rediss://", "unix://")):
        fail("--redis-url must be a redis://, rediss:// or unix:// URL")
    if limit_counters not in LIMIT_MODES:
        fail(f"--limit-counters must be one of {', '.join(LIMIT_MODES)} (got {limit_counters!r})")
    if limit_counters == "redis" and not redis_url:
        fail("--limit-counters redis needs --redis-url")
    if replica_id and not valid_replica_id(replica_id):
        fail("--replica-id must be 1-64 letters, digits, '.', '_', ':' or '-'")
    if admin_basic_auth_hash:
        try:
            BasicAuth(admin_basic_auth_hash)
        except AdminAuthConfigError as exc:
            fail(str(exc))
    elif admin_insecure and not is_loopback(split_host_port(admin_addr)[0]):
        log.warning("admin_api_unauthenticated", extra={"admin_addr": admin_addr})
    hosts = _entries("--allowed-host", allowed_host, check_host_entry)
    origins = _entries("--allowed-origin", allowed_origin, check_origin_entry)
    admin_hosts = _entries("--admin-host", admin_host, check_host_entry)
    cors = _entries("--admin-cors-origin", admin_cors_origin, check_origin_entry)
    if max_header_bytes < 1024 or max_headers < 8:
        fail("--max-header-bytes must be at least 1024 and --max-headers at least 8")
    if header_timeout <= 0 or keep_alive_timeout <= 0:
        fail("--header-timeout and --keep-alive-timeout must be positive")
    if max_connections < 0:
        fail("--max-connections must not be negative (0: from the open-file limit)")
    key: bytes | None = None
    if secret_key:
        try:
            key = parse_key(secret_key)
        except AgwError as exc:
            fail(exc.message)
    return Settings(
        addr=addr,
        admin_addr=admin_addr,
        admin_basic_auth_hash=admin_basic_auth_hash,
        admin_insecure=admin_insecure,
        config_store=Path(DEFAULT_CONFIG_STORE if is_postgres(config_store) else config_store),
        store_url=config_store if is_postgres(config_store) else "",
        static_config=Path(static_config) if static_config else None,
        provider_types=tuple(sorted(types)),
        metrics_retention_days=metrics_retention_days or 30,
        max_agent_depth=max_agent_depth,
        data_server=data_server,
        access_log=access_log.strip(),
        otlp_endpoint=otlp_endpoint,
        trace_content=trace_content,
        redis_url=redis_url,
        limit_counters=limit_counters,
        replica_id=replica_id,
        usage_spool=usage_spool,
        admin_hosts=admin_hosts,
        admin_cors_origins=cors,
        allowed_hosts=hosts,
        allowed_origins=origins,
        admin_password_file=Path(admin_password_file) if admin_password_file else None,
        max_header_bytes=max_header_bytes,
        max_headers=max_headers,
        header_timeout_s=header_timeout,
        keep_alive_timeout_s=keep_alive_timeout,
        max_connections=max_connections,
        secret_key=key,
    )


def with_admin_password(settings: Settings) -> Settings:
    """Without ``--admin-basic-auth-hash`` and ``--admin-insecure``, the admin API takes the
    password kept in ``settings.password_file``, generated (and shown once) on first start."""
    if settings.admin_basic_auth_hash or settings.admin_insecure:
        return settings
    path = settings.password_file
    try:
        spec, generated = password_file_auth(path)
    except AdminAuthConfigError as exc:
        fail(f"admin password: {exc} (or give --admin-basic-auth-hash, or --admin-insecure)")
        raise  # unreachable: fail() exits
    if generated is not None:
        user = spec.partition(":")[0]
        # under systemd stderr goes to the journal, which more users may read: the file only
        shown = "" if os.environ.get("NOTIFY_SOCKET") else f": {generated}"
        typer.echo(
            f"agwd: generated a password for the admin API (user {user}){shown}\n"
            f"agwd: it is kept in {path} (mode 0600), where agwctl reads it; "
            "this is the only time it is shown",
            err=True,
        )
    return dataclasses.replace(settings, admin_basic_auth_hash=spec)


def _entries(flag: str, values: list[str] | None, check: Callable[[str], str]) -> tuple[str, ...]:
    """A repeatable flag whose values may also be comma-separated (as its env var gives them)."""
    out: list[str] = []
    for value in values or []:
        for part in value.split(","):
            if not part.strip():
                continue
            try:
                out.append(check(part))
            except ValueError as exc:
                fail(f"{flag}: {exc}")
    return tuple(dict.fromkeys(out))


# Allocations between young-generation GC passes (CPython's default: 700). A request's garbage is
# freed by reference counting (measured under load: the collector found next to no cycles), but
# each pass still walks the objects of every request in flight and promotes them, so older
# passes follow: at 700, GC took about 10 us of CPU per proxied request, 5 % of the gateway's
# cost. At 7,000 the passes are ten times rarer and the cyclic garbage they do find (exceptions
# with their tracebacks) waits a few milliseconds longer.
GC_GEN0_THRESHOLD = 7000


async def run(settings: Settings, worker: WorkerSlot | None = None) -> None:
    if worker is not None:
        worker.seen = worker.generation.value  # a change from here on is followed
    gateway = await Gateway.open(settings, worker)
    gc.collect()
    gc.freeze()  # what start-up built lives for the whole process: keep it out of GC passes
    gc.set_threshold(GC_GEN0_THRESHOLD, *gc.get_threshold()[1:])
    loop = asyncio.get_running_loop()

    def stop(signame: str) -> None:
        if not gateway.shutdown.is_set():
            log.info("agwd_stopping", extra={"signal": signame})
            sd_notify("STOPPING=1")
            gateway.shutdown.set()

    def reload() -> None:
        gateway.reopen_logs()

        async def do() -> None:
            sd_notify("RELOADING=1")
            try:
                await gateway.manager.reload_static()
            except AgwError as exc:
                log.error("config_reload_failed", extra={"error": exc.message})
            finally:
                sd_notify("READY=1")

        task = asyncio.create_task(do())
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    tasks: set[asyncio.Task[None]] = set()
    loop.add_signal_handler(signal.SIGTERM, stop, "SIGTERM")
    loop.add_signal_handler(signal.SIGINT, stop, "SIGINT")
    loop.add_signal_handler(signal.SIGHUP, reload)
    await gateway.serve(on_ready=lambda: sd_notify(f"READY=1\nMAINPID={os.getpid()}"))
    log.info("agwd_stopped")


def serve_worker(settings: Settings, worker: WorkerSlot) -> int:
    """One worker process of ``--workers N``: the gateway on the inherited sockets; its exit
    code."""
    try:
        with asyncio.Runner(loop_factory=_loop_factory()) as runner:
            runner.run(run(settings, worker))
    except AgwError as exc:
        log.error("worker_failed", extra={"worker": worker.index, "error": exc.message})
        return 1
    except OSError as exc:
        log.error("worker_failed", extra={"worker": worker.index, "error": str(exc)})
        return 1
    return 0


async def prepare_store(settings: Settings, workers: int) -> None:
    """Before the workers start: the store created and migrated once (and the static config
    checked); a warning when limits count per worker (``--limit-counters process``)."""
    db, manager = await open_store(settings)
    try:
        limits = sum(1 for _ in manager.state.records(LIMIT))
    finally:
        await db.close()
    if limits and settings.limit_mode == "process":
        log.warning(
            "limits_counted_per_worker",
            extra={
                "workers": workers,
                "limits": limits,
                "detail": f"each worker keeps its own limit counters: a limit can admit up to "
                f"{workers} times its caps (docs/scale-out.md)",
            },
        )


def supervise(settings: Settings, workers: int) -> int:
    """``--workers N`` (N > 1): the store prepared, both listeners bound here and inherited by
    the forked workers (agw.workers); agwd's exit code."""
    asyncio.run(prepare_store(settings, workers))
    data_sock = bind(settings.addr)
    try:
        admin_sock = bind(settings.admin_addr)
    except OSError:
        data_sock.close()
        raise
    try:
        supervisor = Supervisor(
            workers,
            data_sock,
            admin_sock,
            lambda slot: serve_worker(settings, slot),
            sd_notify,
            settings.shutdown_grace_seconds,
        )
        code = supervisor.run()
    finally:
        data_sock.close()
        admin_sock.close()
    log.info("agwd_stopped", extra={"code": code})
    return code


@app.command()
def agwd(
    addr: Annotated[str, typer.Option(help="data-plane listener")] = DEFAULT_ADDR,
    admin_addr: Annotated[
        str, typer.Option(help="admin API listener; equal to --addr serves both on one")
    ] = DEFAULT_ADMIN_ADDR,
    admin_basic_auth_hash: Annotated[
        str,
        typer.Option(
            envvar="AGW_ADMIN_BASIC_AUTH_HASH",
            help="user:bcrypt-hash for admin basic auth (make the hash with agw hash-password)",
        ),
    ] = "",
    admin_insecure: Annotated[
        bool,
        typer.Option(
            help="serve the admin API without authentication (no generated password); "
            "still Host-, Origin- and content-type-checked"
        ),
    ] = False,
    admin_password_file: Annotated[
        str,
        typer.Option(
            envvar="AGW_ADMIN_PASSWORD_FILE",
            metavar="FILE",
            help="where the generated admin password is kept (mode 0600) when no "
            "--admin-basic-auth-hash is set [default: admin-password beside the store]",
            show_default=False,
        ),
    ] = "",
    admin_host: Annotated[
        list[str] | None,
        typer.Option(
            envvar="AGW_ADMIN_HOSTS",
            metavar="NAME",
            help="a Host name the admin API answers besides IP addresses, localhost and the "
            "bound name (repeatable or comma-separated; * for any)",
        ),
    ] = None,
    admin_cors_origin: Annotated[
        list[str] | None,
        typer.Option(
            envvar="AGW_ADMIN_CORS_ORIGINS",
            metavar="ORIGIN",
            help="a browser origin (scheme://host[:port]) allowed to call the admin API "
            "(repeatable or comma-separated; default: none)",
        ),
    ] = None,
    allowed_host: Annotated[
        list[str] | None,
        typer.Option(
            envvar="AGW_ALLOWED_HOSTS",
            metavar="NAME",
            help="a Host name open, MCP and ACP routes answer besides IP addresses, localhost, "
            "the bound name and route hosts (repeatable or comma-separated; * for any)",
        ),
    ] = None,
    allowed_origin: Annotated[
        list[str] | None,
        typer.Option(
            envvar="AGW_ALLOWED_ORIGINS",
            metavar="ORIGIN",
            help="a browser origin (scheme://host[:port]) trusted on the data plane "
            "(repeatable or comma-separated; default: none)",
        ),
    ] = None,
    max_header_bytes: Annotated[
        int, typer.Option(help="request line and headers, in bytes, on both listeners (431)")
    ] = DEFAULT_MAX_HEADER_BYTES,
    max_headers: Annotated[
        int, typer.Option(help="header lines per request on both listeners (431)")
    ] = DEFAULT_MAX_HEADERS,
    header_timeout: Annotated[
        float, typer.Option(help="seconds a connection may take to send a request's headers")
    ] = DEFAULT_HEADER_TIMEOUT_S,
    keep_alive_timeout: Annotated[
        float, typer.Option(help="seconds an idle kept-alive connection stays open")
    ] = DEFAULT_KEEP_ALIVE_TIMEOUT_S,
    max_connections: Annotated[
        int,
        typer.Option(
            help="open connections per listener (0: from the open-file limit); more get 503"
        ),
    ] = 0,
    config_store: Annotated[
        str,
        typer.Option(
            help="Config store: a SQLite file (created with its parent directories) or a "
            "PostgreSQL URL, postgresql://user@host:port/database"
        ),
    ] = DEFAULT_CONFIG_STORE,
    static_config: Annotated[
        str, typer.Option(help="GatewayBundle YAML loaded read-only (reloaded on SIGHUP)")
    ] = "",
    provider_type: Annotated[
        list[str] | None,
        typer.Option(help="enable only these provider types (repeatable; default: all)"),
    ] = None,
    metrics_retention_days: Annotated[int, typer.Option(help="usage-event retention")] = 30,
    max_agent_depth: Annotated[
        int, typer.Option(help="reject requests whose X-Agent-Depth reaches this (0: off)")
    ] = 0,
    log_level: Annotated[str, typer.Option(help="debug, info, warning or error")] = "info",
    data_server: Annotated[
        str,
        typer.Option(help="HTTP server of the data listener: uvicorn or hypercorn"),
    ] = "uvicorn",
    access_log: Annotated[
        str,
        typer.Option(
            metavar="stderr|off|FILE",
            help="one JSON line per data-plane request: to stderr, to FILE (appended; reopened "
            "on SIGHUP), or off",
        ),
    ] = "stderr",
    otlp_endpoint: Annotated[
        str,
        typer.Option(
            envvar="OTEL_EXPORTER_OTLP_ENDPOINT",
            metavar="URL",
            help="export a span per request with OpenTelemetry, OTLP over HTTP, to this base URL "
            "(/v1/traces is appended)",
            show_default=False,
        ),
    ] = "",
    trace_content: Annotated[
        bool,
        typer.Option(help="put prompts and completions on the exported LLM spans"),
    ] = False,
    redis_url: Annotated[
        str,
        typer.Option(
            envvar="AGW_REDIS_URL",
            metavar="URL",
            help="keep the limit counters in this Redis, shared by every replica "
            "(redis://[:password@]host:port/db); default: in this process",
            show_default=False,
        ),
    ] = "",
    limit_counters: Annotated[
        str,
        typer.Option(
            envvar="AGW_LIMIT_COUNTERS",
            metavar="MODE",
            help="where the limit counters live: process (each agwd its own), store (caps "
            "leased through the config store, shared by every process that opens it), redis "
            "(--redis-url); auto: redis with --redis-url, else store with a PostgreSQL store or "
            "--workers above 1, else process",
        ),
    ] = "auto",
    replica_id: Annotated[
        str,
        typer.Option(
            envvar="AGW_REPLICA_ID",
            metavar="NAME",
            help="this replica's name, put into the ACP session and connection ids it hands out "
            "so that other replicas name it (docs/scale-out.md); default: untagged ids",
            show_default=False,
        ),
    ] = "",
    usage_spool: Annotated[
        str,
        typer.Option(
            envvar="AGW_USAGE_SPOOL",
            metavar="DIR",
            help="keep each queued usage event in a file under DIR until it is written, so that "
            "a killed agwd loses none (docs/observability.md); off: no spool; default: "
            "usage-spool beside the SQLite store (./data/usage-spool with a PostgreSQL store)",
            show_default=False,
        ),
    ] = "",
    workers: Annotated[
        int,
        typer.Option(
            help="worker processes serving the data listener (the first also serves the admin "
            "API); above 1 needs --admin-addr other than --addr"
        ),
    ] = 1,
) -> None:
    """Run the agw gateway daemon: data plane, admin API and SQLite config store."""
    settings = build_settings(
        addr,
        admin_addr,
        admin_basic_auth_hash,
        admin_insecure,
        config_store,
        static_config,
        provider_type or [],
        metrics_retention_days,
        max_agent_depth,
        data_server,
        access_log=access_log,
        otlp_endpoint=otlp_endpoint,
        trace_content=trace_content,
        redis_url=redis_url,
        limit_counters=limit_counters,
        replica_id=replica_id,
        usage_spool=usage_spool,
        admin_host=admin_host,
        admin_cors_origin=admin_cors_origin,
        allowed_host=allowed_host,
        allowed_origin=allowed_origin,
        admin_password_file=admin_password_file,
        max_header_bytes=max_header_bytes,
        max_headers=max_headers,
        header_timeout=header_timeout,
        keep_alive_timeout=keep_alive_timeout,
        max_connections=max_connections,
        # from the environment only: a flag would show the key to every user (ps, /proc)
        secret_key=os.environ.get(KEY_ENV, ""),
    )
    if not 1 <= workers <= MAX_WORKERS:
        fail(f"--workers must be between 1 and {MAX_WORKERS} (got {workers})")
    if workers > 1 and shares_listener(settings):
        fail(
            "--workers above 1 needs --admin-addr other than --addr (worker 0 serves the admin API)"
        )
    settings = with_admin_password(dataclasses.replace(settings, workers=workers))
    setup_logging(log_level)
    if workers > 1:
        try:
            code = supervise(settings, workers)
        except AgwError as exc:
            fail(exc.message)
        except OSError as exc:
            fail(str(exc))
        if code:
            fail("a worker failed to start (its log line: worker_failed_to_start)")
        return
    try:
        with asyncio.Runner(loop_factory=_loop_factory()) as runner:
            runner.run(run(settings))
    except AgwError as exc:
        fail(exc.message)
    except OSError as exc:
        fail(str(exc))


def main() -> None:
    load_env_files()
    app(prog_name="agwd")


if __name__ == "__main__":
    main()
