"""The GatewayBundle document: every family in one model (reference §3.3).

Every model rejects unknown keys (``extra="forbid"``); the loader turns those rejections into
``path: unknown field; did you mean ...?`` problems. Normalisation (lower-casing, defaults that
depend on other fields) happens in ``model_validator(mode="after")`` hooks, so two objects that
mean the same thing dump to the same JSON and an unchanged apply is a no-op. One module per area
holds the models (llm, mcp, acp, a2a, agents, access); checks that span objects (duplicate ids,
dangling references) live in ``validate.py``."""

from __future__ import annotations

from typing import Literal

from pydantic import (
    ConfigDict,
    Field,
)

from agw.config.a2a import A2aRoute, A2aService
from agw.config.access import AuthorizationPolicy, JwtProvider, VirtualKey
from agw.config.acp import AcpRoute, AcpService
from agw.config.agents import Agent
from agw.config.base import (
    Strict,
)
from agw.config.limits import Limit
from agw.config.llm import CliAuthAuthenticator, LLMRoute, ManagedModel, Provider
from agw.config.mcp import McpRoute, McpService

API_VERSION = "gateway.agw/v1alpha1"


KIND = "GatewayBundle"


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
    jwtProviders: list[JwtProvider] = Field(default_factory=list)
    authorizationPolicies: list[AuthorizationPolicy] = Field(default_factory=list)
    cliAuthAuthenticators: list[CliAuthAuthenticator] = Field(default_factory=list)
    mcpServices: list[McpService] = Field(default_factory=list)
    mcpRoutes: list[McpRoute] = Field(default_factory=list)
    acpServices: list[AcpService] = Field(default_factory=list)
    acpRoutes: list[AcpRoute] = Field(default_factory=list)
    agents: list[Agent] = Field(default_factory=list)
    a2aServices: list[A2aService] = Field(default_factory=list)
    a2aRoutes: list[A2aRoute] = Field(default_factory=list)
    limits: list[Limit] = Field(default_factory=list)
