"""The upstream MCP transports and the factory that picks one for a service.

- :mod:`.base`: the interface (:class:`Upstream`, :class:`UpstreamError`) and shared constants;
- :mod:`.channel`: the base of the transports with one long-lived duplex channel;
- :mod:`.stdio`: one process per service (newline-delimited JSON on stdin/stdout);
- :mod:`.sse`: legacy HTTP+SSE (a GET stream plus POSTs);
- :mod:`.http`: streamable HTTP, both eras (its session and handshake); :mod:`.http_wire`: what
  it sends and reads (POSTs and their answers, each era's headers, the GET stream);
- :mod:`.openapi`: a REST API's OpenAPI operations served as tools; :mod:`.openapi_call`: one
  call as an HTTP request and its answer as a tool result.

The transports import only ``base`` (and ``channel``, ``http_wire``, ``openapi_call``); only this
module imports the transports.
"""

from __future__ import annotations

from agw.config.mcp import McpService
from agw.mcp.upstream.base import (
    DEFAULT_CALL_TIMEOUT_S,
    MESSAGE_LIMIT,
    Listener,
    OnMessage,
    Upstream,
    UpstreamError,
    auth_headers,
)
from agw.mcp.upstream.http import StreamableHttpUpstream
from agw.mcp.upstream.openapi import OpenApiUpstream
from agw.mcp.upstream.sse import SseUpstream
from agw.mcp.upstream.stdio import StdioUpstream

__all__ = [
    "DEFAULT_CALL_TIMEOUT_S",
    "MESSAGE_LIMIT",
    "Listener",
    "OnMessage",
    "OpenApiUpstream",
    "SseUpstream",
    "StdioUpstream",
    "StreamableHttpUpstream",
    "Upstream",
    "UpstreamError",
    "auth_headers",
    "create_upstream",
]


def create_upstream(service: McpService, listener: Listener | None = None) -> Upstream:
    """The transport the service asks for."""
    if service.transport == "stdio":
        return StdioUpstream(service, listener)
    if service.transport == "sse":
        return SseUpstream(service, listener)
    if service.transport == "openapi":
        return OpenApiUpstream(service, listener)
    return StreamableHttpUpstream(service, listener)
