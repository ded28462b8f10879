"""
The upstream HTTP/1.1 connection, on a StringTransport: framing at every split, the
pool's view of it (reusable or not), failures, backpressure, and no reference cycles.
"""

from __future__ import annotations

import gc
import weakref
from itertools import pairwise
from typing import Any

import pytest
from twisted.internet.defer import CancelledError
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.protocol import Protocol
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.web.client import RequestNotSent, ResponseDone, ResponseFailed, ResponseNeverReceived
from twisted.web.http import PotentialDataLoss
from twisted.web.iweb import UNKNOWN_LENGTH

from modeltrack.web.chunked import BadResponse
from modeltrack.web.client import MAX_HEAD, ConnectionState, UpstreamConnection

REQUEST = [b"POST /v1/x HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\n\r\n", b"{}"]


class Body(Protocol):
    def __init__(self) -> None:
        self.data: list[bytes] = []
        self.reason: Failure | None = None

    def dataReceived(self, data: bytes) -> None:
        self.data.append(data)

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self.reason = reason


class Pool:
    def __init__(self) -> None:
        self.returned: list[UpstreamConnection] = []


def connect() -> tuple[UpstreamConnection, StringTransport, Pool]:
    pool = Pool()
    connection = UpstreamConnection(pool.returned.append)
    transport = StringTransport()
    connection.makeConnection(transport)
    return connection, transport, pool


def exchange(wire: bytes, splits: list[int] = (), method: bytes = b"POST") -> dict[str, Any]:  # type: ignore[assignment]
    """
    Send a request, feed C{wire} in pieces cut at C{splits}, and say what came of it.
    """
    connection, transport, pool = connect()
    responses: list[Any] = []
    failures: list[Failure] = []
    body = Body()

    def got(response: Any) -> None:
        responses.append(response)
        response.deliverBody(body)

    connection.request(method, REQUEST).addCallbacks(got, failures.append)
    cuts = [0, *splits, len(wire)]
    for start, end in pairwise(cuts):
        if wire[start:end]:
            connection.dataReceived(wire[start:end])
    return {
        "connection": connection,
        "transport": transport,
        "response": responses[0] if responses else None,
        "failure": failures[0] if failures else None,
        "body": b"".join(body.data),
        "reason": body.reason,
        "pooled": pool.returned == [connection] and connection.state is ConnectionState.IDLE,
        "sent": transport.value(),
    }


LENGTH = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 11\r\n\r\n{\"a\": true}"
CHUNKED = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"6\r\ndata: \r\n"
    b"a;name=value\r\n{\"x\": 1}\n\n\r\n"
    b"0\r\nX-Trailer: t\r\n\r\n"
)


def test_request_is_one_write_and_a_length_body_at_every_split() -> None:
    for cut in range(1, len(LENGTH)):
        result = exchange(LENGTH, [cut])
        assert result["sent"] == b"".join(REQUEST)
        response = result["response"]
        assert (response.code, response.phrase, response.length) == (200, b"OK", 11)
        assert response.headers.getRawHeaders(b"content-type") == [b"application/json"]
        assert result["body"] == b'{"a": true}', cut
        assert result["reason"].check(ResponseDone)
        assert result["pooled"], cut


def test_chunked_body_at_every_pair_of_splits() -> None:
    for first in range(1, len(CHUNKED), 3):
        for second in range(first, len(CHUNKED), 5):
            result = exchange(CHUNKED, [first, second])
            assert result["body"] == b'data: {"x": 1}\n\n', (first, second)
            assert result["response"].length is UNKNOWN_LENGTH
            assert result["reason"].check(ResponseDone)
            assert result["pooled"], (first, second)


def test_what_one_read_carries_is_delivered_in_one_call() -> None:
    connection, _, _ = connect()
    body = Body()
    connection.request(b"POST", REQUEST).addCallback(lambda response: response.deliverBody(body))
    connection.dataReceived(CHUNKED[: CHUNKED.index(b"0\r\n")])
    assert body.data == [b'data: {"x": 1}\n\n']


