"""Bundle models of the LLM families: providers, managed models, LLM routes, credentials and
CLI-auth authenticators."""

from __future__ import annotations

from typing import Annotated, Any, Literal, Self

from pydantic import (
    Field,
    field_validator,
    model_validator,
)

from agw.config.base import (
    Authorization,
    AuthPolicy,
    MatchPolicy,
    NonNegInt,
    Stamped,
    Strict,
    dedupe,
)

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


LLM_PROTOCOLS: tuple[str, ...] = ("anthropic", "cc", "gemini", "openai")


AUTHENTICATORS: tuple[str, ...] = ("claudecode", "codex", "gemini")


COMPACT_MODES = ("cc", "codex", "none")


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


UsdPerMillion = Annotated[float, Field(ge=0, le=1_000_000, allow_inf_nan=False)]


class ModelPricing(Strict):
    """A managed model's price, USD per million tokens; it replaces the shipped catalog's entry
    for the model whole (docs/limits.md, "Prices and cost"). Unset parts: ``cached_input`` and
    ``cache_write`` bill as ``input``, ``reasoning`` as ``output``."""

    input: UsdPerMillion
    output: UsdPerMillion
    cached_input: UsdPerMillion | None = None
    cache_write: UsdPerMillion | None = None
    reasoning: UsdPerMillion | None = None


class ManagedModel(Strict):
    provider_id: str
    upstream_model: str
    credential_scope: str = ""
    enabled: bool = True
    capability_overrides: CapabilityOverrides | None = None
    pricing: ModelPricing | None = None

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
        return dedupe([c.provider_id for t in self.model_targets for c in t.candidates])


class LLMRoute(Stamped):
    id: str
    kind: Literal["llm"] = "llm"
    protocol: Literal["openai", "anthropic", "cc", "gemini"]
    description: str = ""
    disabled: bool = False
    match_policy: MatchPolicy = Field(default_factory=MatchPolicy)
    auth_policy: AuthPolicy = Field(default_factory=AuthPolicy)
    authorization: Authorization = Field(default_factory=Authorization)
    target_policy: TargetPolicy

    @field_validator("protocol", mode="before")
    @classmethod
    def _lower(cls, v: Any) -> Any:
        return v.strip().lower() if isinstance(v, str) else v


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
