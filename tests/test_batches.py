"""
Batch results fetched through the proxy with the SDKs: one event per result with usage,
at the batch price, once however often they are fetched.
"""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest_twisted
from genai_prices import Usage as PriceUsage
from genai_prices import calc_price
from twisted.internet import reactor as global_reactor

from modeltrack.accounting.batches import BatchBook, Result, Watch
from tests.fakes import ANTHROPIC_USAGE, CHAT_USAGE
from tests.test_sdk import anthropic_client, in_thread, openai_client


def batch_price(model: str, provider: str, usage: PriceUsage) -> Decimal:
    return Decimal(calc_price(usage, model, provider_id=provider, price_context={"processing": "batch"}).total_price)


@pytest_twisted.ensureDeferred
async def test_openai_batch_results_once_each_at_the_batch_price(proxy: Any) -> None:
    client = openai_client(proxy)

    def fetch() -> list[str]:
        # A file no batch named is relayed, not metered.
        assert client.files.content("file-other").text.count("\n") == 2
        batch = client.batches.retrieve("batch_done", extra_headers={"X-ModelTrack-Team": "ml"})
        texts = []
        for _ in range(2):  # fetched twice: recorded once
            texts.append(client.files.content(batch.output_file_id).text)
        return texts

    texts = await in_thread(fetch)
    assert texts[0] == texts[1] and texts[0].count("\n") == 2
    await proxy.settled()
    assert "batch_done" not in "".join(texts)  # the results, not the batch object
    events = proxy.events()
    assert [(e["custom_id"], e["batch_id"], e["batch"]) for e in events] == [("q-1", "batch_done", True), ("q-2", "batch_done", True)]
    usage = PriceUsage(input_tokens=1200, cache_read_tokens=1024, output_tokens=300)
    for event, model in zip(events, ("gpt-4o-2024-08-06", "gpt-4o-mini-2024-07-18"), strict=True):
        assert (event["endpoint"], event["model"], event["outcome"]) == ("/v1/chat/completions", model, "ok")
        assert (event["input_tokens"], event["output_tokens"]) == (CHAT_USAGE["prompt_tokens"], CHAT_USAGE["completion_tokens"])
        assert Decimal(str(event["cost_usd"])) == batch_price(model, "openai", usage)
        assert event["key_id"] is not None
    full = Decimal(calc_price(usage, "gpt-4o-2024-08-06", provider_id="openai").total_price)
    assert Decimal(str(events[0]["cost_usd"])) < full  # not the list price


@pytest_twisted.ensureDeferred
async def test_anthropic_batch_results(proxy: Any) -> None:
    client = anthropic_client(proxy)

    def fetch() -> list[list[str]]:
        return [[r.custom_id for r in client.messages.batches.results("msgbatch_01")] for _ in range(2)]

    assert await in_thread(fetch) == [["m-1", "m-3", "m-2"]] * 2
    await proxy.settled()
    events = proxy.events()
    assert [e["custom_id"] for e in events] == ["m-1", "m-2"]
    usage = PriceUsage(
        input_tokens=120 + 2000 + 50000, cache_read_tokens=50000, cache_write_tokens=2000, cache_write_1h_tokens=500,
        output_tokens=ANTHROPIC_USAGE["output_tokens"],
    )
    for event, model in zip(events, ("claude-sonnet-4-5-20250929", "claude-haiku-4-5-20251001"), strict=True):
        assert (event["batch_id"], event["endpoint"], event["service_tier"]) == ("msgbatch_01", "/v1/messages", "batch")
        assert Decimal(str(event["cost_usd"])) == batch_price(model, "anthropic", usage)


@pytest_twisted.ensureDeferred
async def test_two_processes_claim_each_result_once(tmp_path: Path) -> None:
    """
    Two books on one directory (two workers): each result goes to exactly one of them.
    """
    pool = global_reactor.getThreadPool()
    books = [BatchBook(tmp_path, global_reactor, pool) for _ in range(2)]
    watching = Watch("anthropic", "results", batch_id="msgbatch_02")
    results = [Result(f"r-{i}", 200, {}) for i in range(200)]
    claims = [book.claim(watching, results[i % 2 :: 1]) for i, book in enumerate(books * 3)]
    got = [await d for d in claims]
    ids = [r.custom_id for claim in got for r in claim[2]]
    assert sorted(ids) == sorted(r.custom_id for r in results)


@pytest_twisted.ensureDeferred
async def test_results_url_names_the_proxy_as_the_client_called_it(proxy: Any) -> None:
    import json

    import treq

    headers = {"x-api-key": "sk-ant-x", "anthropic-version": "2023-06-01"}
    plain = json.loads(await (await treq.get(proxy.url + "/v1/messages/batches/msgbatch_9", headers=headers)).content())
    assert plain["results_url"] == proxy.url + "/v1/messages/batches/msgbatch_9/results"
    balanced = await treq.get(
        proxy.url + "/anthropic/v1/messages/batches/msgbatch_9",
        headers={**headers, "Host": "llm.internal", "X-Forwarded-Proto": "https"},
    )
    body = json.loads(await balanced.content())
    assert body["results_url"] == "https://llm.internal/anthropic/v1/messages/batches/msgbatch_9/results"
    assert body["processing_status"] == "ended" and body["request_counts"]["succeeded"] == 2  # the rest as it came
    assert balanced.headers.getRawHeaders(b"content-length") in (None, [str(len(await balanced.content())).encode()])


def test_hostile_result_lines_are_relayed_and_never_break_the_meter() -> None:
    from modeltrack.accounting.batches import ResultsMeter

    meter = ResultsMeter(Watch("anthropic", "results", batch_id="msgbatch_x"), book=None)  # type: ignore[arg-type]
    good = b'{"custom_id":"ok-1","result":{"type":"succeeded","message":{"model":"claude-sonnet-4-5","usage":{"input_tokens":5,"output_tokens":1}}}}'
    lines = [
        b'{"usage":' + b"[" * 100_000 + b"]" * 100_000 + b"}",  # nested past the parser's depth
        b'\xff\xfe{"usage": not json',
        b'{"custom_id": 7, "result": {"message": {"usage": {}}}}',  # an id that is not text
        b'{"custom_id":"no-usage","result":{"type":"errored","error":{"type":"error"}}}',
        good,
    ]
    data = b"\n".join(lines)
    relayed = b"".join(meter.feed(data[i : i + 4096]) for i in range(0, len(data), 4096)) + meter.close()
    assert relayed == data
    assert [result.custom_id for result in meter.results] == ["ok-1"]
