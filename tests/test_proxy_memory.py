"""
The proxy pipeline in memory: real Site and resource, a StringTransport client, a Clock,
and an upstream the test drives chunk by chunk. No sockets, no sleeps.
"""

from __future__ import annotations

import json

from twisted.internet.error import ConnectionDone, ConnectionRefusedError
from twisted.python.failure import Failure
from twisted.web.client import ResponseFailed

from tests.fakes import CHAT_USAGE, chat_stream, messages_stream
from tests.memory import FakeResponse, Harness, body_of, status_of

SSE = {b"content-type": b"text/event-stream"}
JSON = {b"content-type": b"application/json"}
def exchange_timers(h: Harness) -> list[object]:
    """
    Timers the pipeline left behind (the Site's own clock-tick call is not one).
    """
    return [c for c in h.clock.getDelayedCalls() if type(getattr(c.func, "__self__", None)).__name__ in ("Exchange", "Relay")]


CHAT = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}


def test_request_header_hygiene() -> None:
    h = Harness()
    h.send(
        "POST",
        "/v1/chat/completions?api-version=1",
        CHAT,
        {
            "Authorization": "Bearer sk-canary",
            "OpenAI-Organization": "org-1",
            "Connection": "keep-alive, X-Drop-Me",
            "X-Drop-Me": "1",
            "Keep-Alive": "timeout=5",
            "TE": "trailers",
            "X-ModelTrack-Team": "ml",
            "X-Other": "kept",
        },
    )
    [call] = h.agent.calls
    assert call.uri == b"https://api.openai.example/v1/chat/completions?api-version=1"
    headers = call.headers
    assert headers.getRawHeaders(b"authorization") == [b"Bearer sk-canary"]
    assert headers.getRawHeaders(b"openai-organization") == [b"org-1"]
    assert headers.getRawHeaders(b"x-other") == [b"kept"]
    for gone in (b"host", b"content-length", b"connection", b"x-drop-me", b"keep-alive", b"te", b"x-modeltrack-team"):
        assert not headers.hasHeader(gone), gone
    assert headers.getRawHeaders(b"accept-encoding") == [b"identity"]
    assert json.loads(call.body) == CHAT


def test_response_header_hygiene_and_request_id() -> None:
    h = Harness()
    _, transport = h.send("POST", "/v1/chat/completions", CHAT)
    response = FakeResponse(200, {**JSON, b"x-request-id": b"req_1", b"connection": b"close", b"keep-alive": b"1"})
    h.agent.calls[0].deferred.callback(response)
    response.send(json.dumps({"model": "gpt-4o-2024-08-06", "usage": CHAT_USAGE}).encode())
    response.end()
    head = transport.value().split(b"\r\n\r\n")[0].lower()
    assert b"x-request-id: req_1" in head
    assert b"keep-alive: 1" not in head
    [event] = h.journal.events()
    assert f"x-modeltrack-request-id: {event['request_id']}".encode() in head
    assert event["outcome"] == "ok" and event["input_tokens"] == 1200


def test_include_usage_injected_and_stripped() -> None:
    h = Harness()
    _, transport = h.send("POST", "/v1/chat/completions", {**CHAT, "stream": True})
    call = h.agent.calls[0]
    assert json.loads(call.body)["stream_options"] == {"include_usage": True}
    response = FakeResponse(200, SSE)
    call.deferred.callback(response)
    stream = b"".join(chat_stream("gpt-4o-2024-08-06", include_usage=True))
    for i in range(0, len(stream), 7):  # arbitrary cuts
        response.send(stream[i : i + 7])
    response.end()
    relayed = body_of(transport)
    assert b'"choices": []' not in relayed
    assert relayed.endswith(b"data: [DONE]\n\n")
    assert relayed.count(b"data: ") == len(chat_stream("x", include_usage=True)) - 1
    [event] = h.journal.events()
    assert event["input_tokens"] == 1200 and event["usage_complete"] is True


def test_explicit_include_usage_is_relayed_untouched() -> None:
    h = Harness()
    _, transport = h.send("POST", "/v1/chat/completions", {**CHAT, "stream": True, "stream_options": {"include_usage": True}})
    call = h.agent.calls[0]
    response = FakeResponse(200, SSE)
    call.deferred.callback(response)
    stream = b"".join(chat_stream("gpt-4o-2024-08-06", include_usage=True))
    response.send(stream)
    response.end()
    assert body_of(transport) == stream


