"""
Gemini and Vertex AI through the proxy as users call them: C{google.genai.Client} for the
Gemini API and for Vertex, C{AnthropicVertex} for Claude on Vertex; streamed and not,
against a fake Google whose streams report cumulative usage.
"""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import anthropic
import pytest
import pytest_twisted
import treq
from genai_prices import Usage as PriceUsage
from genai_prices import calc_price
from google import genai
from google.genai import types
from google.oauth2.credentials import Credentials
from twisted.logger import globalLogPublisher

from modeltrack.controls.keys import fingerprint, install_secret
from tests.conftest import serving, start_proxy
from tests.fake_google import FakeGoogle
from tests.test_sdk import SONNET_COST, in_thread

KEY = "AIzaSy-CANARY-gemini-0001"
TOKEN = "ya29.CANARY-vertex-token-0002"
#: GEMINI_USAGE normalised: input includes tool-use prompt tokens; output includes thoughts.
INPUT, CACHED, OUTPUT = 1200 + 16, 1024, 300 + 64


def list_price(model: str) -> Decimal:
    usage = PriceUsage(input_tokens=INPUT, cache_read_tokens=CACHED, output_tokens=OUTPUT)
    return Decimal(calc_price(usage, model, provider_id="google").total_price)


@pytest.fixture
def google(reactor: Any) -> Any:
    yield from serving(reactor, FakeGoogle())


def everything_written(data_dir: Path, logged: list[dict[str, Any]]) -> bytes:
    files = b"".join(p.read_bytes() for p in data_dir.rglob("*") if p.is_file())
    return files + repr(logged).encode()


@pytest_twisted.ensureDeferred
async def test_gemini_streamed_and_not_costs_the_same(reactor: Any, tmp_path: Path, google: Any) -> None:
    logged: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(logged.append)
    proxy = start_proxy(reactor, tmp_path, "http://127.0.0.1:9", gemini_url=google.url, vertex_url=google.url)
    client = genai.Client(api_key=KEY, http_options={"base_url": proxy.url + "/gemini"})

    def calls() -> list[str]:
        answer = client.models.generate_content(model="gemini-2.5-flash", contents="hi")
        streamed = "".join(part.text for part in client.models.generate_content_stream(model="gemini-2.5-flash", contents="hi"))
        counted = client.models.count_tokens(model="gemini-2.5-flash", contents="hi").total_tokens
        try:
            client.models.generate_content(model="fail-429", contents="hi")
        except genai.errors.ClientError as e:
            refused = e.status
        return [answer.text, streamed, counted, refused]

    try:
        assert await in_thread(calls) == ["Hello world", "Hello world", 42, "RESOURCE_EXHAUSTED"]
        # A key in the query string, as some clients send it.
        response = await treq.post(
            f"{proxy.url}/gemini/v1beta/models/gemini-2.5-flash:generateContent?key={KEY}-query",
            data=json.dumps({"contents": [{"parts": [{"text": "hi"}]}]}).encode(),
            headers={"Content-Type": "application/json"},
        )
        assert response.code == 200
        await response.content()
        # A stream as one JSON array (no alt=sse): metered once it has ended.
        response = await treq.post(
            f"{proxy.url}/gemini/v1beta/models/gemini-2.5-flash:streamGenerateContent",
            data=json.dumps({"contents": [{"parts": [{"text": "hi"}]}]}).encode(),
            headers={"Content-Type": "application/json", "x-goog-api-key": KEY},
        )
        assert len(json.loads(await response.content())) == 3
    finally:
        await proxy.service.stopService()
        globalLogPublisher.removeObserver(logged.append)
    plain, streamed, failed, queried, arrayed = proxy.events()  # countTokens is relayed: no event
    assert arrayed["streaming"] is True
    for event in (plain, streamed, queried, arrayed):
        assert (event["provider"], event["model"], event["outcome"], event["usage_complete"]) == (
            "google", "gemini-2.5-flash", "ok", True
        )
        # Cumulative usage: the last report, not the sum of three.
        assert (event["input_tokens"], event["cache_read_tokens"], event["output_tokens"]) == (INPUT, CACHED, OUTPUT)
        assert Decimal(str(event["cost_usd"])) == list_price("gemini-2.5-flash")
    assert streamed["streaming"] is True
    version, route = streamed["endpoint"].split("/", 2)[1:]
    assert version in ("v1", "v1beta") and route == "models/{model}:streamGenerateContent"
    assert (failed["outcome"], failed["error_type"]) == ("upstream_error", "RESOURCE_EXHAUSTED")
    secret = install_secret(tmp_path / "state")
    assert plain["key_id"] == fingerprint(secret, KEY.encode())
    assert queried["key_id"] == fingerprint(secret, f"{KEY}-query".encode())
    assert google.seen[0].header(b"x-goog-api-key") == [KEY.encode()]
    assert google.seen[-2].path.endswith(f"?key={KEY}-query".encode())  # forwarded as it came
    assert KEY.encode() not in everything_written(tmp_path, logged)


