"""
The controls as users meet them: the real service, config files in its data dir, the
official SDKs as clients.
"""

from __future__ import annotations

import json
import os
import signal
from decimal import Decimal
from pathlib import Path
from typing import Any

import anthropic
import openai
import pytest
import pytest_twisted
from twisted.internet.task import deferLater

from tests.conftest import start_proxy
from tests.test_sdk import in_thread

USER = [{"role": "user", "content": "hi"}]


def write(path: Path, document: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document))


async def get(proxy: Any, path: str) -> Any:
    import treq

    response = await treq.get(proxy.url + path)
    return json.loads(await response.content())


@pytest_twisted.ensureDeferred
async def test_budget_blocks_through_the_sdk_and_survives_a_restart(reactor: Any, tmp_path: Path, upstream: Any) -> None:
    write(tmp_path / "budgets.json", {"budgets": [{"team": "ml", "app": "", "monthly_limit": 0.010, "action": "block"}]})
    proxy = start_proxy(reactor, tmp_path, upstream.url)
    client = openai.OpenAI(base_url=proxy.url + "/v1", api_key="sk-x", max_retries=0, default_headers={"X-ModelTrack-Team": "ml"})

    def calls() -> list[str]:
        seen = []
        for _ in range(4):
            try:
                client.chat.completions.create(model="gpt-4o", messages=USER, max_tokens=100)
                seen.append("ok")
            except openai.RateLimitError as e:
                assert e.body["type"] == "budget_exceeded"
                seen.append("blocked")
        return seen

    # One answer costs 0.00472 USD; a call reserves about 0.0011 before it is forwarded.
    assert await in_thread(calls) == ["ok", "ok", "blocked", "blocked"]
    before = await get(proxy, "/budgets")
    await proxy.service.stopService()
    restarted = start_proxy(reactor, tmp_path, upstream.url)
    try:
        after = await get(restarted, "/budgets")
        assert Decimal(after["budgets"][0]["spend_usd"]) == Decimal(before["budgets"][0]["spend_usd"])
        assert Decimal(after["budgets"][0]["spend_usd"]) == 2 * Decimal("0.00472")
        assert Decimal(after["open_reservations_usd"]) == 0
        assert (tmp_path / "state" / "ledger-2.msgpack").exists()
        client = openai.OpenAI(base_url=restarted.url + "/v1", api_key="sk-x", max_retries=0, default_headers={"X-ModelTrack-Team": "ml"})
        with pytest.raises(openai.RateLimitError):
            await in_thread(client.chat.completions.create, model="gpt-4o", messages=USER, max_tokens=100)
    finally:
        await restarted.service.stopService()


@pytest_twisted.ensureDeferred
async def test_cache_hit_through_the_sdk(reactor: Any, tmp_path: Path, upstream: Any) -> None:
    proxy = start_proxy(reactor, tmp_path, upstream.url, cache=True)
    client = anthropic.Anthropic(base_url=proxy.url, api_key="sk-ant-x", max_retries=0)

    def twice() -> list[Any]:
        return [
            client.messages.with_raw_response.create(model="claude-sonnet-4-5", max_tokens=50, messages=USER, extra_body={"temperature": 0})
            for _ in range(2)
        ]

    try:
        first, second = await in_thread(twice)
        assert first.headers["x-modeltrack-cache"] == "MISS"
        assert second.headers["x-modeltrack-cache"] == "HIT"
        assert second.parse().content[0].text == "Hello world"
        assert len(upstream.resource.seen) == 1
        stats = await get(proxy, "/cache/stats")
        assert (stats["hits"], stats["misses"], stats["entries"]) == (1, 1, 1)
    finally:
        await proxy.service.stopService()
    await proxy.flushed()
    miss, hit = proxy.events()
    assert hit["cache_hit"] is True and hit["cost_usd"] == 0 and hit["saved_usd"] == miss["cost_usd"]
    snapshot = tmp_path / "state" / "cache.msgpack"
    assert snapshot.exists() and b"sk-ant-x" not in snapshot.read_bytes()
    again = start_proxy(reactor, tmp_path, upstream.url, cache=True)
    try:
        assert (await get(again, "/cache/stats"))["entries"] == 1
    finally:
        await again.service.stopService()


@pytest_twisted.ensureDeferred
async def test_routing_and_sighup_reload(reactor: Any, tmp_path: Path, upstream: Any) -> None:
    write(tmp_path / "budgets.json", {"budgets": [{"team": "ml", "monthly_limit": 0.006}]})
    proxy = start_proxy(reactor, tmp_path, upstream.url, config_poll_seconds=3600)
    client = openai.OpenAI(base_url=proxy.url + "/v1", api_key="sk-x", max_retries=0, default_headers={"X-ModelTrack-Team": "ml"})
    try:
        await in_thread(client.chat.completions.create, model="gpt-4o", messages=USER, max_tokens=10)
        rule = {"name": "mini", "trigger": "budget_percent_above", "threshold": 50, "from_models": ["gpt-4o"],
                "to_model": "gpt-4o-mini", "provider": "openai", "action": "downgrade", "enabled": True}
        write(tmp_path / "routing.json", {"rules": [rule]})
        os.kill(os.getpid(), signal.SIGHUP)
        await deferLater(reactor, 0, lambda: None)  # let the reactor run the reload
        await deferLater(reactor, 0, lambda: None)
        raw = await in_thread(client.chat.completions.with_raw_response.create, model="gpt-4o", messages=USER, max_tokens=10)
        assert raw.headers["x-modeltrack-routed-to"] == "gpt-4o-mini"
        assert json.loads(upstream.resource.seen[-1].body)["model"] == "gpt-4o-mini"
        assert (await get(proxy, "/routing/stats"))["rules"]["mini"]["routed"] == 1
    finally:
        await proxy.service.stopService()


@pytest_twisted.ensureDeferred
async def test_a_budget_refusal_is_not_retried_by_the_sdks(reactor: Any, tmp_path: Path, upstream: Any) -> None:
    write(tmp_path / "budgets.json", {"budgets": [{"team": "ml", "app": "", "monthly_limit": 0.000001, "action": "block"}]})
    proxy = start_proxy(reactor, tmp_path, upstream.url)
    headers = {"X-ModelTrack-Team": "ml"}
    try:
        # The SDKs' default: two retries of a 429.
        oai = openai.OpenAI(base_url=proxy.url + "/v1", api_key="sk-x", default_headers=headers)
        ant = anthropic.Anthropic(base_url=proxy.url, api_key="sk-ant-x", default_headers=headers)

        def calls() -> list[Any]:
            errors = []
            for call in (
                lambda: oai.chat.completions.create(model="gpt-4o", messages=USER, max_tokens=10),
                lambda: ant.messages.create(model="claude-sonnet-4-5", max_tokens=10, messages=USER),
            ):
                try:
                    call()
                except (openai.RateLimitError, anthropic.RateLimitError) as e:
                    errors.append(e)
            return errors

        errors = await in_thread(calls)
        assert len(errors) == 2
        for error in errors:
            assert error.response.headers["x-should-retry"] == "false"
            assert error.response.reason_phrase == "Too Many Requests"
        await proxy.flushed()
        assert [e["outcome"] for e in proxy.events()] == ["rejected", "rejected"]
        assert upstream.resource.seen == []
    finally:
        await proxy.service.stopService()
