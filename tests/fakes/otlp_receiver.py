"""A fake OpenTelemetry collector (OTLP over HTTP, traces only) run as a real process for tests.

    python tests/fakes/otlp_receiver.py --port 0 --log spans.jsonl

Prints ``LISTENING <port>`` on stdout once it accepts connections. ``POST /v1/traces`` takes an
``ExportTraceServiceRequest`` in protobuf (``application/x-protobuf``; gzip and deflate bodies
are inflated), answers an empty ``ExportTraceServiceResponse``, and appends one JSON line per
span to the log, also served by ``GET /spans`` (a JSON array, oldest first)::

    {"trace_id": "<32 hex>", "span_id": "<16 hex>", "parent_span_id": "<16 hex>" | "",
     "name", "kind": "SPAN_KIND_SERVER", "start_ns", "end_ns",
     "status": {"code": "STATUS_CODE_ERROR", "message"}, "attributes": {key: value},
     "resource": {key: value}, "scope": {"name", "version"}}

Any other content type gets 415, any other path 404. ``--status N`` answers every export with
HTTP N instead (a collector that refuses).

In a test::

    from tests.fakes.otlp_receiver import start_otlp_receiver

    with start_otlp_receiver(tmp_path) as otlp:
        exporter = TraceExporter(otlp.url)      # http://127.0.0.1:PORT (no /v1/traces)
        ...
        (span,) = otlp.wait_spans(lambda s: s["trace_id"] == trace_id)

The process runs in its own process group and the whole group is killed on exit.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from aiohttp import web
from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

SCRIPT = Path(__file__).resolve()
START_TIMEOUT_S = 15.0
PROTOBUF = "application/x-protobuf"

# ------------------------------------------------------------------------------ the server


def value_of(value: AnyValue) -> Any:
    kind = value.WhichOneof("value")
    if kind is None:
        return None
    if kind == "array_value":
        return [value_of(v) for v in value.array_value.values]
    if kind == "kvlist_value":
        return attributes_of(value.kvlist_value.values)
    if kind == "bytes_value":
        return value.bytes_value.hex()
    return getattr(value, kind)


def attributes_of(items: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    item: KeyValue
    for item in items:
        out[item.key] = value_of(item.value)
    return out


def spans_of(request: ExportTraceServiceRequest) -> list[dict[str, Any]]:
    out = []
    for rs in request.resource_spans:
        resource = attributes_of(rs.resource.attributes)
        for ss in rs.scope_spans:
            scope = {"name": ss.scope.name, "version": ss.scope.version}
            for span in ss.spans:
                out.append(
                    {
                        "trace_id": span.trace_id.hex(),
                        "span_id": span.span_id.hex(),
                        "parent_span_id": span.parent_span_id.hex(),
                        "name": span.name,
                        "kind": Span.SpanKind.Name(span.kind),
                        "start_ns": span.start_time_unix_nano,
                        "end_ns": span.end_time_unix_nano,
                        "status": {
                            "code": Status.StatusCode.Name(span.status.code),
                            "message": span.status.message,
                        },
                        "attributes": attributes_of(span.attributes),
                        "resource": resource,
                        "scope": scope,
                    }
                )
    return out


def create_receiver_app(log: IO[str] | None, status: int = 0) -> web.Application:
    received: list[dict[str, Any]] = []

    async def export(request: web.Request) -> web.Response:
        if status:
            return web.Response(status=status, text="refused by --status")
        if request.content_type != PROTOBUF:
            return web.Response(status=415, text=f"expected {PROTOBUF}")
        message = ExportTraceServiceRequest()
        try:
            message.ParseFromString(await request.read())
        except DecodeError as exc:
            return web.Response(status=400, text=f"bad protobuf: {exc}")
        spans = spans_of(message)
        received.extend(spans)
        if log is not None:
            log.write("".join(json.dumps(s, sort_keys=True) + "\n" for s in spans))
            log.flush()
        body = ExportTraceServiceResponse().SerializeToString()
        return web.Response(body=body, content_type=PROTOBUF)

    async def listing(request: web.Request) -> web.Response:
        return web.json_response(received)

    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_post("/v1/traces", export)
    app.router.add_get("/spans", listing)
    return app


async def serve(args: argparse.Namespace, log: IO[str] | None) -> None:
    runner = web.AppRunner(create_receiver_app(log, args.status), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", args.port)
    await site.start()
    print(f"LISTENING {runner.addresses[0][1]}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--port", type=int, default=0, help="0: pick a free port")
    ap.add_argument("--log", default="", help="JSONL span log")
    ap.add_argument("--status", type=int, default=0, help="answer every export with HTTP N")
    args = ap.parse_args(argv)
    log = open(args.log, "a", encoding="utf-8") if args.log else None  # noqa: SIM115
    try:
        asyncio.run(serve(args, log))
    finally:
        if log is not None:
            log.close()


# ------------------------------------------------------------------------------ the test handle


@dataclass
class OtlpReceiver:
    url: str  # http://127.0.0.1:PORT, the OTLP base URL (an OTEL_EXPORTER_OTLP_ENDPOINT)
    log_path: Path
    proc: subprocess.Popen[bytes]
    stdout_path: Path
    stderr_path: Path

    def spans(self) -> list[dict[str, Any]]:
        """Every span received so far, oldest first."""
        text = self.log_path.read_text(encoding="utf-8") if self.log_path.exists() else ""
        return [json.loads(line) for line in text.splitlines() if line.strip()]

    def wait_spans(
        self,
        match: Callable[[dict[str, Any]], bool] = lambda span: True,
        count: int = 1,
        timeout: float = 10.0,
    ) -> list[dict[str, Any]]:
        """The received spans ``match`` accepts, once there are at least ``count`` of them
        (or ``timeout`` s passed: then whatever matched)."""
        deadline = time.monotonic() + timeout
        found = [s for s in self.spans() if match(s)]
        while len(found) < count and time.monotonic() < deadline:
            time.sleep(0.05)
            found = [s for s in self.spans() if match(s)]
        return found

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace") if self.stderr_path.exists() else ""

    def stop(self) -> None:
        """Kill the process group (TERM, then KILL after 5 s) and reap the process."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=5)


