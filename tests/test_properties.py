"""
Fault suite: property tests. The SSE parser and the meters give the same result
however the same bytes are cut, and the upstream connection's framing agrees with h11
(a test-only oracle) on generated responses: status, headers, body and whether the
connection may be reused.
"""

from __future__ import annotations

from itertools import pairwise
from typing import Any

import h11
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure

from modeltrack.providers import anthropic, openai
from modeltrack.providers.sse import SSEParser
from modeltrack.web.client import ConnectionState, UpstreamConnection
from tests.fakes import chat_stream, messages_stream, responses_stream
from tests.test_client import Body, Pool

PROPERTY = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# -- SSE -----------------------------------------------------------------------

_FIELD_TEXT = st.binary(max_size=30).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b""))
_LINE = st.one_of(
    st.tuples(st.just(b"data:"), _FIELD_TEXT),
    st.tuples(st.just(b"data: "), _FIELD_TEXT),
    st.tuples(st.just(b"event: "), _FIELD_TEXT),
    st.tuples(st.just(b":"), _FIELD_TEXT),  # a comment
    st.tuples(st.just(b"id: "), _FIELD_TEXT),
    st.tuples(st.just(b""), st.just(b"")),  # a blank line: dispatch
)
_STREAM = st.tuples(st.lists(_LINE, max_size=30), st.sampled_from([b"\n", b"\r\n", b"\r"]))


def _cut(data: bytes, cuts: list[int]) -> list[bytes]:
    points = [0, *sorted({c % (len(data) + 1) for c in cuts}), len(data)]
    return [data[a:b] for a, b in pairwise(points)]


def _events(chunks: list[bytes]) -> list[tuple[bytes, bytes]]:
    parser = SSEParser(keep_raw=True)
    found = [event for chunk in chunks for event in parser.feed(chunk)]
    parser.close()
    return [(event.name, event.data) for event in found]


@PROPERTY
@given(_STREAM, st.lists(st.integers(min_value=0), max_size=12))
def test_sse_any_split_gives_the_same_events(stream: Any, cuts: list[int]) -> None:
    lines, end = stream
    data = end.join(field + text for field, text in lines) + end
    assert _events(_cut(data, cuts)) == _events([data])


_STREAMS = [
    (lambda: openai.ChatStreamMeter(), b"".join(chat_stream("gpt-4o", include_usage=True))),
    (lambda: openai.ChatStreamMeter(strip=True), b"".join(chat_stream("gpt-4o", include_usage=True))),
    (lambda: openai.ResponsesStreamMeter(), b"".join(responses_stream("gpt-4o"))),
    (lambda: anthropic.MessagesStreamMeter(), b"".join(messages_stream("claude-sonnet-4-5"))),
]


@PROPERTY
@given(st.sampled_from(range(len(_STREAMS))), st.lists(st.integers(min_value=0), max_size=12), st.booleans())
def test_meters_any_split_give_the_same_reading_relay_and_end(which: int, cuts: list[int], crlf: bool) -> None:
    make, stream = _STREAMS[which]
    if crlf:
        stream = stream.replace(b"\n", b"\r\n")

    def run(chunks: list[bytes]) -> tuple[Any, bytes, bool]:
        meter = make()
        relayed = b"".join(meter.feed(chunk) for chunk in chunks) + meter.close()
        return meter.reading, relayed, meter.ended

    whole = run([stream])
    assert whole[2] is True and whole[0].final
    assert run(_cut(stream, cuts)) == whole


# -- the upstream connection against h11 --------------------------------------

_TOKEN = st.text(alphabet="abcdefghijklmnopqrstuvwxyz-", min_size=1, max_size=12).filter(lambda t: t[0] != "-")
_VALUE = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789 ;=/.,", max_size=20).map(str.strip)
_RESERVED = {"content-length", "transfer-encoding", "connection", "keep-alive", "te", "trailer", "upgrade"}