def test_backpressure_pauses_upstream() -> None:
    """
    A client whose socket is full pauses the channel, which pauses the upstream read;
    when it drains, the upstream read resumes.
    """
    h = Harness()
    channel, transport = h.send("POST", "/v1/messages", {"model": "claude-sonnet-4-5", "max_tokens": 5, "stream": True, "messages": []})
    response = FakeResponse(200, SSE)
    h.agent.calls[0].deferred.callback(response)
    response.send(messages_stream("claude-sonnet-4-5")[0])
    transport.producer.pauseProducing()  # what a transport does when its buffer is full
    assert response.transport.paused
    transport.producer.resumeProducing()
    assert not response.transport.paused


def test_headers_timeout_gives_504_and_cancels() -> None:
    h = Harness()
    _, transport = h.send("POST", "/v1/messages", {"model": "claude-sonnet-4-5", "max_tokens": 5, "messages": []})
    call = h.agent.calls[0]
    h.clock.advance(29)
    assert transport.value() == b""
    h.clock.advance(1)
    assert status_of(transport) == 504
    assert json.loads(body_of(transport))["error"]["type"] == "timeout_error"
    assert call.cancelled
    [event] = h.journal.events()
    assert event["outcome"] == "upstream_timeout" and event["status_code"] == 504
    assert exchange_timers(h) == []


def test_idle_timeout_aborts_stream_and_keeps_partial_usage() -> None:
    h = Harness()
    _, transport = h.send("POST", "/v1/messages", {"model": "claude-sonnet-4-5", "max_tokens": 5, "stream": True, "messages": []})
    response = FakeResponse(200, SSE)
    h.agent.calls[0].deferred.callback(response)
    chunks = messages_stream("claude-sonnet-4-5-20250929")
    response.send(chunks[0])
    h.clock.advance(9)
    response.send(chunks[1])  # a chunk resets the idle timer
    h.clock.advance(9)
    assert not transport.disconnecting and not response.transport.stopped
    h.clock.advance(1)
    assert response.transport.stopped
    assert transport.disconnected  # aborted: the client sees a cut, not a clean end
    [event] = h.journal.events()
    assert event["outcome"] == "upstream_timeout"
    assert exchange_timers(h) == []
    assert event["input_tokens"] == 120 + 2000 + 50000
    assert event["usage_complete"] is False


def test_client_disconnect_before_headers_cancels_upstream() -> None:
    h = Harness()
    channel, _ = h.send("POST", "/v1/chat/completions", CHAT)
    call = h.agent.calls[0]
    channel.connectionLost(Failure(ConnectionDone()))
    assert call.cancelled
    [event] = h.journal.events()
    assert event["outcome"] == "client_closed"
    assert exchange_timers(h) == []


def test_client_disconnect_mid_stream_stops_upstream() -> None:
    h = Harness()
    channel, _ = h.send("POST", "/v1/messages", {"model": "claude-sonnet-4-5", "max_tokens": 5, "stream": True, "messages": []})
    response = FakeResponse(200, SSE)
    h.agent.calls[0].deferred.callback(response)
    response.send(messages_stream("claude-sonnet-4-5-20250929")[0])
    channel.connectionLost(Failure(ConnectionDone()))
    assert response.transport.stopped
    response.end(Failure(ResponseFailed([Failure(ConnectionDone())])))  # what the agent then reports
    [event] = h.journal.events()
    assert event["outcome"] == "client_closed"
    assert event["input_tokens"] == 52120 and event["cost_usd"] > 0


def test_upstream_unreachable_gives_502_in_provider_shape() -> None:
    h = Harness()
    _, transport = h.send("POST", "/v1/messages", {"model": "claude-sonnet-4-5", "max_tokens": 5, "messages": []})
    h.agent.calls[0].deferred.errback(Failure(ConnectionRefusedError()))
    assert status_of(transport) == 502
    body = json.loads(body_of(transport))
    assert body["type"] == "error" and body["error"]["type"] == "api_error"
    [event] = h.journal.events()
    assert event["outcome"] == "upstream_unreachable"


