"""What an LLM call cost: the shipped price catalog, a managed model's override, the formula.

The catalog is ``agw/llm/pricing.json`` (shipped in the wheel): provider type -> model -> USD per
million ``input``, ``output``, ``cached_input``, ``cache_write`` and ``reasoning`` tokens, each
entry with its ``source`` (the price page) and ``date`` (when it was read). A managed model's
``pricing`` (:class:`agw.config.llm.ModelPricing`) replaces the catalog's entry for that provider
and upstream model. docs/limits.md ("Prices and cost") documents both and the formula.

A model is found in the catalog by its provider type and name: the exact name, else the name
with one dated or moving suffix removed (``gpt-4o-2024-08-06`` -> ``gpt-4o``,
``claude-sonnet-4-20250514`` -> ``claude-sonnet-4``, ``claude-3-5-haiku-latest`` ->
``claude-3-5-haiku``). ``claudecode`` is priced as ``anthropic`` and ``codex`` as ``openai`` (the
API price of the same tokens, not what a subscription bills).
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from typing import Any

from agw.config.llm import ModelPricing
from agw.usage.events import INT64_MAX, CostSource

log = logging.getLogger(__name__)

PROVIDER_ALIASES: Mapping[str, str] = {"claudecode": "anthropic", "codex": "openai"}
_SUFFIX = re.compile(r"(-\d{4}-\d{2}-\d{2}|-\d{8}|@\d{8}|-latest)$")
CACHE_LIMIT = 4096
"""Distinct (provider type, model) lookups remembered; model names on a direct-provider route are
the client's choice, so the memory is bounded (past it, lookups are computed, not kept)."""


@dataclass(slots=True)
class Price:
    """USD per million tokens of each kind; a part left ``None`` bills at its base rate. Not
    frozen (an override's is built per request, and a frozen dataclass's construction is
    slower); nothing changes one after it is built."""

    input: float
    output: float
    cached_input: float | None = None
    cache_write: float | None = None
    reasoning: float | None = None
    source: str = ""
    date: str = ""

    @classmethod
    def of(cls, pricing: ModelPricing) -> Price:
        return cls(
            pricing.input,
            pricing.output,
            pricing.cached_input,
            pricing.cache_write,
            pricing.reasoning,
        )

    def cost(
        self, input_tokens: int, output_tokens: int, cached: int, written: int, reasoning: int
    ) -> float:
        """USD of one answer's counts. ``input_tokens`` includes the ``cached`` (cache-read)
        and ``written`` (cache-write) tokens and ``output_tokens`` the ``reasoning`` ones
        (:class:`agw.llm.providers.tokens.Usage`), so each part is billed once: the plain input
        at ``input``, cache reads at ``cached_input``, cache writes at ``cache_write``, the
        non-reasoning output at ``output``, reasoning at ``reasoning`` (else ``output``)."""
        counts = (input_tokens, output_tokens, cached, written, reasoning)
        if min(counts) < 0 or max(counts) > INT64_MAX:
            input_tokens, output_tokens = _fit(input_tokens), _fit(output_tokens)
            cached, written, reasoning = _fit(cached), _fit(written), _fit(reasoning)
        plain_in = input_tokens - cached - written
        plain_out = output_tokens - reasoning
        micro = (
            (plain_in if plain_in > 0 else 0) * self.input
            + cached * (self.input if self.cached_input is None else self.cached_input)
            + written * (self.input if self.cache_write is None else self.cache_write)
            + (plain_out if plain_out > 0 else 0) * self.output
            + reasoning * (self.output if self.reasoning is None else self.reasoning)
        )
        return micro / 1_000_000


def _fit(count: int) -> int:
    """A count as the row will store it (0 to 2**63 - 1): an upstream's absurd count must not
    overflow the float arithmetic."""
    return 0 if count < 0 else min(count, INT64_MAX)


Catalog = Mapping[str, Mapping[str, Price]]


def load_catalog(text: str | None = None) -> dict[str, dict[str, Price]]:
    """The shipped catalog (or ``text``, the same JSON): keys starting with ``_`` are comments;
    an entry without ``input``, ``output``, ``source`` and ``date`` is an error."""
    if text is None:
        text = resources.files("agw.llm").joinpath("pricing.json").read_text(encoding="utf-8")
    raw: dict[str, Any] = json.loads(text)
    out: dict[str, dict[str, Price]] = {}
    for provider, models in raw.items():
        if provider.startswith("_"):
            continue
        table = out[provider] = {}
        for model, entry in models.items():
            table[model] = Price(
                input=float(entry["input"]),
                output=float(entry["output"]),
                cached_input=_opt(entry.get("cached_input")),
                cache_write=_opt(entry.get("cache_write")),
                reasoning=_opt(entry.get("reasoning")),
                source=str(entry["source"]),
                date=str(entry["date"]),
            )
    return out


def _opt(value: Any) -> float | None:
    return None if value is None else float(value)


def find(catalog: Catalog, provider_type: str, model: str) -> Price | None:
    """The catalog's price of ``model`` at a provider of ``provider_type`` (the matching rules
    are in the module doc)."""
    table = catalog.get(PROVIDER_ALIASES.get(provider_type, provider_type))
    if not table:
        return None
    price = table.get(model)
    if price is None:
        stripped = _SUFFIX.sub("", model)
        if stripped != model:
            price = table.get(stripped)
    return price


class Pricer:
    """Prices usage rows: one per LLM plane, holding the catalog, a bounded lookup cache and the
    models already warned about (``llm_model_unpriced`` is logged once per provider type and
    model)."""

    __slots__ = ("_cache", "_overrides", "_warned", "catalog")

    def __init__(self, catalog: Catalog | None = None) -> None:
        self.catalog: Catalog = load_catalog() if catalog is None else catalog
        self._cache: dict[tuple[str, str], Price | None] = {}
        self._warned: set[tuple[str, str]] = set()
        # a managed model's pricing (immutable, from the config snapshot) -> its Price
        self._overrides: dict[int, tuple[ModelPricing, Price]] = {}

    def price(
        self, provider_type: str, model: str, override: ModelPricing | None
    ) -> tuple[Price | None, CostSource]:
        if override is not None:
            cached = self._overrides.get(id(override))
            if cached is None or cached[0] is not override:  # held: its id is not reused
                if len(self._overrides) >= CACHE_LIMIT:
                    self._overrides.clear()
                cached = self._overrides[id(override)] = (override, Price.of(override))
            return cached[1], "override"
        key = (provider_type, model)
        try:
            price = self._cache[key]
        except KeyError:
            price = find(self.catalog, provider_type, model)
            if len(self._cache) < CACHE_LIMIT:
                self._cache[key] = price
        if price is not None:
            return price, "catalog"
        if key not in self._warned and len(self._warned) < CACHE_LIMIT:
            self._warned.add(key)
            log.warning(
                "llm_model_unpriced",
                extra={"provider_type": provider_type, "model": model[:200]},
            )
        return None, "unpriced"

    def cost(
        self,
        provider_type: str,
        model: str,
        override: ModelPricing | None,
        counts: tuple[int, int, int, int, int],
    ) -> tuple[float | None, CostSource]:
        """``(cost_usd, cost_source)`` of one row's counts (input, output, cached input, cache
        write, reasoning: :meth:`Price.cost`); an unpriced model costs ``None``."""
        price, source = self.price(provider_type, model, override)
        return (None if price is None else price.cost(*counts)), source
