"""One admitted request's hold on its limit counters (agw/policy/limits.py): what a backend
granted, and what happens as the answer flows and ends. One record per request, made by the
backend that reserved it (agw/policy/limit_backend.py)."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from agw.policy.limit_types import (
    COST,
    INPUT,
    NO_CAP,
    OUTPUT,
    TOKENS,
    Charge,
    Counter,
    LimitSpec,
    Vector,
)

if TYPE_CHECKING:
    from agw.policy.limit_tally import Tally
    from agw.policy.limit_types import LimitBackend

FLOW_SLACK_TOKENS = 64  # a stream past its hold takes this many output tokens more at once


@dataclass(slots=True, eq=False)
class Grant:
    """What one admitted request holds (the planes call it its admission: ``req.admission``)
    and what a limit did to it (``action``, ``limit_id``: the usage row's). ``backend``,
    ``fixed`` and ``per_output``: whom it holds from, and what it takes per request and per
    output token (the :class:`~agw.policy.limit_types.Plan`'s), set by the backend or the
    Limiter."""

    charges: list[Charge]
    counters: list[Counter]
    held: Vector
    output: int  # output tokens granted (== want_output unless clamped)
    clamped_by: str | None = None  # the limit that lowered the output
    shadow: str | None = None  # an enforce:false limit that would have refused
    now: float = 0.0  # when it was granted (unix seconds)
    warned: int = 0  # bit i: charge i is past its warn_at share
    settled: bool = False
    tally: Tally | None = None  # the in-process backend's, where it reserved on one
    backend: LimitBackend | None = None
    fixed: Sequence[float] = ()
    per_output: Sequence[float] = ()
    action: str | None = None  # clamped | shadow | cut | exceeded (refused: no grant)
    limit_id: str | None = None
    shown: tuple[int, ...] = ()  # the route's RateLimit values, where the backend found them
    # settles it and says so, or says the careful path must (agw/policy/limit_compiled.py)
    quick: Callable[[Grant, float, int, int], bool] | None = None
    head: bytes = b""  # its RateLimit fields as head lines (agw/head.py), made by compiled code

    @property
    def metered(self) -> bool:
        """Whether a limit of this request counts dollars or tokens: its stream is metered."""
        return any(charge.spec.sized for charge in self.charges)

    @property
    def can_cut(self) -> bool:
        """Whether a limit of this request ends its stream at the cap (``on_exceed: cut``)."""
        return any(c.spec.enforce and c.spec.on_exceed == "cut" for c in self.charges)

    def need(self, input_tokens: int, output_tokens: int) -> Vector | None:
        """A stream so far (``input_tokens`` as reported, 0 while unknown): None while what it
        used is within what it holds, else what it should take more (with some slack)."""
        hold, per, fixed = self.held, self.per_output, self.fixed
        est_in = fixed[INPUT]
        extra_in = input_tokens - est_in if input_tokens > est_in else 0.0
        need: Vector | None = None
        for m in (COST, TOKENS, INPUT, OUTPUT):
            used = fixed[m] + output_tokens * per[m]
            if extra_in and est_in and m != OUTPUT:
                used += extra_in * fixed[m] / est_in
            if used > hold[m] + 1e-12:
                if need is None:
                    need = [0.0] * 6
                need[m] = used - hold[m] + FLOW_SLACK_TOKENS * per[m]
        return need

    def room(self, input_tokens: int) -> float:
        """The output tokens a stream (``input_tokens`` as reported, 0 while unknown) may
        reach before :meth:`need` asks for more, less one for the float's rounding (-1: it
        already needs more; infinite: output costs nothing held)."""
        hold, per, fixed = self.held, self.per_output, self.fixed
        est_in = fixed[INPUT]
        extra_in = input_tokens - est_in if input_tokens > est_in else 0.0
        room = math.inf
        for m in (COST, TOKENS, INPUT, OUTPUT):
            used = fixed[m]
            if extra_in and est_in and m != OUTPUT:
                used += extra_in * fixed[m] / est_in
            left = hold[m] + 1e-12 - used
            if left < 0:
                return -1
            if per[m] > 0:
                room = min(room, math.floor(left / per[m]) - 1)
        return room

    async def flow(self, need: Vector) -> Charge | None:
        """Takes ``need`` (from :meth:`need`) from the counters. Returns the ``cut`` charge
        that cannot pay (the stream is to end now), else None."""
        assert self.backend is not None
        per = self.per_output
        ext = await self.backend.extend(self, need)
        if ext.cut_by is not None:  # near the cap: take only what was used, without slack
            exact = [
                n - FLOW_SLACK_TOKENS * p if n else 0.0 for n, p in zip(need, per, strict=True)
            ]
            ext = await self.backend.extend(self, exact)
        if ext.cut_by is not None:
            self.action, self.limit_id = "cut", ext.cut_by.spec.id
            return ext.cut_by
        if ext.exceeded and self.action not in ("cut", "exceeded"):
            self.action, self.limit_id = "exceeded", ext.exceeded[0]
        return None

    def settle(self, cost_usd: float, input_tokens: int, output_tokens: int) -> None:
        """The answer ended (any way it ends): drop the hold, count what was used."""
        quick = self.quick
        if quick is not None and quick(self, cost_usd, input_tokens, output_tokens):
            return
        assert self.backend is not None
        tin, tout = input_tokens, output_tokens  # counted into float vectors
        hold = self.held
        if self.action is None and (
            cost_usd > hold[COST]
            or tin + tout > hold[TOKENS]
            or tin > hold[INPUT]
            or tout > hold[OUTPUT]
        ):  # the answer used more than it held: did it take a counter past its cap?
            actual: Vector = [cost_usd, tin + tout, tin, tout, 1.0, 0.0]
            for charge, counter in zip(self.charges, self.counters, strict=True):
                spec = charge.spec
                if spec.enforce and _past(spec, counter, actual, hold):
                    self.action, self.limit_id = "exceeded", spec.id
                    break
        self.backend.settle(self, [cost_usd, tin + tout, tin, tout, 1.0, 0.0])


def _past(spec: LimitSpec, counter: Counter, actual: Vector, hold: Vector) -> bool:
    """Whether settling ``actual`` (more than the request held) takes the counter past a cap."""
    for m in (COST, TOKENS, INPUT, OUTPUT):
        cap = spec.caps[m]
        if cap == NO_CAP or actual[m] <= hold[m] + 1e-9:
            continue
        if counter.used[m] + counter.held[m] - hold[m] + actual[m] > cap + 1e-9:
            return True
    return False
