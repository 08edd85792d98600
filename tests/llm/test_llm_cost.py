"""What an LLM call cost (docs/limits.md, "Prices and cost"): a real agwd, the fake upstream, the
official SDKs. A catalog model's row costs its tokens at the shipped price, a managed model's
``pricing`` wins, an unknown model is unpriced (cost NULL, counted in Prometheus, warned once),
and the metrics API sums the cost.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from importlib import resources
from typing import Any

import anthropic
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from agw.llm.pricing import Price, Pricer, find, load_catalog
from tests.fakes.run import FakeUpstream, start_fake_upstream
from tests.support.agwd import Agwd, AgwdLauncher
from tests.support.llm import settle, tp

KEY = "sk-upstream-secret-cost"
OVERRIDE = {"input": 7.0, "output": 11.0, "cached_input": 0.5, "reasoning": 13.0}


@pytest.fixture(scope="module")
def fake(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeUpstream]:
    with start_fake_upstream(tmp_path_factory.mktemp("fake"), "--require-key", KEY) as f:
        yield f


@pytest.fixture(scope="module")
def gw(module_agwd_factory: AgwdLauncher, fake: FakeUpstream) -> Agwd:
    agwd = module_agwd_factory.start()
    bundle = {
        "apiVersion": "gateway.agw/v1alpha1",
        "kind": "GatewayBundle",
        "providers": [
            {"id": "oa", "provider_type": "openai", "base_url": f"{fake.url}/v1", "api_key": KEY},
            {"id": "an", "provider_type": "anthropic", "base_url": fake.url, "api_key": KEY},
        ],
        "managedModels": [{"provider_id": "oa", "upstream_model": "gpt-4.1", "pricing": OVERRIDE}],
        "llmRoutes": [
            {
                "id": "oa",
                "protocol": "openai",
                "match_policy": {"path_prefix": "/oa"},
                "target_policy": {"provider_id": "oa"},
            },
            {
                "id": "an",
                "protocol": "anthropic",
                "match_policy": {"path_prefix": "/an"},
                "target_policy": {"provider_id": "an"},
            },
        ],
    }
    with agwd.client() as c:
        r = c.post("/admin/gateway/apply", json={"bundle": bundle})
        assert r.status_code == 200, r.text
    return agwd


def oa(gw: Agwd) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=f"{gw.data_url}/oa/v1",
        api_key="unused",
        max_retries=0,
        timeout=20,
        default_headers=tp(),
    )


def expected(price: dict[str, Any], row: dict[str, Any]) -> float:
    """The documented formula, written out: each token part billed once."""
    cached, written = row["cached_input_tokens"], row["cache_creation_input_tokens"]
    reasoning = row["reasoning_tokens"]
    plain_in = row["input_tokens"] - cached - written
    plain_out = row["output_tokens"] - reasoning
    usd = (
        plain_in * price["input"]
        + cached * price.get("cached_input", price["input"])
        + written * price.get("cache_write", price["input"])
        + plain_out * price["output"]
        + reasoning * price.get("reasoning", price["output"])
    ) / 1_000_000
    return float(usd)


def catalog_entry(provider: str, model: str) -> dict[str, Any]:
    """The shipped entry as the file spells it (not through the loader under test)."""
    raw = json.loads(resources.files("agw.llm").joinpath("pricing.json").read_text())
    entry: dict[str, Any] = raw[provider][model]
    return entry


def scrape(gw: Agwd) -> dict[str, dict[tuple[str, str], float]]:
    with gw.client() as c:
        text = c.get("/admin/metrics/prometheus").text
    out: dict[str, dict[tuple[str, str], float]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name in ("agw_cost_usd_total", "agw_unpriced_requests_total"):
                key = (s.labels["provider_id"], s.labels["model"])
                out.setdefault(s.name, {})[key] = s.value
    return out


def test_a_catalog_model_costs_its_tokens_at_the_shipped_price(gw: Agwd) -> None:
    before = scrape(gw).get("agw_cost_usd_total", {}).get(("oa", "gpt-4o-2024-08-06"), 0.0)
    client = oa(gw)
    answer = client.chat.completions.create(
        model="gpt-4o-2024-08-06", messages=[{"role": "user", "content": "price me please"}]
    )
    assert answer.usage is not None
    (row,) = settle(gw, 1)
    assert row["usage_source"] == "provider"
    assert row["cached_input_tokens"] > 0 and row["reasoning_tokens"] > 0  # every part billed
    want = expected(catalog_entry("openai", "gpt-4o"), row)  # the dated name -> gpt-4o
    assert row["cost_source"] == "catalog"
    assert row["cost_usd"] == pytest.approx(want, rel=1e-12, abs=0)
    after = scrape(gw)["agw_cost_usd_total"][("oa", "gpt-4o-2024-08-06")]
    assert after - before == pytest.approx(want, rel=1e-9)


def test_an_anthropic_stream_bills_cache_writes(gw: Agwd) -> None:
    client = anthropic.Anthropic(
        base_url=f"{gw.data_url}/an",
        api_key="unused",
        max_retries=0,
        timeout=20,
        default_headers=tp(),
    )
    with client.messages.stream(
        model="claude-sonnet-4-20250514",
        max_tokens=64,
        messages=[{"role": "user", "content": "a streamed answer"}],
    ) as stream:
        for _ in stream.text_stream:
            pass
    (row,) = settle(gw, 1)
    assert row["cache_creation_input_tokens"] > 0
    assert row["cost_source"] == "catalog"
    want = expected(catalog_entry("anthropic", "claude-sonnet-4"), row)
    assert row["cost_usd"] == pytest.approx(want, rel=1e-12, abs=0)


def test_a_managed_models_pricing_wins(gw: Agwd) -> None:
    oa(gw).chat.completions.create(
        model="gpt-4.1", messages=[{"role": "user", "content": "an override"}]
    )
    (row,) = settle(gw, 1)
    assert row["cost_source"] == "override"
    assert row["cost_usd"] == pytest.approx(expected(OVERRIDE, row), rel=1e-12, abs=0)
    catalog = expected(catalog_entry("openai", "gpt-4.1"), row)
    assert row["cost_usd"] != pytest.approx(catalog)  # not the shipped price


def test_an_unknown_model_is_unpriced_counted_and_warned_once(gw: Agwd) -> None:
    key = ("oa", "house-model-x")
    before = scrape(gw).get("agw_unpriced_requests_total", {}).get(key, 0.0)
    for _ in range(2):
        oa(gw).chat.completions.create(
            model="house-model-x", messages=[{"role": "user", "content": "no price"}]
        )
    rows = settle(gw, 2)
    assert [(r["cost_usd"], r["cost_source"]) for r in rows] == [(None, "unpriced")] * 2
    assert rows[0]["input_tokens"] > 0  # tokens recorded, only the price is missing
    metrics = scrape(gw)
    assert metrics["agw_unpriced_requests_total"][key] - before == 2
    assert key not in metrics.get("agw_cost_usd_total", {})
    warnings = [
        e
        for e in gw.log_events()
        if e.get("event") == "llm_model_unpriced" and e.get("model") == "house-model-x"
    ]
    assert len(warnings) == 1, warnings


def test_the_metrics_api_sums_cost(gw: Agwd) -> None:
    oa(gw).chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "sum me"}]
    )
    settle(gw, 1)
    with gw.client() as c:
        rows = c.get("/admin/metrics/llm/events", params={"limit": 1000}).json()["items"]
        total = sum(r["cost_usd"] or 0 for r in rows)
        summary = c.get("/admin/metrics").json()["llm"]
        by_model = c.get(
            "/admin/metrics/llm/breakdown",
            params={"group_by": "upstream_model", "order_by": "cost_usd"},
        ).json()["items"]
        series = c.get("/admin/metrics/llm/timeseries", params={"bucket": "day"}).json()
    assert total > 0
    assert summary["cost_usd"] == pytest.approx(total, rel=1e-12)
    assert sum(i["cost_usd"] for i in series["items"]) == pytest.approx(total, rel=1e-12)
    costs = [i["cost_usd"] for i in by_model]
    assert costs == sorted(costs, reverse=True)
    mini = next(i for i in by_model if i["group_value"] == "gpt-4o-mini")
    want = sum(r["cost_usd"] for r in rows if r["upstream_model"] == "gpt-4o-mini")
    assert mini["cost_usd"] == pytest.approx(want, rel=1e-12)
    unpriced = next(i for i in by_model if i["group_value"] == "house-model-x")
    assert unpriced["cost_usd"] == 0


# ------------------------------------------------------------------- the catalog and its rules


def test_every_catalog_entry_names_its_source_and_date() -> None:
    catalog = load_catalog()
    assert {"openai", "anthropic", "gemini", "deepseek"} <= set(catalog)
    for provider, models in catalog.items():
        for model, price in models.items():
            assert price.source.startswith("https://"), (provider, model)
            assert len(price.date) == 10 and price.date[4] == "-", (provider, model)
            assert 0 < price.input <= price.output, (provider, model)


@pytest.mark.parametrize(
    ("provider", "model", "entry"),
    [
        ("openai", "gpt-4o", "gpt-4o"),
        ("openai", "gpt-4o-2024-08-06", "gpt-4o"),
        ("openai", "gpt-4o-mini-2024-07-18", "gpt-4o-mini"),
        ("anthropic", "claude-sonnet-4-20250514", "claude-sonnet-4"),
        ("anthropic", "claude-3-5-haiku-latest", "claude-3-5-haiku"),
        ("claudecode", "claude-opus-4-1-20250805", "claude-opus-4-1"),
        ("codex", "o4-mini", "o4-mini"),
        ("deepseek", "deepseek-reasoner", "deepseek-reasoner"),
    ],
)
def test_model_names_match_exactly_then_without_a_dated_suffix(
    provider: str, model: str, entry: str
) -> None:
    catalog = load_catalog()
    table = {"claudecode": "anthropic", "codex": "openai"}.get(provider, provider)
    assert find(catalog, provider, model) is catalog[table][entry]


@pytest.mark.parametrize(
    ("provider", "model"),
    [("openai", "gpt-4o-mini-tts"), ("openai", "gpt-5-2030-01-01x"), ("ollama", "gpt-4o")],
)
def test_other_names_are_unpriced(provider: str, model: str) -> None:
    assert find(load_catalog(), provider, model) is None


def test_absurd_counts_cost_a_finite_number() -> None:
    price = Price(1.0, 2.0)
    assert price.cost(10**400, 10**400, -5, 0, 10**400) < float("inf")
    assert price.cost(-3, -3, 0, 0, 0) == 0.0


def test_the_lookup_memory_is_bounded() -> None:
    pricer = Pricer(load_catalog())
    for i in range(5000):
        pricer.price("openai", f"client-chosen-{i}", None)
    assert len(pricer._cache) <= 4096 and len(pricer._warned) <= 4096
