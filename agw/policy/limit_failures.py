"""A shared limit backend that does not answer (Redis, or the store that leases the caps):
each limit of the request fails open or closed as its ``on_backend_failure`` says, counted
on the gateway's /metrics (docs/limits.md, "When Redis does not answer")."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterator

from prometheus_client.metrics_core import CounterMetricFamily, Metric

from agw.errors import Refusal
from agw.policy.limit_types import Charge, Plan

log = logging.getLogger("agw.policy.limits")

WARN_EVERY_S = 30.0


class BackendFailures:
    """The Prometheus counters of the shared backend (a collector on the gateway's registry),
    and its throttled log line."""

    def __init__(self) -> None:
        self.failures: dict[tuple[str, str], int] = {}  # (limit id, open | closed)
        self.settles_dropped = 0
        self._warned_at = -math.inf

    def count(self, limit_id: str, mode: str) -> None:
        key = (limit_id, mode)
        self.failures[key] = self.failures.get(key, 0) + 1

    def failed(self, what: str, exc: BaseException) -> None:
        """Logs ``limit_backend_unreachable``, at most once every :data:`WARN_EVERY_S`."""
        now = time.monotonic()
        if now - self._warned_at >= WARN_EVERY_S:
            self._warned_at = now
            log.warning("limit_backend_unreachable", extra={"call": what, "error": repr(exc)})

    def offline(self, plan: Plan, exc: BaseException, what: str) -> None:
        """The backend did not answer ``plan``'s reservation: each limit counted open or
        closed; the 503 raised when one fails closed (``what``: the backend, in its words),
        else the request goes on uncounted."""
        self.failed("reserve", exc)
        closed: Charge | None = None
        for charge in plan.charges:
            spec = charge.spec
            mode = "closed" if spec.enforce and spec.on_failure == "closed" else "open"
            self.count(spec.id, mode)
            if mode == "closed" and closed is None:
                closed = charge
        if closed is not None:
            raise Refusal(
                503,
                "limit_backend_unavailable",
                f'limit "{closed.spec.id}" cannot be checked: {what} unreachable and this '
                "limit fails closed; retry later",
                retry_after=5,
            )

    def collect(self) -> Iterator[Metric]:
        failures = CounterMetricFamily(
            "agw_limit_backend_failures",
            "Limit checks the shared limit backend could not answer, by limit and by how the "
            "limit failed (open: admitted uncounted; closed: refused).",
            labels=["limit_id", "mode"],
        )
        for (limit_id, mode), n in sorted(self.failures.items()):
            failures.add_metric([limit_id, mode], n)
        yield failures
        dropped = CounterMetricFamily(
            "agw_limit_settles_dropped",
            "Settles of finished requests the shared limit backend never received (their "
            "holds stay until the counter expires).",
        )
        dropped.add_metric([], self.settles_dropped)
        yield dropped
