"""
Under C{--fsync always} an answer is not complete to its client until its event is on
disk (issue 12, defect 3): in memory, with the journal's sync in the test's hands.
"""

from __future__ import annotations

import json

from tests.fakes import CHAT_USAGE, chat_stream
from tests.memory import FakeResponse, Harness, body_of, status_of

CHAT = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}
STREAM = {**CHAT, "stream": True, "stream_options": {"include_usage": True}}


def durable_harness() -> Harness:
    h = Harness()
    h.journal.holds_answers = True
    return h


def test_a_body_s_last_chunk_and_its_end_wait_for_the_event() -> None:
    h = durable_harness()
    _, transport = h.send("POST", "/v1/chat/completions", CHAT)
    body = json.dumps({"model": "gpt-4o-2024-08-06", "choices": [], "usage": CHAT_USAGE}).encode()
    response = FakeResponse(200, {b"content-type": b"application/json"})
    response.length = len(body)
    h.agent.calls[0].deferred.callback(response)
    response.send(body[:20], body[20:])
    assert transport.value().endswith(body[:20])  # the first chunk went on
    response.end()
    assert len(h.journal.lines) == 1  # recorded...
    assert not transport.value().endswith(body)  # ...but not yet on disk: the end waits
    assert h.resource.in_flight
    h.journal.sync()
    assert body_of(transport) == body and status_of(transport) == 200
    assert not h.resource.in_flight


def test_a_stream_s_end_marker_waits_for_the_event() -> None:
    h = durable_harness()
    _, transport = h.send("POST", "/v1/chat/completions", STREAM)
    response = FakeResponse(200, {b"content-type": b"text/event-stream"})
    h.agent.calls[0].deferred.callback(response)
    chunks = chat_stream("gpt-4o-2024-08-06", include_usage=True)
    response.send(*chunks[:-1])
    before_done = transport.value()
    assert b"[DONE]" not in before_done and b'"usage"' in before_done  # streamed at once
    response.send(chunks[-1])
    response.end()
    assert b"[DONE]" not in transport.value()
    h.journal.sync()
    assert body_of(transport).endswith(b"data: [DONE]\n\n")
    assert transport.value().endswith(b"0\r\n\r\n")


def test_an_error_of_the_proxy_s_own_waits_for_its_event() -> None:
    h = durable_harness()
    _, transport = h.send("POST", "/v1/chat/completions", b"{not json")
    assert len(h.journal.lines) == 1
    assert not transport.value().endswith(b"0\r\n\r\n")
    h.journal.sync()
    assert status_of(transport) == 400 and transport.value().endswith(b"0\r\n\r\n")


def test_a_stop_that_cannot_wait_cuts_an_answer_whose_event_is_not_on_disk() -> None:
    h = durable_harness()
    _, transport = h.send("POST", "/v1/chat/completions", b"{not json")
    d = h.resource.drain(5)
    h.clock.advance(5)
    assert d.called and transport.disconnecting
    h.journal.sync()  # late: nothing more is written to a cut connection
    assert not transport.value().endswith(b"0\r\n\r\n")


def test_without_always_nothing_waits() -> None:
    h = Harness()
    _, transport = h.send("POST", "/v1/chat/completions", b"{not json")
    assert transport.value().endswith(b"0\r\n\r\n") and h.journal.syncs == []


def test_a_client_gone_before_its_held_end_marker_was_sent_did_not_complete() -> None:
    from twisted.internet.error import ConnectionDone
    from twisted.python.failure import Failure

    h = durable_harness()
    channel, transport = h.send("POST", "/v1/chat/completions", STREAM)
    response = FakeResponse(200, {b"content-type": b"text/event-stream"})
    h.agent.calls[0].deferred.callback(response)
    response.send(*chat_stream("gpt-4o-2024-08-06", include_usage=True))  # [DONE] held
    channel.connectionLost(Failure(ConnectionDone()))
    [event] = h.journal.events()
    assert event["outcome"] == "client_closed"


def test_a_call_s_phases_in_order() -> None:
    from modeltrack.web.proxy import Phase

    h = durable_harness()
    h.send("POST", "/v1/chat/completions", STREAM)
    [exchange] = h.resource.in_flight
    assert exchange.phase is Phase.FORWARDED
    response = FakeResponse(200, {b"content-type": b"text/event-stream"})
    h.agent.calls[0].deferred.callback(response)
    assert exchange.phase is Phase.STREAMING
    response.send(*chat_stream("gpt-4o-2024-08-06", include_usage=True))
    response.end()
    assert exchange.phase is Phase.ENDING  # its answer held until its event is on disk
    h.journal.sync()
    assert exchange.phase is Phase.ENDED and not h.resource.in_flight
