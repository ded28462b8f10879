"""
The relay: one answer on its way to the client, the only code that runs for every
chunk. It writes the answer's head (the provider's, a cached one, or an error of the
proxy's own); it is the protocol the upstream response body is delivered to and,
registered with the client's request, the producer a slow client pauses (a full client
socket pauses the upstream read). Under C{--fsync always} it also holds back the bytes
that would complete an answer until its event is on disk.
"""

from __future__ import annotations

import typing
from typing import TYPE_CHECKING

from twisted.internet.interfaces import IPushProducer, IReactorTime
from twisted.internet.protocol import Protocol, connectionDone
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone
from twisted.web.http import PotentialDataLoss
from twisted.web.iweb import IResponse
from zope.interface import implementer

from modeltrack.accounting.records import Answer
from modeltrack.controls.cache import Entry
from modeltrack.pricing.usage import Reading
from modeltrack.providers.meter import IMeter, RelayOnly
from modeltrack.web.status import json_response
from modeltrack.web.upstream import for_client

if TYPE_CHECKING:
    from modeltrack.web.site import ProxyRequest


class Listener(typing.Protocol):
    """
    What a relay tells its call (a L{modeltrack.web.proxy.Exchange}).
    """

    def body_ended(self, whole: bool) -> None:
        """The body arrived C{whole} (and its tail was relayed), or its connection broke."""

    def client_gone(self, failure: Failure | None) -> None:
        """The client no longer wants the answer."""


