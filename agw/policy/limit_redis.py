"""Limit counters in Redis, shared by every replica (``agwd --redis-url``, docs/scale-out.md).

:class:`RedisBackend` has the semantics of :class:`~agw.policy.limit_backend.InProcessBackend`
(windows, the clamp, shadow limits, cut and finish, settling into the window an answer ends
in), each call one Lua script that runs atomically in Redis: :data:`RESERVE` checks and holds
all of a request's counters at once (or none), :data:`EXTEND` takes more for a stream,
:data:`SETTLE` drops a hold and counts what was used. What a request holds is also kept under
a key of its own (``<prefix>hold:<random>``), which its settle takes: a settle sent twice (a
retry after a timeout) counts once, and a reservation that timed out on the client's side is
undone by a settle of nothing, whether or not Redis ran it. A counter is one hash per limit, window
and subject (``<prefix>lim:<limit>:<window>:<subject>``: ``u1..u6`` used, ``h1..h6`` held,
``s``/``e`` the window's bounds) that expires :data:`KEY_MARGIN_S` after its window ends
(lifetime counters do not expire).

``settle`` is synchronous (the planes call it as an answer ends): it queues the call, which a
few tasks run, retried with backoff for :data:`SETTLE_RETRY_S`; when the bounded queue is full,
the retries are spent or agwd stops with settles still queued (5 s at most), it is dropped,
logged and counted (``agw_limit_settles_dropped_total``): that hold then stays until the
counter expires (a counter in use keeps it: deleting its key clears it). When Redis cannot be
reached within :data:`TIMEOUT_S`, each limit of a request fails open (admitted uncounted) or
closed (a 503) as its ``on_backend_failure`` says, counted in
``agw_limit_backend_failures_total{limit_id,mode}`` and logged at most once per
:data:`~agw.policy.limit_failures.WARN_EVERY_S`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import secrets
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from redis.asyncio import BlockingConnectionPool, Redis
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeout

from agw.config.limits import window_seconds
from agw.errors import AgwError
from agw.policy.limit_backend import deny
from agw.policy.limit_failures import BackendFailures
from agw.policy.limit_grant import Grant
from agw.policy.limit_redis_lua import EXTEND, RESERVE, RESET, SETTLE
from agw.policy.limit_types import (
    NO_CAP,
    Charge,
    Counter,
    Denial,
    Extension,
    LimitSpec,
    Plan,
    Vector,
    hold_of,
    window_bounds,
    zero,
)

log = logging.getLogger(__name__)

TIMEOUT_S = 0.5  # connecting, or one Redis call; past it the limits fail open or closed
CONNECTIONS = 128  # per process; a burst beyond waits for a free one ...
POOL_WAIT_S = 2.0  # ... this long at most (a busy process is no outage), then fails the same
KEY_MARGIN_S = 3600  # a counter outlives its window by this much (streams that end late)
HOLD_TTL_S = 86400  # what a request holds is forgotten (never settled) after a day in flight
SETTLE_QUEUE = 10_000  # settles waiting for Redis; more are dropped (and counted)
SETTLE_TASKS = 4
SETTLE_RETRY_S = 120.0  # a settle Redis does not take is retried this long (0.1 s, 0.2 s, ... 5 s)
FAILURES = (RedisError, OSError, TimeoutError)
_UNREACHABLE = "the shared limit counters (Redis) are unreachable; retry later"


class LimitBackendUnavailable(AgwError):
    """The admin API's status or reset of the counters while Redis does not answer."""

    status = 503
    code = "limit_backend_unavailable"


@dataclass(slots=True, eq=False)  # one request's: compared by identity, as Grant
class RedisGrant(Grant):
    """A grant whose hold Redis keeps under ``hold_key`` until its settle takes it."""

    hold_key: str = ""


@dataclass(slots=True, eq=False)
class OfflineGrant(Grant):
    """A request admitted while Redis was unreachable and all its limits fail open: it holds
    nothing, so extending and settling it do nothing."""


_FIELDS = ("s", "e", "u1", "u2", "u3", "u4", "u5", "u6", "h1", "h2", "h3", "h4", "h5", "h6")


def _escape(limit_id: str) -> str:
    """A limit id in a key: without ``:``, which separates the key's parts."""
    return limit_id.replace("%", "%25").replace(":", "%3A")


def _split(key: str, head: str) -> tuple[str, str, str]:
    """(limit id, window, subject) of a counter's key."""
    lid, window, subject = key[len(head) :].split(":", 2)
    return lid.replace("%3A", ":").replace("%25", "%"), window, subject


def _glob(text: str) -> str:
    """``text`` matched literally in a SCAN pattern."""
    return "".join("\\" + ch if ch in "*?[]\\" else ch for ch in text)


def _end(end: float) -> float:
    return -1 if end == math.inf else end


def _vectors(values: list[bytes], at: int) -> tuple[float, float, Vector, Vector]:
    """(start, end, used, held) from a script's answer, from index ``at``."""
    end = float(values[at + 1])
    used = [float(x) for x in values[at + 2 : at + 8]]
    held = [float(x) for x in values[at + 8 : at + 14]]
    return float(values[at]), math.inf if end < 0 else end, used, held


