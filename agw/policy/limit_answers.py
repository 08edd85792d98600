"""What admission says to clients (agw/policy/limits.py): the 429 refusal that names the limit,
the subject, what remains and when it resets, and the IETF ``RateLimit-Policy`` / ``RateLimit``
headers (with the soft warning and the clamp) on every answer of a limited route."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from math import ceil
from typing import Any

from agw.errors import Refusal
from agw.policy.limit_backend import share
from agw.policy.limit_grant import Grant
from agw.policy.limit_table import SCALE, Announce, item_name, policy_item
from agw.policy.limit_types import CONCURRENT, COST, METERS, Denial, LimitSpec
from agw.types import Headers


def amount(meter: int, value: float) -> float | int:
    if meter == COST:
        return round(value, 6)
    return int(value)


def rfc3339(ts: float | None) -> str | None:
    if ts is None or math.isinf(ts):
        return None
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def refusal(d: Denial, now: float) -> Refusal:
    spec, meter = d.spec, d.meter
    cap = spec.caps[meter]
    remaining = max(0.0, cap - d.used)
    name = METERS[meter]
    what = f"${cap:g}" if meter == COST else f"{cap:g} {name.replace('_', ' ')}"
    if meter == CONCURRENT:
        when = "retry when a request in flight ends"
    elif d.retry_after is not None and d.resets_at is not None:
        when = f"resets at {rfc3339(d.resets_at)}"
    else:
        when = "it does not reset (lifetime)"
    message = (
        f'limit "{spec.id}" reached for {d.subject}: {what}'
        + (f" per {spec.window}" if spec.window_s or spec.window == "month" else "")
        + f", {amount(meter, remaining)} left; {when}"
    )
    detail: dict[str, Any] = {
        "id": spec.id,
        "subject": d.subject,
        "meter": name,
        "limit": amount(meter, cap),
        "used": amount(meter, d.used),
        "remaining": amount(meter, remaining),
        "window": spec.window,
        "resets_at": rfc3339(d.resets_at),
        "retry_after_s": d.retry_after,
    }
    headers: list[tuple[bytes, bytes]] = [
        (b"ratelimit-policy", policy_item(spec, meter).encode()),
        (b"ratelimit", state_item(spec, meter, remaining, d.resets_at, now).encode()),
    ]
    if d.retry_after is None or d.retry_after > 600:
        headers.append((b"x-should-retry", b"false"))  # the SDKs' own retries would only wait
    return Refusal(
        429,
        "rate_limited",
        message,
        headers,
        retry_after=d.retry_after,
        detail={"limit": detail},
    )


def state_item(
    spec: LimitSpec, meter: int, remaining: float, resets_at: float | None, now: float
) -> str:
    item = f"{item_name(spec, meter)};r={max(0, int(remaining * SCALE[meter]))}"
    if resets_at is not None and not math.isinf(resets_at) and meter != CONCURRENT:
        item += f";t={max(0, math.ceil(resets_at - now))}"
    return item


def headers_for(grant: Grant, announce: Announce | None) -> Headers:
    """The headers of an admitted request's answer. ``announce``: its route's, when every one
    of the route's limits charges it (the values then fill its template)."""
    if announce is None or len(grant.charges) != announce.count:
        return headers_of(grant)
    return announced(grant, announce)


def announced(grant: Grant, announce: Announce) -> Headers:
    """:func:`_headers` of a grant that every limit of its route charges, from the route's
    :class:`Announce`: one format of the remaining amounts."""
    if not announce.slots:  # only shadow limits: nothing to announce
        return headers_of(grant)
    now, counters = grant.now, grant.counters
    values: list[int] = []
    add = values.append
    for i, m, cap, scale, timed in announce.slots:
        counter = counters[i]
        left = int((cap - counter.used[m] - counter.held[m]) * scale)
        add(left if left > 0 else 0)
        if timed:
            add(ceil(counter.end - now))  # the window ends after now
    out: Headers = [announce.policy, (b"ratelimit", announce.state % tuple(values))]
    if grant.warned or grant.clamped_by is not None:
        out += headers_of(grant)[2:]
    return out


def headers_of(grant: Grant) -> Headers:
    now = grant.now
    policies: list[str] = []
    states: list[str] = []
    warnings: list[str] = []
    warned = grant.warned
    bit = 1
    for charge, counter in zip(grant.charges, grant.counters, strict=True):
        spec = charge.spec
        if spec.enforce:
            policies.append(spec.policy)
            caps, used, held, end = spec.caps, counter.used, counter.held, counter.end
            reset = "" if end == math.inf else f";t={max(0, math.ceil(end - now))}"
            for m, prefix, scale, timed in spec.states:
                left = int((caps[m] - used[m] - held[m]) * scale)
                states.append(f"{prefix}{left if left > 0 else 0}{reset if timed else ''}")
            if warned & bit:
                warnings.append(f"{spec.id} {int(share(spec, counter) * 100)}% used")
        bit <<= 1
    out: Headers = []
    if policies:
        out.append((b"ratelimit-policy", ", ".join(policies).encode()))
        out.append((b"ratelimit", ", ".join(states).encode()))
    if warnings:
        out.append((b"x-agw-limit-warning", "; ".join(warnings).encode()))
    if grant.clamped_by is not None:
        value = f'{grant.output}; limit="{grant.clamped_by}"'
        out.append((b"x-agw-max-tokens", value.encode()))
    return out
