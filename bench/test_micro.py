"""
Hot-path microbenchmarks (pytest-benchmark). Not part of the test suite:

    .venv/bin/pip install pytest-benchmark
    .venv/bin/python -m pytest bench/test_micro.py --benchmark-only -p no:cacheprovider
"""

from __future__ import annotations

from datetime import UTC, datetime

from modeltrack.accounting import cost_event as events
from modeltrack.controls.keys import NO_LABELS
from modeltrack.pricing.prices import Price, PriceBook
from modeltrack.pricing.usage import Reading, Usage
from modeltrack.providers import anthropic, openai
from tests.fakes import chat_stream, messages_stream

WHEN = datetime(2026, 11, 1, tzinfo=UTC)
PRICE = Price(PriceBook().price("anthropic", "claude-sonnet-4-5-20250929", Usage(input_tokens=1), {}, WHEN).cost_usd, "genai-prices")
USAGE = Usage(input_tokens=52120, cache_read_tokens=50000, cache_write_tokens=2000, cache_write_1h_tokens=500, output_tokens=310)


def test_usage_extraction_per_chunk_anthropic(benchmark) -> None:
    """
    One content delta chunk through the Messages stream meter (the common case).
    """
    meter = anthropic.MessagesStreamMeter()
    chunks = messages_stream("claude-sonnet-4-5-20250929")
    meter.feed(chunks[0])
    delta = chunks[3]
    benchmark(meter.feed, delta)


def test_usage_extraction_per_chunk_openai_chat(benchmark) -> None:
    meter = openai.ChatStreamMeter(strip=True)
    chunks = chat_stream("gpt-4o-2024-08-06", include_usage=True)
    meter.feed(chunks[0])
    benchmark(meter.feed, chunks[1])


def test_usage_extraction_usage_chunk(benchmark) -> None:
    """
    The chunk that does carry usage: found, decoded, normalised.
    """
    usage_chunk = chat_stream("gpt-4o-2024-08-06", include_usage=True)[-2]

    def read() -> object:
        meter = openai.ChatStreamMeter()
        meter.reading.model = "gpt-4o-2024-08-06"
        return meter.feed(usage_chunk)

    benchmark(read)


def test_pricing_one_request(benchmark) -> None:
    book = PriceBook()
    book.price("anthropic", "claude-sonnet-4-5-20250929", USAGE, {}, WHEN)
    benchmark(book.price, "anthropic", "claude-sonnet-4-5-20250929", USAGE, {}, WHEN)


def test_serialising_one_event(benchmark) -> None:
    reading = Reading(USAGE, "claude-sonnet-4-5-20250929", {}, True)
    labels = {**NO_LABELS, "team": "ml", "app": "bot"}

    def build() -> bytes:
        event = events.cost_event(
            timestamp=WHEN, request_id="mt_0123456789abcdef01234567", provider="anthropic",
            endpoint="/v1/messages", requested_model="claude-sonnet-4-5", streaming=True,
            status_code=200, outcome="ok", reading=reading, price=PRICE,
            latency_ms=812.5, ttfb_ms=210.25, labels=labels,
        )
        return events.encode(event)

    benchmark(build)


def test_counting_one_event_for_metrics(benchmark) -> None:
    from decimal import Decimal

    from modeltrack.controls.gate import Gate
    from modeltrack.observe.metrics import Metrics
    from modeltrack.store.journal import Journal

    metrics = Metrics(Journal.__new__(Journal), Gate(PriceBook()), None)
    reading = Reading(USAGE, "claude-sonnet-4-5-20250929", {}, True)
    event = events.cost_event(
        timestamp=WHEN, request_id="mt_0123456789abcdef01234567", provider="anthropic",
        endpoint="/v1/messages", requested_model="claude-sonnet-4-5", streaming=True,
        status_code=200, outcome="ok", reading=reading, price=PRICE,
        latency_ms=812.5, ttfb_ms=210.25, labels={**NO_LABELS, "team": "ml"},
    )
    benchmark(metrics.observe, event, Decimal("0.0123"), None, 0.0002)