@contextlib.contextmanager
def start_otlp_receiver(tmp_path: Path, *args: str) -> Iterator[OtlpReceiver]:
    """Run ``otlp_receiver.py --port 0 --log <tmp>/otlp-N.jsonl *args``; yield it once it
    listens. Several receivers may share one ``tmp_path``."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    n = 0
    while (tmp_path / f"otlp-{n}.jsonl").exists() and n < 1000:
        n += 1
    stem = tmp_path / f"otlp-{n}"
    log_path = stem.with_suffix(".jsonl")
    log_path.touch()
    stdout_path, stderr_path = stem.with_suffix(".stdout"), stem.with_suffix(".stderr")
    cmd = [sys.executable, str(SCRIPT), "--port", "0", "--log", str(log_path), *args]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with open(stdout_path, "wb") as out, open(stderr_path, "wb") as err:
        proc = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=err, env=env,
            start_new_session=True,
        )  # fmt: skip
    receiver = OtlpReceiver("", log_path, proc, stdout_path, stderr_path)
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not receiver.url:
            for line in stdout_path.read_text(errors="replace").splitlines():
                if line.startswith("LISTENING "):
                    receiver.url = f"http://127.0.0.1:{int(line.split()[1])}"
            if receiver.url:
                break
            if proc.poll() is not None:
                raise RuntimeError(f"otlp receiver exited: {receiver.stderr()[-2000:]}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"otlp receiver not listening: {receiver.stderr()[-2000:]}")
            time.sleep(0.02)
        yield receiver
    finally:
        receiver.stop()


if __name__ == "__main__":
    main()
