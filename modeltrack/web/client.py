"""
The upstream side of the relay: one HTTP/1.1 connection to a provider, read with as
little machinery per chunk as the protocol allows.

Twisted's client (C{HTTP11ClientProtocol}) passes every read through a line receiver,
a parser, a transfer decoder and the response's state machine, pauses and resumes the
socket around every response, and leaves each chunked response in a reference cycle
for the garbage collector. Under 1,000 streams that was a fifth of the reactor's time,
and the full collections it fed stalled every stream for 35-80 ms. This connection
parses the head, decodes the body's framing in one loop, and hands what one read
carried to the body protocol in one call. It keeps the interfaces around it:
C{HTTPConnectionPool}'s (C{state}, the quiescent callback, C{abort}) and C{IResponse}'s
C{deliverBody}.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.python.failure import Failure
from twisted.web._newclient import ParseError, RequestNotSent, ResponseNeverReceived
from twisted.web.client import ResponseDone, ResponseFailed
from twisted.web.http import PotentialDataLoss
from twisted.web.http_headers import Headers
from twisted.web.iweb import UNKNOWN_LENGTH, IResponse
from zope.interface import implementer

from modeltrack.web.interfaces import IConnection
from modeltrack.web.writethrough import write_through

#: Longest response head (status line and headers) accepted.
MAX_HEAD = 64 * 1024
#: Longest chunk-size or trailer line accepted.
MAX_LINE = 4096
_HEX = b"0123456789abcdefABCDEF"

# Body framings (RFC 9112 6.3).
_LENGTH, _CHUNKED, _UNTIL_CLOSE = range(3)
# Where a chunked body's decoder is.
_SIZE, _DATA, _DATA_END, _TRAILER = range(4)


class BadResponse(ParseError):
    """
    A response that is not HTTP/1.1 as it must be. The message names the problem and
    carries no bytes of the response: it reaches the log and the client's error.
    """

    def __init__(self, problem: str) -> None:
        super().__init__(problem, b"")

    def __str__(self) -> str:
        return self.args[0]


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
            self._connection.pause(client=True)

    def resumeProducing(self) -> None:
        if self._connection is not None:
            self._connection.resume(client=True)

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

    @ivar state: C{"QUIESCENT"} when a request may be sent (the pool reads it),
        C{"WAITING"} for the response head, C{"BODY"} while the body arrives,
        C{"CLOSED"} once it cannot be used again.
    """

    state = "QUIESCENT"
    transport: IConnection

    def __init__(self, quiescent: Callable[[UpstreamConnection], object]) -> None:
        self._quiescent = quiescent
        self._buffer = b""
        self._waiting: Deferred[UpstreamResponse] | None = None
        self._head_only = False
        self._received = False
        self._persistent = True
        self._framing = _LENGTH
        self._remaining = 0
        self._chunk_state = _SIZE
        self._body: Protocol | None = None
        self._control: _BodyTransport | None = None
        self._held: list[bytes] | None = None
        self._ended: Failure | None = None
        self._paused_for = 0  # bits: 1 the client is slow, 2 the body has no protocol yet
        self._response: UpstreamResponse | None = None
        self._lost = False
        self._closed: list[Deferred[None]] = []

    def connectionMade(self) -> None:
        write_through(self.transport)

    # -- the pool's side -----------------------------------------------------

    def request(self, method: bytes, data: list[bytes]) -> Deferred[UpstreamResponse]:
        """
        Send one request, already serialised (head and body), and get its response
        once the head has arrived.
        """
        if self.state != "QUIESCENT":
            return fail(RequestNotSent())
        self.state = "WAITING"
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
        self.state = "CLOSED"
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
        if self.state == "BODY":
            self._body_received(data)
        elif self.state == "WAITING":
            self._head_received(data)
        elif self.state == "QUIESCENT":
            # Bytes with no request outstanding: this connection is out of step.
            self.state = "CLOSED"
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
        self.state = "BODY"
        self._held = []
        self._response = response
        waiting, self._waiting = self._waiting, None
        if waiting is not None:
            waiting.callback(response)  # the relay gives the body its protocol here
        if self.state != "BODY":
            pass  # stopped by whoever took the response
        elif self._framing == _LENGTH and self._remaining == 0:
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
                self._framing, self._remaining, self._chunk_state = _CHUNKED, 0, _SIZE
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
        self.state = "CLOSED"
        waiting, self._waiting = self._waiting, None
        self.transport.abortConnection()
        if waiting is not None:
            waiting.errback(Failure(ResponseFailed([Failure(error)])))

    def _body_received(self, data: bytes) -> None:
        framing = self._framing
        if framing == _CHUNKED:
            try:
                payload, rest = self._dechunk(data)
            except BadResponse as error:
                return self._body_failed(error)
            if payload:
                self._deliver(payload)
            if rest is not None:
                self._complete(rest)
        elif framing == _UNTIL_CLOSE:
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

    def _dechunk(self, data: bytes) -> tuple[bytes, bytes | None]:
        """
        The payload in C{data}, and what follows the body if it ended (else L{None}).
        """
        if self._buffer:
            data = self._buffer + data
            self._buffer = b""
        payload: list[bytes] = []
        position, size = 0, len(data)
        while position < size:
            if self._chunk_state == _DATA:
                end = min(size, position + self._remaining)
                payload.append(data[position:end])
                self._remaining -= end - position
                position = end
                if self._remaining == 0:
                    self._chunk_state = _DATA_END
                continue
            eol = data.find(b"\n", position)
            if eol < 0:
                if size - position > MAX_LINE:
                    raise BadResponse("chunk line too long")
                self._buffer = data[position:]
                break
            line = data[position:eol].rstrip(b"\r")
            position = eol + 1
            if self._chunk_state == _SIZE:
                digits = line.partition(b";")[0].strip(b" \t")
                if not digits or len(digits) > 15 or digits.strip(_HEX):
                    raise BadResponse("invalid chunk size")
                self._remaining = int(digits, 16)
                self._chunk_state = _DATA if self._remaining else _TRAILER
            elif self._chunk_state == _DATA_END:
                if line:
                    raise BadResponse("chunk data longer than its size")
                self._chunk_state = _SIZE
            elif not line:  # the blank line after the trailer fields (which are dropped)
                return _joined(payload), data[position:]
        return _joined(payload), None

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
            self.resume(client=False)

    def stop(self) -> None:
        """
        The body's protocol wants no more of it: the connection closes (it cannot be
        reused with part of a response unread) and the body ends as failed.
        """
        if self.state == "BODY":
            self.state = "CLOSED"
            self.transport.loseConnection()
            self._end_body(Failure(ResponseFailed([Failure(ConnectionDone("the body was not wanted"))])))

    def _deliver(self, payload: bytes) -> None:
        if self._body is not None:
            self._body.dataReceived(payload)
        elif self._held is not None:
            # No protocol for it yet: hold it and stop reading until there is one.
            self._held.append(payload)
            self.pause(client=False)

    def _complete(self, rest: bytes) -> None:
        """
        The body has ended; C{rest} came after it.
        """
        if self._persistent and not rest:
            self.state = "QUIESCENT"
            if self._paused_for:
                self._paused_for = 0
                self.transport.resumeProducing()
            self._end_body(Failure(ResponseDone()), pooled=True)
        else:
            self.state = "CLOSED"
            self.transport.loseConnection()
            self._end_body(Failure(ResponseDone()))

    def _body_failed(self, error: Exception) -> None:
        self.state = "CLOSED"
        self.transport.abortConnection()
        self._end_body(Failure(ResponseFailed([Failure(error)])))

    def _end_body(self, reason: Failure, pooled: bool = False) -> None:
        body, self._body = self._body, None
        control, self._control = self._control, None
        if control is not None:
            control._connection = None
        if pooled:
            # Back in the pool before the body's end is told, as Twisted's client does.
            self._quiescent(self)
        if body is not None:
            self._response = None
            body.connectionLost(reason)
        elif self._held is not None:
            self._ended = reason  # told when deliverBody comes

    def pause(self, client: bool) -> None:
        if not self._paused_for and self.transport is not None:
            self.transport.pauseProducing()
        self._paused_for |= 1 if client else 2

    def resume(self, client: bool) -> None:
        was = self._paused_for
        self._paused_for &= ~(1 if client else 2)
        if was and not self._paused_for and self.state != "CLOSED":
            self.transport.resumeProducing()

    # -- the end -------------------------------------------------------------

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        state, self.state = self.state, "CLOSED"
        self._lost = True
        waiting, self._waiting = self._waiting, None
        if waiting is not None:
            kind = ResponseFailed if self._received else ResponseNeverReceived
            waiting.errback(Failure(kind([reason])))
        elif state == "BODY":
            # A body without a length ends when the connection does; any other
            # body was cut short.
            if self._framing == _UNTIL_CLOSE:
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


def _joined(parts: list[bytes]) -> bytes:
    return parts[0] if len(parts) == 1 else b"".join(parts)


class ConnectionFactory(Factory):
    """
    What C{HTTPConnectionPool} builds one connection with (its C{_factory}). Quiet:
    the default logs the start and stop of every connection's factory.
    """

    noisy = False

    def __init__(self, quiescent: Callable[[UpstreamConnection], object], description: str = "") -> None:
        self._quiescent = quiescent

    def buildProtocol(self, addr: Any) -> UpstreamConnection:
        return UpstreamConnection(self._quiescent)
