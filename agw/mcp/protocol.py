"""MCP protocol constants, as the gateway speaks them on both sides: to its clients (the
ingress and the server) and to its upstreams (the transports of :mod:`agw.mcp.upstream`).

Two eras (docs/mcp.md): the *handshake* era (``initialize``, an ``Mcp-Session-Id``;
2024-11-05 to 2025-11-25) and the *modern* stateless era (2026-07-28), where every request
carries its protocol version, capabilities and client info in ``params._meta`` under the
``io.modelcontextprotocol/`` keys below.
"""

from __future__ import annotations

from agw.types import JsonObj
from agw.version import VERSION

# ------------------------------------------------------------------------------ versions

MODERN = "2026-07-28"  # the stateless era
MODERN_VERSIONS = (MODERN,)
# the handshake era, newest first: what an ``initialize`` may ask for
HANDSHAKE_VERSIONS = ("2025-11-25", "2025-06-18", "2025-03-26", "2024-11-05")
LATEST_HANDSHAKE = HANDSHAKE_VERSIONS[0]
# JSON-RPC batches are allowed only in these (later versions dropped them)
BATCH_VERSIONS = frozenset({"2025-03-26", "2024-11-05"})
# what ``server/discover`` and an unsupported-version error list
SUPPORTED_VERSIONS = [MODERN, "2025-11-25", "2025-06-18", "2025-03-26"]
# the version the gateway asks its upstreams for first (newest of the handshake era)
UPSTREAM_PROTOCOL_VERSION = LATEST_HANDSHAKE
MODERN_PROTOCOL_VERSION = MODERN

# ---------------------------------------------------------------------- params._meta keys

META_PREFIX = "io.modelcontextprotocol/"
META_VERSION = "io.modelcontextprotocol/protocolVersion"
META_CAPABILITIES = "io.modelcontextprotocol/clientCapabilities"
META_CLIENT_INFO = "io.modelcontextprotocol/clientInfo"
META_SERVER_INFO = "io.modelcontextprotocol/serverInfo"
META_LOG_LEVEL = "io.modelcontextprotocol/logLevel"

# the request methods whose ``Mcp-Name`` header repeats a param (2026-07-28), and which
NAME_BEARING = {"tools/call": "name", "prompts/get": "name", "resources/read": "uri"}

# ------------------------------------------------------------------------ the gateway's own

# who the gateway is, as a server to its clients and as a client to its upstreams
SERVER_INFO: JsonObj = {"name": "agw", "version": VERSION}
CLIENT_INFO: JsonObj = {"name": "agw", "version": VERSION}
# Declared to upstreams so they may ask; the gateway relays a request only to a client that
# declared the capability itself and answers the others with an error.
CLIENT_CAPABILITIES: JsonObj = {"roots": {"listChanged": True}, "sampling": {}, "elicitation": {}}
