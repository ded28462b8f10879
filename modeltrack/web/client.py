"""
The upstream side of the relay: one HTTP/1.1 connection to a provider, read with as
little machinery per chunk as the protocol allows, and the idle connections to one
origin kept for the next request (L{IdleConnections}).

Twisted's client (C{HTTP11ClientProtocol}) passes every read through a line receiver,
a parser, a transfer decoder and the response's state machine, pauses and resumes the
socket around every response, and leaves each chunked response in a reference cycle
for the garbage collector. Under 1,000 streams that was a fifth of the reactor's time,
and the full collections it fed stalled every stream for 35-80 ms. This connection
parses the head, decodes the body's framing in one loop, and hands what one read
carried to the body protocol in one call. Its responses are C{IResponse}s.
"""

from __future__ import annotations

from collections.abc import Callable
from enum import Enum, Flag, auto
from typing import Any

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Protocol, connectionDone
from twisted.python.failure import Failure
from twisted.web.client import RequestNotSent, ResponseDone, ResponseFailed, ResponseNeverReceived
from twisted.web.http import PotentialDataLoss
from twisted.web.http_headers import Headers
from twisted.web.iweb import UNKNOWN_LENGTH, IResponse
from zope.interface import implementer

from modeltrack.web.chunked import BadResponse, ChunkedBody
from modeltrack.web.interfaces import IConnection
from modeltrack.web.writethrough import write_through

#: Longest response head (status line and headers) accepted.
MAX_HEAD = 64 * 1024


class Framing(Enum):
    """
    How a response body's end is known (RFC 9112 6.3).
    """

    LENGTH = "length"  # Content-Length (or no body at all)
    CHUNKED = "chunked"  # the chunked transfer coding's last chunk
    UNTIL_CLOSE = "until close"  # the connection's end


class ConnectionState(Enum):
    """
    Where an upstream connection is, one request at a time.
    """

    IDLE = "idle"  # a request may be sent
    WAITING = "waiting"  # a request was sent; its response head has not come
    BODY = "body"  # its response body is arriving
    CLOSED = "closed"  # it cannot be used again


class PausedFor(Flag):
    """
    Why a connection's reads are paused; each reason is lifted on its own.
    """

    NOTHING = 0
    SLOW_CLIENT = auto()  # the client's socket is full
    NO_PROTOCOL = auto()  # body bytes came before anyone took the body


# Read on every delivery: module globals are read faster than enum members.
_IDLE, _WAITING, _BODY, _CLOSED = ConnectionState
_LENGTH, _CHUNKED, _UNTIL_CLOSE = Framing


@implementer(IResponse)
class UpstreamResponse:
    """
    A response whose head has arrived. The headers are as received, connection-level
    ones included (the relay drops those).
    """

    request = None
    previousResponse = None

    def __init__(
        self, version: bytes, code: int, phrase: bytes, headers: Headers, length: Any, connection: UpstreamConnection
    ) -> None:
        self.version = version
        self.code = code
        self.phrase = phrase
        self.headers = headers
        #: The body's length in bytes, or L{UNKNOWN_LENGTH}.
        self.length = length
        self._connection: UpstreamConnection | None = connection

    def deliverBody(self, protocol: Protocol) -> None:
        """
        Connect C{protocol} to the body: C{makeConnection} with a producer it can
        pause, C{dataReceived} per read, then C{connectionLost} with L{ResponseDone}
        (or L{PotentialDataLoss} for a body ended by closing the connection) or
        L{ResponseFailed}.
        """
        connection, self._connection = self._connection, None
        if connection is None:
            raise RuntimeError("the body of this response was delivered or is gone")
        connection.deliver_body(protocol)

    def setPreviousResponse(self, response: IResponse) -> None:
        self.previousResponse = response


