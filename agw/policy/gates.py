"""The gates every data-plane request passes before its plane, that need no identity."""

from __future__ import annotations

from typing import TYPE_CHECKING

from agw.errors import Refusal

if TYPE_CHECKING:  # runtime.snapshot imports agw.policy.rules: no import back at run time
    from agw.runtime.snapshot import CompiledRoute


class RouteGates:
    """``max_agent_depth``: an inbound ``X-Agent-Depth`` at or past it is refused (0: no
    limit), so a chain of agents calling agents through the gateway ends."""

    __slots__ = ("max_agent_depth",)

    def __init__(self, max_agent_depth: int = 0) -> None:
        self.max_agent_depth = max_agent_depth

    def refusal(self, route: CompiledRoute, depth: int) -> Refusal | None:
        if self.max_agent_depth > 0 and depth >= self.max_agent_depth:
            return Refusal(403, "agent_depth_exceeded", "agent depth limit exceeded")
        if route.disabled:
            return Refusal(403, "route_disabled", f'route "{route.id}" is disabled')
        return None
