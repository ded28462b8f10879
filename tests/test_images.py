"""
The Images API metered through the openai SDK: GPT image models priced from the
answer's usage (the model from the request, output tokens without details as image
tokens), streamed and not at the same cost, held to a block budget by the most the
request can generate; the Azure and OpenAI-compatible paths too.
"""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import openai
import pytest
import pytest_twisted

from modeltrack.providers.openai_media import image_bound
from tests.conftest import start_proxy
from tests.test_sdk import in_thread

# genai-prices' list prices, USD per million tokens. gpt-image-1.5: text in 5, image
# out 32 (its text out, 10, is what the answer's bare output_tokens would be priced at).
GPT_IMAGE_15 = (23 * Decimal(5) + 1056 * Decimal(32)) / 10**6  # 0.033907
# gpt-image-1: text in 5, out 40 (its image rate; no rate of its own for image out).
GPT_IMAGE_1 = (23 * Decimal(5) + 1056 * Decimal(40)) / 10**6


def generate(url: str, **kwargs: Any) -> Any:
    client = openai.OpenAI(base_url=url, api_key="sk-images", max_retries=0)
    if kwargs.get("stream"):
        return [event.type for event in client.images.generate(prompt="a lighthouse at dusk", **kwargs)]
    return client.images.generate(prompt="a lighthouse at dusk", **kwargs)


@pytest_twisted.ensureDeferred
async def test_an_image_costs_the_same_streamed_and_not(reactor: Any, tmp_path: Path, upstream: Any) -> None:
    proxy = start_proxy(reactor, tmp_path, upstream.url)
    try:
        image = await in_thread(generate, proxy.url + "/v1", model="gpt-image-1.5", size="1024x1024", quality="medium")
        assert image.usage.output_tokens == 1056 and image.data[0].b64_json
        kinds = await in_thread(generate, proxy.url + "/v1", model="gpt-image-1.5", stream=True, partial_images=2)
        assert kinds == ["image_generation.partial_image"] * 2 + ["image_generation.completed"]
        two = await in_thread(generate, proxy.url + "/v1", model="gpt-image-1.5", stream=True, n=2)
        assert two == ["image_generation.completed"] * 2
        await in_thread(generate, proxy.url + "/v1", model="gpt-image-1")
        await proxy.flushed()
    finally:
        await proxy.service.stopService()
    plain, streamed, pair, older = proxy.events()
    assert plain["endpoint"] == "/v1/images/generations" and plain["model"] == "gpt-image-1.5"
    assert plain["usage"] == {"input_tokens": 23, "output_tokens": 1056, "output_image_tokens": 1056}
    assert Decimal(str(plain["cost_usd"])) == GPT_IMAGE_15 == Decimal("0.033907")
    assert streamed["streaming"] and streamed["cost_usd"] == plain["cost_usd"] and streamed["outcome"] == "ok"
    assert Decimal(str(pair["cost_usd"])) == 2 * GPT_IMAGE_15  # one completed event per image, summed
    assert Decimal(str(older["cost_usd"])) == GPT_IMAGE_1 and older["priced"]


@pytest_twisted.ensureDeferred
async def test_a_block_budget_stops_images_by_what_they_could_cost(reactor: Any, tmp_path: Path, upstream: Any) -> None:
    (tmp_path / "budgets.json").write_text(json.dumps({"budgets": [{"team": "art", "monthly_limit": 0.05, "action": "block"}]}))
    proxy = start_proxy(reactor, tmp_path, upstream.url)
    headers = {"X-ModelTrack-Team": "art"}
    try:
        # High quality at 1024x1024 could be 4,160 image tokens: $0.133 at $32/M, over the limit.
        with pytest.raises(openai.RateLimitError) as refused:
            await in_thread(generate, proxy.url + "/v1", model="gpt-image-1.5", quality="high", size="1024x1024",
                            extra_headers=headers)
        assert "would be exceeded" in str(refused.value)
        sent = len(upstream.resource.seen)
        # Low quality: 272 tokens at most, $0.0087: it goes, and its cost is counted.
        await in_thread(generate, proxy.url + "/v1", model="gpt-image-1.5", quality="low", size="1024x1024",
                        extra_headers=headers)
        assert len(upstream.resource.seen) == sent + 1
        await proxy.flushed()
    finally:
        await proxy.service.stopService()
    refused_event, ok = proxy.events()
    assert refused_event["outcome"] == "rejected" and refused_event["team"] == "art"
    assert ok["outcome"] == "ok" and Decimal(str(ok["cost_usd"])) == GPT_IMAGE_15


