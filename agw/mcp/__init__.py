"""The MCP plane: a real MCP server to clients (both eras, legacy SSE too) and a real MCP client to
many upstream tool servers (stdio, streamable HTTP, legacy SSE), multiplexed behind one route.

What the composition root (agw/server.py) and the admin API (agw/admin/mcp.py) use.
"""

from agw.mcp.jsonrpc import METHOD_NOT_FOUND, RpcError
from agw.mcp.plane import McpPlane
from agw.mcp.session_id import env_session_key
from agw.mcp.state import McpState
from agw.mcp.upstream import UpstreamError

__all__ = [
    "METHOD_NOT_FOUND",
    "McpPlane",
    "McpState",
    "RpcError",
    "UpstreamError",
    "env_session_key",
]