@implementer(IPushProducer)
class Relay(Protocol):
    """
    Relays one response body through its meter, and tells its L{Listener} how the body
    ended or that the client has gone.

    @ivar relaying: false once the call has ended (L{ended}): whatever still arrives
        is dropped.
    @ivar last_data: when the last chunk arrived (the idle timeout reads it).
    """

    # What a response body is delivered through (IResponse.deliverBody): a producer,
    # not a byte transport; None until the body starts.
    transport: IPushProducer | None  # type: ignore[assignment]  # not an ITransport

    def __init__(self, exchange: Listener, request: ProxyRequest, clock: IReactorTime, holds: bool) -> None:
        self._exchange: Listener | None = exchange
        self._request = request
        self._clock = clock
        self.meter: IMeter = RelayOnly()
        self.relaying = True
        self.last_data = 0.0
        self._paused = False
        #: Under C{--fsync always}, an answer is not complete to its client until its
        #: event is on disk: its last bytes wait in C{_held} (see L{hold_back}).
        self.holds = holds
        self._held: list[bytes] = []

    # -- the answer's head ------------------------------------------------------

    def start(self, response: IResponse, headers: list[tuple[bytes, bytes]]) -> None:
        """
        Relay C{response}: its head (plus C{headers}) now, its body as it comes.
        """
        self.send_head(response, headers)
        self.last_data = self._clock.seconds()
        self._request.registerProducer(self, True)
        response.deliverBody(self)

    def send_head(self, response: IResponse, headers: list[tuple[bytes, bytes]]) -> None:
        """
        The provider's status and headers, less hop-by-hop ones, plus C{headers}.
        """
        request = self._request
        request.setResponseCode(response.code, response.phrase)
        request.responseHeaders = for_client(response.headers)
        if not self.meter.rewrites and isinstance(response.length, int) and _may_have_length(request, response.code):
            # for_client drops the provider's framing headers; a body relayed unchanged
            # gets its length back: no chunk framing, and the whole answer in one send.
            request.setHeader(b"content-length", b"%d" % response.length)
        for name, value in headers:
            request.setHeader(name, value)

    def send_cached(self, entry: Entry, headers: list[tuple[bytes, bytes]]) -> None:
        """
        A whole answer from the response cache, plus C{headers}.
        """
        self.meter.reading = Reading(model=entry.model)
        request = self._request
        request.setResponseCode(entry.code, entry.phrase)
        for name, values in entry.headers:
            request.responseHeaders.setRawHeaders(name, values)
        for name, value in headers:
            request.setHeader(name, value)
        self.write_last(entry.body)

    def send_error(self, code: int, body: object, headers: list[tuple[bytes, bytes]]) -> None:
        """
        An error of the proxy's own: C{body} as JSON (in the provider's shape).
        """
        for name, value in headers:
            self._request.setHeader(name, value)
        self.write_last(json_response(self._request, code, body))

    def whole_answer(self, status: int) -> Answer | None:
        """
        The answer as relayed, when it is one body kept whole (what a cache may keep).
        """
        meter = self.meter
        if not meter.one_body:
            return None
        request = self._request
        return Answer(status, request.code_message or b"OK", request.responseHeaders, meter.body)

    # -- the body, from the upstream -------------------------------------------

    def connectionMade(self) -> None:
        if self._paused and self.transport is not None:
            self.transport.pauseProducing()

    def dataReceived(self, data: bytes) -> None:
        if not self.relaying:
            return
        meter = self.meter
        relay = meter.feed(data)
        if relay:
            if self.holds and (meter.ended or meter.one_body):
                self.hold_back(relay)
            else:
                self._request.write(relay)
        # Noted, not re-armed: resetting a timer on every chunk costs more than
        # checking, when it fires, whether the stream was quiet all that time.
        self.last_data = self._clock.seconds()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if not self.relaying or self._exchange is None:
            return  # the exchange ended it: timeout, client gone, or shutdown
        if not reason.check(ResponseDone, PotentialDataLoss):
            # The upstream connection broke mid-body: make the truncation visible to
            # the client as a broken connection, not as a clean end. (What the meter
            # read from whole events stands; a cut-off body is not parsed.)
            self._exchange.body_ended(False)
            return
        tail = self.meter.close()
        if tail:
            self.write_last(tail)
        self._exchange.body_ended(True)

    def ended(self) -> None:
        """
        The call has ended (by its end, a timeout, the client or a stop): whatever
        still arrives is dropped, and the relay lets go of its call, so that no
        reference cycle outlives it (the collector's full passes stall every stream).
        """
        self.relaying = False
        self._exchange = None

    def stop_upstream(self) -> None:
        """
        Nobody wants the rest of the body: its connection closes.
        """
        if self.transport is not None:
            self.transport.stopProducing()

    # -- IPushProducer, for the client connection ------------------------------

    def pauseProducing(self) -> None:
        self._paused = True
        if self.transport is not None:
            self.transport.pauseProducing()

    def resumeProducing(self) -> None:
        self._paused = False
        if self.transport is not None and self.relaying:
            self.transport.resumeProducing()

    def stopProducing(self) -> None:
        if self._exchange is not None:
            self._exchange.client_gone(None)

    # -- answers held until their event is on disk (--fsync always) ------------

    @property
    def holding(self) -> bool:
        """
        Bytes that complete the answer are still held back (the client has not had them).
        """
        return bool(self._held)

    def write_last(self, data: bytes) -> None:
        """
        Write bytes that may complete the answer: held back while answers wait for
        their events.
        """
        if self.holds:
            self.hold_back(data)
        else:
            self._request.write(data)

    def hold_back(self, data: bytes) -> None:
        """
        Keep the answer's last bytes until its event is on disk. A stream's bytes from
        its end marker on wait; a body waits one chunk behind (its last chunk may be
        the one that completes it).
        """
        if self.meter.one_body and self.relaying:
            held, self._held = self._held, [data]
            if held:
                self._request.write(b"".join(held))
        else:
            self._held.append(data)

    def finish(self, close: bool) -> None:
        """
        The answer is complete; C{close}: its connection closes once it is out (a
        stop is under way: see L{ProxySite.close_idle_connections}).
        """
        self._request.finish()
        if close:
            self._request.transport.loseConnection()

    def release(self) -> None:
        """
        The event is on disk: what was held goes to the client.
        """
        if self._held:
            self._request.write(b"".join(self._held))
            self._held = []


def _may_have_length(request: ProxyRequest, code: int) -> bool:
    # RFC 9110 8.6: never on 1xx or 204; a HEAD or 304 answer's length is not its body's.
    return request.method != b"HEAD" and code not in (204, 304) and code >= 200


class Discard(Protocol):
    """
    Takes a response nobody wants any more and closes its connection.
    """

    transport: IPushProducer  # type: ignore[assignment]  # see Relay.transport

    def connectionMade(self) -> None:
        self.transport.stopProducing()
