"""Bundle models of the ACP families: services and routes."""

from __future__ import annotations

from typing import Annotated, Any, Literal, Self

from pydantic import (
    Field,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from agw.config.base import (
    NonNegInt,
    ServiceRoute,
    Stamped,
    Strict,
    check_env,
    parse_duration_ns,
    within,
)


class AcpRoute(ServiceRoute):
    kind: Literal["acp"] = "acp"
    protocol: Literal["acp"] = "acp"


class CodexOptions(Strict):
    mode: Literal["adapter", "app_server"] = "adapter"
    adapter_command: str = "codex-acp"
    adapter_args: list[str] = Field(default_factory=list)
    app_server_command: str = ""
    app_server_args: list[str] = Field(default_factory=list)
    default_profile: str = ""
    initial_auth_mode: str = ""
    trace_json: bool = False
    retry_turn_on_crash: bool = False

    @model_validator(mode="after")
    def _check(self) -> Self:
        if self.mode == "app_server":
            raise ValueError("codex.mode app_server is not implemented; use adapter")
        if self.adapter_command.replace("\\", "/").rsplit("/", 1)[-1] != "codex-acp":
            raise ValueError("codex.adapter_command must be a codex-acp binary")
        return self


class GatewayOrigin(Strict):
    """Make the gateway the agent's only origin: its MCP server and its LLM endpoint."""

    mcp_route_id: str = Field(
        default="",
        description="an MCP route of this gateway given to every session as its MCP server",
    )
    llm_route_id: str = Field(
        default="", description="an LLM route of this gateway set as the agent's LLM base URL"
    )
    virtual_key_id: str = Field(
        description="the virtual key the agent presents on both (its bearer is never stored here)"
    )

    @model_validator(mode="after")
    def _some(self) -> Self:
        if not self.mcp_route_id and not self.llm_route_id:
            raise ValueError("gateway_origin needs mcp_route_id, llm_route_id or both")
        return self


DEFAULT_ACP_IDLE_TTL_NS = 15 * 60 * 10**9  # 15m: docs/acp.md#pooling


DEFAULT_ACP_MAX_INSTANCES = 8


class AcpService(Stamped):
    id: str
    name: str
    agent_type: Literal["codex", "opencode", "command"]
    command: str = Field(default="", description="agent_type command: the ACP agent binary")
    args: list[str] = Field(default_factory=list)
    cwd: str
    allowed_roots: list[str] = Field(default_factory=list)
    default_model: str = ""
    env: dict[str, str] = Field(default_factory=dict)
    config_overrides: dict[str, str] = Field(default_factory=dict)
    idle_ttl: Annotated[
        int,
        WithJsonSchema({"anyOf": [{"type": "integer", "minimum": 0}, {"type": "string"}]}),
    ] = Field(
        default=DEFAULT_ACP_IDLE_TTL_NS,
        description="nanoseconds, or a Go duration string like 10m or 1h30m; 0 never reaps",
    )
    max_instances: NonNegInt = Field(
        default=DEFAULT_ACP_MAX_INSTANCES,
        description="agents of the service at once (0: no cap); at the cap the least recently "
        "used idle one is closed",
    )
    permission_mode: Literal["deny", "auto_approve", "interactive"] = "deny"
    disabled: bool = False
    description: str = ""
    codex: CodexOptions | None = None
    fs_access: Literal["none", "read", "read_write"] = Field(
        default="none",
        description="fs/read_text_file and fs/write_text_file for the agent, inside allowed_roots",
    )
    gateway_origin: GatewayOrigin | None = None

    @field_validator("idle_ttl", mode="before")
    @classmethod
    def _ttl(cls, v: Any) -> Any:
        return parse_duration_ns(v) if isinstance(v, int | str) and not isinstance(v, bool) else v

    @field_validator("env")
    @classmethod
    def _env(cls, v: dict[str, str]) -> dict[str, str]:
        return check_env(v)

    @model_validator(mode="after")
    def _paths(self) -> Self:
        if not self.name.strip():
            raise ValueError("name is required")
        if not self.cwd.startswith("/"):
            raise ValueError(f"cwd must be an absolute path (got {self.cwd!r})")
        if not self.allowed_roots:
            self.allowed_roots = [self.cwd]
        for root in self.allowed_roots:
            if not root.startswith("/"):
                raise ValueError(f"allowed_roots entry {root!r} must be absolute")
        if not any(within(self.cwd, root) for root in self.allowed_roots):
            raise ValueError(f"cwd {self.cwd!r} is not inside any of allowed_roots")
        if self.agent_type == "command" and not self.command:
            raise ValueError("agent_type command requires command")
        if self.agent_type != "command" and (self.command or self.args):
            raise ValueError("command and args are only for agent_type command")
        if self.codex is not None and self.agent_type != "codex":
            raise ValueError("codex options are only for agent_type codex")
        return self
