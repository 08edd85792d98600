"""Bundle model of limits and budgets (``limits``): requests, tokens, dollars and requests in
flight, per key, user, org, route, model, agent session or the whole gateway, over a window
(docs/limits.md). Enforced before admission by agw/policy/limits.py."""

from __future__ import annotations

import re
from typing import Literal, Self

from pydantic import Field, ValidationInfo, field_validator, model_validator

from agw.config.base import CelRule, Stamped, Strict, dedupe, from_store

LimitSubject = Literal["key", "user", "org", "route", "model", "session", "global"]

_WINDOW = re.compile(r"^([1-9][0-9]{0,6})(s|m|h|d)$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}
MAX_WINDOW_S = 366 * 86400


def window_seconds(window: str) -> int | None:
    """Seconds of a fixed window (``30s``, ``5m``, ``1h``, ``1d``); None for ``month`` and
    ``lifetime``. Raises ValueError for anything else."""
    if window in ("month", "lifetime"):
        return None
    m = _WINDOW.match(window)
    if m is None:
        raise ValueError(
            f"unknown window {window!r}: use <n>s, <n>m, <n>h or <n>d (e.g. 30s, 1m, 1h, 1d), "
            "month (the calendar month, UTC) or lifetime"
        )
    seconds = int(m.group(1)) * _UNIT_S[m.group(2)]
    if seconds > MAX_WINDOW_S:
        raise ValueError(f"window {window!r} is longer than 366 days: use lifetime")
    return seconds


class LimitTokens(Strict):
    """Token caps: ``total`` (input + output), ``input`` or ``output``; at least one."""

    total: int | None = Field(default=None, gt=0)
    input: int | None = Field(default=None, gt=0)
    output: int | None = Field(default=None, gt=0)

    @model_validator(mode="after")
    def _one(self) -> Self:
        if self.total is None and self.input is None and self.output is None:
            raise ValueError("tokens needs total, input or output")
        return self


class LimitMatch(Strict):
    """Which requests a limit counts: every non-empty list must contain the request's value
    (lists are or-ed within, and-ed across). Empty: every request."""

    route_ids: list[str] = Field(default_factory=list)
    route_kinds: list[Literal["llm", "mcp", "acp", "a2a"]] = Field(default_factory=list)
    key_ids: list[str] = Field(default_factory=list)
    key_tags: list[str] = Field(default_factory=list)
    models: list[str] = Field(default_factory=list)  # LLM: the logical or upstream model
    provider_ids: list[str] = Field(default_factory=list)
    users: list[str] = Field(default_factory=list)
    orgs: list[str] = Field(default_factory=list)

    @field_validator("route_ids", "key_ids", "key_tags", "models", "provider_ids", "users", "orgs")
    @classmethod
    def _entries(cls, v: list[str]) -> list[str]:
        if any(not item.strip() for item in v):
            raise ValueError("must not contain empty entries")
        return dedupe(v)


class Limit(Stamped):
    """One limit: ``subject`` says what one counter is kept per; each request it matches is
    counted against that subject's counter for the current ``window``; a request that would
    take a counter past one of the caps (``cost_usd``, ``tokens``, ``requests``,
    ``concurrent``) is refused (or its ``max_tokens`` lowered), unless ``enforce`` is false."""

    id: str
    description: str = ""
    disabled: bool = False
    subject: LimitSubject = "key"
    match: LimitMatch = Field(default_factory=LimitMatch)
    when: CelRule | None = None
    window: str = "lifetime"
    cost_usd: float | None = Field(default=None, gt=0, le=1e12)
    tokens: LimitTokens | None = None
    requests: int | None = Field(default=None, gt=0)
    concurrent: int | None = Field(default=None, gt=0)
    enforce: bool = True
    on_exceed: Literal["finish", "cut"] = "finish"
    unpriced: Literal["deny", "allow"] | None = None
    min_output_tokens: int = Field(default=1024, ge=0, le=10_000_000)
    default_output_tokens: int = Field(default=4096, ge=1, le=10_000_000)
    warn_at: float = Field(default=0.8, gt=0, le=1)
    # the shared counters (Redis) do not answer: admit uncounted or refuse; None: closed for a
    # cost_usd limit, open otherwise (docs/limits.md#state-and-backends)
    on_backend_failure: Literal["open", "closed"] | None = None

    @field_validator("id")
    @classmethod
    def _printable_id(cls, v: str, info: ValidationInfo) -> str:
        # the id is sent in every answer's RateLimit fields, which leave out such characters
        # (limit_table.item_name): refused when written, so that the id a client reads is the
        # configured one; a stored one was checked when written, and loads as it is
        if not from_store(info.context) and any(
            (ch < " " and ch != "\t") or ch == "\x7f" for ch in v
        ):
            raise ValueError("a limit id must not contain control characters")
        return v

    @field_validator("window")
    @classmethod
    def _window(cls, v: str) -> str:
        v = v.strip()
        window_seconds(v)
        return v

    @model_validator(mode="after")
    def _caps(self) -> Self:
        if (
            self.cost_usd is None
            and self.tokens is None
            and self.requests is None
            and self.concurrent is None
        ):
            raise ValueError("a limit needs cost_usd, tokens, requests or concurrent")
        if self.unpriced is not None and self.cost_usd is None:
            raise ValueError("unpriced applies to a cost_usd limit only")
        return self
