"""The ACP plane: agents (opencode, codex-acp, any ACP agent) run by the gateway over stdio,
pooled per thread and session, their turns streamed to HTTP clients as SSE.

What the composition root (agw/server.py) and the admin API use is exported here; everything
else is the plane's own (docs/acp.md).
"""

from agw.acp.connection import AcpError
from agw.acp.history import list_sessions, load_transcript
from agw.acp.permissions import PermissionRegistry
from agw.acp.plane import AcpPlane
from agw.acp.replica import Replica, valid_replica_id
from agw.acp.runtime import AcpRuntime

__all__ = [
    "AcpError",
    "AcpPlane",
    "AcpRuntime",
    "PermissionRegistry",
    "Replica",
    "list_sessions",
    "load_transcript",
    "valid_replica_id",
]
