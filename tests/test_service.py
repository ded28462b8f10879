"""
The service's stop: stop accepting, let in-flight calls finish (bounded), then flush the
event log, so a graceful stop loses nothing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import openai
import pytest_twisted
from twisted.internet.threads import deferToThread

from tests.conftest import start_proxy


def open_stream(proxy: Any) -> Any:
    client = openai.OpenAI(base_url=proxy.url + "/v1", api_key="sk-x", max_retries=0)
    stream = client.chat.completions.create(model="hang-body", messages=[{"role": "user", "content": "hi"}], stream=True)
    chunks = iter(stream)
    first = next(chunks)
    return chunks, first


@pytest_twisted.ensureDeferred
async def test_stop_lets_a_stream_finish(reactor: Any, tmp_path: Path, upstream: Any) -> None:
    proxy = start_proxy(reactor, tmp_path, upstream.url, drain_seconds=30)
    chunks, first = await deferToThread(open_stream, proxy)
    assert first.choices[0].delta.role == "assistant"
    stopped = proxy.service.stopService()
    assert not proxy.service.readiness.listening
    assert not stopped.called  # waiting for the stream
    request, rest = upstream.resource.open_requests[0]
    for chunk in rest:
        request.write(chunk)
    request.finish()
    remaining = await deferToThread(list, chunks)
    assert "".join(c.choices[0].delta.content or "" for c in remaining) == "Hello world"
    await stopped
    [event] = proxy.events()
    assert event["outcome"] == "ok" and event["usage_complete"] is True


@pytest_twisted.ensureDeferred
async def test_stop_aborts_what_outlives_the_drain(reactor: Any, tmp_path: Path, upstream: Any) -> None:
    proxy = start_proxy(reactor, tmp_path, upstream.url, drain_seconds=0)
    chunks, _ = await deferToThread(open_stream, proxy)
    await proxy.service.stopService()
    [event] = proxy.events()
    assert event["outcome"] == "shutdown"
    try:
        await deferToThread(list, chunks)
    except openai.APIError:
        pass  # the client sees a cut stream
