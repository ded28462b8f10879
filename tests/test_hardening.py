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

    def __enter__(self) -> LogCapture:
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


def _strict_json(line: str) -> Any:
    def refuse(name: str) -> None:
        raise ValueError(f"{name} in an event line")

    return json.loads(line, parse_constant=refuse)


@pytest_twisted.ensureDeferred
async def test_absurd_usage_is_unreadable_not_priced_and_the_index_survives(proxy: Any) -> None:
    import anthropic
    import openai

    from modeltrack.store import index

    oai = openai.OpenAI(base_url=proxy.url + "/v1", api_key="sk-test", max_retries=0)
    ant = anthropic.Anthropic(base_url=proxy.url, api_key="sk-ant-test", max_retries=0)
    user = [{"role": "user", "content": "hi"}]

    def calls() -> None:
        oai.chat.completions.create(model="huge-usage", messages=user)
        oai.chat.completions.create(model="vast-usage", messages=user)
        with ant.messages.stream(model="huge-usage", max_tokens=5, messages=user) as stream:
            list(stream)
        oai.chat.completions.create(model="gpt-4o", messages=user)

    await in_thread(calls)
    await proxy.flushed()
    lines = (proxy.data_dir / "events.jsonl").read_text().split("\n")[:-1]
    events = [_strict_json(line) for line in lines]
    assert [e["requested_model"] for e in events] == ["huge-usage", "vast-usage", "huge-usage", "gpt-4o"]
    for event in events[:3]:
        assert event["usage_complete"] is False
        assert event["cost_usd"] is None and event["priced"] is False
        assert "usage count" in event["usage_error"]
        assert event["outcome"] == "ok"
    assert events[3]["priced"] is True and events[3]["usage_error"] is None
    # The index takes every line (the counts it holds are the readable ones).
    warned: list[str] = []
    db = index.connect(proxy.data_dir)
    assert index.update(db, proxy.data_dir, warn=warned.append) == 4
    assert db.execute("SELECT count(*) FROM events").fetchone() == (4,)
    assert warned == []


def test_the_index_skips_a_line_it_cannot_hold_and_says_where(tmp_path: Path) -> None:
    from modeltrack.store import index

    good = {
        "request_id": "r1", "timestamp": "2026-11-30T00:00:00.000000Z", "provider": "openai",
        "endpoint": "/v1/chat/completions", "outcome": "ok", "input_tokens": 1, "output_tokens": 1,
        "cache_read_tokens": 0, "cache_write_tokens": 0, "reasoning_tokens": 0, "cost_usd": 0.5,
        "priced": True, "latency_ms": 1.0,
    }
    lines = [
        json.dumps(good),
        json.dumps({**good, "request_id": "r2", "input_tokens": 2**64}),
        json.dumps({**good, "request_id": "r3"}).replace("0.5", "Infinity"),
        "not json at all",
        json.dumps({**good, "request_id": "r4"}),
    ]
    text = "\n".join(lines) + "\n"
    (tmp_path / "events.jsonl").write_text(text)
    warned: list[str] = []
    db = index.connect(tmp_path)
    for _ in range(2):  # a second pass finds nothing new and warns of nothing again
        index.update(db, tmp_path, warn=warned.append)
    assert [r for (r,) in db.execute("SELECT request_id FROM events ORDER BY request_id")] == ["r1", "r4"]
    offsets = [text.index(line) for line in lines[1:4]]
    assert db.execute("SELECT offset FROM skipped_lines ORDER BY offset").fetchall() == [(o,) for o in offsets]
    assert len(warned) == 3
    for message, offset in zip(warned, offsets, strict=True):
        assert f"events.jsonl at offset {offset}" in message


@pytest_twisted.ensureDeferred
async def test_labels_lose_every_control_character_and_unicode_line_break(proxy: Any) -> None:
    import unicodedata

    label = "sess" + "\u0085\u2028\u2029\u009b\x7f\t" + "id"
    body = json.dumps({"model": "gpt-4o", "messages": []}).encode()
    header = b"X-ModelTrack-Session-Id: " + label.encode("utf-8") + b"\r\nX-ModelTrack-Team: t\xe2\x80\xa8eam\r\n"
    answer = await in_thread(rawhttp.exchange, port_of(proxy), rawhttp.post(b"/v1/chat/completions", body, header))
    assert rawhttp.status_of(answer) == 200
    await proxy.flushed()
    raw = (proxy.data_dir / "events.jsonl").read_text(encoding="utf-8")
    assert len(raw.splitlines()) == 1  # str.splitlines splits on U+0085, U+2028, U+2029
    [event] = proxy.events()
    assert event["session_id"] == "sessid" and event["team"] == "team"
    for value in (event["session_id"], event["team"]):
        assert not any(unicodedata.category(c) in ("Cc", "Zl", "Zp") for c in value)


@pytest_twisted.ensureDeferred
async def test_a_stream_read_to_its_end_marker_is_ok_whoever_closes_first(proxy: Any, upstream: Any) -> None:
    import anthropic
    import openai

    oai = openai.OpenAI(base_url=proxy.url + "/v1", api_key="sk-test", max_retries=0)
    ant = anthropic.Anthropic(base_url=proxy.url, api_key="sk-ant-test", max_retries=0)
    user = [{"role": "user", "content": "hi"}]

    def calls() -> None:
        # The provider has sent every event but not yet ended its body; the SDKs stop at
        # [DONE] / response.completed and close.
        for _ in range(3):
            list(oai.chat.completions.create(model="late-end", messages=user, stream=True))
        # These SDKs read on to the body's end; a caller may stop at the end marker.
        responses = oai.responses.create(model="late-end", input="hi", stream=True)
        for event in responses:
            if event.type == "response.completed":
                break
        responses.close()
        with ant.messages.stream(model="late-end", max_tokens=5, messages=user) as messages:
            for event in messages:
                if event.type == "message_stop":
                    break
        # Cut before its end marker: still abandoned.
        stream = oai.chat.completions.create(model="hang-body", messages=user, stream=True)
        next(iter(stream))
        stream.close()

    await in_thread(calls)
    await proxy.service.resource.drain(10)
    await proxy.flushed()
    events = proxy.events()
    assert [e["outcome"] for e in events] == ["ok"] * 5 + ["client_closed"]
    assert all(e["usage_complete"] for e in events[:5])


def test_log_lines_carry_no_exception_text_in_either_format() -> None:
    import io

    from twisted.logger import Logger, LogPublisher
    from twisted.python.failure import Failure

    from modeltrack.observe.logs import observer
    from modeltrack.web.site import ProxyRequest

    secret = SECRET.decode()
    for log_format in ("text", "json"):
        out = io.StringIO()
        publisher = LogPublisher(observer(log_format, out))
        log = Logger(namespace="twisted.web.http", observer=publisher)
        try:
            raise RuntimeError(f"Producer was not unregistered for /v1/x?key={secret}")
        except RuntimeError:
            log.failure("", Failure())
        request = ProxyRequest.__new__(ProxyRequest)
        request.method, request.uri = b"HEAD", b"/healthz?key=" + SECRET
        log.info("Warning: HEAD request {slf} is returning a message body.", slf=request)
        text = out.getvalue()
        assert len(text.splitlines()) == 2
        assert secret not in text
        assert "RuntimeError at" in text
        if log_format == "json":
            first = json.loads(text.splitlines()[0])
            assert first["level"] == "critical" and first["error_class"] == "RuntimeError"
