"""Bundle models of agents: an ACP service and its routes described as one object."""

from __future__ import annotations

from typing import Literal, Self

from pydantic import (
    Field,
    field_validator,
    model_validator,
)

from agw.config.base import (
    NonNegInt,
    Stamped,
    Strict,
    dedupe,
)


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
