"""
Regression tests for the defects a fault and hostile-input run found (issue 12): each
drives the real proxy over real sockets and fails on the code before its fix.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest_twisted
from twisted.logger import formatEvent, globalLogPublisher

from tests import rawhttp
from tests.test_sdk import in_thread

SECRET = b"sk-SECRET-in-the-query-93b1"
CHAT = json.dumps({"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}).encode()


class LogCapture:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def __call__(self, event: dict[str, Any]) -> None:
        self.lines.append(repr(event))
        self.lines.append(formatEvent(event) or "")

    def __enter__(self) -> "LogCapture":
        globalLogPublisher.addObserver(self)
        return self

    def __exit__(self, *exc: object) -> None:
        globalLogPublisher.removeObserver(self)


def port_of(proxy: Any) -> int:
    return proxy.service.ports[0].getHost().port


@pytest_twisted.ensureDeferred
async def test_a_target_with_a_byte_no_upstream_takes_is_refused_before_anything(proxy: Any, upstream: Any) -> None:
    with LogCapture() as logged:
        target = b"/v1/chat/completions?key=" + SECRET + b"&x=\x7f"
        answer = await in_thread(rawhttp.exchange, port_of(proxy), rawhttp.post(target, CHAT))
        await proxy.flushed()
    assert rawhttp.status_of(answer) == 400
    assert SECRET not in answer
    assert b"visible ASCII" in answer
    assert upstream.resource.seen == []
    [event] = proxy.events()
    assert event["outcome"] == "rejected" and event["status_code"] == 400
    for line in logged.lines:
        assert SECRET.decode() not in line
    # Unmetered and unknown routes are refused the same way, without an event.
    for target in (b"/v1/models?key=" + SECRET + b"\x7f", b"/nowhere/" + SECRET + b"\x7f"):
        request = b"GET " + target + b" HTTP/1.1\r\nHost: p\r\nConnection: close\r\n\r\n"
        answer = await in_thread(rawhttp.exchange, port_of(proxy), request)
        assert rawhttp.status_of(answer) == 400 and SECRET not in answer


@pytest_twisted.ensureDeferred
async def test_no_path_or_error_text_in_a_404_or_502(proxy: Any, tmp_path: Path) -> None:
    answer = await in_thread(rawhttp.exchange, port_of(proxy), rawhttp.post(b"/v1/" + SECRET, CHAT))
    assert rawhttp.status_of(answer) == 404 and SECRET not in answer