def test_upstream_connection_lost_mid_body_aborts_client() -> None:
    h = Harness()
    _, transport = h.send("POST", "/v1/chat/completions", {**CHAT, "stream": True})
    response = FakeResponse(200, SSE)
    h.agent.calls[0].deferred.callback(response)
    response.send(chat_stream("gpt-4o", include_usage=True)[0])
    response.end(Failure(ResponseFailed([Failure(ConnectionDone())])))
    assert transport.disconnected
    [event] = h.journal.events()
    assert event["outcome"] == "upstream_unreachable" and event["status_code"] == 200


def test_bad_bodies_are_refused_and_recorded() -> None:
    h = Harness(max_body=100)
    _, not_json = h.send("POST", "/v1/chat/completions", b"not json")
    _, a_list = h.send("POST", "/v1/messages", b"[1, 2]")
    _, too_big = h.send("POST", "/v1/chat/completions", {"model": "gpt-4o", "pad": "x" * 200})
    assert [status_of(t) for t in (not_json, a_list, too_big)] == [400, 400, 413]
    assert json.loads(body_of(not_json))["error"]["type"] == "invalid_request_error"
    assert json.loads(body_of(a_list))["type"] == "error"  # Anthropic's shape
    assert h.agent.calls == []
    assert [e["outcome"] for e in h.journal.events()] == ["rejected"] * 3


def test_not_an_open_proxy() -> None:
    h = Harness()
    _, absolute = h.send("GET", "http://evil.example/v1/models")
    _, connect = h.send("CONNECT", "evil.example:443")
    _, unknown = h.send("POST", "/internal/files", {})
    _, traversal = h.send("GET", "/v1/models/../../admin")
    _, encoded = h.send("GET", "/v1/files/%2e%2e/admin")
    _, empty = h.send("GET", "/v1//admin")
    assert [status_of(t) for t in (absolute, connect, unknown, traversal, encoded, empty)] == [400, 400, 404, 404, 404, 404]
    assert h.agent.calls == [] and h.journal.lines == []


def test_models_route_follows_auth_style_and_is_unmetered() -> None:
    h = Harness()
    h.send("GET", "/v1/models", headers={"x-api-key": "k", "anthropic-version": "2023-06-01"})
    h.send("GET", "/v1/models/gpt-4o", headers={"Authorization": "Bearer k"})
    h.send("GET", "/openai/v1/models")
    h.send("POST", "/anthropic/v1/messages/count_tokens", {"model": "m", "messages": []})
    uris = [c.uri for c in h.agent.calls]
    assert uris == [
        b"https://api.anthropic.example/v1/models",
        b"https://api.openai.example/v1/models/gpt-4o",
        b"https://api.openai.example/v1/models",
        b"https://api.anthropic.example/v1/messages/count_tokens",
    ]
    for call in h.agent.calls:
        response = FakeResponse(200, JSON)
        call.deferred.callback(response)
        response.send(b"{}")
        response.end()
    assert h.journal.lines == []


def test_journal_full_refuses_metered_calls() -> None:
    h = Harness()
    h.journal.accepting = False
    _, transport = h.send("POST", "/v1/chat/completions", CHAT)
    assert status_of(transport) == 503
    assert h.agent.calls == []


def test_status_endpoints() -> None:
    h = Harness()
    _, ready = h.send("GET", "/readyz")
    assert status_of(ready) == 503  # not listening yet
    h.readiness.listening = True
    _, ready = h.send("GET", "/readyz")
    assert status_of(ready) == 200
    h.journal.healthy = False
    _, ready = h.send("GET", "/readyz")
    assert status_of(ready) == 503
    _, health = h.send("GET", "/healthz")
    assert status_of(health) == 200
    _, stats = h.send("GET", "/stats")
    assert json.loads(body_of(stats))["events"] == 0


def test_drain_waits_then_aborts() -> None:
    h = Harness()
    channel, transport = h.send("POST", "/v1/chat/completions", CHAT)
    drained = h.resource.drain(5)
    assert not drained.called
    h.clock.advance(5)
    assert drained.called
    [event] = h.journal.events()
    assert event["outcome"] == "shutdown"


