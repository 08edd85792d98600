"""L4: the LLM plane: surfaces (openai, anthropic, cc), providers, passthrough and translation.

What the composition root (agw/server.py) and the admin API use of it; everything else is the
plane's own: plane (LlmPlane), forward (attempts, retry, failover), relay (answers), providers/
(one module per wire), translate/, routing, credential_health, discovery.
"""

from agw.llm.credential_health import CredentialHealth
from agw.llm.discovery import DiscoveryFailed, ModelCatalog
from agw.llm.plane import LlmPlane

__all__ = ["CredentialHealth", "DiscoveryFailed", "LlmPlane", "ModelCatalog"]
