"""
Connections that send at the end of the reactor's batch (modeltrack.web.writethrough),
on real sockets: writes of one batch leave in one send, accounting waits for it, and
whatever the socket does not take goes through Twisted's own buffering, in order. And
the proxy's channel reads a request already sent when its connection is accepted.
"""

from __future__ import annotations

import errno
from typing import Any

import pytest_twisted
from twisted.internet import endpoints, protocol
from twisted.internet.defer import Deferred
from twisted.internet.testing import StringTransport

from modeltrack.web.writethrough import WriteThroughListening, WriteThroughServer, after_sending, write_through


class RecordingSocket:
    """
    The real socket, with every send recorded; C{take} limits how much the next
    send accepts, and C{fail} makes it raise.
    """

    def __init__(self, real: Any) -> None:
        self._real = real
        self.sends: list[bytes] = []
        self.take: int | None = None
        self.fail: OSError | None = None

    def send(self, data: bytes) -> int:
        if self.fail is not None:
            error, self.fail = self.fail, None
            raise error
        if self.take is not None:
            data, self.take = data[: self.take], None
        self.sends.append(bytes(data))
        return self._real.send(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)


class Receiver(protocol.Protocol):
    def __init__(self) -> None:
        self.received = b""
        self.waiting: tuple[int, Deferred[bytes]] | None = None

    def until(self, count: int) -> Deferred[bytes]:
        from twisted.internet import reactor

        d: Deferred[bytes] = Deferred()
        self.waiting = (count, d)
        self.dataReceived(b"")
        return d.addTimeout(10, reactor)  # a failure, not a hang, if bytes are lost

    def dataReceived(self, data: bytes) -> None:
        self.received += data
        if self.waiting and len(self.received) >= self.waiting[0]:
            d, self.waiting = self.waiting[1], None
            d.callback(self.received)


async def connected(reactor: Any) -> tuple[Any, RecordingSocket, Receiver]:
    accepted: Deferred[Any] = Deferred()

    class Server(protocol.Protocol):
        def connectionMade(self) -> None:
            accepted.callback(self.transport)

    port = await endpoints.TCP4ServerEndpoint(WriteThroughListening(reactor), 0, interface="127.0.0.1").listen(
        protocol.Factory.forProtocol(Server)
    )
    receiver = Receiver()
    client = endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port)
    await endpoints.connectProtocol(client, receiver)
    transport = await accepted
    await port.stopListening()
    recording = transport.socket = RecordingSocket(transport.socket)
    return transport, recording, receiver


@pytest_twisted.ensureDeferred
async def test_one_batch_one_send_then_accounting(reactor: Any) -> None:
    transport, recording, receiver = await connected(reactor)
    assert isinstance(transport, WriteThroughServer)
    seen_at_accounting: list[list[bytes]] = []
    transport.write(b"HTTP/1.1 200 OK\r\n\r\n")
    transport.writeSequence([b"hello ", b"world"])
    after_sending(lambda: seen_at_accounting.append(list(recording.sends)))
    # Nothing sent yet, and the reactor was not asked to watch the socket.
    assert recording.sends == [] and seen_at_accounting == []
    assert transport not in reactor.getWriters()
    assert await receiver.until(30) == b"HTTP/1.1 200 OK\r\n\r\nhello world"
    assert recording.sends == [b"HTTP/1.1 200 OK\r\n\r\nhello world"]
    assert seen_at_accounting == [recording.sends]
    transport.loseConnection()


@pytest_twisted.ensureDeferred
async def test_partial_send_and_errors_take_twisteds_path_in_order(reactor: Any) -> None:
    transport, recording, receiver = await connected(reactor)
    recording.take = 3  # the socket takes 3 bytes of the first send
    transport.write(b"abcdefgh")
    await receiver.until(3)
    assert recording.sends[0] == b"abc"
    # The rest is in Twisted's buffer: a write now goes behind it, not around it.
    transport.write(b"ijk")
    assert await receiver.until(11) == b"abcdefghijk"
    # A send that fails hands its bytes to Twisted's write, which meets the socket
    # as it is (here: fine again) and handles what it finds.
    recording.fail = ConnectionResetError(errno.ECONNRESET, "reset")
    transport.write(b"lmn")
    assert await receiver.until(14) == b"abcdefghijklmn"
    transport.loseConnection()


def test_a_request_already_sent_is_read_when_its_connection_is_accepted(reactor: Any) -> None:
    import json
    import socket

    from tests.memory import Harness

    h = Harness()
    port = WriteThroughListening(reactor).listenTCP(0, h.site, interface="127.0.0.1")
    client = socket.create_connection(("127.0.0.1", port.getHost().port))
    try:
        body = json.dumps({"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}).encode()
        client.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: proxy\r\nAuthorization: Bearer k\r\n"
            b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
        )
        port.doRead()  # what the reactor does when the listening socket is ready: accept
        # Forwarded within the accept, not after the reactor's next poll.
        assert len(h.agent.calls) == 1
    finally:
        client.close()
        port.stopListening()


def test_other_transports_are_left_alone() -> None:
    transport = StringTransport()
    write_through(transport)
    assert type(transport) is StringTransport
    results: list[int] = []
    after_sending(results.append, 1)  # nothing waiting: at once
    assert results == [1]


@pytest_twisted.ensureDeferred
async def test_a_close_from_a_timer_sends_what_was_gathered_first(reactor: Any) -> None:
    from twisted.internet.task import deferLater

    transport, recording, receiver = await connected(reactor)
    closed: Deferred[None] = Deferred()
    receiver.connectionLost = lambda reason: closed.callback(None)  # type: ignore[method-assign]

    def answer_and_close() -> None:
        # What a timeout does: answer and close, from a timed call, not from an event.
        transport.write(b"HTTP/1.1 504 Gateway Timeout\r\nContent-Length: 0\r\n\r\n")
        transport.loseConnection()

    await deferLater(reactor, 0, answer_and_close)
    await closed.addTimeout(10, reactor)
    assert receiver.received == b"HTTP/1.1 504 Gateway Timeout\r\nContent-Length: 0\r\n\r\n"
