"""Building blocks shared by the bundle models: strict bases, ids, match policies, durations."""

from __future__ import annotations

import re
from collections.abc import Mapping
from types import MappingProxyType
from typing import Annotated, Any, Self

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)

from agw.config.cel import check_rule

SLASHY = re.compile(r"/|\\|%2f|%5c", re.IGNORECASE)
ENV_KEY = re.compile(r"^[^=\x00]+$")

NonNegInt = Annotated[int, Field(ge=0)]

# The validation context of objects read back from the store (agw.runtime.state.from_rows):
# they were checked when written. What lies outside the config (an OpenAPI spec file) may have
# changed since; that is then a run-time failure of the one object, never a store that
# cannot load.
FROM_STORE: Mapping[str, bool] = MappingProxyType({"from_store": True})


def from_store(context: Any) -> bool:
    """Whether a validator's ``info.context`` is :data:`FROM_STORE`."""
    return isinstance(context, Mapping) and context.get("from_store") is True


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)


class Stamped(Strict):
    """Stored objects with an ``id`` and server-managed timestamps. The timestamps are accepted
    in bundles (Go exports carry them) and ignored; the admin API reports them in its views.
    Every ``id`` is checked by :func:`check_id`."""

    created_at: str | None = Field(default=None, exclude=True, description="server-managed")
    updated_at: str | None = Field(default=None, exclude=True, description="server-managed")

    @field_validator("id", check_fields=False)
    @classmethod
    def _id(cls, v: str) -> str:
        return check_id(v)


def check_id(value: str, *, slash_free: bool = True) -> str:
    value = value.strip()
    if not value:
        raise ValueError("id must not be empty")
    if slash_free and SLASHY.search(value):
        raise ValueError(f"id {value!r} must not contain '/', '\\', '%2f' or '%5c'")
    return value


def dedupe(values: list[str]) -> list[str]:
    seen: dict[str, None] = {}
    for v in values:
        v = v.strip()
        if v:
            seen.setdefault(v, None)
    return list(seen)


class MatchPolicy(Strict):
    host: str = ""
    path_prefix: str = ""
    methods: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _normalise(self) -> Self:
        self.host = self.host.strip().lower()
        self.methods = sorted(dedupe([m.upper() for m in self.methods]))
        if self.path_prefix and not self.path_prefix.startswith("/"):
            raise ValueError(f"path_prefix must start with '/' (got {self.path_prefix!r})")
        return self


class AuthPolicy(Strict):
    """Which credentials admit a caller to a route.

    - ``require_virtual_key``: a valid virtual key is required (``x-api-key`` or
      ``Authorization: Bearer``). With ``jwt_provider_ids`` too, a JWT may come beside it (the
      key in ``x-api-key``) and names the user.
    - ``jwt_provider_ids`` without ``require_virtual_key``: a valid JWT from one of these
      providers is required; ``allow_virtual_key`` lets a valid virtual key in instead.
    - ``required_scopes``: every one must be in the JWT's ``scope``/``scp`` (else 403
      ``insufficient_scope``).
    """

    require_virtual_key: bool = False
    jwt_provider_ids: list[str] = Field(default_factory=list)
    allow_virtual_key: bool = False
    required_scopes: list[str] = Field(default_factory=list)

    @field_validator("jwt_provider_ids", "required_scopes")
    @classmethod
    def _list(cls, v: list[str]) -> list[str]:
        return dedupe(v)

    @property
    def needs_credential(self) -> bool:
        return self.require_virtual_key or bool(self.jwt_provider_ids)


# One CEL rule, checked where it is written (syntax and types: agw/config/cel.py), so a mistake
# is reported with its index (``authorization.allow[0]: invalid CEL: ...``)
CelRule = Annotated[str, AfterValidator(check_rule)]


class Authorization(Strict):
    """CEL rules, compiled when the snapshot is built. Deny wins; when ``allow`` has rules, one
    must match. A rule that errors at run time denies (docs/security.md, "Authorization rules
    (CEL)")."""

    allow: list[CelRule] = Field(default_factory=list)
    deny: list[CelRule] = Field(default_factory=list)


def check_env(env: dict[str, str]) -> dict[str, str]:
    for key, value in env.items():
        if not ENV_KEY.match(key):
            raise ValueError(f"env key {key!r} must be non-empty without '=' or NUL")
        if "\x00" in value:
            raise ValueError(f"env value of {key!r} must not contain NUL")
    return env


def route_slug(path_prefix: str) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", path_prefix.lower()).strip("-")
    return slug or "root"


_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)")
_UNIT_NS = {"ns": 1, "us": 1_000, "µs": 1_000, "ms": 1_000_000, "s": 10**9, "m": 60 * 10**9}
_UNIT_NS["h"] = 3600 * 10**9


def parse_duration_ns(value: int | str) -> int:
    """A Go duration (``90s``, ``1h30m``) or integer nanoseconds, as nanoseconds."""
    if isinstance(value, int):
        if value < 0:
            raise ValueError("duration must not be negative")
        return value
    text = value.strip()
    if text in ("", "0"):
        return 0
    pos, total = 0, 0.0
    for m in _DURATION.finditer(text):
        if m.start() != pos:
            break
        total += float(m.group(1)) * _UNIT_NS[m.group(2)]
        pos = m.end()
    if pos != len(text):
        raise ValueError(f"invalid duration {value!r} (use e.g. 90s, 10m, 1h30m or nanoseconds)")
    return int(total)


def within(path: str, root: str) -> bool:
    path, root = path.rstrip("/") or "/", root.rstrip("/") or "/"
    return path == root or path.startswith(root if root == "/" else root + "/")


class ServiceRoute(Stamped):
    id: str = Field(default="", description="default <kind>:<service_id>:<path-slug>")
    description: str = ""
    disabled: bool = False
    match_policy: MatchPolicy = Field(default_factory=MatchPolicy)
    auth_policy: AuthPolicy = Field(default_factory=AuthPolicy)
    authorization: Authorization = Field(default_factory=Authorization)
    service_id: str

    @field_validator("id")
    @classmethod
    def _id(cls, v: str) -> str:
        return check_id(v) if v else v

    def _id_service(self) -> str:
        return self.service_id

    @model_validator(mode="after")
    def _default_id(self) -> Self:
        if not self._id_service().strip():
            raise ValueError(
                "service_id or service_ids is required"
                if hasattr(self, "service_ids")
                else "service_id is required"
            )
        if not self.id:
            kind = getattr(self, "kind", "mcp")
            self.id = f"{kind}:{self._id_service()}:{route_slug(self.match_policy.path_prefix)}"
        self.id = check_id(self.id)
        return self
