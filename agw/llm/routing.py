"""Which provider and upstream model serve a request: direct-provider or logical-model routes,
with managed models as the eligibility gate and the fallback order."""

from __future__ import annotations

import random
from dataclasses import dataclass

from agw.config import families as f
from agw.config.llm import Candidate, LLMRoute, ModelTarget, Provider
from agw.errors import Refusal
from agw.llm.discovery import ModelCatalog
from agw.runtime.snapshot import Snapshot


@dataclass(frozen=True, slots=True)
class Target:
    provider: Provider
    upstream_model: str
    logical_model: str = ""
    credential_scope: str = ""  # the managed model's custom scope (model_custom)


def resolve(
    snapshot: Snapshot,
    route: LLMRoute,
    model: str,
    *,
    stream: bool,
    catalog: ModelCatalog | None = None,
) -> list[Target]:
    """Targets in the order to try them; the first is the primary. A route that cannot serve
    ``model`` is a :class:`Refusal`."""
    tp = route.target_policy
    if tp.type == "direct-provider":
        provider = snapshot.providers[tp.provider_id]
        if provider.disabled:
            raise Refusal(
                403, "provider_disabled", f'route target provider "{provider.id}" is disabled'
            )
        return [Target(provider, model or provider.default_model)]
    name = model or tp.default_model
    if not name:
        raise Refusal(400, "protocol_validation_failed", f'route "{route.id}" requires a model')
    target = next((t for t in tp.model_targets if t.name == name), None)
    if target is None:
        raise Refusal(
            403, "model_not_allowed", f'model "{name}" is not allowed on route "{route.id}"'
        )
    eligible = [
        c for c in target.candidates if _eligible(snapshot, c, stream=stream, catalog=catalog)
    ]
    if not eligible:
        raise Refusal(
            502, "provider_not_configured", f'model target "{name}" has no eligible bindings'
        )
    ordered = _order(eligible, target.strategy or tp.model_selector_strategy)
    limit = 1 + (tp.fallback.max_num if tp.fallback.enabled else 0)
    out = []
    for cand in ordered[:limit]:
        managed = snapshot.state.get(f.MANAGED_MODEL, f"{cand.provider_id}/{cand.upstream_model}")
        scope = managed.obj.credential_scope if managed else ""
        out.append(Target(snapshot.providers[cand.provider_id], cand.upstream_model, name, scope))
    return out


def _eligible(
    snapshot: Snapshot, cand: Candidate, *, stream: bool, catalog: ModelCatalog | None
) -> bool:
    """Enabled provider, enabled managed model, and for a stream: streaming not ruled out by
    the managed model's override or, without one, by the discovered capabilities."""
    provider = snapshot.providers.get(cand.provider_id)
    if provider is None or provider.disabled:
        return False
    rec = snapshot.state.get(f.MANAGED_MODEL, f"{cand.provider_id}/{cand.upstream_model}")
    if rec is None or not rec.obj.enabled:
        return False
    if not stream:
        return True
    caps = rec.obj.capability_overrides
    if caps is not None and caps.streaming is not None:
        return bool(caps.streaming)
    found = catalog.find(cand.provider_id, cand.upstream_model) if catalog else None
    return not (found is not None and found.capabilities.get("streaming") is False)


def _order(cands: list[Candidate], strategy: str) -> list[Candidate]:
    by_priority = sorted(cands, key=lambda c: -c.priority)
    if strategy == "priority":
        return by_priority
    if strategy == "weighted":
        return _weighted(cands)
    top = [c for c in by_priority if c.priority == by_priority[0].priority]
    rest = by_priority[len(top) :]
    if any(c.weight > 0 for c in top):
        top = _weighted(top)
    return top + rest


def _weighted(cands: list[Candidate]) -> list[Candidate]:
    pool = list(cands)
    out: list[Candidate] = []
    while pool:
        weights = [max(c.weight, 0) for c in pool]
        if sum(weights) <= 0:
            out.extend(pool)
            break
        pick = random.choices(range(len(pool)), weights=weights)[0]
        out.append(pool.pop(pick))
    return out


def target_of(route: LLMRoute) -> ModelTarget | None:
    tp = route.target_policy
    return next((t for t in tp.model_targets if t.name == tp.default_model), None)
