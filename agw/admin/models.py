"""Model discovery endpoints (reference §5.4): what a provider says it serves, in memory."""

from __future__ import annotations

from quart import Quart

from agw.admin.resources import JSONResponse
from agw.errors import NotFound, UpstreamFailed
from agw.llm import DiscoveryFailed, ModelCatalog
from agw.runtime.manager import ConfigManager


def register(app: Quart, manager: ConfigManager, catalog: ModelCatalog) -> None:
    base = "/admin/llm/models/providers/<provider_id>"

    def _provider(provider_id: str) -> None:
        if provider_id not in manager.snapshot.providers:
            raise NotFound("provider not found")

    async def discovered(provider_id: str) -> JSONResponse:
        _provider(provider_id)
        return {"items": [s.as_json() for s in catalog.discovered(provider_id)]}, 200

    async def refresh(provider_id: str) -> JSONResponse:
        _provider(provider_id)
        try:
            models = await catalog.refresh(manager.snapshot, provider_id)
        except DiscoveryFailed as exc:
            raise UpstreamFailed(str(exc)) from None
        return {"provider_id": provider_id, "items": [s.as_json() for s in models]}, 200

    app.add_url_rule(f"{base}/discovered", "models_discovered", discovered, methods=["GET"])
    app.add_url_rule(f"{base}/refresh", "models_refresh", refresh, methods=["POST"])
