"""
Sending without asking the reactor: TCP connections whose writes are sent once the
reactor has handled its current batch of events, straight to the socket. The proxy's
listeners accept connections of this kind (L{WriteThroughPort}, listened on through
L{WriteThroughListening}); its upstream connections become so when they connect
(L{write_through}: Twisted has no public way to choose a client connection's class).

Twisted queues every write and registers the socket for writability; the reactor
sends when it next polls: two epoll_ctl calls and a dispatch through the reactor for
every write, and the bytes wait for the next poll behind its whole batch. For a relay
that is a good part of each stream chunk's cost, and under load most of its delay.
Here a write is gathered, and sent at the end of the batch it was made in (a call
scheduled for "now" runs before the reactor polls again): no epoll_ctl, one send per
connection per batch, so a response head and its body, or a burst of small writes,
still leave together. Bytes the socket does not take at once, and writes on a
connection that is closing, take Twisted's own path unchanged (buffering, pausing a
producer, errors).
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, cast

from twisted.internet import tcp
from twisted.internet.interfaces import IProtocol, IReactorFDSet, IReactorTime
from twisted.logger import Logger

from modeltrack.failures import log_failure
from modeltrack.web.balance import Deferring

log = Logger()


class _Outbox:
    """
    The connections with gathered bytes, sent together when the batch is done.
    """

    def __init__(self) -> None:
        self._waiting: list[_WriteThrough] = []
        self._then: list[tuple[Callable[..., object], tuple[object, ...]]] = []

    def add(self, connection: _WriteThrough) -> None:
        if not self._waiting:
            # Typed as a descriptor set; every reactor that runs TCP has timers too.
            cast(IReactorTime, connection.reactor).callLater(0, self.send_all)
        self._waiting.append(connection)

    def after_sending(self, f: Callable[..., object], *args: object) -> None:
        if self._waiting:
            self._then.append((f, args))
        else:
            f(*args)

    def send_all(self) -> None:
        waiting, self._waiting = self._waiting, []
        then, self._then = self._then, []
        # One failure must not keep the others' bytes, or their accounting, back.
        for connection in waiting:
            try:
                connection.send_gathered()
            except Exception:
                log_failure(log, "Could not send on a connection")
        for f, args in then:
            try:
                f(*args)
            except Exception:
                log_failure(log, "Failure after sending")


_outbox = _Outbox()


def after_sending(f: Callable[..., object], *args: object) -> None:
    """
    Call C{f(*args)} once what this batch wrote has been sent (at once if nothing
    is waiting): work that no answer should wait for, such as accounting.
    """
    _outbox.after_sending(f, *args)


if TYPE_CHECKING:
    _Mixed = tcp.Connection  # what the mixin is mixed into
else:
    _Mixed = object


class _WriteThrough(_Mixed):
    """
    Mixed into L{tcp.Server} and L{tcp.Client}; see the module docstring.
    """

    _gathered: list[bytes] | None = None

    def write(self, data: bytes) -> None:
        self.writeSequence((data,))

    def writeSequence(self, iovec: Iterable[bytes]) -> None:
        if self._gathered is not None:
            self._gathered.extend(iovec)
        elif self._sends_directly():
            self._gathered = list(iovec)
            _outbox.add(self)
        else:
            super().writeSequence(iovec)

    def loseConnection(self, *args: object, **kwargs: object) -> None:
        # Bytes gathered but not yet sent go into Twisted's buffer first: a close asked
        # for outside the reactor's event handling (a timer's callback) is carried out
        # at the next poll, before the outbox would send them.
        self._hand_over()
        super().loseConnection(*args, **kwargs)

    def loseWriteConnection(self) -> None:
        self._hand_over()
        super().loseWriteConnection()

    def _hand_over(self) -> None:
        gathered, self._gathered = self._gathered, None
        if gathered:
            super().writeSequence(gathered)

    def _sends_directly(self) -> bool:
        # Nothing queued in Twisted's buffers, and the connection open for writing.
        return not (
            self.TLS or self.dataBuffer or self._tempDataBuffer or not self.connected
            or self.disconnecting or self._writeDisconnected
        )

    def send_gathered(self) -> None:
        gathered, self._gathered = self._gathered, None
        if not gathered:
            return
        if not self._sends_directly():
            # Closing (or closed) since: Twisted sends what it can, then closes.
            super().writeSequence(gathered)
            return
        data = b"".join(gathered)
        try:
            sent = self.socket.send(data)
        except BlockingIOError:
            sent = 0
        except OSError:
            # A reset or a broken pipe: queued, the reactor's write meets the same
            # error and closes the connection the usual way.
            sent = 0
        if sent < len(data):
            super().writeSequence((data[sent:],))


class WriteThroughServer(_WriteThrough, tcp.Server):
    """
    An accepted connection that sends as described above, with Nagle off (what is
    sent is a whole answer or chunk; it must not wait for an acknowledgement).
    """

    def __init__(
        self, sock: socket.socket, protocol: IProtocol, client: tuple[object, ...], server: tcp.Port, sessionno: int,
        reactor: IReactorFDSet,
    ) -> None:
        super().__init__(sock, protocol, client, server, sessionno, reactor)
        self.setTcpNoDelay(True)


class _WriteThroughClient(_WriteThrough, tcp.Client):
    pass


class WriteThroughPort(tcp.Port):
    """
    A TCP port whose accepted connections are L{WriteThroughServer}s.
    """

    transport = WriteThroughServer


class _OneAcceptPerWakeup:
    """
    A port on a socket every worker accepts on: one connection each time it is woken
    (Twisted's ports accept up to a hundred, so the first worker awake would take a
    whole burst). Each worker then takes what it has time for: a busy one comes back
    to the socket later, and the others take the rest.
    """

    #: Lets the other workers accept while this one holds more than its share.
    deferring: Deferring | None = None

    @property
    def numberAccepts(self) -> int:
        return 1

    @numberAccepts.setter
    def numberAccepts(self, value: int) -> None:
        pass  # Twisted's adaptive accept count does not apply

    def doRead(self) -> Any:
        if self.deferring is not None and self.deferring.defer(self):
            return None
        return super().doRead()  # type: ignore[misc]


class SharedWriteThroughPort(_OneAcceptPerWakeup, WriteThroughPort):
    """A L{WriteThroughPort} on a socket the workers share."""


class SharedPort(_OneAcceptPerWakeup, tcp.Port):
    """Twisted's own TCP port (no fast path) on a socket the workers share."""


