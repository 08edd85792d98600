"""The limit counters' vocabulary (agw/policy/limit_backend.py): the meters, a compiled limit
(:class:`LimitSpec`), its counter per subject and window, a request's charges and what it asks
(:class:`Plan`), a refusal (:class:`Denial`), and the backend interface."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Literal, Protocol

if TYPE_CHECKING:
    from agw.policy.limit_grant import Grant

COST, TOKENS, INPUT, OUTPUT, REQUESTS, CONCURRENT = range(6)
METERS = ("cost_usd", "total_tokens", "input_tokens", "output_tokens", "requests", "concurrent")
NO_CAP = math.inf
Vector = list[float]
_EPS = 1e-9


def zero() -> Vector:
    return [0.0, 0.0, 0.0, 0.0, 0.0, 0.0]


def hold_of(fixed: Vector, per_output: Vector, output: int) -> Vector:
    """What a request holds: its fixed part plus ``output`` tokens at ``per_output``."""
    return [
        fixed[0] + output * per_output[0],
        fixed[1] + output * per_output[1],
        fixed[2] + output * per_output[2],
        fixed[3] + output * per_output[3],
        fixed[4] + output * per_output[4],
        fixed[5] + output * per_output[5],
    ]


@dataclass(frozen=True, slots=True)
class LimitSpec:
    """What the backend needs of a limit (the compiled config, agw/policy/limits.py)."""

    id: str
    caps: tuple[float, ...]  # per meter; NO_CAP where the limit sets none
    window: str  # "1d", "month", "lifetime"
    window_s: int | None  # seconds of a fixed window; None for month and lifetime
    enforce: bool = True
    on_exceed: Literal["finish", "cut"] = "finish"
    min_output_tokens: int = 1024
    warn_at: float = 0.8
    capped: tuple[int, ...] = ()  # the meters with a cap (set by :func:`spec`)
    # what a counter counts as used: its capped meters but requests in flight (held only),
    # and requests (set by :func:`spec`)
    counted: tuple[int, ...] = (REQUESTS,)
    meter: int = -1  # the one capped meter, where there is one (the hot path's common case)
    sized: bool = False  # caps dollars or tokens: what the size of a request changes
    # how the limit is announced (RateLimit-Policy items; per capped meter, the start of its
    # RateLimit item and its scale): agw/policy/limits.py sets them when compiling
    policy: str = ""
    states: tuple[tuple[int, str, int, bool], ...] = ()  # (meter, prefix, scale, has reset)
    # per meter, warn_at x cap (the soft warning); infinite where none (requests in flight)
    levels: tuple[float, ...] = (NO_CAP,) * 6
    unpriced: str = "deny"  # a dollar limit on a model without a price: deny | allow
    default_output_tokens: int = 4096  # what a request without max_tokens reserves
    on_failure: str = "open"  # a shared backend that does not answer: open | closed


def spec(
    id: str,
    caps: Sequence[float],
    window: str,
    window_s: int | None,
    enforce: bool = True,
    on_exceed: Literal["finish", "cut"] = "finish",
    min_output_tokens: int = 1024,
    warn_at: float = 0.8,
) -> LimitSpec:
    capped = tuple(m for m, cap in enumerate(caps) if cap != NO_CAP)
    counted = tuple(sorted({m for m in capped if m != CONCURRENT} | {REQUESTS}))
    sized = any(m < REQUESTS for m in capped)
    levels = tuple(
        warn_at * cap if cap != NO_CAP and m != CONCURRENT else NO_CAP for m, cap in enumerate(caps)
    )
    return LimitSpec(
        id,
        tuple(caps),
        window,
        window_s,
        enforce,
        on_exceed,
        min_output_tokens,
        warn_at,
        capped,
        counted,
        capped[0] if len(capped) == 1 else -1,
        sized,
        levels=levels,
    )


def window_bounds(window: str, window_s: int | None, now: float) -> tuple[float, float]:
    """(start, end) in unix seconds of the window ``now`` is in."""
    if window_s is not None:
        start = now - now % window_s
        return start, start + window_s
    if window == "month":
        day = datetime.fromtimestamp(now, UTC)
        start_dt = day.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
        if start_dt.month == 12:
            end_dt = start_dt.replace(year=start_dt.year + 1, month=1)
        else:
            end_dt = start_dt.replace(month=start_dt.month + 1)
        return start_dt.timestamp(), end_dt.timestamp()
    return 0.0, math.inf


@dataclass(slots=True, eq=False)  # hashed by identity: the backend's dirty set holds counters
class Counter:
    limit_id: str
    subject: str
    window: str
    start: float
    end: float
    used: Vector = field(default_factory=zero)
    held: Vector = field(default_factory=zero)
    key: tuple[str, str] = ("", "")  # (limit_id, subject): its key in the backend
    live: bool = True  # False once dropped from its backend (a config change, an eviction)

    def __post_init__(self) -> None:
        self.key = (self.limit_id, self.subject)

    def roll(self, spec: LimitSpec, now: float) -> None:
        """A new window: what was used is forgotten; what is held stays held (those requests
        are still in flight and settle into the window they end in)."""
        if now < self.end and spec.window == self.window:
            return
        self.window = spec.window
        self.start, self.end = window_bounds(spec.window, spec.window_s, now)
        self.used = zero()


@dataclass(slots=True)
class Charge:
    spec: LimitSpec
    subject: str


@dataclass(slots=True)
class Plan:
    """One request's charges and what it would take of each counter."""

    charges: list[Charge]
    fixed: Vector
    per_output: Vector
    want_output: int


@dataclass(frozen=True, slots=True)
class Denial:
    """Why a request may not go on: the first counter that cannot pay."""

    spec: LimitSpec
    subject: str
    meter: int
    used: float  # used + held, before this request
    retry_after: int | None  # seconds; None: this window never resets (lifetime)
    resets_at: float | None  # unix seconds


@dataclass(frozen=True, slots=True)
class Extension:
    """What :meth:`LimitBackend.extend` did: ``cut_by``, a cut limit that cannot pay (nothing
    was taken); else the extra is held, and ``exceeded`` names the finish limits now past
    their caps."""

    cut_by: Charge | None = None
    exceeded: tuple[str, ...] = ()


class LimitBackend(Protocol):
    clock: Callable[[], float]

    async def reserve(self, plan: Plan) -> Grant | Denial: ...

    async def extend(self, grant: Grant, extra: Vector) -> Extension: ...

    def settle(self, grant: Grant, actual: Vector) -> None: ...

    async def counters(self, limit_id: str | None = None) -> list[Counter]: ...

    async def reset(self, limit_id: str, subject: str | None = None) -> int: ...

    def forget(self, limit_ids: Iterable[str]) -> None: ...

    async def close(self) -> None: ...
