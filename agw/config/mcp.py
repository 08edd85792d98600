"""Bundle models of the MCP families: services and routes."""

from __future__ import annotations

from typing import Annotated, Literal, Self

from pydantic import (
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from agw.config.base import (
    ServiceRoute,
    Stamped,
    Strict,
    check_env,
    dedupe,
    from_store,
)
from agw.config.openapi import SpecError
from agw.config.openapi_tools import base_of, load_spec_file, select


class McpAuth(Strict):
    type: Literal["", "api_key", "bearer", "oauth2", "basic"] = ""
    api_key: str = ""
    username: str = ""
    password: str = ""


class McpAudit(Strict):
    capture_tool_args: bool = False


class McpService(Stamped):
    id: str
    name: str
    transport: Literal["streamable_http", "sse", "stdio", "openapi"]
    command: str = ""
    args: list[str] = Field(default_factory=list)
    url: str = ""
    post_url: str = ""
    env: dict[str, str] = Field(default_factory=dict)
    auto_auth: bool = False
    auth: McpAuth = Field(default_factory=McpAuth)
    audit: McpAudit = Field(default_factory=McpAudit)
    # send the caller's own Authorization (a JWT) to this server; never otherwise
    forward_client_token: bool = False
    # USD a tools/call the server answers costs (docs/limits.md); tool_prices by upstream name
    price_per_call: float | None = Field(default=None, ge=0)
    tool_prices: dict[str, Annotated[float, Field(ge=0)]] = Field(default_factory=dict)
    # transport openapi (docs/openapi-mcp.md): the spec (a file or an http(s) URL), where the
    # calls go (default: the spec's first server), the operations offered
    spec: str = ""
    base_url: str = ""
    include: list[str] = Field(default_factory=list)
    exclude: list[str] = Field(default_factory=list)
    disabled: bool = False
    description: str = ""

    @field_validator("env")
    @classmethod
    def _env(cls, v: dict[str, str]) -> dict[str, str]:
        return check_env(v)

    @field_validator("include", "exclude")
    @classmethod
    def _operations(cls, v: list[str]) -> list[str]:
        return dedupe(v)

    @model_validator(mode="after")
    def _transport(self, info: ValidationInfo) -> Self:
        if not self.name.strip():
            raise ValueError("name is required")
        if self.transport == "openapi":
            self._openapi(check_file=not from_store(info.context))
        elif self.spec or self.base_url or self.include or self.exclude:
            raise ValueError("spec, base_url, include and exclude are for transport openapi")
        elif self.transport == "stdio":
            if not self.command:
                raise ValueError("stdio transport requires command")
        else:
            if not self.url:
                raise ValueError(f"{self.transport} transport requires url")
            if not self.url.startswith(("http://", "https://")):
                raise ValueError(f"url must be http(s) (got {self.url!r})")
        if self.transport == "sse" and not self.post_url:
            base = self.url.rstrip("/")
            self.post_url = (
                base[: -len("/sse")] + "/message" if base.endswith("/sse") else (base + "/message")
            )
        return self

    @property
    def spec_is_url(self) -> bool:
        return self.spec.startswith(("http://", "https://"))

    def _openapi(self, *, check_file: bool) -> None:
        """A spec file is read and checked now (unless ``check_file`` is off: read back from
        the store); a spec URL when the service starts."""
        if not self.spec.strip():
            raise ValueError("openapi transport requires spec (a file path or an http(s) URL)")
        if "://" in self.spec and not self.spec_is_url:
            raise ValueError(f"spec must be a file path or an http(s) URL (got {self.spec!r})")
        if self.base_url and not self.base_url.startswith(("http://", "https://")):
            raise ValueError(f"base_url must be http(s) (got {self.base_url!r})")
        if self.spec_is_url or not check_file:
            return
        try:
            spec = load_spec_file(self.spec)
            select(spec, self.include, self.exclude)
            base_of(spec, self.base_url)
        except SpecError as exc:
            raise ValueError(f"spec {self.spec}: {exc}") from None


# A name an MCP client is shown: what the 2025-11-25 tool-name guidance allows, at most 64 long.
PRESENTED_NAME = r"^[A-Za-z0-9_.-]{1,64}$"


class McpToolPolicy(Strict):
    allow: list[str] = Field(
        default_factory=list,
        description="glob patterns on presented tool names; empty allows every tool",
    )
    deny: list[str] = Field(
        default_factory=list, description="glob patterns on presented tool names; wins over allow"
    )

    @field_validator("allow", "deny")
    @classmethod
    def _patterns(cls, v: list[str]) -> list[str]:
        return dedupe(v)


class McpRoute(ServiceRoute):
    kind: Literal["mcp"] = "mcp"
    protocol: Literal["mcp"] = "mcp"
    service_id: str = Field(default="", description="the one service of this route")
    service_ids: list[str] = Field(
        default_factory=list, description="several services multiplexed behind this route"
    )
    prefix_mode: Literal["", "always", "conditional", "never"] = Field(
        default="",
        description=(
            "service-id prefix on presented names: always, conditional (only names that "
            "collide), never; empty means never for one service and always for several"
        ),
    )
    fail_closed: bool = Field(
        default=False,
        description="one failing service fails the whole list call instead of being skipped",
    )
    tool_policy: McpToolPolicy = Field(default_factory=McpToolPolicy)

    @field_validator("service_ids")
    @classmethod
    def _service_ids(cls, v: list[str]) -> list[str]:
        return dedupe(v)

    @model_validator(mode="after")
    def _services(self) -> Self:
        if self.service_id.strip() and self.service_ids:
            raise ValueError("set service_id or service_ids, not both")
        return self

    def _id_service(self) -> str:
        return self.service_id.strip() or "+".join(self.service_ids)

    @property
    def services(self) -> list[str]:
        """The services behind this route, in the order their names are listed."""
        return [self.service_id] if self.service_id.strip() else list(self.service_ids)

    @property
    def effective_prefix_mode(self) -> str:
        if self.prefix_mode:
            return self.prefix_mode
        return "always" if len(self.services) > 1 else "never"
