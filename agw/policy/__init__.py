"""Step 3 of the request pipeline: may this request go on? (docs/architecture.md)

Today the gates that need no identity: the agent-depth limit and a disabled route. They run
before the identity step, so a disabled route or a runaway agent chain is refused without
asking for a key. Authorization rules and limits admission (with the identity and limits
issues) come here too, after identity, as ``Principal x Request -> Admission | Refusal``.
"""

from __future__ import annotations

from agw.policy.gates import RouteGates

__all__ = ["RouteGates"]
