"""
A streamed request body, on a clock and in-memory transports: held (and the client
paused) until the provider's connection is open, the client paused whenever the
provider's side is full, the body's end passed on once, a silent client cut only when
it, not the provider, is the one waited for.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.web.iweb import UNKNOWN_LENGTH

from modeltrack.web.upload import BodyPipe


class Consumer:
    def __init__(self) -> None:
        self.data = b""

    def write(self, data: bytes) -> None:
        self.data += data


def pipe(length: int | None = 1000, idle: float = 10.0) -> tuple[BodyPipe, StringTransport, Clock]:
    clock, client = Clock(), StringTransport()
    return BodyPipe(length, client, clock, idle), client, clock


def test_the_body_is_held_until_the_provider_is_there_then_flows() -> None:
    body, client, _ = pipe(length=None)
    assert body.length is UNKNOWN_LENGTH
    body.write(b"a" * (200 << 10))
    assert client.producerState == "producing"
    body.write(b"b" * (100 << 10))  # past what is held: the client waits
    assert client.producerState == "paused"
    consumer = Consumer()
    done = body.startProducing(consumer)  # type: ignore[arg-type]
    assert consumer.data == b"a" * (200 << 10) + b"b" * (100 << 10) and client.producerState == "producing"
    body.write(b"c")
    assert consumer.data.endswith(b"c")
    sent: list[bool] = []
    body.sent = lambda: sent.append(True)
    fired: list[Any] = []
    done.addCallback(fired.append)
    body.finish()
    assert fired == [None] and sent == [True]


def test_a_full_provider_pauses_the_client() -> None:
    body, client, _ = pipe()
    body.startProducing(Consumer())  # type: ignore[arg-type]
    body.pauseProducing()
    assert client.producerState == "paused"
    body.resumeProducing()
    assert client.producerState == "producing"


def test_a_body_whole_before_the_provider_is_there_ends_when_it_comes() -> None:
    body, _, _ = pipe()
    body.write(b"x" * 1000)
    body.finish()
    consumer = Consumer()
    fired: list[Any] = []
    body.startProducing(consumer).addCallback(fired.append)  # type: ignore[arg-type]
    assert consumer.data == b"x" * 1000 and fired == [None]


def test_a_silent_client_is_cut_but_not_one_waiting_for_the_provider() -> None:
    body, client, clock = pipe(idle=10.0)
    body.startProducing(Consumer())  # type: ignore[arg-type]
    body.pauseProducing()  # the provider is slow: the client is not to blame
    clock.advance(25)
    assert not client.disconnecting
    body.resumeProducing()
    body.write(b"x")
    clock.advance(9)
    assert not client.disconnecting
    clock.advance(11)  # 10 s of the client's silence
    assert client.disconnecting  # aborted (StringTransport marks it so)


def test_a_cancelled_upstream_request_stops_the_pipe() -> None:
    body, client, clock = pipe()
    consumer = Consumer()
    done = body.startProducing(consumer)  # type: ignore[arg-type]
    done.addErrback(lambda failure: None)
    body.pauseProducing()
    done.cancel()  # the exchange gave up on the provider
    assert client.producerState == "producing"  # not left paused
    body.write(b"more")
    assert consumer.data == b""
    clock.advance(100)
    assert not client.disconnecting  # no timer left behind
