"""GatewayBundle object models: the ten families of reference §3.3, strict.

Every model rejects unknown keys (``extra="forbid"``); the loader turns those rejections into
``path: unknown field; did you mean ...?`` problems. Normalisation (lower-casing, defaults that
depend on other fields) happens in ``model_validator(mode="after")`` hooks, so two objects that
mean the same thing dump to the same JSON and an unchanged apply is a no-op.

Checks that span objects (duplicate ids, dangling references) live in ``validate.py``.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Any, Literal, Self

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    WithJsonSchema,
    field_validator,
    model_validator,
)

API_VERSION = "gateway.agw/v1alpha1"
KIND = "GatewayBundle"

PROVIDER_TYPES: tuple[str, ...] = (
    "anthropic",
    "claudecode",
    "codex",
    "deepseek",
    "gemini",
    "ollama",
    "openai",
    "openrouter",
    "zhipu",
)
DEFAULT_BASE_URLS: dict[str, str] = {
    "openai": "https://api.openai.com/v1",
    "anthropic": "https://api.anthropic.com",
    "claudecode": "https://api.anthropic.com",
    "codex": "https://chatgpt.com/backend-api/codex",
    "openrouter": "https://openrouter.ai/api/v1",
    "deepseek": "https://api.deepseek.com",
    "zhipu": "https://open.bigmodel.cn/api/paas/v4",
    "gemini": "https://generativelanguage.googleapis.com",
    "ollama": "http://localhost:11434/v1",
}
LLM_PROTOCOLS: tuple[str, ...] = ("anthropic", "cc", "openai")
AUTHENTICATORS: tuple[str, ...] = ("claudecode", "codex", "gemini")
COMPACT_MODES = ("cc", "codex", "none")

_SLASHY = re.compile(r"/|\\|%2f|%5c", re.IGNORECASE)
_ENV_KEY = re.compile(r"^[^=\x00]+$")

NonNegInt = Annotated[int, Field(ge=0)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)


class Stamped(Strict):
    """Objects with server-managed timestamps: accepted in bundles (Go exports carry them) and
    ignored; the admin API reports them in its views."""

    created_at: str | None = Field(default=None, exclude=True, description="server-managed")
    updated_at: str | None = Field(default=None, exclude=True, description="server-managed")


def _check_id(value: str, *, slash_free: bool = True) -> str:
    value = value.strip()
    if not value:
        raise ValueError("id must not be empty")
    if slash_free and _SLASHY.search(value):
        raise ValueError(f"id {value!r} must not contain '/', '\\', '%2f' or '%5c'")
    return value


def _dedupe(values: list[str]) -> list[str]:
    seen: dict[str, None] = {}
    for v in values:
        v = v.strip()
        if v:
            seen.setdefault(v, None)
    return list(seen)


# ---------------------------------------------------------------------------------- providers


class NetworkConfig(Strict):
    request_timeout_seconds: NonNegInt = 120
    max_retries: NonNegInt = 3
    retry_delay_seconds: NonNegInt = 1
    max_idle_connections: NonNegInt = 100
    max_idle_connections_per_host: NonNegInt = 20
    idle_keep_alive_timeout_seconds: NonNegInt = 90
    proxy_url: str = ""
    extra_headers: dict[str, str] = Field(default_factory=dict)


class Provider(Stamped):
    id: str
    provider_type: Literal[
        "anthropic",
        "claudecode",
        "codex",
        "deepseek",
        "gemini",
        "ollama",
        "openai",
        "openrouter",
        "zhipu",
    ]
    disabled: bool = False
    api_key: str = ""
    base_url: str = Field(default="", description="empty means the provider type's default")
    default_model: str = ""
    network: NetworkConfig = Field(default_factory=NetworkConfig)
    options: dict[str, Any] = Field(default_factory=dict)

    @field_validator("provider_type", mode="before")
    @classmethod
    def _lower_type(cls, v: Any) -> Any:
        return v.strip().lower() if isinstance(v, str) else v

    @field_validator("id")
    @classmethod
    def _id(cls, v: str) -> str:
        return _check_id(v)

    @field_validator("options")
    @classmethod
    def _options(cls, v: dict[str, Any]) -> dict[str, Any]:
        compact = v.get("compact")
        if compact is not None and compact not in COMPACT_MODES:
            raise ValueError(f"options.compact must be one of cc, codex, none (got {compact!r})")
        return v

    @property
    def effective_base_url(self) -> str:
        return self.base_url or DEFAULT_BASE_URLS[self.provider_type]


class CapabilityOverrides(Strict):
    streaming: bool | None = None
    tools: bool | None = None
    vision: bool | None = None
    embeddings: bool | None = None
    context_window: NonNegInt | None = None
    max_output_tokens: NonNegInt | None = None


class ManagedModel(Strict):
    provider_id: str
    upstream_model: str
    credential_scope: str = ""
    enabled: bool = True
    capability_overrides: CapabilityOverrides | None = None

    @field_validator("provider_id", "upstream_model")
    @classmethod
    def _required(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("must not be empty")
        return v.strip()

    @field_validator("credential_scope")
    @classmethod
    def _lower_scope(cls, v: str) -> str:
        return v.strip().lower()

    @property
    def id(self) -> str:
        return f"{self.provider_id}/{self.upstream_model}"


# --------------------------------------------------------------------------------- llm routes


class MatchPolicy(Strict):
    host: str = ""
    path_prefix: str = ""
    methods: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _normalise(self) -> Self:
        self.host = self.host.strip().lower()
        self.methods = sorted(_dedupe([m.upper() for m in self.methods]))
        if self.path_prefix and not self.path_prefix.startswith("/"):
            raise ValueError(f"path_prefix must start with '/' (got {self.path_prefix!r})")
        return self


class AuthPolicy(Strict):
    require_virtual_key: bool = False


class ProviderTarget(Strict):
    provider_id: str


class Candidate(Strict):
    provider_id: str
    upstream_model: str
    weight: NonNegInt = 0
    priority: int = 0
    default: bool = False


class ModelTarget(Strict):
    name: str
    strategy: Literal["", "auto", "weighted", "priority"] = ""
    default_candidate: str = ""
    candidates: list[Candidate] = Field(default_factory=list)


class Fallback(Strict):
    enabled: bool = False
    max_num: Annotated[int, Field(ge=0, le=5)] = 0


SCOPE_KINDS = ("model_custom", "provider_id", "provider_type")
CREDENTIAL_TYPES = ("api_key", "cliauth_token")


class TargetPolicy(Strict):
    type: Literal["", "direct-provider", "logical-model"] = ""
    provider_id: str = ""
    provider_target: ProviderTarget | None = None
    credential_selector: Literal["round_robin", "fill_first"] = "round_robin"
    credential_scope_order: list[Literal["model_custom", "provider_id", "provider_type"]] = Field(
        default_factory=list
    )
    credential_type_order: list[Literal["api_key", "cliauth_token"]] = Field(default_factory=list)
    default_model: str = ""
    model_selector_strategy: Literal["auto", "weighted", "priority"] = "auto"
    fallback: Fallback = Field(default_factory=Fallback)
    model_targets: list[ModelTarget] = Field(default_factory=list)

    @model_validator(mode="after")
    def _normalise(self) -> Self:
        if self.provider_target and not self.provider_id:
            self.provider_id = self.provider_target.provider_id
        if self.provider_target and self.provider_target.provider_id != self.provider_id:
            raise ValueError("provider_id and provider_target.provider_id disagree")
        if not self.type:
            if self.model_targets:
                self.type = "logical-model"
            elif self.provider_id:
                self.type = "direct-provider"
            else:
                raise ValueError(
                    "target_policy needs a provider_id (direct-provider) "
                    "or model_targets (logical-model)"
                )
        if len(set(self.credential_type_order)) != len(self.credential_type_order):
            raise ValueError("credential_type_order must not repeat a type")
        if not self.credential_type_order:
            self.credential_type_order = ["api_key", "cliauth_token"]
        if self.type == "direct-provider":
            if not self.provider_id:
                raise ValueError("direct-provider target_policy requires provider_id")
            if self.model_targets:
                raise ValueError("direct-provider target_policy must not have model_targets")
            if "model_custom" in self.credential_scope_order:
                raise ValueError("credential_scope_order: model_custom needs a logical-model")
            self.provider_target = ProviderTarget(provider_id=self.provider_id)
            if not self.credential_scope_order:
                self.credential_scope_order = ["provider_id"]
        else:
            self._check_logical()
            if not self.credential_scope_order:
                self.credential_scope_order = ["model_custom", "provider_id"]
        return self

    def _check_logical(self) -> None:
        if self.provider_id or self.provider_target:
            raise ValueError("logical-model target_policy must not set provider_id")
        if not self.model_targets:
            raise ValueError("logical-model target_policy requires model_targets")
        names = [t.name for t in self.model_targets]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"model_targets: duplicate name {dup[0]!r}")
        if not self.default_model:
            self.default_model = names[0]
        if self.default_model not in names:
            raise ValueError(f"default_model {self.default_model!r} is not a model_targets name")
        for target in self.model_targets:
            if not target.candidates:
                raise ValueError(f"model target {target.name!r} has no candidates")
            keys = [(c.provider_id, c.upstream_model) for c in target.candidates]
            if len(set(keys)) != len(keys):
                raise ValueError(f"model target {target.name!r} repeats a candidate")
            defaults = [c for c in target.candidates if c.default]
            if len(defaults) > 1:
                raise ValueError(f"model target {target.name!r} has more than one default")
            if defaults and target.name != self.default_model:
                raise ValueError(
                    f"model target {target.name!r}: default candidates must be in the "
                    f"default_model target {self.default_model!r}"
                )

    def provider_ids(self) -> list[str]:
        if self.type == "direct-provider":
            return [self.provider_id]
        return _dedupe([c.provider_id for t in self.model_targets for c in t.candidates])


class LLMRoute(Stamped):
    id: str
    kind: Literal["llm"] = "llm"
    protocol: Literal["openai", "anthropic", "cc"]
    description: str = ""
    disabled: bool = False
    match_policy: MatchPolicy = Field(default_factory=MatchPolicy)
    auth_policy: AuthPolicy = Field(default_factory=AuthPolicy)
    target_policy: TargetPolicy

    @field_validator("id")
    @classmethod
    def _id(cls, v: str) -> str:
        return _check_id(v)

    @field_validator("protocol", mode="before")
    @classmethod
    def _lower(cls, v: Any) -> Any:
        return v.strip().lower() if isinstance(v, str) else v


# ------------------------------------------------------------------------------ virtual keys


class VirtualKey(Stamped):
    id: str
    tag: str = ""
    description: str = ""
    disabled: bool = False
    allowed_route_ids: list[str] = Field(default_factory=list)
    status_message: str = ""
    expires_at: datetime | None = None

    @field_validator("id")
    @classmethod
    def _id(cls, v: str) -> str:
        return _check_id(v)

    @field_validator("allowed_route_ids")
    @classmethod
    def _routes(cls, v: list[str]) -> list[str]:
        if any(not r.strip() for r in v):
            raise ValueError("allowed_route_ids must not contain empty entries")
        return sorted(_dedupe(v))

    @field_validator("expires_at")
    @classmethod
    def _tz(cls, v: datetime | None) -> datetime | None:
        if v is not None and v.tzinfo is None:
            raise ValueError("expires_at must be RFC3339 with a time zone (e.g. ...Z)")
        return v


# ------------------------------------------------------------------------------------ cliauth


class CliAuthConfig(Strict):
    callback_port: NonNegInt = 0
    no_browser: bool = False
    device_flow: bool = False
    transport_profile: str = ""
    network: NetworkConfig | None = None


class CliAuthAuthenticator(Strict):
    name: Literal["claudecode", "codex", "gemini"]
    enabled: bool = False
    config: CliAuthConfig | None = None

    @field_validator("name", mode="before")
    @classmethod
    def _lower(cls, v: Any) -> Any:
        return v.strip().lower() if isinstance(v, str) else v

    @property
    def id(self) -> str:
        return self.name


# ---------------------------------------------------------------------------------------- MCP


class McpAuth(Strict):
    type: Literal["", "api_key", "bearer", "oauth2", "basic"] = ""
    api_key: str = ""
    username: str = ""
    password: str = ""


class McpAudit(Strict):
    capture_tool_args: bool = False


def _check_env(env: dict[str, str]) -> dict[str, str]:
    for key, value in env.items():
        if not _ENV_KEY.match(key):
            raise ValueError(f"env key {key!r} must be non-empty without '=' or NUL")
        if "\x00" in value:
            raise ValueError(f"env value of {key!r} must not contain NUL")
    return env


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

    @field_validator("id")
    @classmethod
    def _id(cls, v: str) -> str:
        return _check_id(v)

    @field_validator("env")
    @classmethod
    def _env(cls, v: dict[str, str]) -> dict[str, str]:
        return _check_env(v)

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


def route_slug(path_prefix: str) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", path_prefix.lower()).strip("-")
    return slug or "root"


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
        return _check_id(v) if v else v

    @model_validator(mode="after")
    def _default_id(self) -> Self:
        if not self.service_id.strip():
            raise ValueError("service_id is required")
        if not self.id:
            kind = getattr(self, "kind", "mcp")
            self.id = f"{kind}:{self.service_id}:{route_slug(self.match_policy.path_prefix)}"
        self.id = _check_id(self.id)
        return self


class McpRoute(_ServiceRoute):
    kind: Literal["mcp"] = "mcp"
    protocol: Literal["mcp"] = "mcp"


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
    ] = Field(default=0, description="nanoseconds, or a Go duration string like 10m or 1h30m")
    max_instances: NonNegInt = 0
    permission_mode: Literal["deny", "auto_approve", "interactive"] = "deny"
    disabled: bool = False
    description: str = ""
    codex: CodexOptions | None = None

    @field_validator("id")
    @classmethod
    def _id(cls, v: str) -> str:
        return _check_id(v)

    @field_validator("idle_ttl", mode="before")
    @classmethod
    def _ttl(cls, v: Any) -> Any:
        return parse_duration_ns(v) if isinstance(v, int | str) and not isinstance(v, bool) else v

    @field_validator("env")
    @classmethod
    def _env(cls, v: dict[str, str]) -> dict[str, str]:
        return _check_env(v)

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
        if not any(_within(self.cwd, root) for root in self.allowed_roots):
            raise ValueError(f"cwd {self.cwd!r} is not inside any of allowed_roots")
        if self.agent_type == "command" and not self.command:
            raise ValueError("agent_type command requires command")
        if self.agent_type != "command" and (self.command or self.args):
            raise ValueError("command and args are only for agent_type command")
        if self.codex is not None and self.agent_type != "codex":
            raise ValueError("codex options are only for agent_type codex")
        return self


def _within(path: str, root: str) -> bool:
    path, root = path.rstrip("/") or "/", root.rstrip("/") or "/"
    return path == root or path.startswith(root if root == "/" else root + "/")


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
        return _dedupe(v)


class AgentResources(Strict):
    provider_ids: list[str] = Field(default_factory=list)
    mcp_service_ids: list[str] = Field(default_factory=list)
    virtual_key_ids: list[str] = Field(default_factory=list)

    @field_validator("*")
    @classmethod
    def _clean(cls, v: list[str]) -> list[str]:
        return _dedupe(v)


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

    @field_validator("id")
    @classmethod
    def _id(cls, v: str) -> str:
        return _check_id(v)

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("name is required")
        return v


# --------------------------------------------------------------- credentials (admin API only)


class Credential(Stamped):
    """A managed upstream credential. Not a bundle family (as in the Go project): created with
    ``POST /admin/credentials``."""

    id: str
    type: Literal["api_key"]
    provider_id: str
    provider_type: str = ""
    scope: str = ""
    label: str = ""
    attributes: dict[str, Any] = Field(default_factory=dict)
    metadata: dict[str, Any] = Field(default_factory=dict)
    disabled: bool = False

    @field_validator("id")
    @classmethod
    def _id(cls, v: str) -> str:
        return _check_id(v)

    @model_validator(mode="after")
    def _scope(self) -> Self:
        if not self.provider_id:
            raise ValueError("provider_id is required")
        self.scope = self.scope.strip().lower() or f"id:{self.provider_id}"
        if not self.scope.startswith(("id:", "type:")):
            raise ValueError("scope must be id:<provider_id> or type:<provider_type>")
        if not str(self.attributes.get("api_key", "")).strip():
            raise ValueError("attributes.api_key is required for an api_key credential")
        return self


# ------------------------------------------------------------------------------------- bundle


class Bundle(Strict):
    """A GatewayBundle document."""

    model_config = ConfigDict(
        extra="forbid",
        title="GatewayBundle",
        json_schema_extra={"$id": "https://agw.dev/schemas/gateway-bundle.json"},
    )

    apiVersion: Literal["gateway.agw/v1alpha1"]
    kind: Literal["GatewayBundle"]
    providers: list[Provider] = Field(default_factory=list)
    managedModels: list[ManagedModel] = Field(default_factory=list)
    llmRoutes: list[LLMRoute] = Field(default_factory=list)
    virtualKeys: list[VirtualKey] = Field(default_factory=list)
    cliAuthAuthenticators: list[CliAuthAuthenticator] = Field(default_factory=list)
    mcpServices: list[McpService] = Field(default_factory=list)
    mcpRoutes: list[McpRoute] = Field(default_factory=list)
    acpServices: list[AcpService] = Field(default_factory=list)
    acpRoutes: list[AcpRoute] = Field(default_factory=list)
    agents: list[Agent] = Field(default_factory=list)
