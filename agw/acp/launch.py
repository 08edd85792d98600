"""How an ACP service's agent is started: command line, working directory, environment.

Process shapes (reference §8.1), each run with the effective cwd as its working directory:

- ``opencode``: ``opencode acp --cwd <cwd>``;
- ``codex``: ``<codex.adapter_command> [codex.adapter_args...]`` (default ``codex-acp``);
- ``command``: ``<command> [args...]``, any other ACP agent.

The environment is the gateway's own with the service's ``env`` merged on top. The command is
looked up first (the "PATH preflight", on the PATH of that merged environment; a command with a
``/`` is taken as a path, relative to the cwd): a missing one fails at once with
``acp command "<cmd>" not found`` instead of a spawn error.

With ``gateway_origin`` on the service (:func:`resolve_origin`), the sessions get the gateway's
MCP route as their MCP server (:func:`mcp_servers`), and the agent's LLM endpoint is the
gateway, set over whatever the service's ``env`` says:

- ``OPENAI_BASE_URL`` = ``<gateway>/<llm route prefix>/v1``, ``ANTHROPIC_BASE_URL`` =
  ``<gateway>/<llm route prefix>``, ``OPENAI_API_KEY`` = ``ANTHROPIC_API_KEY`` =
  ``AGW_ACP_VIRTUAL_KEY`` = the virtual key's bearer (LLM route set);
- ``AGW_ACP_SESSION_TOKEN`` = the instance's session token (always): an agent that can add a
  header sends it as ``X-Agw-Acp-Session`` so the gateway can attribute its calls;
- opencode: ``OPENCODE_CONFIG_CONTENT`` gets a provider ``agw`` (``@ai-sdk/openai-compatible``,
  ``options.baseURL`` = the OpenAI base URL above, ``options.apiKey`` = the key,
  ``options.headers`` = ``{"X-Agw-Acp-Session": token}``), the service's ``default_model`` as
  its model (an ``agw/`` prefix is taken off for the model id), and ``model`` /
  ``small_model`` = ``agw/<model>`` unless the service's own ``OPENCODE_CONFIG_CONTENT`` (merged
  with, not replaced) names them;
- codex: ``-c`` overrides after the adapter args: ``model_provider="agw"``,
  ``model_providers.agw.{name="agw", base_url=<OpenAI base URL>, env_key="AGW_ACP_VIRTUAL_KEY",
  wire_api="responses", http_headers={"X-Agw-Acp-Session"=token}}`` and ``model=<default
  model>`` when the service has one.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from agw.acp.connection import AcpError
from agw.config import families as f
from agw.config.acp import AcpService
from agw.types import JsonObj

if TYPE_CHECKING:
    from agw.runtime.snapshot import Snapshot

log = logging.getLogger(__name__)

SESSION_HEADER = "X-Agw-Acp-Session"
TOKEN_ENV = "AGW_ACP_SESSION_TOKEN"
KEY_ENV = "AGW_ACP_VIRTUAL_KEY"


@dataclass(frozen=True)
class Origin:
    """The gateway as an agent's only origin: where its MCP server and LLM endpoint are."""

    key: str  # the virtual key's bearer
    mcp_url: str = ""  # <gateway data URL><mcp route prefix>, "" without an MCP route
    llm_base: str = ""  # <gateway data URL><llm route prefix>, "" without an LLM route

    @property
    def openai_base(self) -> str:
        return self.llm_base + "/v1" if self.llm_base else ""


@dataclass(frozen=True)
class LaunchSpec:
    argv: tuple[str, ...]
    cwd: str
    env: dict[str, str] = field(repr=False)


def resolve_origin(
    service: AcpService, snapshot: Snapshot | None, gateway_url: str
) -> Origin | None:
    """Where ``gateway_origin`` points the service's agents (None without it): the routes and
    the virtual key from the snapshot, the gateway's data URL. AcpError when a piece is
    missing."""
    config = service.gateway_origin
    if config is None:
        return None
    if snapshot is None:
        raise AcpError(f'acp service "{service.id}": gateway_origin needs the gateway config')
    base = gateway_url.rstrip("/")
    if not base:
        raise AcpError(f'acp service "{service.id}": gateway_origin needs the gateway\'s data URL')
    record = snapshot.state.get(f.VIRTUAL_KEY, config.virtual_key_id)
    if record is None or not record.key:
        raise AcpError(
            f'acp service "{service.id}": gateway_origin virtual key '
            f'"{config.virtual_key_id}" not found'
        )
    prefixes = {r.id: r.path_prefix.rstrip("/") for r in snapshot.routes}

    def url(route_id: str, kind: str) -> str:
        if not route_id:
            return ""
        if route_id not in prefixes:
            raise AcpError(
                f'acp service "{service.id}": gateway_origin {kind} route "{route_id}" not found'
            )
        return base + prefixes[route_id]

    return Origin(
        key=record.key,
        mcp_url=url(config.mcp_route_id, "mcp"),
        llm_base=url(config.llm_route_id, "llm"),
    )


