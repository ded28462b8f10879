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

from modeltrack.ops.options import Settings
from modeltrack.ops.service import ModeltrackService
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


def test_a_twisted_without_the_fast_path_s_internals_gets_the_public_api(
    reactor: Any, tmp_path: Path, monkeypatch: Any
) -> None:
    from twisted.logger import formatEvent, globalLogPublisher

    from modeltrack.web import fastpath

    assert fastpath.missing(reactor) == []  # this Twisted has them all
    monkeypatch.setattr(fastpath, "missing", lambda reactor: ["tcp.Connection._tempDataBuffer"])
    logged: list[str] = []
    observe = lambda event: logged.append(formatEvent(event) or "")  # noqa: E731
    globalLogPublisher.addObserver(observe)
    try:
        settings = Settings(
            listen=("tcp:0:interface=127.0.0.1",), data_dir=tmp_path, urls={"openai": "http://127.0.0.1:9", "anthropic": "http://127.0.0.1:9"}
        )
        service = ModeltrackService(settings, reactor)
    finally:
        globalLogPublisher.removeObserver(observe)
    assert service.fast_path is False and service.site.fast_path is False
    [warning] = [line for line in logged if "fast path" in line]
    assert "tcp.Connection._tempDataBuffer" in warning and "public API" in warning
    from twisted.web.client import Agent

    assert all(type(upstream.agent) is Agent for upstream in service.resource.upstreams.values())


def test_no_fast_path_is_an_option() -> None:
    from modeltrack.ops.options import Options

    options = Options()
    options.parseOptions(["--no-fast-path", "--admin-listen", "none"])
    assert options.settings.fast_path is False
    options = Options()
    options.parseOptions(["--admin-listen", "none"])
    assert options.settings.fast_path is True


def test_parts_stop_in_reverse_order_one_after_another_and_a_failure_stops_none_of_the_rest() -> None:
    from twisted.internet.defer import Deferred, fail

    from modeltrack.ops.steps import InOrder, Step

    stopped: list[str] = []
    slow: Deferred[None] = Deferred()

    def stop(name: str, result: object = None) -> Any:
        def f() -> object:
            stopped.append(name)
            return result

        return f

    parent = InOrder()
    Step("first", stop=stop("first")).setServiceParent(parent)
    Step("broken", stop=stop("broken", fail(RuntimeError("boom")))).setServiceParent(parent)
    Step("slow", stop=stop("slow", slow)).setServiceParent(parent)
    parent.startService()
    done = parent.stopService()
    assert stopped == ["slow"] and not done.called  # the next waits for the slow one
    slow.callback(None)
    assert stopped == ["slow", "broken", "first"] and done.called
    assert not parent.running
