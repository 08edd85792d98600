"""Bundle models of the service families: MCP services and routes, ACP services and routes,
agents."""

from __future__ import annotations

from typing import Annotated, Any, Literal, Self

from pydantic import (
    Field,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from agw.config.base import (
    AuthPolicy,
    MatchPolicy,
    NonNegInt,
    Stamped,
    Strict,
    check_env,
    check_id,
    dedupe,
    parse_duration_ns,
    route_slug,
    within,
)

# ---------------------------------------------------------------------------------------- MCP


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
    transport: Literal["streamable_http", "sse", "stdio"]
    command: str = ""
    args: list[str] = Field(default_factory=list)
    url: str = ""
    post_url: str = ""
    env: dict[str, str] = Field(default_factory=dict)
    auto_auth: bool = False
    auth: McpAuth = Field(default_factory=McpAuth)
    audit: McpAudit = Field(default_factory=McpAudit)
    disabled: bool = False
    description: str = ""

    @field_validator("env")
    @classmethod
    def _env(cls, v: dict[str, str]) -> dict[str, str]:
        return check_env(v)

    @model_validator(mode="after")
    def _transport(self) -> Self:
        if not self.name.strip():
            raise ValueError("name is required")
        if self.transport == "stdio":
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


class _ServiceRoute(Stamped):
    id: str = Field(default="", description="default <kind>:<service_id>:<path-slug>")
    description: str = ""
    disabled: bool = False
    match_policy: MatchPolicy = Field(default_factory=MatchPolicy)
    auth_policy: AuthPolicy = Field(default_factory=AuthPolicy)
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


class McpRoute(_ServiceRoute):
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


class AcpRoute(_ServiceRoute):
    kind: Literal["acp"] = "acp"
    protocol: Literal["acp"] = "acp"


# ---------------------------------------------------------------------------------------- ACP


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


# ------------------------------------------------------------------------------------- agents


class AgentAcpRuntime(Strict):
    service_id: str = ""


class AgentHttpRuntime(Strict):
    endpoint: str = ""
    auth_ref: str = ""


class AgentRuntime(Strict):
    type: Literal["acp", "http"]
    acp: AgentAcpRuntime | None = None
    http: AgentHttpRuntime | None = None

    @model_validator(mode="after")
    def _one(self) -> Self:
        if self.type == "acp":
            if not self.acp or not self.acp.service_id:
                raise ValueError("runtime.acp.service_id is required for runtime type acp")
            if self.http and (self.http.endpoint or self.http.auth_ref):
                raise ValueError("runtime.http must be empty for runtime type acp")
            self.http = None
        else:
            if not self.http or not self.http.endpoint:
                raise ValueError("runtime.http.endpoint is required for runtime type http")
            if self.acp and self.acp.service_id:
                raise ValueError("runtime.acp must be empty for runtime type http")
            self.acp = None
        return self


class AgentRoutes(Strict):
    acp_route_ids: list[str] = Field(default_factory=list)
    llm_route_ids: list[str] = Field(default_factory=list)
    mcp_route_ids: list[str] = Field(default_factory=list)

    @field_validator("*")
    @classmethod
    def _clean(cls, v: list[str]) -> list[str]:
        return dedupe(v)


class AgentResources(Strict):
    provider_ids: list[str] = Field(default_factory=list)
    mcp_service_ids: list[str] = Field(default_factory=list)
    virtual_key_ids: list[str] = Field(default_factory=list)

    @field_validator("*")
    @classmethod
    def _clean(cls, v: list[str]) -> list[str]:
        return dedupe(v)


class AgentBudget(Strict):
    max_turns_per_day: NonNegInt = 0
    max_tokens_per_day: NonNegInt = 0


class AgentPolicy(Strict):
    max_agent_depth: NonNegInt = 0
    budget: AgentBudget = Field(default_factory=AgentBudget)


class Agent(Stamped):
    id: str
    name: str
    description: str = ""
    runtime: AgentRuntime
    routes: AgentRoutes = Field(default_factory=AgentRoutes)
    resources: AgentResources = Field(default_factory=AgentResources)
    policy: AgentPolicy = Field(default_factory=AgentPolicy)
    disabled: bool = False
    owns_service: bool = Field(default=False, description="server-controlled; ignored on input")

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("name is required")
        return v