@pytest_twisted.ensureDeferred
async def test_vertex_gemini_and_claude(reactor: Any, tmp_path: Path, google: Any) -> None:
    proxy = start_proxy(reactor, tmp_path, "http://127.0.0.1:9", gemini_url=google.url, vertex_url=google.url)
    gemini = genai.Client(
        vertexai=True, project="acme-prod", location="us-central1", credentials=Credentials(token=TOKEN),
        http_options={"base_url": proxy.url + "/vertex"},
    )
    claude = anthropic.AnthropicVertex(
        region="us-east5", project_id="acme-prod", access_token=TOKEN, base_url=proxy.url + "/vertex/v1", max_retries=0
    )

    def calls() -> list[str]:
        texts = [gemini.models.generate_content(model="gemini-2.5-flash", contents="hi").text]
        texts.append("".join(p.text for p in gemini.models.generate_content_stream(model="gemini-2.5-flash", contents="hi")))
        texts.append(claude.messages.create(model="claude-sonnet-4-5@20250929", max_tokens=50, messages=[
            {"role": "user", "content": "hi"}
        ]).content[0].text)
        with claude.messages.stream(model="claude-sonnet-4-5@20250929", max_tokens=50, messages=[
            {"role": "user", "content": "hi"}
        ]) as stream:
            texts.append(stream.get_final_text())
        return texts

    try:
        assert await in_thread(calls) == ["Hello world"] * 4
    finally:
        await proxy.service.stopService()
    gemini_plain, gemini_streamed, claude_plain, claude_streamed = proxy.events()
    for event in (gemini_plain, gemini_streamed):
        assert (event["provider"], event["model"]) == ("vertex", "gemini-2.5-flash")
        assert Decimal(str(event["cost_usd"])) == list_price("gemini-2.5-flash")
    assert gemini_plain["endpoint"].endswith("/publishers/google/models/{model}:generateContent")
    assert "acme-prod" not in gemini_plain["endpoint"]
    for event in (claude_plain, claude_streamed):
        assert (event["provider"], event["requested_model"]) == ("vertex", "claude-sonnet-4-5@20250929")
        assert Decimal(str(event["cost_usd"])) == SONNET_COST
        assert event["usage_complete"] is True
    assert claude_streamed["streaming"] is True
    assert all(seen.header(b"authorization") == [f"Bearer {TOKEN}".encode()] for seen in google.seen)
    assert TOKEN.encode() not in b"".join(p.read_bytes() for p in tmp_path.rglob("*") if p.is_file())