def test_a_pipeline_bug_still_ends_the_request_with_an_event(monkeypatch) -> None:
    import modeltrack.web.relay as relay_module

    def broken(*args: object) -> None:
        raise RuntimeError("bug")

    h = Harness()
    monkeypatch.setattr(relay_module, "for_client", broken)  # the response head's headers
    _, transport = h.send("POST", "/v1/chat/completions", CHAT)
    h.agent.calls[0].deferred.callback(FakeResponse(200, JSON))
    assert transport.disconnected
    [event] = h.journal.events()
    assert event["outcome"] == "proxy_error"


def test_a_pricing_failure_records_the_event_unpriced(monkeypatch) -> None:
    h = Harness()

    def broken(*args: object) -> None:
        raise RuntimeError("price data bug")

    monkeypatch.setattr(h.gate.prices, "price", broken)
    _, transport = h.send("POST", "/v1/chat/completions", CHAT)
    response = FakeResponse(200, JSON)
    h.agent.calls[0].deferred.callback(response)
    response.send(json.dumps({"model": "gpt-4o", "usage": CHAT_USAGE}).encode())
    response.end()
    assert status_of(transport) == 200
    [event] = h.journal.events()
    assert event["priced"] is False and event["input_tokens"] == 1200


def test_connect_timeout() -> None:
    """
    The agent is built with the connect timeout, and a connection attempt that times
    out is answered 504 and recorded as upstream_timeout.
    """
    from twisted.internet.error import TimeoutError
    from twisted.internet.testing import MemoryReactorClock
    from twisted.web.http_headers import Headers

    from modeltrack.web.upstream import OriginAgent

    reactor = MemoryReactorClock()
    OriginAgent(reactor, "http://127.0.0.1:9", 7, most_idle=2).request(b"GET", b"http://127.0.0.1:9/", Headers())
    assert reactor.tcpClients[0][3] == 7

    h = Harness()
    _, transport = h.send("POST", "/v1/chat/completions", CHAT)
    h.agent.calls[0].deferred.errback(Failure(TimeoutError()))
    assert status_of(transport) == 504
    [event] = h.journal.events()
    assert event["outcome"] == "upstream_timeout"


def test_origin_agent_one_write_host_header_and_one_origin() -> None:
    """
    The production agent writes the request head and an in-memory body in one write,
    sets Host as Agent would (port only when not the default), and contacts no origin
    but its own.
    """
    from twisted.internet.testing import MemoryReactorClock, StringTransport
    from twisted.web.client import readBody
    from twisted.web.http_headers import Headers

    from modeltrack.web.upstream import BytesProducer, OriginAgent

    reactor = MemoryReactorClock()
    agent = OriginAgent(reactor, "http://127.0.0.1:8080/base", 7, most_idle=2)
    headers = Headers({b"authorization": [b"Bearer k"]})
    d = agent.request(b"POST", b"http://127.0.0.1:8080/base/v1/x?y=1", headers, BytesProducer(b'{"a":1}'))
    _, _, factory, _, _ = reactor.tcpClients[0]
    protocol = factory.buildProtocol(None)
    transport = StringTransport()
    writes: list[bytes] = []  # one entry per write or writeSequence call
    write = transport.write
    transport.write = lambda data: (writes.append(data), write(data))  # type: ignore[method-assign]
    transport.writeSequence = lambda seq: (writes.append(b"".join(seq)), write(b"".join(seq)))  # type: ignore[method-assign]
    protocol.makeConnection(transport)
    assert writes == [
        b"POST /base/v1/x?y=1 HTTP/1.1\r\nContent-Length: 7\r\n"
        b"Authorization: Bearer k\r\nHost: 127.0.0.1:8080\r\n\r\n{\"a\":1}"
    ]
    protocol.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    response = self_result(d)
    assert response.code == 200 and self_result(readBody(response)) == b"ok"

    refused = agent.request(b"GET", b"http://127.0.0.2:8080/v1/models", Headers())
    assert isinstance(self_failure(refused).value, ValueError)
    assert len(reactor.tcpClients) == 1
    hosts = {
        url: OriginAgent(reactor, url, 7, most_idle=2)._host
        for url in ("https://api.openai.com/v1", "https://api.example:8443", "http://[::1]:9", "http://[::1]")
    }
    assert hosts == {
        "https://api.openai.com/v1": b"api.openai.com",
        "https://api.example:8443": b"api.example:8443",
        "http://[::1]:9": b"[::1]:9",
        "http://[::1]": b"[::1]",
    }