def test_bare_lf_head_and_interim_responses() -> None:
    wire = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\nContent-Length: 2\n\nok"
    result = exchange(wire)
    assert (result["response"].code, result["body"], result["pooled"]) == (201, b"ok", True)


@pytest.mark.parametrize(
    "wire, method",
    [
        (b"HTTP/1.1 204 No Content\r\n\r\n", b"POST"),
        (b"HTTP/1.1 304 Not Modified\r\nContent-Length: 50\r\n\r\n", b"GET"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\n", b"HEAD"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", b"POST"),
    ],
)
def test_answers_without_a_body(wire: bytes, method: bytes) -> None:
    result = exchange(wire, method=method)
    assert result["body"] == b"" and result["response"].length == 0
    assert result["reason"].check(ResponseDone) and result["pooled"]


@pytest.mark.parametrize("status", [b"200 OK", b"101 Switching Protocols"])
def test_until_close_end_reported_as_potential_data_loss(status: bytes) -> None:
    connection, _, pool = connect()
    body = Body()
    connection.request(b"GET", REQUEST).addCallback(lambda response: response.deliverBody(body))
    connection.dataReceived(b"HTTP/1.1 " + status + b"\r\n\r\nall of it")
    connection.connectionLost(Failure(ConnectionDone()))
    assert body.data == [b"all of it"] and body.reason.check(PotentialDataLoss)
    assert pool.returned == []


@pytest.mark.parametrize(
    "wire",
    [
        b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok",
        b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok",
        # Both framings: Transfer-Encoding wins, and the connection is not trusted again.
        b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
        # Bytes after the end of the response.
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 200 OK\r\n",
    ],
)
def test_complete_but_not_reusable(wire: bytes) -> None:
    result = exchange(wire)
    assert result["body"] == b"ok" and result["reason"].check(ResponseDone)
    assert not result["pooled"] and result["transport"].disconnecting


