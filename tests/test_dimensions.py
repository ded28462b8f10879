"""
Every billed dimension, through the SDKs: audio and image tokens at their own rates,
a dimension the model has no rate for left unpriced (never priced as text), the
service tier and Anthropic's US-only inference as the provider reported them; a
streamed call costs what the same call costs unstreamed.
"""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from genai_prices import Usage as PriceUsage
from genai_prices import calc_price
from google import genai

from tests.conftest import serving, start_proxy
from tests.fake_google import FakeGoogle
from tests.fakes import ANTHROPIC_USAGE, ITERATED_USAGE, ITERATIONS
from tests.test_sdk import anthropic_client, in_thread, openai_client

# gpt-audio: text in 2.50, audio in 32, text out 10, audio out 64 (USD per million).
GPT_AUDIO_COST = (400 * Decimal("2.5") + 600 * 32 + 100 * 10 + 400 * 64) / 10**6


def _cost(event: dict[str, Any]) -> Decimal:
    return Decimal(str(event["cost_usd"]))


@pytest_twisted.ensureDeferred
async def test_audio_tokens_at_audio_rates_streamed_or_not(proxy: Any) -> None:
    client = openai_client(proxy)
    messages = [{"role": "user", "content": "hi"}]

    def calls() -> None:
        for model in ("gpt-audio", "gpt-4o-audio-preview"):
            client.chat.completions.create(model=model, messages=messages)
            list(client.chat.completions.create(model=model, messages=messages, stream=True))

    await in_thread(calls)
    await proxy.flushed()
    audio, audio_streamed, preview, preview_streamed = proxy.events()
    assert GPT_AUDIO_COST == Decimal("0.0468")  # the list price; text rates alone give 0.0075
    for event in (audio, audio_streamed):
        assert _cost(event) == GPT_AUDIO_COST and event["priced"] is True and event["price_note"] is None
        assert event["usage"] == {
            "input_tokens": 1000, "output_tokens": 500, "input_audio_tokens": 600, "output_audio_tokens": 400,
        }
        assert (event["input_tokens"], event["output_tokens"]) == (1000, 500)  # the flat fields keep their meaning
        assert event["service_tier"] == "default"
    # genai-prices has no audio rate for this model: unpriced, and the event says why.
    for event in (preview, preview_streamed):
        assert (event["cost_usd"], event["priced"], event["input_tokens"]) == (None, False, 1000)
        assert event["price_note"] == "no rate for input_audio_tokens on gpt-4o-audio-preview in genai-prices"


@pytest_twisted.ensureDeferred
async def test_anthropic_tier_geography_and_cache_lifetimes(proxy: Any) -> None:
    client = anthropic_client(proxy)
    messages = [{"role": "user", "content": "hi"}]

    def calls() -> None:
        for model in ("claude-opus-4-6", "claude-opus-4-6-us"):
            client.messages.create(model=model, max_tokens=50, messages=messages)
            with client.messages.stream(model=model, max_tokens=50, messages=messages) as stream:
                stream.get_final_message()

    await in_thread(calls)
    await proxy.flushed()
    events = proxy.events()
    usage = PriceUsage(
        input_tokens=120 + 2000 + 50000, cache_read_tokens=50000, cache_write_tokens=2000,
        cache_write_1h_tokens=500, output_tokens=310,
    )
    listed = Decimal(calc_price(usage, "claude-opus-4-6", provider_id="anthropic").total_price)
    for event in events:
        assert event["service_tier"] == ANTHROPIC_USAGE["service_tier"]
        assert event["usage"]["cache_write_1h_tokens"] == 500 and event["usage"]["cache_write_tokens"] == 2000
    global_plain, global_streamed, us_plain, us_streamed = events
    assert _cost(global_plain) == _cost(global_streamed) == listed
    assert global_plain["inference_geo"] is None
    # US-only inference: 1.1 times every rate.
    assert us_plain["inference_geo"] == us_streamed["inference_geo"] == "us"
    assert _cost(us_plain) == _cost(us_streamed) == listed * Decimal("1.1")