def self_result(d):
    results: list = []
    d.addBoth(results.append)
    assert results and not isinstance(results[0], Failure), results
    return results[0]


def self_failure(d):
    results: list = []
    d.addBoth(results.append)
    assert results and isinstance(results[0], Failure), results
    return results[0]


def test_a_provider_is_its_dialect_module_and_a_registry_line() -> None:
    """
    The seam: a dialect added to the table is served, named by prefix or by a path only
    it serves, with its own error shape, and the others are routed as before.
    """
    from twisted.web.http_headers import Headers

    from modeltrack.providers.dialect import Dialect, Endpoint
    from modeltrack.providers.registry import DIALECTS
    from modeltrack.providers.routes import RouteTable

    def errors(error_type: str, message: str) -> dict:
        return {"problem": {"kind": error_type, "text": message}}

    toy = Dialect(
        name="toy",
        prefix="/toy",
        endpoints=(Endpoint("toy", "/v1/generate", errors), Endpoint("toy", "/v1/models", errors, method=b"GET", metered=False)),
        error_body=errors,
        credential_headers=(b"x-toy-key",),
        claims=lambda headers: headers.hasHeader(b"x-toy-key"),
    )
    table = RouteTable((toy, *DIALECTS))
    plain = Headers()
    assert table.match(b"POST", "/v1/generate", plain)[0].provider == "toy"
    assert table.match(b"POST", "/toy/v1/generate", plain)[0].provider == "toy"
    assert table.match(b"GET", "/v1/models", Headers({b"x-toy-key": [b"k"]}))[0].provider == "toy"
    assert table.match(b"GET", "/v1/models", plain)[0].provider == "openai"
    assert table.match(b"GET", "/v1/models", Headers({b"x-api-key": [b"k"]}))[0].provider == "anthropic"
    assert table.match(b"POST", "/v1/messages", plain)[0].provider == "anthropic"
    assert table.match(b"POST", "/toy/v1/messages", plain) is None
    assert table.error_body("toy", "t", "m") == {"problem": {"kind": "t", "text": "m"}}


def test_every_finished_call_reaches_each_sink_as_one_read_only_record() -> None:
    import pytest

    from modeltrack.accounting.records import CallRecord
    from tests.memory import answer

    h = Harness()
    taken: list[CallRecord] = []
    h.resource.sinks.append(taken.append)  # a new sink: one line
    h.send("POST", "/v1/chat/completions", CHAT)
    answer(h.agent.calls[0], {"model": "gpt-4o-2024-08-06", "choices": [], "usage": CHAT_USAGE})
    [record] = taken
    assert json.loads(record.line) == dict(record.event) == h.journal.events()[0]
    assert record.answer is not None and record.answer.code == 200
    with pytest.raises(TypeError):
        record.event["cost_usd"] = 0  # type: ignore[index]


def test_relayed_routes_counted_are_bounded() -> None:
    from modeltrack.observe.stats import MAX_RELAYED_ROUTES, Stats

    stats = Stats()
    for n in range(MAX_RELAYED_ROUTES + 50):
        stats.relayed_call("openai", f"/v1/route-{n}")  # a path's first segments are the caller's
    assert len(stats.relayed) == MAX_RELAYED_ROUTES + 1
    assert stats.relayed["openai", "_other"] == 50


def test_an_answered_call_leaves_no_reference_cycle() -> None:
    """
    The garbage collector's full passes stall every stream; the relay makes none for
    them to find: an ended call's exchange, relay and meter are freed by reference
    counting alone.
    """
    import gc

    from modeltrack.web.proxy import Exchange
    from modeltrack.web.relay import Relay

    h = Harness()
    gc.collect()
    gc.disable()
    try:
        for _ in range(5):
            h.send("POST", "/v1/chat/completions", {**CHAT, "stream": True})
            response = FakeResponse(200, SSE)
            h.agent.calls.pop().deferred.callback(response)
            response.send(*chat_stream("gpt-4o-2024-08-06", include_usage=True))
            response.end()
        gc.set_debug(gc.DEBUG_SAVEALL)
        gc.collect()
        cyclic = [type(o).__name__ for o in gc.garbage if isinstance(o, (Exchange, Relay))]
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()
    assert len(h.journal.events()) == 5 and cyclic == []
