"""The MCP plane: a real MCP server to clients (both eras, legacy SSE too) and a real MCP client to
many upstream tool servers (stdio, streamable HTTP, legacy SSE), multiplexed behind one route."""