def adopt_shared(
    reactor: Any, fileDescriptor: int, addressFamily: int, factory: Any, fast: bool, deferring: Deferring | None = None
) -> Any:
    """
    A worker's listener on the socket the supervisor bound: accepting one connection
    per wakeup, and none while C{deferring} says its worker holds more than its share
    (TCP; any other family is the reactor's own port).
    """
    if addressFamily not in (socket.AF_INET, socket.AF_INET6):
        return reactor.adoptStreamPort(fileDescriptor, addressFamily, factory)
    kind = SharedWriteThroughPort if fast else SharedPort
    listening = kind._fromListeningDescriptor(reactor, fileDescriptor, addressFamily, factory)
    listening.deferring = deferring
    listening.startListening()
    return listening


class WriteThroughListening:
    """
    The reactor as endpoints see it when the proxy listens: its TCP ports, bound
    (C{tcp:}, C{tcp6:}) or adopted (C{systemd:}, a worker's inherited socket), are
    L{WriteThroughPort}s; anything else (UNIX sockets, C{ssl:}) is the reactor's own.
    """

    def __init__(self, reactor: Any) -> None:
        self._reactor = reactor

    def listenTCP(self, port: int, factory: Any, backlog: int = 50, interface: str = "") -> WriteThroughPort:
        listening = WriteThroughPort(port, factory, backlog, interface, self._reactor)
        listening.startListening()
        return listening

    def adoptStreamPort(self, fileDescriptor: int, addressFamily: int, factory: Any) -> Any:
        if addressFamily not in (socket.AF_INET, socket.AF_INET6):
            return self._reactor.adoptStreamPort(fileDescriptor, addressFamily, factory)
        # Twisted's own way to wrap a listening socket (checked at start-up, fastpath).
        listening = WriteThroughPort._fromListeningDescriptor(self._reactor, fileDescriptor, addressFamily, factory)
        listening.startListening()
        return listening

    def __getattr__(self, name: str) -> Any:
        return getattr(self._reactor, name)


def write_through(transport: Any) -> None:
    """
    Make an upstream TCP connection (or the TCP connection under a TLS one) send as
    described above, with Nagle off. Any other transport (UNIX sockets, test
    transports) is left as it is.
    """
    if type(transport) is not tcp.Client:
        # Under TLS the bytes that leave are the TLS layer's: its connection sends so.
        transport = getattr(transport, "transport", None)
    if type(transport) is tcp.Client:
        transport.__class__ = _WriteThroughClient
        transport.setTcpNoDelay(True)
