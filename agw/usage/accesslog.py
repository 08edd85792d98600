"""The access log: one JSON line per data-plane request, to stderr or a file.

A recorder tap (:meth:`AccessLog.__call__`) writes the line of every request that reached a
route, from its usage event, as the event is emitted; the dispatcher calls
:meth:`AccessLog.unmatched` for requests no route matched. Fields, in this order (absent ones
are left out):

``time`` (RFC 3339, ms, UTC, when the request finished), ``trace_id``, ``span_id``,
``session_id``, ``agent_id``, ``virtual_key_id``, ``user_id``, ``org_id``, ``route_id``, ``kind``,
``method``, ``path``
(no query string), ``upstream`` (provider or service id), ``model``, ``operation``, ``tool``,
``status``, ``error_type``, ``error_class``, ``tokens_in``, ``tokens_out``, ``latency_ms``,
``overhead_ms``, ``ttft_ms``, and under ``agwd --workers N`` (N > 1) ``worker``, the index of
the worker process that served the request.

Never a key (only the virtual key's id) or a token (only the user and org its provider named),
a prompt, a completion or tool arguments. Every value
is bounded as in the usage rows (:meth:`UsageEvent.bound`, before the recorder's taps see an
event; :meth:`AccessLog.unmatched` cuts the method and path itself), so a client cannot make a
line longer than a few KiB or unencodable.

Lines are buffered and written together, whole, with one ``write(2)`` on a file opened for
appending: :data:`FLUSH_INTERVAL_S` after the first buffered line, or as soon as
:data:`FLUSH_BYTES` are waiting, and on :meth:`reopen` and :meth:`close`. A write per line cost
the data plane about 25 us of CPU per request on the benchmark machine (docs/performance.md);
a batch costs one. Lines never interleave or split; a crash loses at most the last
:data:`FLUSH_INTERVAL_S` of lines. :meth:`reopen` (agwd's SIGHUP) starts a new file after log
rotation.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from pathlib import Path

import orjson

from agw.clock import now_ms
from agw.usage.events import (
    TEXT_LIMIT,
    TEXT_LIMITS,
    A2aUsageEvent,
    LlmUsageEvent,
    McpUsageEvent,
    UsageEvent,
    clip,
)
from agw.usage.taxonomy import error_class

log = logging.getLogger(__name__)

STDERR = "stderr"
OFF = "off"
FLUSH_INTERVAL_S = 0.2
FLUSH_BYTES = 64 * 1024


_second: list[object] = [None, ""]  # the last second formatted, and its text


def _time(ms: int) -> str:
    """:func:`agw.clock.rfc3339_ms`'s text, with the date and time of a second formatted once
    (this runs per request; the general formatter builds a datetime each time)."""
    second = ms // 1000
    if _second[0] != second:
        _second[0], _second[1] = second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
    return f"{_second[1]}.{ms % 1000:03d}Z"


def line_of(event: UsageEvent) -> dict[str, object]:
    """The access-log fields of one request, from its usage event."""
    out: dict[str, object] = {
        "time": _time(event.finished_at),
        "trace_id": event.trace_id,
        "span_id": event.span_id,
        "session_id": getattr(event, "session_id", None),
        "agent_id": event.agent_id,
        "virtual_key_id": event.virtual_key_id,
        "user_id": getattr(event, "user_id", None),
        "org_id": getattr(event, "org_id", None),
        "route_id": event.route_id,
        "kind": event.route_kind,
        "method": event.http_method,
        "path": event.http_path,
    }
    if isinstance(event, LlmUsageEvent):
        out["upstream"] = event.provider_id
        out["model"] = event.upstream_model or event.logical_model
        out["operation"] = event.api_operation
    elif isinstance(event, McpUsageEvent):
        out["upstream"] = event.service_id
        out["operation"] = event.method
        out["tool"] = event.tool_name
    elif isinstance(event, A2aUsageEvent):
        out["upstream"] = event.service_id
        out["operation"] = event.method
    else:
        out["upstream"] = getattr(event, "service_id", None)
        out["operation"] = getattr(event, "operation", None)
    out["status"] = event.status_code
    out["error_type"] = event.error_type
    out["error_class"] = error_class(event)
    if isinstance(event, LlmUsageEvent):
        out["tokens_in"] = event.input_tokens
        out["tokens_out"] = event.output_tokens
    out["latency_ms"] = event.latency_ms
    if event.overhead_ms is not None:
        out["overhead_ms"] = round(event.overhead_ms, 3)
    if event.ttft_ms is not None:
        out["ttft_ms"] = round(event.ttft_ms, 3)
    return {k: v for k, v in out.items() if v is not None}


class AccessLog:
    """Writes access-log lines to ``target``: ``"stderr"`` or a file path (created, appended)."""

    def __init__(self, target: str, *, worker: int | None = None) -> None:
        self.target = target
        self.worker = worker  # agwd --workers: the index put on each line as ``worker``
        self._fd = -1
        self._own = False
        self._buffer = bytearray()
        self._timer: asyncio.TimerHandle | None = None
        self.lines = 0
        self.failures = 0
        self.reopen()

    def reopen(self) -> None:
        """(Re)open the file, as after log rotation; stderr stays as it is. What is buffered
        goes to the old file first."""
        self.flush()
        if self.target == STDERR:
            self._fd, self._own = 2, False
            return
        path = Path(self.target)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        old, self._fd, self._own = self._fd, fd, True
        if old >= 0 and old != fd:
            os.close(old)

    def close(self) -> None:
        self.flush()
        if self._own and self._fd >= 0:
            os.close(self._fd)
        self._fd = -1

    def __call__(self, event: UsageEvent) -> None:
        self._write(line_of(event))

    def unmatched(self, method: str, path: str, status: int, trace_id: str | None = None) -> None:
        """A request no route matched (answered 404 by the dispatcher)."""
        line: dict[str, object] = {"time": _time(now_ms())}
        if trace_id is not None:
            line["trace_id"] = trace_id
        line |= {
            "method": clip(method, TEXT_LIMIT),
            "path": clip(path, TEXT_LIMITS["http_path"]),
            "status": status,
            "error_type": "route_not_found",
            "error_class": "client",
        }
        self._write(line)

    def _write(self, fields: dict[str, object]) -> None:
        if self._fd < 0:
            return
        if self.worker is not None:
            fields["worker"] = self.worker
        try:
            line = orjson.dumps(fields)
        except TypeError:  # an event built without bound(): lose the line, not the tap
            self.failures += 1
            return
        self._buffer += line
        self._buffer += b"\n"
        self.lines += 1
        if len(self._buffer) >= FLUSH_BYTES:
            self.flush()
        elif self._timer is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:  # no event loop (a direct call): write now
                self.flush()
            else:
                self._timer = loop.call_later(FLUSH_INTERVAL_S, self.flush)

    def flush(self) -> None:
        """Write the buffered lines (a failure loses them, counted and logged)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._buffer or self._fd < 0:
            return
        data, self._buffer = bytes(self._buffer), bytearray()
        try:
            view = memoryview(data)
            while view:  # a regular file takes it whole; a pipe may take part of it
                view = view[os.write(self._fd, view) :]
        except OSError as exc:
            self.failures += 1
            if self.failures == 1 or self.failures % 1000 == 0:
                log.warning(
                    "access_log_write_failed", extra={"error": exc.strerror, "count": self.failures}
                )
