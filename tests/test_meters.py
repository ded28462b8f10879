"""
Usage extraction per dialect from recorded-shape payloads, with every stream cut at every
byte offset, LF and CRLF line ends, comments, pings, multi-line data, and error events.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from modeltrack.pricing.usage import Usage
from modeltrack.providers import anthropic, openai
from modeltrack.providers.meter import BodyMeter
from modeltrack.providers.sse import SSEParser
from tests.fakes import (
    ANTHROPIC_USAGE,
    RESPONSES_USAGE,
    chat_body,
    chat_stream,
    message_body,
    messages_stream,
    response_object,
    responses_stream,
)

MESSAGES = b"".join(messages_stream("claude-sonnet-4-5-20250929"))
CHAT = b"".join(chat_stream("gpt-4o-2024-08-06", include_usage=True))
RESPONSES = b"".join(responses_stream("gpt-4o-2024-08-06"))

ANTHROPIC_EXPECTED = Usage(
    input_tokens=120 + 2000 + 50000,
    cache_read_tokens=50000,
    cache_write_tokens=2000,
    cache_write_1h_tokens=500,
    output_tokens=310,
)
CHAT_EXPECTED = Usage(input_tokens=1200, cache_read_tokens=1024, output_tokens=300, reasoning_tokens=64)
RESPONSES_EXPECTED = Usage(input_tokens=900, cache_read_tokens=512, output_tokens=250, reasoning_tokens=100)


def run(meter: Any, stream: bytes, cuts: list[int]) -> bytes:
    relayed = b""
    last = 0
    for cut in sorted(set(cuts)) + [len(stream)]:
        relayed += meter.feed(stream[last:cut])
        last = cut
    return relayed + meter.close()


def every_offset(stream: bytes, make: Callable[[], Any], expected: Usage, model: str) -> None:
    """
    Cut the stream once at every byte offset; usage and relayed bytes never change.
    """
    for cut in range(len(stream) + 1):
        meter = make()
        relayed = run(meter, stream, [cut])
        assert meter.reading.usage == expected, cut
        assert meter.reading.model == model
        assert meter.reading.final
        if not meter.rewrites:
            assert relayed == stream


def crlf(stream: bytes) -> bytes:
    return stream.replace(b"\n", b"\r\n")


def test_anthropic_stream_every_offset() -> None:
    every_offset(MESSAGES, anthropic.MessagesStreamMeter, ANTHROPIC_EXPECTED, "claude-sonnet-4-5-20250929")
    every_offset(crlf(MESSAGES), anthropic.MessagesStreamMeter, ANTHROPIC_EXPECTED, "claude-sonnet-4-5-20250929")


def test_chat_stream_every_offset() -> None:
    every_offset(CHAT, openai.ChatStreamMeter, CHAT_EXPECTED, "gpt-4o-2024-08-06")
    every_offset(crlf(CHAT), openai.ChatStreamMeter, CHAT_EXPECTED, "gpt-4o-2024-08-06")


def test_responses_stream_every_offset() -> None:
    every_offset(RESPONSES, openai.ResponsesStreamMeter, RESPONSES_EXPECTED, "gpt-4o-2024-08-06")
    every_offset(crlf(RESPONSES), openai.ResponsesStreamMeter, RESPONSES_EXPECTED, "gpt-4o-2024-08-06")


@given(st.lists(st.integers(min_value=0, max_value=len(MESSAGES)), max_size=40), st.booleans())
def test_anthropic_stream_any_cuts(cuts: list[int], use_crlf: bool) -> None:
    stream = crlf(MESSAGES) if use_crlf else MESSAGES
    meter = anthropic.MessagesStreamMeter()
    assert run(meter, stream, [min(c, len(stream)) for c in cuts]) == stream
    assert meter.reading.usage == ANTHROPIC_EXPECTED


@given(st.lists(st.integers(min_value=0, max_value=len(CHAT)), max_size=40))
def test_chat_strip_any_cuts(cuts: list[int]) -> None:
    """
    With the usage chunk stripped, the client gets every other byte, in order.
    """
    meter = openai.ChatStreamMeter(strip=True)
    relayed = run(meter, CHAT, cuts)
    usage_chunk = chat_stream("gpt-4o-2024-08-06", include_usage=True)[-2]
    assert relayed == CHAT.replace(usage_chunk, b"")
    assert meter.reading.usage == CHAT_EXPECTED


@pytest.mark.parametrize(
    "stream_meter, stream, read_body, body",
    [
        (anthropic.MessagesStreamMeter, MESSAGES, anthropic.read_body, message_body("claude-sonnet-4-5-20250929")),
        (openai.ChatStreamMeter, CHAT, openai.read_chat_body, chat_body("gpt-4o-2024-08-06")),
        (openai.ResponsesStreamMeter, RESPONSES, openai.read_responses_body, response_object("gpt-4o", "completed", RESPONSES_USAGE)),
    ],
)
def test_streamed_and_unstreamed_readings_agree(stream_meter: Any, stream: bytes, read_body: Any, body: Any) -> None:
    streamed = stream_meter()
    run(streamed, stream, [])
    unstreamed = BodyMeter(read_body)
    unstreamed.feed(json.dumps(body).encode())
    unstreamed.close()
    assert streamed.reading.usage == unstreamed.reading.usage is not None


def test_anthropic_delta_overwrites_never_adds() -> None:
    """
    An older stream whose message_delta only has output_tokens keeps the input side of
    message_start; the output placeholder of message_start is replaced, not added to.
    """
    start = {"type": "message_start", "message": {"model": "claude-3-5-haiku-20241022", "usage": {"input_tokens": 25, "output_tokens": 1}}}
    stream = (
        b"event: message_start\ndata: " + json.dumps(start).encode() + b"\n\n"
        b"event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{},\"usage\":{\"output_tokens\":6}}\n\n"
        b"event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{},\"usage\":{\"output_tokens\":9}}\n\n"
    )
    meter = anthropic.MessagesStreamMeter()
    run(meter, stream, [])
    assert meter.reading.usage == Usage(input_tokens=25, output_tokens=9)


def test_sse_grammar() -> None:
    """
    Comments, multi-line data, a lone CR as line end, fields without a space, and an
    event name that is not the default.
    """
    parser = SSEParser()
    events = parser.feed(b": keep-alive\n\nevent: x\ndata: a\ndata:b\r\rdata: c\r")
    events += parser.feed(b"\ndata: d\n\n")
    assert [(e.name, e.data) for e in events] == [(b"x", b"a\nb"), (b"", b"c\nd")]


def test_pings_and_unknown_events_are_ignored() -> None:
    stream = b"event: ping\ndata: {\"type\": \"ping\"}\n\nevent: brand_new\ndata: {not json\n\n" + MESSAGES
    meter = anthropic.MessagesStreamMeter()
    assert run(meter, stream, []) == stream
    assert meter.reading.usage == ANTHROPIC_EXPECTED


def test_error_events_after_200() -> None:
    meter = anthropic.MessagesStreamMeter()
    run(meter, b"".join(messages_stream("claude-sonnet-4-5", error=True)), [])
    assert meter.reading.error_type == "overloaded_error"
    assert not meter.reading.final
    assert meter.reading.usage.input_tokens == 52120
    chat = openai.ChatStreamMeter()
    run(chat, b"".join(chat_stream("gpt-4o", include_usage=True, error=True)), [])
    assert chat.reading.error_type == "server_error"
    responses = openai.ResponsesStreamMeter()
    run(responses, b"".join(responses_stream("gpt-4o", error=True)), [])
    assert responses.reading.error_type == "server_error"
    assert responses.reading.usage is None


def test_malformed_usage_does_not_break_the_relay() -> None:
    stream = b"event: message_start\ndata: {broken\n\n" + MESSAGES
    meter = anthropic.MessagesStreamMeter()
    assert run(meter, stream, [10]) == stream
    assert meter.reading.usage == ANTHROPIC_EXPECTED


def test_large_body_read_without_whole_parse() -> None:
    vectors = [{"object": "embedding", "index": i, "embedding": [0.5] * 1536} for i in range(300)]
    body = json.dumps({"object": "list", "data": vectors, "model": "text-embedding-3-small", "usage": {"prompt_tokens": 700, "total_tokens": 700}}).encode()
    assert len(body) > 1 << 20
    meter = BodyMeter(openai.read_chat_body)
    for i in range(0, len(body), 65536):
        meter.feed(body[i : i + 65536])
    meter.close()
    assert meter.reading.usage == Usage(input_tokens=700)
    assert meter.reading.model == "text-embedding-3-small"


def test_anthropic_counts_and_tiers() -> None:
    raw = {**ANTHROPIC_USAGE, "service_tier": "batch", "server_tool_use": {"web_search_requests": 2}, "output_tokens_details": {"thinking_tokens": 40}}
    reading = anthropic.read_body({"model": "m", "usage": raw})
    assert reading.usage.web_searches == 2 and reading.usage.reasoning_tokens == 40
    assert reading.price_context == {"processing": "batch"}


def test_body_meter_decodes_once_when_asked_and_not_a_cut_body() -> None:
    from modeltrack.pricing.usage import Reading
    from modeltrack.providers.meter import BodyMeter

    calls: list[dict] = []

    def read_body(obj: dict) -> Reading:
        calls.append(obj)
        return Reading(model=obj["model"])

    meter = BodyMeter(read_body)
    meter.feed(b'{"model":')
    meter.feed(b'"m"}')
    assert meter.close() == b"" and calls == []  # closing (before the answer is sent) decodes nothing
    assert meter.reading.model == "m" and meter.reading.model == "m"
    assert calls == [{"model": "m"}]
    cut = BodyMeter(read_body)
    cut.feed(b'{"model":"x"')
    assert cut.reading == Reading() and len(calls) == 1  # never closed: cut off, not decoded
