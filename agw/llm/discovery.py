"""Model discovery: ask a provider which models it serves, keep the answer in memory.

Snapshots are in-memory only (as in the Go project): refreshed with
``POST /admin/llm/models/providers/{id}/refresh``, read by ``.../discovered``, shown in managed
model views, and used by logical-model routing for the ``streaming`` capability when a managed
model does not override it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import aiohttp

from agw import jsonfast
from agw.clock import rfc3339
from agw.config.llm import Provider
from agw.llm.providers import (
    RESPONSE_LIMIT,
    BodyTooLarge,
    CredentialPicker,
    UpstreamPool,
    auth_headers,
    kind_of,
    read_capped,
    url_for,
)
from agw.logs import redact_url, scrub
from agw.runtime.snapshot import Snapshot
from agw.types import JsonObj


class DiscoveryFailed(Exception):
    pass


@dataclass
class ModelSnapshot:
    provider_id: str
    provider_type: str
    upstream_model: str
    display_name: str = ""
    description: str = ""
    capabilities: JsonObj = field(default_factory=dict)
    status: str = "ok"  # ok | error
    fetched_at: str = ""
    last_error: str = ""

    def as_json(self) -> JsonObj:
        return {
            "provider_id": self.provider_id,
            "provider_type": self.provider_type,
            "upstream_model": self.upstream_model,
            "display_name": self.display_name,
            "description": self.description,
            "capabilities": self.capabilities,
            "status": self.status,
            "fetched_at": self.fetched_at,
            "last_error": self.last_error,
        }


def parse_models(provider: Provider, body: Any) -> list[ModelSnapshot]:
    """The provider's own model list, whatever its shape (OpenAI, Anthropic or Gemini: the
    provider's kind reads it)."""
    stamp = rfc3339()
    return [
        ModelSnapshot(
            provider.id,
            provider.provider_type,
            m.id,
            m.display_name,
            m.description,
            m.capabilities,
            fetched_at=stamp,
        )
        for m in kind_of(provider).listed_models(body)
    ]


class ModelCatalog:
    """Discovered models per provider, in memory."""

    def __init__(self, pool: UpstreamPool, picker: CredentialPicker) -> None:
        self.pool = pool
        self.picker = picker
        self._by_provider: dict[str, list[ModelSnapshot]] = {}

    def discovered(self, provider_id: str) -> list[ModelSnapshot]:
        return list(self._by_provider.get(provider_id, ()))

    def find(self, provider_id: str, model: str) -> ModelSnapshot | None:
        for snap in self._by_provider.get(provider_id, ()):
            if snap.upstream_model == model:
                return snap
        return None

    def forget(self, provider_ids: set[str]) -> None:
        """Drop snapshots of providers that no longer exist."""
        for pid in list(self._by_provider):
            if pid not in provider_ids:
                del self._by_provider[pid]

    async def refresh(self, snapshot: Snapshot, provider_id: str) -> list[ModelSnapshot]:
        provider = snapshot.providers[provider_id]
        key = next(iter(self.picker.keys(snapshot, provider_id, ["provider_id"], "round_robin")))
        url = url_for(provider, "models", "", stream=False)
        headers = auth_headers(provider, "models", key.value)
        try:
            async with self.pool.session(provider).get(
                url,
                headers=headers,
                timeout=self.pool.timeout(provider, stream=False),
                proxy=provider.network.proxy_url or None,
            ) as resp:
                if resp.status >= 400:
                    raise DiscoveryFailed(f"{redact_url(url)} answered {resp.status}")
                raw = jsonfast.loads(await read_capped(resp, RESPONSE_LIMIT))
        except (aiohttp.ClientError, TimeoutError, ValueError, BodyTooLarge) as exc:
            # scrubbed: aiohttp's errors may quote the URL or the proxy's, credentials included
            # (the admin views mask them)
            reason = scrub(str(exc))
            self._failed(provider, f"{type(exc).__name__}: {reason}")
            raise DiscoveryFailed(f"model discovery for {provider_id} failed: {reason}") from None
        except DiscoveryFailed as exc:
            self._failed(provider, str(exc))
            raise
        models = parse_models(provider, raw)
        self._by_provider[provider_id] = models
        return models

    def _failed(self, provider: Provider, error: str) -> None:
        """Keep earlier snapshots, marked with the error."""
        for snap in self._by_provider.get(provider.id, ()):
            snap.status, snap.last_error = "error", error
