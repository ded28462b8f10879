"""
Azure OpenAI through the proxy, driven by the official SDKs: AzureOpenAI on the classic
deployment paths and OpenAI on the v1 paths, streamed and not. Priced by the model the
response names (Azure's data in genai-prices), the deployment kept in the event, Azure's
empty first stream chunk read past, keys and the api-version forwarded untouched.
"""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Any

import genai_prices
import openai
import pytest_twisted

from tests import rawhttp
from tests.conftest import start_proxy
from tests.fakes import AZURE_SNAPSHOT, CHAT_USAGE
from tests.test_sdk import in_thread

USER = [{"role": "user", "content": "hi"}]
AZURE_KEY = "azure-key-0123456789abcdef"


@pytest_twisted.ensureDeferred
async def test_azure_classic_and_v1_paths(reactor: Any, tmp_path: Path, upstream: Any) -> None:
    proxy = start_proxy(reactor, tmp_path, "http://127.0.0.1:9", azure_url=upstream.url)
    try:
        classic = openai.AzureOpenAI(azure_endpoint=proxy.url + "/azure", api_version="2024-10-21", api_key=AZURE_KEY, max_retries=0)
        v1 = openai.OpenAI(base_url=proxy.url + "/azure/openai/v1", api_key=AZURE_KEY, max_retries=0)

        def calls() -> list[Any]:
            return [
                classic.chat.completions.create(model="my-gpt4o", messages=USER),
                "".join(
                    c.choices[0].delta.content or ""
                    for c in classic.chat.completions.create(model="my-gpt4o", messages=USER, stream=True)
                    if c.choices
                ),
                v1.chat.completions.create(model="prod-deployment", messages=USER),
                v1.models.list(),
                v1.files.list(),  # relayed, unmetered
            ]

        found = await in_thread(calls)
        await proxy.flushed()
        port = proxy.service.ports[0].getHost().port
        for path in (b"/azure/openai/deployments/../chat/completions", b"/v1/chat/completions"):
            answer = await in_thread(rawhttp.exchange, port, rawhttp.post(path, b'{"model":"m","messages":[]}'))
            assert rawhttp.status_of(answer) in (404, 502)
    finally:
        await proxy.service.stopService()
    assert found[0].model == AZURE_SNAPSHOT and found[1] == "Hello world"
    seen = upstream.resource.seen
    assert [s.path for s in seen] == [
        b"/openai/deployments/my-gpt4o/chat/completions?api-version=2024-10-21",
        b"/openai/deployments/my-gpt4o/chat/completions?api-version=2024-10-21",
        b"/openai/v1/chat/completions",
        b"/openai/v1/models",
        b"/openai/v1/files",
    ]
    assert seen[0].header(b"api-key") == [AZURE_KEY.encode()]
    assert seen[2].header(b"authorization") == [b"Bearer " + AZURE_KEY.encode()]
    events = proxy.events()
    assert [(e["provider"], e["deployment"], e["model"], e["streaming"]) for e in events[:3]] == [
        ("azure", "my-gpt4o", AZURE_SNAPSHOT, False),
        ("azure", "my-gpt4o", AZURE_SNAPSHOT, True),
        ("azure", "prod-deployment", AZURE_SNAPSHOT, False),
    ]
    assert events[0]["endpoint"] == "/openai/deployments/{deployment}/chat/completions"
    usage = genai_prices.Usage(input_tokens=1200, cache_read_tokens=1024, output_tokens=300)
    expected = genai_prices.calc_price(usage, AZURE_SNAPSHOT, provider_id="azure").total_price
    for event in events[:3]:
        assert Decimal(str(event["cost_usd"])) == expected and event["usage_complete"]
    assert events[0]["cost_usd"] == events[1]["cost_usd"]  # streamed = unstreamed
    # The bare /v1 path is OpenAI's (here unreachable: 502), never Azure's.
    assert events[-1]["provider"] == "openai"
    assert CHAT_USAGE["prompt_tokens"] == events[0]["input_tokens"]
    assert len(events) == 4  # three Azure calls and the refused bare one: nothing for models or files
    relayed = proxy.service.stats.snapshot(proxy.service.journal)["relayed"]
    assert relayed["azure"] == {"/openai/v1/files": 1, "/openai/v1/models": 1}  # unmetered routes