@pytest.mark.parametrize(
    "wire, problem",
    [
        (b"HTTP/2 200 OK\r\n\r\n", "status line"),
        (b"HTTP/1.1 2000 OK\r\n\r\n", "status line"),
        (b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n", "header line"),
        (b"HTTP/1.1 200 OK\r\nName : value\r\n\r\n", "header line"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok", "Content-Length"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: -2\r\n\r\nok", "Content-Length"),
        (b"HTTP/1.1 200 OK\r\nX: " + b"a" * MAX_HEAD + b"\r\n", "too large"),
    ],
)
def test_bad_heads_fail_the_request_and_close(wire: bytes, problem: str) -> None:
    result = exchange(wire)
    assert result["response"] is None
    failure = result["failure"]
    assert failure.check(ResponseFailed)
    [reason] = failure.value.reasons
    assert reason.check(BadResponse) and problem in str(reason.value)
    assert result["transport"].disconnecting and not result["pooled"]


@pytest.mark.parametrize("size", [b"0x2", b"+2", b"-2", b" ", b"2_0", b"zz", b"1" * 16])
def test_bad_chunk_sizes_fail_the_body(size: bytes) -> None:
    wire = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + size + b"\r\nok\r\n0\r\n\r\n"
    result = exchange(wire)
    assert result["reason"].check(ResponseFailed) and result["reason"].value.reasons[0].check(BadResponse)
    assert result["body"] == b"" and not result["pooled"]


def test_chunk_longer_than_its_size_fails_the_body() -> None:
    wire = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nokay\r\n0\r\n\r\n"
    result = exchange(wire)
    assert result["reason"].check(ResponseFailed) and not result["pooled"]


def test_connection_lost_before_and_during_the_response() -> None:
    connection, _, _ = connect()
    failures: list[Failure] = []
    connection.request(b"POST", REQUEST).addErrback(failures.append)
    connection.connectionLost(Failure(ConnectionLost()))
    assert failures[0].check(ResponseNeverReceived)
    assert connection.request(b"POST", REQUEST).addErrback(failures.append) and failures[1].check(RequestNotSent)

    connection, _, pool = connect()
    body = Body()
    connection.request(b"POST", REQUEST).addCallback(lambda response: response.deliverBody(body))
    connection.dataReceived(LENGTH[:-3])
    connection.connectionLost(Failure(ConnectionLost()))
    assert body.reason.check(ResponseFailed) and b"".join(body.data) == b'{"a": tr'
    assert pool.returned == []

    connection, _, _ = connect()
    connection.request(b"POST", REQUEST).addErrback(failures.append)
    connection.dataReceived(b"HTTP/1.1 200 OK\r\n")
    connection.connectionLost(Failure(ConnectionLost()))
    assert failures[2].check(ResponseFailed)


def test_cancel_aborts_the_connection() -> None:
    connection, transport, pool = connect()
    d = connection.request(b"POST", REQUEST)
    failures: list[Failure] = []
    d.addErrback(failures.append)
    d.cancel()
    assert failures[0].check(CancelledError) and transport.disconnecting
    connection.connectionLost(Failure(ConnectionLost()))
    assert len(failures) == 1 and pool.returned == []


def test_pause_reaches_the_socket_and_is_undone_before_reuse() -> None:
    connection, transport, pool = connect()
    body = Body()
    connection.request(b"POST", REQUEST).addCallback(lambda response: response.deliverBody(body))
    connection.dataReceived(CHUNKED[: CHUNKED.index(b"0\r\n")])
    body.transport.pauseProducing()
    assert transport.producerState == "paused"
    connection.dataReceived(b"0\r\n\r\n")  # already read when the client got slow
    assert pool.returned == [connection] and transport.producerState == "producing"
    # The body's hold on the connection was cut: a late pause cannot reach the next response.
    body.transport.pauseProducing()
    assert transport.producerState == "producing"


def test_stop_closes_and_fails_the_body() -> None:
    connection, transport, pool = connect()
    body = Body()
    connection.request(b"POST", REQUEST).addCallback(lambda response: response.deliverBody(body))
    connection.dataReceived(CHUNKED[:100])
    body.transport.stopProducing()
    assert transport.disconnecting and body.reason.check(ResponseFailed)
    connection.dataReceived(CHUNKED[100:])
    assert pool.returned == [] and connection.state is ConnectionState.CLOSED


def test_body_taken_later_is_held_with_the_socket_paused() -> None:
    connection, transport, pool = connect()
    responses: list[Any] = []
    connection.request(b"POST", REQUEST).addCallback(responses.append)
    connection.dataReceived(LENGTH[:-4])
    assert transport.producerState == "paused"
    connection.dataReceived(LENGTH[-4:])
    assert pool.returned == [connection] and transport.producerState == "producing"
    body = Body()
    responses[0].deliverBody(body)
    assert body.data == [b'{"a": true}'] and body.reason.check(ResponseDone)
    with pytest.raises(RuntimeError):
        responses[0].deliverBody(Body())


def test_a_streamed_response_leaves_no_reference_cycle() -> None:
    """
    Everything a response made is freed when the last reference goes, without the
    garbage collector (Twisted's client left each chunked response in a cycle).
    """
    # Until nothing is left: a collection can run finalizers (pyOpenSSL's, from an
    # earlier test's TLS contexts) that leave garbage for the next one.
    for _ in range(10):
        if gc.collect() == 0:
            break
    gc.disable()
    try:
        connection, _, pool = connect()
        body = Body()
        responses: list[Any] = []

        def got(response: Any) -> None:
            responses.append(weakref.ref(response))
            response.deliverBody(body)  # noqa: F821 (deleted below, after its last use)

        connection.request(b"POST", REQUEST).addCallback(got)
        connection.dataReceived(CHUNKED)
        assert pool.returned == [connection]
        assert body.transport._connection is None  # type: ignore[attr-defined]
        held = weakref.ref(body)
        del body, got
        assert responses[0]() is None and held() is None
        assert gc.collect() == 0
    finally:
        gc.enable()


def test_parse_errors_carry_no_bytes_of_the_response() -> None:
    result = exchange(b"HTTP/1.1 200 OK\r\nsk-echoed-secret\r\n\r\n")
    [reason] = result["failure"].value.reasons
    assert reason.getErrorMessage() == "malformed header line"
    assert b"sk-echoed" not in repr(reason.value).encode()