@pytest.mark.parametrize(
    "body, tokens",
    [
        ({"quality": "high", "size": "1024x1024"}, 4160),
        ({"quality": "high", "size": "1024x1536"}, 6240),  # OpenAI's table
        ({"quality": "medium", "size": "1536x1024"}, 1584),
        ({"quality": "low", "size": "1024x1024"}, 272),
        ({}, 6240),  # auto: the largest size auto picks, at high
        ({"quality": "low", "n": 3, "partial_images": 2}, 3 * (408 + 200)),
        ({"quality": "max", "size": "1024x1024"}, 8320),  # a quality with no published count: twice high
        ({"size": "huge"}, 32_907),  # unparsed: the largest size any model takes, 3840x2160 at high
    ],
)
def test_an_image_request_is_bounded_by_its_size_quality_and_count(body: dict[str, Any], tokens: int) -> None:
    bound = image_bound(body, 120)
    assert bound.input_tokens == 120 and bound.output_tokens == tokens and bound.extra == {"output_image_tokens": tokens}


@pytest_twisted.ensureDeferred
async def test_images_through_azure_and_a_compatible_upstream(reactor: Any, tmp_path: Path, upstream: Any) -> None:
    proxy = start_proxy(reactor, tmp_path, upstream.url, azure_url=upstream.url, upstreams=(("local", upstream.url),))
    try:
        azure = openai.AzureOpenAI(azure_endpoint=proxy.url + "/azure", api_key="az-key", api_version="2025-04-01-preview",
                                   max_retries=0)
        await in_thread(azure.images.generate, model="painter", prompt="a fox")
        v1 = openai.OpenAI(base_url=proxy.url + "/azure/openai/v1", api_key="az-key", max_retries=0)
        await in_thread(v1.images.generate, model="painter", prompt="a fox")
        await in_thread(generate, proxy.url + "/local/v1", model="gpt-image-1.5")
        await proxy.flushed()
    finally:
        await proxy.service.stopService()
    classic, azure_v1, local = proxy.events()
    assert classic["endpoint"] == "/openai/deployments/{deployment}/images/generations" and classic["deployment"] == "painter"
    assert azure_v1["endpoint"] == "/openai/v1/images/generations"
    assert classic["usage"]["output_image_tokens"] == 1056 == azure_v1["usage"]["output_image_tokens"]
    assert local["provider"] == "local" and local["endpoint"] == "/v1/images/generations" and local["output_tokens"] == 1056


# An edit of one image with gpt-image-1.5: 23 text tokens in at 5, 323 image tokens in
# at 8, 1,056 image tokens out at 32.
GPT_IMAGE_15_EDIT = (23 * Decimal(5) + 323 * Decimal(8) + 1056 * Decimal(32)) / 10**6
PNG = ("fox.png", b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 40, "image/png")


def edit(url: str, **kwargs: Any) -> Any:
    client = openai.OpenAI(base_url=url, api_key="sk-images", max_retries=0)
    if kwargs.get("stream"):
        return [event.type for event in client.images.edit(image=PNG, prompt="give the fox a hat", **kwargs)]
    return client.images.edit(image=PNG, prompt="give the fox a hat", **kwargs)


@pytest_twisted.ensureDeferred
async def test_an_image_edit_is_metered_from_its_form_streamed_or_not(reactor: Any, tmp_path: Path, upstream: Any) -> None:
    (tmp_path / "budgets.json").write_text(json.dumps({"budgets": [{"team": "art", "monthly_limit": 0.05, "action": "block"}]}))
    proxy = start_proxy(reactor, tmp_path, upstream.url)
    try:
        image = await in_thread(edit, proxy.url + "/v1", model="gpt-image-1.5", size="1024x1024", quality="medium")
        assert image.usage.input_tokens == 346
        kinds = await in_thread(edit, proxy.url + "/v1", model="gpt-image-1.5", stream=True, partial_images=2)
        assert kinds == ["image_edit.partial_image"] * 2 + ["image_edit.completed"]
        with pytest.raises(openai.RateLimitError):  # high quality's bound is over the team's limit
            await in_thread(edit, proxy.url + "/v1", model="gpt-image-1.5", quality="high", size="1024x1024",
                            extra_headers={"X-ModelTrack-Team": "art"})
        await proxy.flushed()
    finally:
        await proxy.service.stopService()
    plain, streamed, refused = proxy.events()
    assert plain["endpoint"] == "/v1/images/edits" and plain["model"] == "gpt-image-1.5" and plain["route_class"] == "metered"
    assert plain["usage"] == {"input_tokens": 346, "output_tokens": 1056, "input_image_tokens": 323, "output_image_tokens": 1056}
    assert Decimal(str(plain["cost_usd"])) == GPT_IMAGE_15_EDIT
    assert streamed["streaming"] and streamed["cost_usd"] == plain["cost_usd"]
    assert refused["outcome"] == "rejected" and refused["team"] == "art"
    forwarded = [seen for seen in upstream.resource.seen if seen.path == b"/v1/images/edits"]
    assert len(forwarded) == 2 and PNG[1] in forwarded[0].body  # the form's bytes, untouched