class RedisBackend:
    """The limit counters in Redis at ``url`` (see the module docstring). ``prefix`` starts
    every key (one per deployment, or per test); ``clock``: unix seconds."""

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "agw:",
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.clock = clock
        self.prefix = prefix
        self.metrics = BackendFailures()
        pool = BlockingConnectionPool.from_url(
            url,
            max_connections=CONNECTIONS,
            timeout=POOL_WAIT_S,
            socket_timeout=TIMEOUT_S,  # the URL's own socket_timeout=... wins
            socket_connect_timeout=TIMEOUT_S,
        )
        self.redis = Redis(connection_pool=pool)
        self._reserve = self.redis.register_script(RESERVE)
        self._extend = self.redis.register_script(EXTEND)
        self._settle = self.redis.register_script(SETTLE)
        self._reset = self.redis.register_script(RESET)
        # settles to send: (charges, hold key, what was used, when)
        self._queue: asyncio.Queue[tuple[list[Charge], str, Vector, float]] = asyncio.Queue(
            SETTLE_QUEUE
        )
        self._tasks: list[asyncio.Task[None]] = []

    def _key(self, spec: LimitSpec, subject: str) -> str:
        return f"{self.prefix}lim:{_escape(spec.id)}:{spec.window}:{subject}"

    def _failed(self, what: str, exc: BaseException) -> None:
        self.metrics.failed(what, exc)

    async def reserve(self, plan: Plan) -> Grant | Denial:
        now = self.clock()
        fixed, per = plan.fixed, plan.per_output
        keys: list[str] = []
        args: list[float | int] = [now, plan.want_output, *fixed, *per, KEY_MARGIN_S, HOLD_TTL_S]
        for charge in plan.charges:
            spec = charge.spec
            start, end = window_bounds(spec.window, spec.window_s, now)
            keys.append(self._key(spec, charge.subject))
            args += [start, _end(end), int(spec.enforce), spec.min_output_tokens]
            args += [-1 if cap == NO_CAP else cap for cap in spec.caps]
        hold_key = f"{self.prefix}hold:{secrets.token_hex(12)}"
        try:
            out = await self._reserve(keys=[*keys, hold_key], args=args)
        except FAILURES as exc:
            if isinstance(exc, (RedisTimeout, TimeoutError)):  # it may have run: undo it if so
                self._enqueue(plan.charges, hold_key, zero())
            return self._offline(plan, now, exc)
        if int(out[0]) == 0:
            charge = plan.charges[int(out[1]) - 1]
            counter = self._counter(charge, out, 3)
            return deny(charge, counter, int(out[2]) - 1, fixed, per, now)
        granted, clamped, shadow = int(out[1]), int(out[2]), int(out[3])
        counters = [self._counter(c, out, 4 + 14 * i) for i, c in enumerate(plan.charges)]
        hold = hold_of(fixed, per, granted)
        warned = 0
        for i, (charge, counter) in enumerate(zip(plan.charges, counters, strict=True)):
            used, held, levels = counter.used, counter.held, charge.spec.levels
            if any(used[m] + held[m] >= levels[m] for m in charge.spec.capped):
                warned |= 1 << i
        return RedisGrant(
            plan.charges,
            counters,
            hold,
            granted,
            plan.charges[clamped - 1].spec.id if clamped else None,
            plan.charges[shadow - 1].spec.id if shadow else None,
            now,
            warned,
            hold_key=hold_key,
        )

    def _counter(self, charge: Charge, out: list[bytes], at: int) -> Counter:
        start, end, used, held = _vectors(out, at)
        spec = charge.spec
        return Counter(spec.id, charge.subject, spec.window, start, end, used, held)

    def _offline(self, plan: Plan, now: float, exc: BaseException) -> OfflineGrant:
        """Redis did not answer: admit uncounted, or refuse if a limit fails closed."""
        self.metrics.offline(plan, exc, "the shared limit counters (Redis) are")
        return OfflineGrant([], [], zero(), plan.want_output, now=now)

    async def extend(self, grant: Grant, extra: Vector) -> Extension:
        if not isinstance(grant, RedisGrant):  # admitted uncounted
            return Extension()
        keys: list[str] = []
        args: list[float | int] = list(extra)
        for charge in grant.charges:
            spec = charge.spec
            keys.append(self._key(spec, charge.subject))
            args.append(0 if not spec.enforce else 2 if spec.on_exceed == "cut" else 1)
            args += [-1 if cap == NO_CAP else cap for cap in spec.caps]
        try:
            out = await self._extend(keys=[*keys, grant.hold_key], args=args)
        except FAILURES as exc:  # an admitted stream goes on; it settles what it used
            self._failed("extend", exc)
            return Extension()
        if int(out[0]) == 2:  # its hold is gone (a day in flight): nothing more to count
            return Extension()
        if int(out[0]) == 0:
            return Extension(cut_by=grant.charges[int(out[1]) - 1])
        for i in range(len(grant.held)):
            grant.held[i] += extra[i]
        return Extension(exceeded=tuple(grant.charges[int(i) - 1].spec.id for i in out[1:]))

    def settle(self, grant: Grant, actual: Vector) -> None:
        if grant.settled or not isinstance(grant, RedisGrant):
            return
        grant.settled = True
        self._enqueue(grant.charges, grant.hold_key, list(actual))

    def _enqueue(self, charges: list[Charge], hold_key: str, actual: Vector) -> None:
        """Queues a settle (sent by the settle tasks, started with the first)."""
        if not self._tasks:
            loop = asyncio.get_running_loop()
            self._tasks = [loop.create_task(self._settler()) for _ in range(SETTLE_TASKS)]
        try:
            self._queue.put_nowait((charges, hold_key, actual, self.clock()))
        except asyncio.QueueFull:
            self._dropped("queue full")

    def _dropped(self, why: str, n: int = 1) -> None:
        self.metrics.settles_dropped += n
        log.warning("limit_settle_dropped", extra={"reason": why, "count": n})

    async def _settler(self) -> None:
        queue = self._queue
        while True:
            charges, hold_key, actual, now = await queue.get()
            try:
                await self._settle_now(charges, hold_key, actual, now)
            finally:
                queue.task_done()

    async def _settle_now(
        self, charges: list[Charge], hold_key: str, actual: Vector, now: float
    ) -> None:
        keys: list[str] = []
        args: list[float | int] = [now, KEY_MARGIN_S, *actual]
        for charge in charges:
            spec = charge.spec
            start, end = window_bounds(spec.window, spec.window_s, now)
            keys.append(self._key(spec, charge.subject))
            args += [start, _end(end)]
        keys.append(hold_key)
        delay, deadline = 0.1, time.monotonic() + SETTLE_RETRY_S
        while True:
            try:
                await self._settle(keys=keys, args=args)
                return
            except FAILURES as exc:
                self._failed("settle", exc)
            if time.monotonic() + delay > deadline:
                self._dropped("unreachable")
                return
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)

    # ---------------------------------------------------------------------------- admin

    async def _keys(self, pattern: str) -> list[str]:
        return [k.decode() async for k in self.redis.scan_iter(match=pattern, count=500)]

    async def counters(self, limit_id: str | None = None) -> list[Counter]:
        """The counters (of one limit) in Redis, each as of the current window."""
        try:
            return await self._counters(limit_id)
        except FAILURES as exc:
            self._failed("counters", exc)
            raise LimitBackendUnavailable(_UNREACHABLE) from exc

    async def _counters(self, limit_id: str | None) -> list[Counter]:
        head = f"{self.prefix}lim:"
        pattern = _glob(head + (f"{_escape(limit_id)}:" if limit_id is not None else "")) + "*"
        keys = sorted(await self._keys(pattern))
        async with self.redis.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.hmget(key, *_FIELDS)
            rows = await pipe.execute()
        now = self.clock()
        out: list[Counter] = []
        for key, row in zip(keys, rows, strict=True):
            if row[1] is None:
                continue
            lid, window, subject = _split(key, head)
            start, end, used, held = _vectors([b"0" if x is None else x for x in row], 0)
            if now >= end:
                start, end = window_bounds(window, window_seconds(window), now)
                used = zero()
            out.append(Counter(lid, subject, window, start, end, used, held))
        return out

    async def reset(self, limit_id: str, subject: str | None = None) -> int:
        """Forget what was used (holds of requests in flight stay); returns how many counters."""
        try:
            return await self._reset_keys(limit_id, subject)
        except FAILURES as exc:
            self._failed("reset", exc)
            raise LimitBackendUnavailable(_UNREACHABLE) from exc

    async def _reset_keys(self, limit_id: str, subject: str | None) -> int:
        pattern = _glob(f"{self.prefix}lim:{_escape(limit_id)}:") + "*"
        keys = [
            k
            for k in await self._keys(pattern)
            if subject is None or _split(k, f"{self.prefix}lim:")[2] == subject
        ]
        return int(await self._reset(keys=keys)) if keys else 0

    def forget(self, limit_ids: Iterable[str]) -> None:
        """Drop the counters of limits that no longer exist (a config change), in the
        background."""
        asyncio.get_running_loop().create_task(self._forget(list(limit_ids)))

    async def _forget(self, limit_ids: list[str]) -> None:
        try:
            for limit_id in limit_ids:
                keys = await self._keys(_glob(f"{self.prefix}lim:{_escape(limit_id)}:") + "*")
                if keys:
                    await self.redis.delete(*keys)
        except FAILURES as exc:
            self._failed("forget", exc)

    async def flush(self, timeout_s: float = 5.0) -> None:
        """Waits (``timeout_s`` at most) until the queued settles have reached Redis."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._queue.join(), timeout_s)

    async def close(self) -> None:
        """Waits (a few seconds at most) for the queued settles, then closes the connections."""
        if self._tasks:
            await self.flush()
            if self._queue.qsize():
                self._dropped("shutdown", self._queue.qsize())
            for task in self._tasks:
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            self._tasks = []
        await self.redis.aclose(close_connection_pool=True)
