"""
Fault suite: an upstream that misbehaves at the TCP level. Each call ends with one event
of the right outcome, what the client gets says what happened, and the proxy serves on.
Run on both paths (the fast path parses responses itself).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import endpoints

from tests import rawhttp
from tests.conftest import start_proxy
from tests.rawupstream import OVERLOADED, RATE_LIMITED, MisbehavingFactory
from tests.test_sdk import in_thread

# model → (outcome, what the client sees: a status, or None for a cut connection)
FAULTS = {
    "reset-mid-stream": ("upstream_unreachable", None),
    "garbage-sse": ("ok", 200),
    "no-headers": ("upstream_timeout", 504),
    "silent-after-headers": ("upstream_timeout", None),
    "short-body": ("upstream_unreachable", None),
    "bad-status-line": ("upstream_unreachable", 502),
    "rate-limited": ("upstream_error", 429),
    "overloaded": ("upstream_error", 529),
}


@pytest.mark.parametrize("fast_path", [True, False], ids=["fast-path", "public-api"])
@pytest_twisted.ensureDeferred
async def test_each_upstream_fault_ends_in_one_event_and_the_proxy_serves_on(
    reactor: Any, tmp_path: Path, fast_path: bool
) -> None:
    factory = MisbehavingFactory()
    port = await endpoints.TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(factory)
    url = f"http://127.0.0.1:{port.getHost().port}"
    proxy = start_proxy(reactor, tmp_path, url, headers_timeout=0.3, idle_timeout=0.3, fast_path=fast_path)
    proxy_port = proxy.service.ports[0].getHost().port
    try:
        for model, (outcome, status) in [*FAULTS.items(), ("fine", ("ok", 200))]:
            body = json.dumps({"model": model, "messages": [], "stream": model.endswith("sse") or "stream" in model}).encode()
            answer = await in_thread(rawhttp.exchange, proxy_port, rawhttp.post(b"/v1/chat/completions", body))
            await proxy.service.resource.drain(5)
            await proxy.flushed()
            event = proxy.events()[-1]
            assert event["requested_model"] == model
            assert event["outcome"] == outcome, model
            if status is None:
                # A cut, not an end: no chunked body's last chunk, or a body short of its length.
                assert not answer.endswith(b"0\r\n\r\n"), model
            else:
                assert rawhttp.status_of(answer) == status, (model, answer[:60])
            if model == "rate-limited":
                assert answer.endswith(RATE_LIMITED) and b"429 Too Many Requests" in answer
            if model == "overloaded":
                assert answer.endswith(OVERLOADED) and b"529 Site Overloaded" in answer
            health = await in_thread(rawhttp.exchange, proxy_port, b"GET /healthz HTTP/1.1\r\nHost: p\r\nConnection: close\r\n\r\n")
            assert rawhttp.status_of(health) == 200
        assert len(proxy.events()) == len(FAULTS) + 1
        assert proxy.events()[-1]["priced"] is True
    finally:
        await proxy.service.stopService()
        await port.stopListening()
