"""Step 3 of the request pipeline: may this request go on? (docs/architecture.md)

The gates that need no identity (gates.py): the agent-depth limit and a disabled route. They
run before the identity step, so a disabled route or a runaway agent chain is refused without
asking for a key. After identity, a route's CEL authorization rules: compiled with the snapshot
(rules.py), evaluated by each plane once it knows what the request asks for (authz.py:
``authorize(req, llm=...)``; docs/security.md, "Authorization rules (CEL)"). Limits admission
(the limits issue) comes here too.
"""

from __future__ import annotations

from agw.policy.gates import RouteGates

__all__ = ["RouteGates"]
