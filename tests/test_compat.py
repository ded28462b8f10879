"""
OpenAI-compatible upstreams named by the operator (--upstream NAME=URL), driven by the
official OpenAI SDK: served under /NAME/v1, recorded as provider NAME, priced by
genai-prices' provider of that id or by pricing.json, and a stream without usage is
unpriced, never $0.
"""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import genai_prices
import openai
import pytest
import pytest_twisted
from twisted.internet import endpoints

from modeltrack.ops.checks import check_upstreams
from modeltrack.ops.settings import ConfigError
from tests.conftest import QuietSite, start_proxy
from tests.fakes import FakeUpstream
from tests.test_sdk import in_thread

USER = [{"role": "user", "content": "hi"}]


@pytest_twisted.ensureDeferred
async def test_compatible_upstreams_by_name(reactor: Any, tmp_path: Path, upstream: Any) -> None:
    vllm = FakeUpstream(ignores_stream_options=True)
    port = await endpoints.TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(QuietSite(vllm))
    vllm_url = f"http://127.0.0.1:{port.getHost().port}"
    # A model of one's own, declared free: cost 0 and priced, not unpriced.
    (tmp_path / "pricing.json").write_text(json.dumps({"models": {"my-llama": {"input_mtok": 0, "output_mtok": 0}}}))
    proxy = start_proxy(reactor, tmp_path, upstream.url, upstreams=(("groq", upstream.url), ("vllm", vllm_url)))
    try:
        groq = openai.OpenAI(base_url=proxy.url + "/groq/v1", api_key="gsk-test", max_retries=0)
        local = openai.OpenAI(base_url=proxy.url + "/vllm/v1", api_key="none", max_retries=0)

        def calls() -> None:
            groq.chat.completions.create(model="llama-3.3-70b-versatile", messages=USER)
            list(groq.chat.completions.create(model="llama-3.3-70b-versatile", messages=USER, stream=True))
            local.chat.completions.create(model="my-llama", messages=USER)
            list(local.chat.completions.create(model="my-llama", messages=USER, stream=True))  # no usage comes
            local.models.list()

        await in_thread(calls)
        await proxy.flushed()
    finally:
        await proxy.service.stopService()
        await port.stopListening()
    events = proxy.events()
    assert [(e["provider"], e["streaming"]) for e in events] == [("groq", False), ("groq", True), ("vllm", False), ("vllm", True)]
    usage = genai_prices.Usage(input_tokens=1200, cache_read_tokens=1024, output_tokens=300)
    expected = genai_prices.calc_price(usage, "llama-3.3-70b-versatile", provider_id="groq").total_price
    for event in events[:2]:
        assert Decimal(str(event["cost_usd"])) == expected and event["price_source"] == "genai-prices"
    assert events[2]["cost_usd"] == 0 and events[2]["priced"] is True and events[2]["price_source"] == "pricing.json"
    assert events[3]["usage_complete"] is False and events[3]["cost_usd"] is None and events[3]["priced"] is False
    # Each call under /vllm/ reached vLLM, and nothing else did.
    assert [(s.method, s.path) for s in vllm.seen] == [
        (b"POST", b"/v1/chat/completions"), (b"POST", b"/v1/chat/completions"), (b"GET", b"/v1/models"),
    ]


def test_upstream_names_are_checked() -> None:
    assert check_upstreams(("groq=https://api.groq.com/openai",)) == (("groq", "https://api.groq.com/openai"),)
    for bad, problem in [
        ("groq", "NAME=URL"),
        ("Groq=https://x", "NAME=URL"),
        ("openai=https://x", "built-in"),
    ]:
        with pytest.raises(ConfigError, match=problem):
            check_upstreams((bad,))
    with pytest.raises(ConfigError, match="twice"):
        check_upstreams(("a=https://x", "a=https://y"))
    with pytest.raises(ConfigError, match="http"):
        check_upstreams(("a=ftp://x",))


@pytest_twisted.ensureDeferred
async def test_a_compatible_upstream_is_reached_only_by_its_prefix(reactor: Any, tmp_path: Path, upstream: Any) -> None:
    from tests import rawhttp

    other = FakeUpstream()
    port = await endpoints.TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(QuietSite(other))
    proxy = start_proxy(reactor, tmp_path, upstream.url, upstreams=(("vllm", f"http://127.0.0.1:{port.getHost().port}"),))
    try:
        body = json.dumps({"model": "gpt-4o", "messages": USER}).encode()
        proxy_port = proxy.service.ports[0].getHost().port
        await in_thread(rawhttp.exchange, proxy_port, rawhttp.post(b"/v1/chat/completions", body))
        await in_thread(rawhttp.exchange, proxy_port, b"GET /v1/models HTTP/1.1\r\nHost: p\r\nConnection: close\r\n\r\n")
        files = await in_thread(rawhttp.exchange, proxy_port, b"GET /vllm/v1/files HTTP/1.1\r\nHost: p\r\nConnection: close\r\n\r\n")
        assert rawhttp.status_of(files) == 404  # only the five OpenAI routes are served
        await proxy.flushed()
    finally:
        await proxy.service.stopService()
        await port.stopListening()
    assert other.seen == [] and len(upstream.resource.seen) == 2
    assert [e["provider"] for e in proxy.events()] == ["openai"]