@pytest.fixture
def google(reactor: Any) -> Any:
    yield from serving(reactor, FakeGoogle())


@pytest_twisted.ensureDeferred
async def test_gemini_modalities(reactor: Any, tmp_path: Path, google: Any) -> None:
    proxy = start_proxy(reactor, tmp_path, "http://127.0.0.1:9", gemini_url=google.url)
    client = genai.Client(api_key="AIza-test", http_options={"base_url": proxy.url + "/gemini"})

    def calls() -> None:
        client.models.generate_content(model="gemini-2.5-flash-media", contents="hi")
        list(client.models.generate_content_stream(model="gemini-2.5-flash-media", contents="hi"))

    try:
        await in_thread(calls)
    finally:
        await proxy.service.stopService()
    plain, streamed = proxy.events()
    # 1,216 input tokens (600 cached: 500 text, 100 audio), 500 of them audio, 300 image.
    # Audio at its own rates (1.00 in, 0.10 cached); image at the text rate (0.30).
    by_hand = (
        (616 - 400) * Decimal("0.3") + 400 * 1 + 500 * Decimal("0.03") + 100 * Decimal("0.1") + 364 * Decimal("2.5")
    ) / 10**6
    usage = PriceUsage(
        input_tokens=1216, cache_read_tokens=600, output_tokens=364, input_audio_tokens=500, cache_audio_read_tokens=100,
    )
    assert Decimal(calc_price(usage, "gemini-2.5-flash", provider_id="google").total_price) == by_hand
    for event in (plain, streamed):
        assert _cost(event) == by_hand
        assert event["usage"]["input_audio_tokens"] == 500 and event["usage"]["input_image_tokens"] == 300
        assert event["usage"]["cache_audio_read_tokens"] == 100


@pytest_twisted.ensureDeferred
async def test_iterations_priced_each_on_its_own_model(proxy: Any) -> None:
    """
    Anthropic's usage.iterations: each turn, the advisor on its own model, and the
    compaction (in no top-level field) are billed; streamed or not, the same.
    """
    client = anthropic_client(proxy)
    messages = [{"role": "user", "content": "hi"}]

    def calls() -> None:
        client.messages.create(model="claude-sonnet-4-5-iter", max_tokens=50, messages=messages)
        with client.messages.stream(model="claude-sonnet-4-5-iter", max_tokens=50, messages=messages) as stream:
            stream.get_final_message()

    await in_thread(calls)
    await proxy.flushed()
    listed = Decimal(0)
    for entry in ITERATIONS:
        usage = PriceUsage(
            input_tokens=entry["input_tokens"] + entry["cache_read_input_tokens"], cache_read_tokens=entry["cache_read_input_tokens"],
            output_tokens=entry["output_tokens"],
        )
        listed += Decimal(calc_price(usage, entry.get("model", "claude-sonnet-4-5-20250929"), provider_id="anthropic").total_price)
    listed += 2 * Decimal(10) / 1000  # two web searches at $10 per thousand, on the call's model
    for event in proxy.events():
        assert _cost(event) == listed
        assert event["input_tokens"] == sum(e["input_tokens"] + e["cache_read_input_tokens"] for e in ITERATIONS)
        assert event["output_tokens"] == sum(e["output_tokens"] for e in ITERATIONS)  # the compaction's too
        assert event["usage"]["web_searches"] == 2
    # Priced as the top level alone, the advisor's Opus tokens at Sonnet's rate and the
    # compaction left out: less than the bill.
    top = ITERATED_USAGE
    naive = Decimal(calc_price(PriceUsage(
        input_tokens=top["input_tokens"] + top["cache_read_input_tokens"], cache_read_tokens=top["cache_read_input_tokens"],
        output_tokens=top["output_tokens"], web_searches=2,
    ), "claude-sonnet-4-5-20250929", provider_id="anthropic").total_price)
    assert naive < listed