@pytest_twisted.ensureDeferred
async def test_the_cache_never_answers_one_gemini_key_with_anothers_call(reactor: Any, tmp_path: Path, google: Any) -> None:
    proxy = start_proxy(reactor, tmp_path, "http://127.0.0.1:9", gemini_url=google.url, vertex_url=google.url, cache=True)
    body = json.dumps({"contents": [{"parts": [{"text": "hi"}]}], "generationConfig": {"temperature": 0}}).encode()
    url = f"{proxy.url}/gemini/v1beta/models/gemini-2.5-flash:generateContent"

    async def ask(query: str = "", key: str | None = None) -> str:
        headers = {"Content-Type": "application/json", **({"x-goog-api-key": key} if key else {})}
        response = await treq.post(url + query, data=body, headers=headers)
        await response.content()
        return response.headers.getRawHeaders("x-modeltrack-cache", ["-"])[0]

    try:
        assert await ask(key="AIza-tenant-one") == "MISS"
        assert await ask(key="AIza-tenant-one") == "HIT"
        assert await ask(key="AIza-tenant-two") == "MISS"  # another key: never the first one's answer
        assert await ask(query="?key=AIza-tenant-three") == "MISS"  # a key in the query is a tenant too
        assert await ask(query="?key=AIza-tenant-three") == "HIT"
        sampled = json.dumps({"contents": [{"parts": [{"text": "hi"}]}]}).encode()  # default temperature: 1
        response = await treq.post(url, data=sampled, headers={"x-goog-api-key": "AIza-tenant-one"})
        await response.content()
        assert response.headers.getRawHeaders("x-modeltrack-cache") is None  # not cacheable
    finally:
        await proxy.service.stopService()


@pytest_twisted.ensureDeferred
async def test_veo_is_priced_per_second_of_video_from_pricing_json(reactor: Any, tmp_path: Path, google: Any) -> None:
    """
    One event per operation, priced by its request (durationSeconds x sampleCount) at
    pricing.json's rate; polled, it is relayed with no event; a model with no rate is
    unpriced with a note, never $0.
    """
    (tmp_path / "pricing.json").write_text(json.dumps({"models": {"veo-3.0-generate-001": {"video_second": 0.4}}}))
    proxy = start_proxy(reactor, tmp_path, "http://127.0.0.1:9", gemini_url=google.url, vertex_url=google.url)
    vertex = genai.Client(vertexai=True, project="acme-prod", location="us-central1", credentials=Credentials(token=TOKEN),
                          http_options={"base_url": proxy.url + "/vertex"})

    def on_vertex() -> bool:
        config = types.GenerateVideosConfig(number_of_videos=2, duration_seconds=6)
        operation = vertex.models.generate_videos(model="veo-3.0-generate-001", prompt="a fox", config=config)
        return bool(vertex.operations.get(operation).done)

    gemini = proxy.url + "/gemini/v1beta/models/"
    headers = {"x-goog-api-key": KEY, "content-type": "application/json"}
    try:
        # The Gemini API's REST calls (google-genai sends Veo calls to Vertex only).
        body = {"instances": [{"prompt": "a fox in the snow"}], "parameters": {"sampleCount": 2, "durationSeconds": 6}}
        started = await treq.post(gemini + "veo-3.0-generate-001:predictLongRunning", json=body, headers=headers)
        name = (await started.json())["name"]
        polled = await treq.get(proxy.url + "/gemini/v1beta/" + name, headers=headers)
        assert (await polled.json())["done"] is True
        plain = {"instances": [{"prompt": "a fox"}]}
        await (await treq.post(gemini + "veo-2.0-generate-001:predictLongRunning", json=plain, headers=headers)).text()
        assert await in_thread(on_vertex)
        await proxy.flushed()
    finally:
        await proxy.service.stopService()
    veo3, veo2, on_vertex = proxy.events()  # polling left none
    assert veo3["endpoint"] == "/v1beta/models/{model}:predictLongRunning" and veo3["model"] == "veo-3.0-generate-001"
    assert veo3["usage"] == {"video_seconds": 12} and Decimal(str(veo3["cost_usd"])) == Decimal("4.8")
    assert veo3["price_source"] == "pricing.json" and veo3["route_class"] == "metered"
    assert veo2["usage"] == {"video_seconds": 8} and veo2["cost_usd"] is None and "video_second" in veo2["price_note"]
    assert on_vertex["provider"] == "vertex" and Decimal(str(on_vertex["cost_usd"])) == Decimal("4.8")
