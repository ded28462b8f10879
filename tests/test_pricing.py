"""
Prices: genai-prices' bundled data, service tiers, overrides from pricing.json, and an
unknown model recorded as unpriced, never as a silent $0.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import genai_prices
import openai
import pytest
import pytest_twisted
from hypothesis import given, settings
from hypothesis import strategies as st

from modeltrack.pricing.prices import PriceBook, PricingFileError, load_overrides
from modeltrack.pricing.usage import Usage
from tests.conftest import start_proxy
from tests.test_sdk import in_thread

WHEN = datetime(2026, 11, 1, tzinfo=UTC)


def test_list_prices() -> None:
    book = PriceBook()
    usage = Usage(input_tokens=52100, cache_read_tokens=50000, cache_write_tokens=2000, cache_write_1h_tokens=500, output_tokens=300)
    price = book.price("anthropic", "claude-sonnet-4-5-20250929", usage, {}, WHEN)
    # 100 uncached x 3 + 1500 x 3.75 + 500 x 6 (1-hour writes) + 50000 x 0.30 + 300 x 15, per million
    assert price.cost_usd == Decimal("0.028425")
    assert price.source == "genai-prices"


def test_long_context_tier() -> None:
    price = PriceBook().price("anthropic", "claude-sonnet-4-5", Usage(input_tokens=250_000, output_tokens=1000), {}, WHEN)
    assert price.cost_usd == Decimal("1.5225")  # 250k x 6 + 1k x 22.5, per million


def test_service_tier_from_the_response() -> None:
    book = PriceBook()
    usage = Usage(input_tokens=1_000_000, output_tokens=1_000_000)
    standard = book.price("openai", "gpt-5", usage, {"service_tier": "default"}, WHEN)
    flex = book.price("openai", "gpt-5", usage, {"service_tier": "flex"}, WHEN)
    assert standard.cost_usd == Decimal("11.25")
    assert flex.cost_usd == Decimal("5.625")


def test_unknown_model_is_unpriced() -> None:
    price = PriceBook().price("openai", "no-such-model-x", Usage(input_tokens=10), {}, WHEN)
    assert price.cost_usd is None and not price.priced


def test_overrides(tmp_path: Path) -> None:
    path = tmp_path / "pricing.json"
    path.write_text(json.dumps({"models": {"Acme-LLM": {"input_mtok": 1.5, "output_mtok": 2, "cache_read_mtok": 0.15}}}))
    book = PriceBook(load_overrides(path))
    price = book.price("openai", "acme-llm", Usage(input_tokens=1000, cache_read_tokens=400, output_tokens=100), {}, WHEN)
    assert price.cost_usd == (600 * Decimal("1.5") + 400 * Decimal("0.15") + 100 * 2) / 10**6
    assert price.source == "pricing.json"


@pytest.mark.parametrize(
    "document, problem",
    [
        ("{", "not valid JSON"),
        ('{"models": []}', '"models" object'),
        ('{"models": {"m": {"input_mtok": 1}}}', "m: input_mtok and output_mtok are required"),
        ('{"models": {"m": {"input_mtok": 1, "output_mtok": -2}}}', "m: output_mtok must be a non-negative number"),
        ('{"models": {"m": {"input_mtok": 1, "output_mtok": 2, "bogus": 1}}}', "m: unknown keys"),
    ],
)
def test_bad_pricing_file(tmp_path: Path, document: str, problem: str) -> None:
    path = tmp_path / "pricing.json"
    path.write_text(document)
    with pytest.raises(PricingFileError, match=problem):
        load_overrides(path)


@pytest_twisted.ensureDeferred
async def test_unpriced_then_overridden_through_the_proxy(reactor: Any, tmp_path: Path, upstream: Any) -> None:
    first = start_proxy(reactor, tmp_path / "a", upstream.url)
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "pricing.json").write_text(json.dumps({"models": {"acme-llm": {"input_mtok": 1, "output_mtok": 2}}}))
    second = start_proxy(reactor, tmp_path / "b", upstream.url)
    try:
        for proxy in (first, second):
            client = openai.OpenAI(base_url=proxy.url + "/v1", api_key="sk-x", max_retries=0)
            await in_thread(client.chat.completions.create, model="acme-llm", messages=[{"role": "user", "content": "hi"}])
            await proxy.flushed()
        [unpriced] = first.events()
        [priced] = second.events()
    finally:
        await first.service.stopService()
        await second.service.stopService()
    assert unpriced["cost_usd"] is None and unpriced["priced"] is False
    assert unpriced["input_tokens"] == 1200  # tokens kept
    assert first.service.stats.unpriced == 1
    assert Decimal(str(priced["cost_usd"])) == (1200 * 1 + 300 * 2) / Decimal(10**6)


MODELS = [
    ("anthropic", "claude-sonnet-4-5-20250929"),
    ("anthropic", "claude-opus-4-1"),
    ("anthropic", "claude-haiku-4-5"),
    ("anthropic", "claude-3-5-haiku-20241022"),
    ("openai", "gpt-4o-2024-08-06"),
    ("openai", "gpt-5"),
    ("openai", "gpt-4.1-mini"),
    ("openai", "o3"),
    ("openai", "text-embedding-3-small"),
]


@st.composite
def usages(draw: Any) -> Usage:
    big = st.integers(min_value=0, max_value=400_000)
    cache_read = draw(big)
    cache_write = draw(big)
    return Usage(
        input_tokens=cache_read + cache_write + draw(big),
        cache_read_tokens=cache_read,
        cache_write_tokens=cache_write,
        cache_write_1h_tokens=draw(st.integers(min_value=0, max_value=cache_write)),
        output_tokens=draw(big),
        web_searches=draw(st.integers(min_value=0, max_value=5)),
    )


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(MODELS), usages(), st.sampled_from([{}, {"service_tier": "flex"}, {"service_tier": "priority"}, {"processing": "batch"}]))
def test_fast_price_equals_genai_prices(model: tuple[str, str], usage: Usage, context: dict[str, str]) -> None:
    """
    The memoised linear price is exactly what genai-prices computes from scratch.
    """
    provider, name = model
    counts = {
        "input_tokens": usage.input_tokens,
        "cache_read_tokens": usage.cache_read_tokens,
        "cache_write_tokens": usage.cache_write_tokens,
        "output_tokens": usage.output_tokens,
    }
    if usage.cache_write_1h_tokens:
        counts["cache_write_1h_tokens"] = usage.cache_write_1h_tokens
    if usage.web_searches:
        counts["web_searches"] = usage.web_searches
    expected = genai_prices.calc_price(
        genai_prices.Usage(**counts), name, provider_id=provider, genai_request_timestamp=WHEN, price_context=context or None
    ).total_price
    assert BOOK.price(provider, name, usage, context, WHEN).cost_usd == expected


BOOK = PriceBook()


def test_price_data_is_loaded_at_start_up() -> None:
    """
    genai-prices imports its price data on first use; a PriceBook loads it when built
    (at start-up), not in the middle of the first request, where a 1.6 MB import stalls
    the reactor and can fail (seen under file-descriptor exhaustion in the benchmark).
    """
    import subprocess
    import sys

    probe = (
        "import sys; from modeltrack.pricing.prices import PriceBook; PriceBook(); "
        "print(all(m in sys.modules for m in ('genai_prices.data', 'genai_prices.validation', 'genai_prices.decompose')))"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "True"


def test_a_pricing_json_entry_can_hold_for_one_provider(tmp_path: Path) -> None:
    from datetime import datetime

    from modeltrack.pricing.prices import PriceBook, load_overrides
    from modeltrack.pricing.usage import Usage

    path = tmp_path / "pricing.json"
    path.write_text(json.dumps({
        "models": {"my-llama": {"input_mtok": 0, "output_mtok": 0}},
        "providers": {"together": {"models": {"my-llama": {"input_mtok": 0.88, "output_mtok": 0.88}}}},
    }))
    book = PriceBook(load_overrides(path))
    usage = Usage(input_tokens=1_000_000, output_tokens=1_000_000)
    when = datetime(2026, 11, 30, tzinfo=UTC)
    assert book.price("together", "my-llama", usage, {}, when).cost_usd == Decimal("1.76")
    free = book.price("vllm", "my-llama", usage, {}, when)
    assert free.cost_usd == 0 and free.source == "pricing.json"  # free, not unpriced


def test_dimensions_without_a_rate_are_unpriced_never_priced_as_text(tmp_path: Path) -> None:
    book = PriceBook()
    audio = Usage(input_tokens=1000, output_tokens=500, extra={"input_audio_tokens": 600})
    price = book.price("openai", "gpt-4o", audio, {}, WHEN)
    assert (price.cost_usd, price.note) == (None, "no rate for input_audio_tokens on gpt-4o in genai-prices")
    # pricing.json may give the rate the data lacks.
    (tmp_path / "pricing.json").write_text(json.dumps(
        {"models": {"gpt-4o": {"input_mtok": 2.5, "output_mtok": 10, "input_audio_mtok": 40}}}
    ))
    book.set_overrides(load_overrides(tmp_path / "pricing.json"))
    assert book.price("openai", "gpt-4o", audio, {}, WHEN).cost_usd == (400 * Decimal("2.5") + 600 * 40 + 500 * 10) / 10**6
    # Image input on Gemini is billed at the text rate, as Google lists it.
    image = Usage(input_tokens=1000, output_tokens=10, extra={"input_image_tokens": 600})
    assert book.price("google", "gemini-2.5-flash", image, {}, WHEN).cost_usd == book.price(
        "google", "gemini-2.5-flash", Usage(input_tokens=1000, output_tokens=10), {}, WHEN
    ).cost_usd


def test_inference_geography() -> None:
    book = PriceBook()
    usage = Usage(input_tokens=1000, output_tokens=100)
    base = book.price("anthropic", "claude-opus-4-6", usage, {}, WHEN).cost_usd
    assert base is not None
    assert book.price("anthropic", "claude-opus-4-6", usage, {"inference_geo": "global"}, WHEN).cost_usd == base
    assert book.price("anthropic", "claude-opus-4-6", usage, {"inference_geo": "us"}, WHEN).cost_usd == base * Decimal("1.1")
    unknown = book.price("anthropic", "claude-opus-4-6", usage, {"inference_geo": "eu"}, WHEN)
    assert (unknown.cost_usd, unknown.note) == (None, "no rate for inference_geo eu")
