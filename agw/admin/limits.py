"""What the limits have counted, per subject, and how to forget it (docs/limits.md, "Operating
limits: admin API and agwctl").

``GET /admin/limits`` is the family's list (agw/admin/resources.py serves the rest of its CRUD)
with each limit's live counters from the running :class:`~agw.policy.limits.Limiter`: per
subject, what was used in the current window, what requests in flight hold, what remains of
each cap and when the window resets. ``POST /admin/limits/{id}/reset`` zeroes what was used
(every subject's, or one's) and saves it at once, so a restart does not bring it back.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from quart import Quart, request

from agw.admin.resources import JSONResponse, json_body, view
from agw.clock import rfc3339
from agw.config import families as f
from agw.config.limits import Limit
from agw.errors import InvalidRequest, NotFound
from agw.policy.limit_types import CONCURRENT, COST, METERS, REQUESTS, Counter
from agw.runtime.manager import ConfigManager
from agw.usage.query import Params

if TYPE_CHECKING:
    from agw.policy.limits import Limiter

DEFAULT_SUBJECTS = 100  # subjects shown per limit unless ?limit= says otherwise
MAX_SUBJECTS = 1000

Caps = dict[int, float]


def caps_of(lim: Limit) -> Caps:
    """The limit's caps by meter index (only the meters it caps)."""
    tokens = lim.tokens
    values = (
        lim.cost_usd,
        tokens.total if tokens else None,
        tokens.input if tokens else None,
        tokens.output if tokens else None,
        lim.requests,
        lim.concurrent,
    )
    return {m: float(v) for m, v in enumerate(values) if v is not None}


def amount(meter: int, value: float) -> float | int:
    """Dollars to the micro-dollar, everything else a whole count."""
    return round(value, 6) if meter == COST else round(value)


def _moment(ts: float) -> str | None:
    return None if ts <= 0 or math.isinf(ts) else rfc3339(ts)


def _share(counter: Counter, caps: Caps) -> float:
    """The largest share of any cap taken (used and held): what sorts the busiest first."""
    top = 0.0
    for m, cap in caps.items():
        taken = counter.held[m] if m == CONCURRENT else counter.used[m] + counter.held[m]
        top = max(top, taken / cap)
    return top


def subject_view(counter: Counter, caps: Caps) -> dict[str, Any]:
    used, held = counter.used, counter.held
    remaining: dict[str, float | int] = {}
    for m, cap in caps.items():
        taken = held[m] if m == CONCURRENT else used[m] + held[m]
        remaining[METERS[m]] = amount(m, max(0.0, cap - taken))
    return {
        "subject": counter.subject,
        "window_start": _moment(counter.start),
        "resets_at": _moment(counter.end),
        # what answers used, of each capped meter and requests (counters count nothing else)
        "used": {METERS[m]: amount(m, used[m]) for m in sorted({*caps, REQUESTS} - {CONCURRENT})},
        # what requests in flight hold, of each capped meter (counters hold nothing else)
        "in_flight": {METERS[m]: amount(m, max(0.0, held[m])) for m in caps},
        "remaining": remaining,
    }


async def _reset_subject() -> str | None:
    """``subject`` from the query, or from an optional JSON body ``{"subject": ...}``."""
    subject: object = request.args.get("subject")
    raw = await request.get_data()
    if raw.strip():
        body = await json_body()
        unknown = sorted(set(body) - {"subject"})
        if unknown:
            raise InvalidRequest(f"unknown field {unknown[0]!r}; expected subject")
        if "subject" in body:
            if subject is not None and body["subject"] != subject:
                raise InvalidRequest("subject given twice, in the query and in the body")
            subject = body["subject"]
    if subject is None:
        return None
    if not isinstance(subject, str) or not subject:
        raise InvalidRequest("subject must be a non-empty string")
    return subject


def register(app: Quart, manager: ConfigManager, limiter: Limiter | None) -> None:
    """Without a ``limiter`` (an admin app alone) every limit shows no subjects and a reset
    resets none."""

    async def status() -> JSONResponse:
        only_limit = request.args.get("limit_id") or None
        only_subject = request.args.get("subject") or None
        # the metrics API's parsing of ``limit``; other parameters are ignored, as on every list
        most = Params(request.args, request.args.keys()).limit(DEFAULT_SUBJECTS, MAX_SUBJECTS)
        items = []
        for oid, rec in manager.state.records(f.LIMIT):
            if only_limit is not None and oid != only_limit:
                continue
            caps = caps_of(rec.obj)
            counters = await limiter.backend.counters(oid) if limiter is not None else []
            if only_subject is not None:
                counters = [c for c in counters if c.subject == only_subject]
            counters.sort(key=lambda c: (-_share(c, caps), c.subject))
            item = view(f.LIMIT, oid, rec, reveal=False)
            item["caps"] = {METERS[m]: amount(m, cap) for m, cap in caps.items()}
            item["subjects"] = [subject_view(c, caps) for c in counters[:most]]
            item["subjects_total"] = len(counters)
            items.append(item)
        return {"items": items}, 200

    async def reset(oid: str) -> JSONResponse:
        if manager.state.get(f.LIMIT, oid) is None:
            raise NotFound("limit not found")
        subject = await _reset_subject()
        n = 0
        if limiter is not None:
            n = await limiter.backend.reset(oid, subject)
            if n:
                await limiter.save()  # a restart right after must not bring the use back
        return {"status": "reset", "id": oid, "subjects": n}, 200

    app.add_url_rule("/admin/limits", "limit_list", status, methods=["GET"])
    app.add_url_rule("/admin/limits/<oid>/reset", "limit_reset", reset, methods=["POST"])