@st.composite
def responses(draw: Any) -> tuple[bytes, bytes]:
    """
    A response as a provider could send it, and the request method it answers.
    """
    method = draw(st.sampled_from([b"POST", b"GET", b"HEAD"]))
    status = draw(st.sampled_from([200, 201, 204, 304, 400, 404, 429, 500, 529]))
    headers = [(name, draw(_VALUE)) for name in draw(st.lists(_TOKEN, max_size=5)) if name not in _RESERVED]
    body = draw(st.binary(max_size=300))
    framing = draw(st.sampled_from(["length", "chunked", "close"]))
    if status in (204, 304) or method == b"HEAD":
        framing = "length" if status not in (204, 304) else "none"
    if draw(st.booleans()):
        headers.append(("connection", "close"))
    wire = b"HTTP/1.1 %d Status\r\n" % status
    wire += b"".join(f"{name}: {value}\r\n".encode() for name, value in headers)
    if framing == "length":
        wire += b"content-length: %d\r\n\r\n" % len(body)
        if method != b"HEAD":
            wire += body
    elif framing == "chunked":
        wire += b"transfer-encoding: chunked\r\n\r\n"
        sizes = draw(st.lists(st.integers(min_value=1, max_value=80), max_size=6))
        rest = body
        for size in sizes:
            piece, rest = rest[:size], rest[size:]
            if piece:
                extension = draw(st.sampled_from([b"", b";a=b"]))
                wire += b"%x%s\r\n%s\r\n" % (len(piece), extension, piece)
        if rest:
            wire += b"%x\r\n%s\r\n" % (len(rest), rest)
        wire += b"0\r\n" + draw(st.sampled_from([b"", b"x-trailer: t\r\n"])) + b"\r\n"
    elif framing == "close":
        wire += b"\r\n" + body
    else:
        wire += b"\r\n"
    return method, wire


def _oracle(method: bytes, wire: bytes) -> dict[str, Any]:
    connection = h11.Connection(h11.CLIENT)
    connection.send(h11.Request(method=method, target="/v1/x", headers=[("Host", "h"), ("Content-Length", "0")]))
    connection.send(h11.EndOfMessage())
    connection.receive_data(wire)
    closed = False
    found: dict[str, Any] = {"body": b""}
    while True:
        event = connection.next_event()
        if isinstance(event, h11.Response):
            found["status"] = event.status_code
            found["headers"] = sorted((k.lower(), v) for k, v in event.headers)
        elif isinstance(event, h11.Data):
            found["body"] += event.data
        elif isinstance(event, h11.EndOfMessage):
            # Reusable: the message ended by its own framing, and neither side said close.
            found["reusable"] = not closed and connection.their_state is h11.DONE and connection.our_state is h11.DONE
            return found
        elif event is h11.NEED_DATA and not closed:
            connection.receive_data(b"")  # the server closes: the end of a body read until close
            closed = True
        else:
            raise AssertionError(f"h11 saw no end: {event}")


def _ours(method: bytes, wire: bytes, cuts: list[int]) -> dict[str, Any]:
    pool = Pool()
    connection = UpstreamConnection(pool.returned.append)
    transport = StringTransport()
    connection.makeConnection(transport)
    found: dict[str, Any] = {}
    body = Body()

    def got(response: Any) -> None:
        found["status"] = response.code
        found["headers"] = sorted(
            (name.lower(), value) for name, values in response.headers.getAllRawHeaders() for value in values
        )
        response.deliverBody(body)

    connection.request(method, [b"%s /v1/x HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\n\r\n" % method]).addCallback(got)
    for chunk in _cut(wire, cuts):
        if chunk and connection.state is not ConnectionState.CLOSED:
            connection.dataReceived(chunk)
    reused = pool.returned == [connection] and connection.state is ConnectionState.IDLE
    if not reused:
        connection.connectionLost(Failure(ConnectionDone()))
    found["body"] = b"".join(body.data)
    found["reusable"] = reused
    return found


@PROPERTY
@given(responses(), st.lists(st.integers(min_value=0), max_size=8))
def test_the_upstream_connection_frames_responses_as_h11_does(response: Any, cuts: list[int]) -> None:
    method, wire = response
    expected = _oracle(method, wire)
    found = _ours(method, wire, cuts)
    assert found == expected, wire
