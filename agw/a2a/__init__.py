"""The A2A plane: remote agents (Agent2Agent protocol, 1.0 and 0.3, JSON-RPC and HTTP+JSON)
behind gateway routes, their cards rewritten to the gateway, their credentials the gateway's.

What the composition root (agw/server.py) uses is exported here; everything else is the
plane's own (docs/a2a.md).
"""

from agw.a2a.plane import A2aPlane

__all__ = ["A2aPlane"]