def mcp_servers(
    capabilities: JsonObj, origin: Origin | None, token: str, label: str = ""
) -> list[JsonObj]:
    """``mcpServers`` of the sessions an agent opens: the gateway's MCP route as an ``http``
    server with the key and the session token, when the agent advertises
    ``mcpCapabilities.http`` (stdio is never attempted: logged and skipped)."""
    if origin is None or not origin.mcp_url:
        return []
    caps = capabilities.get("mcpCapabilities")
    if not (isinstance(caps, dict) and caps.get("http") is True):
        log.warning("acp_origin_mcp_skipped", extra={"label": label})
        return []
    return [
        {
            "type": "http",
            "name": "agw",
            "url": origin.mcp_url,
            "headers": [
                {"name": "Authorization", "value": f"Bearer {token or origin.key}"},
                {"name": SESSION_HEADER, "value": token},
            ],
        }
    ]


def shape(service: AcpService, cwd: str) -> tuple[str, list[str]]:
    """The command and arguments of the service's agent (before the PATH preflight)."""
    if service.agent_type == "opencode":
        return "opencode", ["acp", "--cwd", cwd]
    if service.agent_type == "codex":
        codex = service.codex
        command = codex.adapter_command if codex is not None else "codex-acp"
        return command or "codex-acp", list(codex.adapter_args) if codex is not None else []
    return service.command, list(service.args)


def find_command(command: str, env: Mapping[str, str], cwd: str) -> str:
    """The executable ``command`` names (absolute), or AcpError ``acp command "<cmd>" not
    found``."""
    if "/" in command:
        path = command if os.path.isabs(command) else os.path.join(cwd, command)
        if os.path.isfile(path) and os.access(path, os.X_OK):
            return path
    elif command:
        found = shutil.which(command, path=env.get("PATH", os.defpath))
        if found:
            return os.path.abspath(found)
    raise AcpError(f'acp command "{command}" not found')


def origin_env(
    service: AcpService, origin: Origin, token: str, env: Mapping[str, str]
) -> dict[str, str]:
    """The variables ``gateway_origin`` sets (``env``: the merged environment so far)."""
    out = {TOKEN_ENV: token}
    if not origin.llm_base:
        return out
    key = token or origin.key  # the session credential, standing for the virtual key
    out |= {
        "OPENAI_BASE_URL": origin.openai_base,
        "OPENAI_API_KEY": key,
        "ANTHROPIC_BASE_URL": origin.llm_base,
        "ANTHROPIC_API_KEY": key,
        KEY_ENV: key,
    }
    if service.agent_type == "opencode":
        out["OPENCODE_CONFIG_CONTENT"] = opencode_config(
            service, origin, token, env.get("OPENCODE_CONFIG_CONTENT", "")
        )
    return out


def opencode_config(service: AcpService, origin: Origin, token: str, current: str) -> str:
    try:
        config: Any = json.loads(current) if current.strip() else {}
    except ValueError:
        config = {}
    if not isinstance(config, dict):
        config = {}
    model = service.default_model.removeprefix("agw/")
    provider: dict[str, Any] = {
        "npm": "@ai-sdk/openai-compatible",
        "name": "agw",
        "options": {
            "baseURL": origin.openai_base,
            "apiKey": token or origin.key,
            "headers": {SESSION_HEADER: token},
        },
    }
    if model:
        provider["models"] = {model: {"name": model}}
        config.setdefault("model", f"agw/{model}")
        config.setdefault("small_model", f"agw/{model}")
    providers = config.get("provider")
    config["provider"] = {**(providers if isinstance(providers, dict) else {}), "agw": provider}
    return json.dumps(config, separators=(",", ":"))


def codex_args(service: AcpService, origin: Origin, token: str) -> list[str]:
    if service.agent_type != "codex" or not origin.llm_base:
        return []

    def toml(value: str) -> str:
        return json.dumps(value)  # a JSON string is a TOML basic string

    pairs = [
        ("model_provider", toml("agw")),
        ("model_providers.agw.name", toml("agw")),
        ("model_providers.agw.base_url", toml(origin.openai_base)),
        ("model_providers.agw.env_key", toml(KEY_ENV)),
        ("model_providers.agw.wire_api", toml("responses")),
        ("model_providers.agw.http_headers", "{" + f'"{SESSION_HEADER}"={toml(token)}' + "}"),
    ]
    if service.default_model:
        pairs.append(("model", toml(service.default_model)))
    out: list[str] = []
    for key, value in pairs:
        out += ["-c", f"{key}={value}"]
    return out


def launch_spec(
    service: AcpService,
    cwd: str,
    *,
    base_env: Mapping[str, str] | None = None,
    origin: Origin | None = None,
    token: str = "",
) -> LaunchSpec:
    """The full launch of the service's agent in ``cwd`` (PATH preflight included; blocking
    file-system checks: run it off the event loop)."""
    env = {**(os.environ if base_env is None else base_env), **service.env}
    command, args = shape(service, cwd)
    if origin is not None:
        env |= origin_env(service, origin, token, env)
        args += codex_args(service, origin, token)
    path = find_command(command, env, cwd)
    return LaunchSpec((path, *args), cwd, env)
