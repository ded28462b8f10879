"""
The official SDKs against the real proxy service and a fake upstream on 127.0.0.1: what
the SDK returns, what the upstream received, and the events written.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import anthropic
import openai
import pytest
import pytest_twisted
from twisted.internet.threads import deferToThread

from tests.fakes import ANTHROPIC_USAGE, RESPONSES_USAGE

OPENAI_KEY = "sk-test-openai-0123456789"
ANTHROPIC_KEY = "sk-ant-test-0123456789"


def openai_client(proxy: Any) -> openai.OpenAI:
    return openai.OpenAI(base_url=proxy.url + "/v1", api_key=OPENAI_KEY, max_retries=0)


def anthropic_client(proxy: Any) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=proxy.url, api_key=ANTHROPIC_KEY, max_retries=0)


def in_thread(f: Any, *args: Any, **kwargs: Any) -> Any:
    # The SDKs block; the reactor must keep running to serve them.
    return deferToThread(f, *args, **kwargs)


# genai-prices' list prices, USD per million tokens, worked by hand.
# gpt-4o: input 2.50, cached input 1.25, output 10.
GPT4O_CHAT_COST = (Decimal(1200 - 1024) * Decimal("2.5") + 1024 * Decimal("1.25") + 300 * 10) / 10**6
# claude-sonnet-4-5: input 3, 5m write 3.75, 1h write 6, read 0.30, output 15.
SONNET_COST = (
    120 * Decimal(3) + 1500 * Decimal("3.75") + 500 * 6 + 50000 * Decimal("0.3") + 310 * 15
) / 10**6


@pytest_twisted.ensureDeferred
async def test_chat_completion(proxy: Any, upstream: Any) -> None:
    client = openai_client(proxy)
    completion = await in_thread(
        client.chat.completions.create,
        model="gpt-4o",
        messages=[{"role": "user", "content": "hi"}],
        extra_headers={"X-ModelTrack-Team": "ml", "X-ModelTrack-App": "bot", "X-ModelTrack-Session-Id": "s1"},
    )
    assert completion.choices[0].message.content == "Hello world"
    assert completion.usage.prompt_tokens == 1200
    await proxy.flushed()
    [event] = proxy.events()
    assert event["provider"] == "openai"
    assert event["endpoint"] == "/v1/chat/completions"
    assert event["model"] == "gpt-4o-2024-08-06"
    assert event["requested_model"] == "gpt-4o"
    assert event["outcome"] == "ok" and event["status_code"] == 200
    assert (event["input_tokens"], event["cache_read_tokens"], event["output_tokens"], event["reasoning_tokens"]) == (1200, 1024, 300, 64)
    assert Decimal(str(event["cost_usd"])) == GPT4O_CHAT_COST
    assert event["priced"] is True
    assert (event["team"], event["app"], event["session_id"], event["feature"]) == ("ml", "bot", "s1", None)
    seen = upstream.resource.seen[-1]
    assert seen.header(b"authorization") == [f"Bearer {OPENAI_KEY}".encode()]
    assert seen.header(b"x-modeltrack-team") is None


@pytest_twisted.ensureDeferred
async def test_chat_stream_without_include_usage(proxy: Any, upstream: Any) -> None:
    """
    The client did not ask for usage: the proxy asks upstream, reads the usage chunk,
    and the client sees only the chunks it asked for.
    """
    client = openai_client(proxy)

    def consume() -> list[Any]:
        stream = client.chat.completions.create(
            model="gpt-4o", messages=[{"role": "user", "content": "hi"}], stream=True
        )
        return list(stream)

    chunks = await in_thread(consume)
    assert all(chunk.choices for chunk in chunks), "a usage-only chunk reached the client"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "Hello world"
    assert b'"include_usage":true' in upstream.resource.seen[-1].body
    await proxy.flushed()
    [event] = proxy.events()
    assert event["streaming"] is True
    assert event["usage_complete"] is True
    assert Decimal(str(event["cost_usd"])) == GPT4O_CHAT_COST


@pytest_twisted.ensureDeferred
async def test_streamed_and_unstreamed_cost_the_same(proxy: Any) -> None:
    client = openai_client(proxy)
    aclient = anthropic_client(proxy)
    messages = [{"role": "user", "content": "hi"}]

    def calls() -> None:
        client.chat.completions.create(model="gpt-4o", messages=messages)
        list(client.chat.completions.create(model="gpt-4o", messages=messages, stream=True, stream_options={"include_usage": True}))
        list(client.chat.completions.create(model="gpt-4o", messages=messages, stream=True, stream_options={"include_usage": False}))
        client.responses.create(model="gpt-4o", input="hi")
        list(client.responses.create(model="gpt-4o", input="hi", stream=True))
        aclient.messages.create(model="claude-sonnet-4-5", max_tokens=100, messages=messages)
        with aclient.messages.stream(model="claude-sonnet-4-5", max_tokens=100, messages=messages) as stream:
            stream.get_final_message()

    await in_thread(calls)
    await proxy.flushed()
    events = proxy.events()
    assert [e["streaming"] for e in events] == [False, True, True, False, True, False, True]
    chat = events[:3]
    assert len({(e["input_tokens"], e["output_tokens"], e["cost_usd"]) for e in chat}) == 1
    responses = events[3:5]
    assert responses[0]["cost_usd"] == responses[1]["cost_usd"]
    assert responses[0]["input_tokens"] == RESPONSES_USAGE["input_tokens"]
    messages_events = events[5:]
    assert messages_events[0]["cost_usd"] == messages_events[1]["cost_usd"]
    assert Decimal(str(messages_events[0]["cost_usd"])) == SONNET_COST
    assert messages_events[1]["input_tokens"] == 120 + 2000 + 50000
    assert messages_events[1]["cache_write_tokens"] == 2000
    assert messages_events[1]["output_tokens"] == ANTHROPIC_USAGE["output_tokens"]


@pytest_twisted.ensureDeferred
async def test_anthropic_message_and_stream_helper(proxy: Any, upstream: Any) -> None:
    client = anthropic_client(proxy)

    def calls() -> tuple[Any, Any]:
        message = client.messages.create(
            model="claude-sonnet-4-5", max_tokens=100, messages=[{"role": "user", "content": "hi"}]
        )
        with client.messages.stream(
            model="claude-sonnet-4-5", max_tokens=100, messages=[{"role": "user", "content": "hi"}]
        ) as stream:
            text = "".join(stream.text_stream)
            final = stream.get_final_message()
        return message, (text, final)

    message, (text, final) = await in_thread(calls)
    assert message.content[0].text == "Hello world"
    assert text == "Hello world"
    assert final.usage.output_tokens == 310
    # This SDK version sends the key as a bearer token; either way it goes unchanged.
    seen = upstream.resource.seen[0]
    assert ANTHROPIC_KEY.encode() in b"".join((seen.header(b"x-api-key") or []) + (seen.header(b"authorization") or []))
    assert seen.header(b"anthropic-version") is not None
    await proxy.flushed()
    events = proxy.events()
    assert [e["endpoint"] for e in events] == ["/v1/messages", "/v1/messages"]
    assert all(e["model"] == "claude-sonnet-4-5-20250929" for e in events)


@pytest_twisted.ensureDeferred
async def test_embeddings_completions_and_unmetered_routes(proxy: Any) -> None:
    client = openai_client(proxy)
    aclient = anthropic_client(proxy)

    def calls() -> tuple[Any, ...]:
        embedding = client.embeddings.create(model="text-embedding-3-small", input="hi")
        legacy = client.completions.create(model="gpt-3.5-turbo-instruct", prompt="hi")
        models = client.models.list()
        count = aclient.messages.count_tokens(model="claude-sonnet-4-5", messages=[{"role": "user", "content": "hi"}])
        anthropic_models = aclient.models.list()
        return embedding, legacy, models, count, anthropic_models

    embedding, legacy, models, count, anthropic_models = await in_thread(calls)
    assert embedding.usage.prompt_tokens == 8
    assert legacy.choices[0].text == "Hello world"
    assert count.input_tokens == 42
    await proxy.flushed()
    events = proxy.events()
    assert [e["endpoint"] for e in events] == ["/v1/embeddings", "/v1/completions"]
    assert Decimal(str(events[0]["cost_usd"])) == Decimal(8) * Decimal("0.02") / 10**6


@pytest_twisted.ensureDeferred
async def test_upstream_error_passes_through(proxy: Any) -> None:
    client = openai_client(proxy)
    with pytest.raises(openai.RateLimitError) as raised:
        await in_thread(client.chat.completions.create, model="fail-429", messages=[{"role": "user", "content": "hi"}])
    assert raised.value.status_code == 429
    assert raised.value.body["code"] == "rate_limit_exceeded"
    await proxy.flushed()
    [event] = proxy.events()
    assert event["outcome"] == "upstream_error"
    assert event["status_code"] == 429
    assert event["cost_usd"] == 0


@pytest_twisted.ensureDeferred
async def test_stream_error_after_200(proxy: Any) -> None:
    aclient = anthropic_client(proxy)

    def call() -> None:
        with aclient.messages.stream(model="stream-error", max_tokens=10, messages=[{"role": "user", "content": "hi"}]) as stream:
            stream.get_final_message()

    with pytest.raises(anthropic.APIStatusError):
        await in_thread(call)
    await proxy.flushed()
    [event] = proxy.events()
    assert event["outcome"] == "stream_error"
    assert event["error_type"] == "overloaded_error"
    assert event["usage_complete"] is False
    assert event["input_tokens"] == 120 + 2000 + 50000


@pytest_twisted.ensureDeferred
async def test_framing_length_kept_stream_chunked_truncation_visible(proxy: Any) -> None:
    """
    An answer relayed unchanged keeps the provider's Content-Length (one piece, no
    chunk framing); a stream is chunked; an upstream body cut short of its length
    reaches the client as a broken connection, never as a complete answer.
    """
    import http.client
    import json
    from urllib.parse import urlsplit

    def post(model: str, stream: bool = False) -> tuple[dict[str, str], bytes]:
        connection = http.client.HTTPConnection(urlsplit(proxy.url).netloc)
        body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "stream": stream}
        connection.request("POST", "/v1/chat/completions", json.dumps(body), {"Authorization": f"Bearer {OPENAI_KEY}"})
        response = connection.getresponse()
        try:
            return {k.lower(): v for k, v in response.getheaders()}, response.read()
        finally:
            connection.close()

    headers, body = await in_thread(post, "gpt-4o")
    assert headers["content-length"] == str(len(body)) and "transfer-encoding" not in headers
    headers, _ = await in_thread(post, "gpt-4o", True)
    assert headers["transfer-encoding"] == "chunked" and "content-length" not in headers
    with pytest.raises((http.client.IncompleteRead, ConnectionResetError)):
        await in_thread(post, "short-body")
    await proxy.flushed()
    assert [e["outcome"] for e in proxy.events()] == ["ok", "ok", "upstream_unreachable"]


@pytest_twisted.ensureDeferred
async def test_the_rest_of_each_api_is_relayed_untouched_and_unmetered(proxy: Any, upstream: Any) -> None:
    import io

    oai = openai_client(proxy)
    ant = anthropic_client(proxy)

    def calls() -> list[Any]:
        return [
            oai.files.list(),
            oai.files.create(file=("a.jsonl", io.BytesIO(b'{"a":1}\n')), purpose="batch"),
            oai.files.delete("file-1"),
            oai.moderations.create(input="hi"),
            oai.batches.retrieve("batch_abc"),
            ant.messages.batches.list(),
            ant.beta.files.list(),
        ]

    found = await in_thread(calls)
    assert found[2].deleted and found[4].status == "completed" and found[3].results == []
    seen = [(s.method, s.path.decode()) for s in upstream.resource.seen]
    assert seen == [
        (b"GET", "/v1/files"),
        (b"POST", "/v1/files"),
        (b"DELETE", "/v1/files/file-1"),
        (b"POST", "/v1/moderations"),
        (b"GET", "/v1/batches/batch_abc"),
        (b"GET", "/v1/messages/batches"),
        (b"GET", "/v1/files"),
    ]
    upload = upstream.resource.seen[1]
    assert b'{"a":1}\n' in upload.body and upload.header(b"content-type")[0].startswith(b"multipart/form-data")
    assert upstream.resource.seen[-1].header(b"authorization") == [b"Bearer " + ANTHROPIC_KEY.encode()]
    await proxy.flushed()
    assert proxy.events() == []  # relayed, not metered
    stats = proxy.service.stats.snapshot(proxy.service.journal)
    assert stats["relayed"] == {
        "anthropic": {"/v1/files": 1, "/v1/messages": 1},  # told apart by the Anthropic SDK's headers
        "openai": {"/v1/batches": 1, "/v1/files": 3, "/v1/moderations": 1},
    }
