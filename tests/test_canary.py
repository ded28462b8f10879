"""
Keys never reach the disk or the log: unique fake keys go through every route and every
failure outcome, then every file under the data dir and every log event is searched.
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import anthropic
import openai
import pytest_twisted
from twisted.logger import formatEvent, globalLogPublisher

from tests.conftest import start_proxy
from tests.test_sdk import in_thread

OPENAI_CANARY = "sk-canary-openai-7f3a9c21e5"
ANTHROPIC_CANARY = "sk-ant-canary-b8e4d06f19"
BEARER_CANARY = "canary-bearer-52d1aa"


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest_twisted.ensureDeferred
async def test_no_key_reaches_disk_or_log(reactor: Any, tmp_path: Path, upstream: Any) -> None:
    logged: list[str] = []

    def observe(event: dict[str, Any]) -> None:
        logged.append(repr(event))
        logged.append(formatEvent(event) or "")

    globalLogPublisher.addObserver(observe)
    proxy = start_proxy(
        reactor,
        tmp_path,
        upstream.url,
        anthropic_url=f"http://127.0.0.1:{closed_port()}",
        headers_timeout=0.5,
        max_body=4096,
    )
    reachable = start_proxy(reactor, tmp_path / "second", upstream.url)
    try:
        oai = openai.OpenAI(base_url=proxy.url + "/v1", api_key=OPENAI_CANARY, max_retries=0)
        ant = anthropic.Anthropic(base_url=reachable.url, api_key=ANTHROPIC_CANARY, max_retries=0)
        ant_down = anthropic.Anthropic(base_url=proxy.url, auth_token=BEARER_CANARY, max_retries=0)
        user = [{"role": "user", "content": "hi"}]
        outcomes: list[str] = []

        def attempt(f: Any, *args: Any, **kwargs: Any) -> None:
            try:
                result = f(*args, **kwargs)
                if hasattr(result, "__iter__") and not isinstance(result, (dict, list)):
                    list(result)
            except (openai.APIError, anthropic.APIError) as e:
                outcomes.append(type(e).__name__)

        def calls() -> None:
            attempt(oai.chat.completions.create, model="gpt-4o", messages=user)
            attempt(oai.chat.completions.create, model="gpt-4o", messages=user, stream=True)
            attempt(oai.completions.create, model="gpt-3.5-turbo-instruct", prompt="hi")
            attempt(oai.responses.create, model="gpt-4o", input="hi", stream=True)
            attempt(oai.embeddings.create, model="text-embedding-3-small", input="hi")
            attempt(oai.models.list)
            attempt(oai.chat.completions.create, model="fail-429", messages=user)
            attempt(oai.chat.completions.create, model="stream-error", messages=user, stream=True)
            attempt(oai.chat.completions.create, model="hang", messages=user)  # 504
            attempt(oai.chat.completions.create, model="gpt-4o", messages=[{"role": "user", "content": "x" * 5000}])  # 413
            stream = oai.chat.completions.create(model="hang-body", messages=user, stream=True)
            next(iter(stream))
            stream.close()  # client_closed
            attempt(ant.messages.create, model="claude-sonnet-4-5", max_tokens=5, messages=user)
            attempt(ant.messages.count_tokens, model="claude-sonnet-4-5", messages=user)
            attempt(ant.models.list)
            attempt(ant_down.messages.create, model="claude-sonnet-4-5", max_tokens=5, messages=user)  # 502
            attempt(oai.post, "/chat/completions", content=b"{not json", cast_to=object)  # 400

        await in_thread(calls)
        assert "InternalServerError" in outcomes and "RateLimitError" in outcomes
        await proxy.flushed()
        await reachable.flushed()
        seen = {e["outcome"] for e in proxy.events() + reachable.events()}
        assert seen >= {"ok", "upstream_error", "stream_error", "upstream_timeout", "upstream_unreachable", "client_closed", "rejected"}
    finally:
        for running in (proxy, reachable):
            await running.service.stopService()
        globalLogPublisher.removeObserver(observe)
    canaries = [OPENAI_CANARY, ANTHROPIC_CANARY, BEARER_CANARY]
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert files, "nothing was written"
    for path in files:
        data = path.read_bytes()
        for canary in canaries:
            assert canary.encode() not in data, f"{canary} in {path}"
    assert any("/v1/chat/completions" in line for line in logged), "the access log was not captured"
    for line in logged:
        for canary in canaries:
            assert canary not in line