@implementer(IPushProducer)
class _BodyTransport:
    """
    A body protocol's hold on the connection: cut when the body ends, so that a late
    pause or stop cannot reach the connection's next response.
    """

    __slots__ = ("_connection",)

    def __init__(self, connection: UpstreamConnection) -> None:
        self._connection: UpstreamConnection | None = connection

    def pauseProducing(self) -> None:
        if self._connection is not None:
            self._connection.pause(PausedFor.SLOW_CLIENT)

    def resumeProducing(self) -> None:
        if self._connection is not None:
            self._connection.resume(PausedFor.SLOW_CLIENT)

    def stopProducing(self) -> None:
        """
        Nobody wants the rest of the body: the connection closes (it cannot be reused
        with part of a response unread).
        """
        if self._connection is not None:
            self._connection.stop()

    abortConnection = stopProducing


class UpstreamConnection(Protocol):
    """
    One persistent connection to an upstream, one request at a time.

    @ivar state: its L{ConnectionState}.
    """

    state = ConnectionState.IDLE
    transport: IConnection

    def __init__(
        self, idle: Callable[[UpstreamConnection], object], lost: Callable[[UpstreamConnection], object] = lambda _: None
    ) -> None:
        """
        @param idle: called when a response has ended and another request may be sent.
        @param lost: called when the connection has closed.
        """
        self._idle = idle
        self._lost_callback = lost
        self._buffer = b""
        self._waiting: Deferred[UpstreamResponse] | None = None
        self._head_only = False
        self._received = False
        self._persistent = True
        self._framing = _LENGTH
        self._remaining = 0
        self._chunks = ChunkedBody()
        self._body: Protocol | None = None
        self._control: _BodyTransport | None = None
        self._held: list[bytes] | None = None
        self._ended: Failure | None = None
        self._paused_for = PausedFor.NOTHING
        self._response: UpstreamResponse | None = None
        self._lost = False
        self._closed: list[Deferred[None]] = []

    def connectionMade(self) -> None:
        write_through(self.transport)

    # -- the idle connections' side -----------------------------------------

    def request(self, method: bytes, data: list[bytes]) -> Deferred[UpstreamResponse]:
        """
        Send one request, already serialised (head and body), and get its response
        once the head has arrived.
        """
        if self.state is not _IDLE:
            return fail(RequestNotSent())
        self.state = _WAITING
        if self._response is not None:
            # The last response's body can no longer be asked for.
            self._response._connection = None
        self._response = self._held = self._ended = None
        self._head_only = method == b"HEAD"
        self._received = False
        waiting: Deferred[UpstreamResponse] = Deferred(self._cancel)
        self._waiting = waiting
        self.transport.writeSequence(data)
        return waiting

    def _cancel(self, waiting: Deferred[UpstreamResponse]) -> None:
        # The Deferred fails with CancelledError by itself.
        self._waiting = None
        self.state = _CLOSED
        self.transport.abortConnection()

    def abort(self) -> Deferred[None]:
        """
        Close now; fires once closed.
        """
        if self._lost:
            return succeed(None)
        closed: Deferred[None] = Deferred()
        self._closed.append(closed)
        self.transport.abortConnection()
        return closed

    # -- reading -------------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        state = self.state
        if state is _BODY:
            self._body_received(data)
        elif state is _WAITING:
            self._head_received(data)
        elif state is _IDLE:
            # Bytes with no request outstanding: this connection is out of step.
            self.state = _CLOSED
            self.transport.abortConnection()

    def _head_received(self, data: bytes) -> None:
        self._received = True
        buffer = self._buffer + data if self._buffer else data
        while True:
            end = _end_of_head(buffer)
            if end is None:
                if len(buffer) > MAX_HEAD:
                    return self._head_failed(BadResponse("response head too large"))
                self._buffer = buffer
                return None
            head, buffer = buffer[: end[0]], buffer[end[1]:]
            try:
                response = self._parse_head(head)
            except BadResponse as error:
                return self._head_failed(error)
            if response is not None:
                break  # else an interim (1xx) response: the final one follows
        self._buffer = b""
        self.state = _BODY
        self._held = []
        self._response = response
        waiting, self._waiting = self._waiting, None
        if waiting is not None:
            waiting.callback(response)  # the relay gives the body its protocol here
        if self.state is not _BODY:
            pass  # stopped by whoever took the response
        elif self._framing is _LENGTH and self._remaining == 0:
            self._complete(buffer)
        elif buffer:
            self._body_received(buffer)
        return None

    def _parse_head(self, head: bytes) -> UpstreamResponse | None:
        lines = head.split(b"\n")
        version, _, rest = lines[0].rstrip(b"\r").partition(b" ")
        code_bytes, _, phrase = rest.partition(b" ")
        if version not in (b"HTTP/1.1", b"HTTP/1.0") or len(code_bytes) != 3 or not code_bytes.isdigit():
            raise BadResponse("not an HTTP/1.x status line")
        code = int(code_bytes)
        if 100 <= code < 200 and code != 101:
            return None
        fields: list[list[bytes]] = []
        for line in lines[1:]:
            line = line.rstrip(b"\r")
            if line[:1] in (b" ", b"\t"):
                # obs-fold (RFC 9112 5.2): a proxy replaces it with a space.
                if not fields:
                    raise BadResponse("continuation line before any header")
                fields[-1][1] += b" " + line.strip(b" \t")
                continue
            name, colon, value = line.partition(b":")
            if not colon or not name or name != name.strip(b" \t"):
                raise BadResponse("malformed header line")
            fields.append([name, value.strip(b" \t")])
        headers = Headers()
        lengths: set[bytes] = set()
        codings: list[bytes] = []
        options: list[bytes] = []
        for name, value in fields:
            headers.addRawHeader(name, value)
            lower = name.lower()
            if lower == b"content-length":
                lengths.update(part.strip() for part in value.split(b","))
            elif lower == b"transfer-encoding":
                codings.extend(part.strip().lower() for part in value.split(b","))
            elif lower == b"connection":
                options.extend(part.strip().lower() for part in value.split(b","))
        self._persistent = version == b"HTTP/1.1" and b"close" not in options
        length: Any = UNKNOWN_LENGTH
        if code == 101:
            # Another protocol from here on (never asked for: Upgrade is not forwarded).
            self._framing, self._persistent = _UNTIL_CLOSE, False
        elif self._head_only or code in (204, 304):
            self._framing, self._remaining, length = _LENGTH, 0, 0
        elif codings:
            # Transfer-Encoding overrides Content-Length; both at once is how
            # responses are smuggled, so such a connection is not used again.
            if lengths:
                self._persistent = False
            if codings[-1] == b"chunked":
                self._framing, self._chunks = _CHUNKED, ChunkedBody()
            else:
                self._framing, self._persistent = _UNTIL_CLOSE, False
        elif lengths:
            if len(lengths) != 1:
                raise BadResponse("conflicting Content-Length values")
            [value] = lengths
            if not value.isdigit() or len(value) > 18:
                raise BadResponse("invalid Content-Length")
            self._framing = _LENGTH
            self._remaining = length = int(value)
        else:
            self._framing, self._persistent = _UNTIL_CLOSE, False
        return UpstreamResponse(version, code, phrase, headers, length, self)

    def _head_failed(self, error: Exception) -> None:
        self.state = _CLOSED
        waiting, self._waiting = self._waiting, None
        self.transport.abortConnection()
        if waiting is not None:
            waiting.errback(Failure(ResponseFailed([Failure(error)])))

    def _body_received(self, data: bytes) -> None:
        framing = self._framing
        if framing is _CHUNKED:
            try:
                payload, rest = self._chunks.feed(data)
            except BadResponse as error:
                return self._body_failed(error)
            if payload:
                self._deliver(payload)
            if rest is not None:
                self._complete(rest)
        elif framing is _UNTIL_CLOSE:
            self._deliver(data)
        elif len(data) < self._remaining:
            self._remaining -= len(data)
            self._deliver(data)
        else:
            remaining, self._remaining = self._remaining, 0
            if remaining:
                self._deliver(data[:remaining] if len(data) > remaining else data)
            self._complete(data[remaining:])
        return None

    # -- handing the body on -------------------------------------------------

    def deliver_body(self, protocol: Protocol) -> None:
        held, self._held = self._held, None
        ended, self._ended = self._ended, None
        self._body = protocol
        self._control = _BodyTransport(self)
        protocol.makeConnection(self._control)
        if held and self._body is protocol:
            protocol.dataReceived(b"".join(held))
        if ended is not None:
            self._end_body(ended)
        else:
            self.resume(PausedFor.NO_PROTOCOL)

    def stop(self) -> None:
        """
        The body's protocol wants no more of it: the connection closes (it cannot be
        reused with part of a response unread) and the body ends as failed.
        """
        if self.state is _BODY:
            self.state = _CLOSED
            self.transport.loseConnection()
            self._end_body(Failure(ResponseFailed([Failure(ConnectionDone("the body was not wanted"))])))

    def _deliver(self, payload: bytes) -> None:
        if self._body is not None:
            self._body.dataReceived(payload)
        elif self._held is not None:
            # No protocol for it yet: hold it and stop reading until there is one.
            self._held.append(payload)
            self.pause(PausedFor.NO_PROTOCOL)

    def _complete(self, rest: bytes) -> None:
        """
        The body has ended; C{rest} came after it.
        """
        if self._persistent and not rest:
            self.state = _IDLE
            if self._paused_for:
                self._paused_for = PausedFor.NOTHING
                self.transport.resumeProducing()
            self._end_body(Failure(ResponseDone()), reusable=True)
        else:
            self.state = _CLOSED
            self.transport.loseConnection()
            self._end_body(Failure(ResponseDone()))

    def _body_failed(self, error: Exception) -> None:
        self.state = _CLOSED
        self.transport.abortConnection()
        self._end_body(Failure(ResponseFailed([Failure(error)])))

    def _end_body(self, reason: Failure, reusable: bool = False) -> None:
        body, self._body = self._body, None
        control, self._control = self._control, None
        if control is not None:
            control._connection = None
        if reusable:
            # Idle before the body's end is told, as Twisted's client does: whatever
            # the body's protocol does next may want a connection.
            self._idle(self)
        if body is not None:
            self._response = None
            body.connectionLost(reason)
        elif self._held is not None:
            self._ended = reason  # told when deliverBody comes

    def pause(self, reason: PausedFor) -> None:
        if not self._paused_for and self.transport is not None:
            self.transport.pauseProducing()
        self._paused_for |= reason

    def resume(self, reason: PausedFor) -> None:
        was = self._paused_for
        self._paused_for &= ~reason
        if was and not self._paused_for and self.state is not _CLOSED:
            self.transport.resumeProducing()

    # -- the end -------------------------------------------------------------

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        state, self.state = self.state, _CLOSED
        self._lost = True
        self._lost_callback(self)
        waiting, self._waiting = self._waiting, None
        if waiting is not None:
            kind = ResponseFailed if self._received else ResponseNeverReceived
            waiting.errback(Failure(kind([reason])))
        elif state is _BODY:
            # A body without a length ends when the connection does; any other
            # body was cut short.
            if self._framing is _UNTIL_CLOSE:
                self._end_body(Failure(PotentialDataLoss()))
            else:
                self._end_body(Failure(ResponseFailed([reason])))
        closed, self._closed = self._closed, []
        for each in closed:
            each.callback(None)


def _end_of_head(buffer: bytes) -> tuple[int, int] | None:
    """
    Where the head ends and the body starts: at the first empty line, CRLF or bare LF.
    """
    crlf = buffer.find(b"\n\r\n")
    lf = buffer.find(b"\n\n")
    if crlf < 0 and lf < 0:
        return None
    if lf < 0 or 0 <= crlf < lf:
        return crlf, crlf + 3
    return lf, lf + 2
