"""Bundle models of the A2A families: services (remote agents) and routes (docs/a2a.md)."""

from __future__ import annotations

from typing import Annotated, Any, Literal, Self

from pydantic import Field, WithJsonSchema, field_validator, model_validator

from agw.config.base import ServiceRoute, Stamped, Strict, parse_duration_ns

DEFAULT_CARD_REFRESH_NS = 5 * 60 * 10**9  # 5m: docs/a2a.md#the-agent-card
MIN_CARD_REFRESH_NS = 10**9
DEFAULT_A2A_TIMEOUT_NS = 5 * 60 * 10**9  # 5m: an agent may work a while on a blocking send
_HEADER_NAME = r"^[A-Za-z0-9!#$%&'*+.^_`|~-]{1,128}$"

Duration = Annotated[
    int, WithJsonSchema({"anyOf": [{"type": "integer", "minimum": 0}, {"type": "string"}]})
]


class A2aAuth(Strict):
    """What the gateway sends the remote agent (never the caller's own credentials)."""

    type: Literal["", "bearer", "api_key", "basic"] = ""
    api_key: str = Field(default="", description="bearer and api_key: the secret sent")
    header: str = Field(
        default="X-API-Key", pattern=_HEADER_NAME, description="api_key: the header carrying it"
    )
    username: str = ""
    password: str = ""

    @model_validator(mode="after")
    def _complete(self) -> Self:
        if self.type in ("bearer", "api_key") and not self.api_key:
            raise ValueError(f"auth type {self.type} requires api_key")
        if self.type == "basic" and not self.username:
            raise ValueError("auth type basic requires username")
        return self


class A2aService(Stamped):
    id: str
    name: str = Field(default="", description="default: the id")
    description: str = ""
    card_url: str = Field(
        description="the agent's card, usually <agent>/.well-known/agent-card.json"
    )
    auth: A2aAuth = Field(default_factory=A2aAuth)
    card_refresh_interval: Duration = Field(
        default=DEFAULT_CARD_REFRESH_NS,
        description="how long a fetched card is served before it is fetched again: "
        "nanoseconds, or a Go duration string like 30s or 5m (at least 1s)",
    )
    request_timeout: Duration = Field(
        default=DEFAULT_A2A_TIMEOUT_NS,
        description="an answer's whole time, or a stream's longest silence: nanoseconds or a "
        "Go duration string",
    )
    disabled: bool = False

    @field_validator("card_refresh_interval", "request_timeout", mode="before")
    @classmethod
    def _duration(cls, v: Any) -> Any:
        return parse_duration_ns(v) if isinstance(v, int | str) and not isinstance(v, bool) else v

    @model_validator(mode="after")
    def _check(self) -> Self:
        if not self.name.strip():
            self.name = self.id
        if not self.card_url.startswith(("http://", "https://")):
            raise ValueError(f"card_url must be http(s) (got {self.card_url!r})")
        if self.card_refresh_interval < MIN_CARD_REFRESH_NS:
            raise ValueError("card_refresh_interval must be at least 1s")
        if self.request_timeout < MIN_CARD_REFRESH_NS:
            raise ValueError("request_timeout must be at least 1s")
        return self


class A2aRoute(ServiceRoute):
    kind: Literal["a2a"] = "a2a"
    protocol: Literal["a2a"] = "a2a"
