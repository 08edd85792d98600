"""Bundle models of who may call: virtual keys."""

from __future__ import annotations

from datetime import datetime

from pydantic import (
    Field,
    field_validator,
)

from agw.config.base import (
    Stamped,
    dedupe,
)


class VirtualKey(Stamped):
    id: str
    tag: str = ""
    description: str = ""
    disabled: bool = False
    allowed_route_ids: list[str] = Field(default_factory=list)
    status_message: str = ""
    expires_at: datetime | None = None

    @field_validator("allowed_route_ids")
    @classmethod
    def _routes(cls, v: list[str]) -> list[str]:
        if any(not r.strip() for r in v):
            raise ValueError("allowed_route_ids must not contain empty entries")
        return sorted(dedupe(v))

    @field_validator("expires_at")
    @classmethod
    def _tz(cls, v: datetime | None) -> datetime | None:
        if v is not None and v.tzinfo is None:
            raise ValueError("expires_at must be RFC3339 with a time zone (e.g. ...Z)")
        return v
