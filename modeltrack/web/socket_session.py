"""
One WebSocket session through the proxy (the Realtime API, the Responses API's
WebSocket mode): the upgrade checked, its key fingerprinted and its budgets asked
before it is relayed; then the frames both ways, untouched. The server's are relayed
as they arrive and read beside the relay with wsproto (only the messages the meter
reads are parsed); the client's are relayed frame by frame, a C{response.create} held
until the controls have reserved what its response may cost. Each response billed is
one cost event; a session that ends (closed, idle, cut, refused) accounts for every
response it started.
"""

from __future__ import annotations

import json
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

from twisted.internet.defer import Deferred
from twisted.internet.endpoints import connectProtocol
from twisted.internet.interfaces import IDelayedCall
from twisted.internet.protocol import Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.http_headers import Headers
from wsproto.frame_protocol import FrameProtocol, ParseFailed

from modeltrack import failures
from modeltrack.accounting.cost_event import Outcome, new_request_id
from modeltrack.accounting.records import Answer
from modeltrack.controls.gate import NO_TICKET, Ticket
from modeltrack.controls.keys import NO_CALLER, Caller
from modeltrack.failures import log_failure
from modeltrack.pricing.usage import Reading, Usage
from modeltrack.providers.dialect import Endpoint
from modeltrack.providers.openai_sockets import Billed, Reservation, error_event
from modeltrack.web import websocket
from modeltrack.web.serving import Serving
from modeltrack.web.status import json_response

if TYPE_CHECKING:
    from modeltrack.web.site import ProxyRequest

log = Logger()

@dataclass
class SocketCall:
    """
    What the accountant reads of one response of a session (see
    L{modeltrack.accounting.accountant.EndedCall}).
    """

    endpoint: Endpoint
    caller: Caller
    requested_model: str | None
    started: float
    ticket: Ticket = field(default_factory=lambda: NO_TICKET)
    request_id: str = field(default_factory=new_request_id)
    streaming: bool = True
    status: int = 101
    outcome: Outcome | None = None
    ttfb: float | None = None
    forwarded: float | None = None
    told: Reading | None = None
    reading: Reading | None = None
    answer: Answer | None = None  # never kept: a session's answer is no cache entry
    traceparent: bytes | None = None


class _ClientSide(Protocol):
    """The client's connection once upgraded: its bytes and its end, to the session."""

    def __init__(self, session: SocketSession) -> None:
        self.session = session

    def dataReceived(self, data: bytes) -> None:
        self.session.from_client(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.session.ended_by("client", reason)


class SocketSession:
    """One upgrade's session, from its request to its last event."""

    def __init__(self, resource: Serving, request: ProxyRequest, endpoint: Endpoint, upstream_path: str) -> None:
        self._resource = resource
        self.request = request
        self.endpoint = endpoint
        self._upstream_path = upstream_path
        self.request_id = new_request_id()
        query = parse_qs(urlsplit(request.uri.decode("latin-1")).query)
        models = query.get("model") or query.get("deployment")
        self._model = models[0] if models else None
        self.meter: Any = endpoint.socket(self._model) if endpoint.socket else None
        self.caller = NO_CALLER
        self.started = resource.clock.seconds()
        self._upstream: websocket.UpstreamSocket | None = None
        self._connecting: Deferred[Any] | None = None
        self._client: Any = None  # the client's transport, once upgraded
        self._open = False
        self._ended = False
        self._gone = False  # the client left before the upgrade was answered
        self._budgeted = False  # a block budget holds a reservation of the session's
        # The server's frames, read beside the relay; the client's, relayed frame by frame.
        self._server = websocket.ServerReader(self.meter.reads if self.meter else lambda kind: False)
        self._client_frames = websocket.ClientReader()
        self._outbox: deque[tuple[bytes, Reservation | None]] = deque()
        self._reserving = False
        #: Reservations for responses asked for but not yet started, in order.
        self._reserved: deque[Ticket] = deque()
        #: Responses started and not yet billed: their reservation and start.
        self._responses: dict[str, tuple[Ticket, float]] = {}
        self._timer: IDelayedCall | None = None
        self._last = self.started

    # -- the upgrade -----------------------------------------------------------

    def start(self, refused: str | None = None) -> None:
        """C{refused}: why the request's target alone is refused, if it is."""
        resource, request, endpoint = self._resource, self.request, self.endpoint
        resource.stats.requests += 1
        resource.in_flight.add(self)
        request.notifyFinish().addErrback(self._client_gone)
        problem = refused or websocket.upgrade_problem(request.method, request.requestHeaders)
        identified = request.requestHeaders.copy()
        key = websocket.subprotocol_key(identified)
        if key is not None:
            identified.addRawHeader(b"authorization", b"Bearer " + key)
        names, param = resource.routes.credentials(endpoint.provider)
        if param is None and b"api-key" in names:
            param = b"api-key"  # Azure's sockets take the key in the query too
        self.caller, refusal = resource.keys.caller(
            identified, request.uri, (names, param), metered=True, attributed=False,
            signs=resource.upstreams[endpoint.provider].signer is not None,
        )
        if self.caller.labels.get("session_id") is None:
            labels = dict(self.caller.labels, session_id=self.request_id)
            self.caller = self.caller._replace(labels=labels)
        if problem is not None:
            return self._refuse(400, "invalid_request_error", problem)
        if refusal is not None:
            return self._refuse(*refusal)
        if not resource.journal.accepting or resource.draining:
            return self._refuse(503, "overloaded_error", failures.LOG_NOT_WRITABLE)
        # At the upgrade, a budget already spent refuses the session: what is left is
        # asked of each response as it is created.
        decided = resource.gate.reserve(
            endpoint, self._model, Usage(input_tokens=len(request.uri)), {}, 0, self.caller, self.request_id,
            resource.clock.seconds(),
        )
        if isinstance(decided, Deferred):
            decided.addCallback(self._upgrade_admitted).addErrback(self.crashed)
        else:
            self._upgrade_admitted(decided)

    def _upgrade_admitted(self, ticket: Ticket) -> None:
        self._resource.gate.release(ticket)  # a check only: the responses reserve their own
        if self._ended:
            return
        if ticket.refusal is not None:
            return self._refuse(ticket.refusal_code, *ticket.refusal)
        resource, request = self._resource, self.request
        upstream = resource.upstreams[self.endpoint.provider]
        query = request.uri.partition(b"?")[2]
        target = upstream.base_path + self._upstream_path.encode("latin-1") + (b"?" + query if query else b"")
        head = websocket.upgrade_head(target, upstream.host, request.requestHeaders.copy())
        self._upstream = websocket.UpstreamSocket(head, self._answered, self.from_upstream, self._upstream_lost)
        self._deadline(resource.timeouts.headers)
        assert upstream.socket_endpoint is not None  # its dialect has sockets
        self._connecting = connectProtocol(upstream.socket_endpoint, self._upstream)
        self._connecting.addErrback(self._connect_failed)

    def _connect_failed(self, failure: Failure) -> None:
        self._connecting = None
        if self._ended:
            return
        said = failures.upstream_failure(failure, self._resource.upstreams[self.endpoint.provider].origin,
                                         self._resource.timeouts.connect)
        self._refuse(said.status, said.error_type, said.message, Outcome(said.outcome))

    def _answered(self, answer: websocket.UpgradeAnswer, rest: bytes) -> None:
        self._connecting = None
        if self._ended:
            return
        if answer.problem is not None:
            return self._refuse(502, "api_error", answer.problem, Outcome.UPSTREAM_ERROR)
        if answer.status != 101:
            # The provider refused the upgrade (a bad key, an unknown model): its answer, as sent.
            request = self.request
            request.setResponseCode(answer.status)
            request.setHeader(b"content-type", answer.header(b"content-type") or b"application/json")
            request.setHeader(b"x-modeltrack-request-id", self.request_id.encode())
            request.write(answer.body)
            request.finish()
            return self._end(Outcome.UPSTREAM_ERROR, answer.status)
        if answer.header(b"sec-websocket-extensions"):
            return self._refuse(502, "api_error", "the provider answered with a WebSocket extension it was not offered",
                                Outcome.UPSTREAM_ERROR)
        channel = self.request.channel
        head = answer.head[:-2] + b"X-ModelTrack-Request-Id: %s\r\n\r\n" % self.request_id.encode()
        channel.transport.write(head)
        channel.hand_over(_ClientSide(self))
        # No longer a request a stop would cut: the session closes itself (with 1001).
        self._resource.open_requests.discard(self.request)
        self._client = channel.transport
        self._open = True
        upstream = self._upstream
        assert upstream is not None
        # Each side is the other's producer: a slow reader slows the other writer.
        self._client.registerProducer(upstream.transport, True)
        upstream.transport.registerProducer(self._client, True)
        self._deadline(self._resource.timeouts.idle)
        if rest:
            self.from_upstream(rest)

    def _refuse(self, code: int, error_type: str, message: str, outcome: Outcome = Outcome.REJECTED) -> None:
        """Answer the upgrade with an error of the proxy's own, in the provider's shape; one event."""
        request = self.request
        if not request.finished and not self._gone:
            request.channel.persistent = False  # the client asked to leave HTTP: it does
            request.setHeader(b"x-modeltrack-request-id", self.request_id.encode())
            if code == 429:
                request.setHeader(b"x-should-retry", b"false")
            request.write(json_response(request, code, self.endpoint.error_body(error_type, message)))
            request.finish()
        self._end(outcome, code, error_type)

    # -- the frames --------------------------------------------------------------

    def from_upstream(self, data: bytes) -> None:
        if not self._open:
            return
        self._last = self._resource.clock.seconds()
        texts, good, problem = self._server.feed(data)
        for text in texts:
            self._server_event(text)
        if self._open:
            self._client.write(data if good == len(data) else data[:good])
        if self._open and self.meter.exhausted and self._budgeted:
            # What it used is relayed; then the session ends, as a response refused would.
            self._client.write(bytes(self._to_client().send_data(json.dumps(error_event(
                "budget_exceeded", "the session has used all that was reserved for it under its budget")), True)))
            self._close(websocket.POLICY_VIOLATION, "the session's reservation is used up", Outcome.REJECTED)
        if problem is not None:
            self._close(problem, "the provider broke the WebSocket protocol", Outcome.UPSTREAM_ERROR)

    def _server_event(self, text: str) -> None:
        try:
            obj = json.loads(text)
        except ValueError:
            return
        if not isinstance(obj, dict) or not isinstance(obj.get("type"), str):
            return
        kind = obj["type"].encode()
        if not self.meter.reads(kind):
            return
        started, billed = self.meter.server_event(kind, obj, len(text))
        now = self._resource.clock.seconds()
        if started is not None:
            ticket = self._reserved.popleft() if self._reserved else None
            self._responses[started] = (ticket or NO_TICKET, now)
            if ticket is None:
                # A response the client did not ask for (server-side turn detection):
                # it is reserved as it starts, and ends the session if it cannot be.
                self._reserve(self.meter.reservation({}, 0), started)
        for item in billed:
            self._bill(item, now)


    def _bill(self, item: Billed, now: float, outcome: Outcome | None = None) -> None:
        ticket, started = NO_TICKET, now
        if item.key is not None:
            found = self._responses.pop(item.key, None)
            if found is None:  # billed with no start seen: the oldest reservation is its
                found = (self._reserved.popleft() if self._reserved else NO_TICKET, now)
            ticket, started = found
        caller = self.caller
        if self.meter.session_id and caller.labels.get("session_id") == self.request_id:
            caller = caller._replace(labels=dict(caller.labels, session_id=self.meter.session_id))
        call = SocketCall(self.endpoint, caller, self._model, started, ticket, reading=item.reading)
        call.outcome = outcome or (Outcome.STREAM_ERROR if item.failed else Outcome.OK)
        call.forwarded = self.started
        self._resource.accountant.call_ended(call)

    def from_client(self, data: bytes) -> None:
        if not self._open:
            return
        self._last = self._resource.clock.seconds()
        try:
            frames = self._client_frames.feed(data)
        except websocket.FrameTooLarge:
            return self._close(websocket.TOO_BIG, "a frame larger than the proxy relays (16 MiB)", Outcome.CLIENT_CLOSED)
        except ParseFailed as e:
            return self._close(int(e.code), "the client broke the WebSocket protocol", Outcome.CLIENT_CLOSED)
        for frame, text in frames:
            self._outbox.append((frame, None if text is None else self._client_message(text)))
        self._pump()

    def _client_message(self, text: str) -> Reservation | None:
        """A client's message, sent whole: the reservation it needs first, if any."""
        self.meter.client_message(len(text))
        if websocket.event_type(text) not in self.meter.creates:
            return None
        try:
            obj = json.loads(text)
        except ValueError:
            return None
        return self.meter.reservation(obj, len(text)) if isinstance(obj, dict) else None

    def _pump(self) -> None:
        """Relay the client's whole frames in order, each reservation made first."""
        upstream = self._upstream
        while self._outbox and not self._reserving and self._open:
            ready = []
            while self._outbox and self._outbox[0][1] is None:
                ready.append(self._outbox.popleft()[0])
            if ready and upstream is not None:
                upstream.transport.write(b"".join(ready))
            if self._outbox:
                frame, reservation = self._outbox[0]
                self._outbox[0] = (frame, None)
                assert reservation is not None
                self._reserve(reservation, None)

    def _reserve(self, reservation: Reservation, started: str | None) -> None:
        resource = self._resource
        self._reserving = started is None  # a client's create waits; a started response cannot
        decided = resource.gate.reserve(
            self.endpoint, reservation.model, reservation.bound, reservation.body or {}, reservation.size,
            self.caller, self.request_id, resource.clock.seconds(),
        )
        if isinstance(decided, Deferred):
            decided.addCallback(self._reserved_for, started).addErrback(self.crashed)
        else:
            self._reserved_for(decided, started)

    def _reserved_for(self, ticket: Ticket, started: str | None) -> None:
        if started is None:
            self._reserving = False
        if not self._open:
            self._resource.gate.release(ticket)
            return
        if ticket.refusal is not None:
            # Refused as an HTTP call is: its event, with the budget that refused it.
            self._resource.accountant.call_ended(SocketCall(
                self.endpoint, self.caller, self._model, self._resource.clock.seconds(), ticket,
                status=ticket.refusal_code, outcome=Outcome.REJECTED, reading=Reading(error_type=ticket.refusal[0]),
            ))
            message = ticket.refusal[1]
            if self._client is not None:
                self._client.write(bytes(self._to_client().send_data(json.dumps(error_event(*ticket.refusal)), True)))
            return self._close(websocket.POLICY_VIOLATION, message[:120], Outcome.REJECTED)
        self._budgeted = self._budgeted or bool(ticket.admission.holds)
        if started is None:
            self._reserved.append(ticket)
            self._pump()
        else:
            # The response started before its reservation was made: it holds from now.
            held, at = self._responses.get(started, (NO_TICKET, 0.0))
            self._responses[started] = (ticket, at)

    # -- the end -----------------------------------------------------------------

    def _to_client(self) -> FrameProtocol:
        return FrameProtocol(client=False, extensions=[])

    def _close(self, code: int, reason: str, outcome: Outcome) -> None:
        """End the session from the middle: a close frame each way, then both connections."""
        if not self._open:
            return
        self._open = False
        if self._client is not None:
            self._client.write(bytes(self._to_client().close(code, reason)))
            self._client.loseConnection()
        if self._upstream is not None and self._upstream.transport is not None:
            going = websocket.GOING_AWAY if code != websocket.PROTOCOL_ERROR else code
            self._upstream.transport.write(bytes(FrameProtocol(client=True, extensions=[]).close(going)))
            self._upstream.transport.loseConnection()
        self._end(outcome)

    def ended_by(self, side: str, reason: Failure | None) -> None:
        """One side's connection ended: the other goes too; what was under way is accounted."""
        if self._ended:
            return
        if not self._open:  # gone before the upgrade was answered: the provider's answer is not wanted
            self._stop_upstream()
            return self._end(Outcome.CLIENT_CLOSED, 0)
        if side == "client" and self._upstream is not None and self._upstream.transport is not None:
            self._upstream.transport.loseConnection()
        if side == "upstream" and self._client is not None:
            self._client.loseConnection()
        self._open = False
        # The provider's side goes first after a client's close frame, as the handshake has it.
        by_client = side == "client" or self._client_frames.closing
        self._end(Outcome.CLIENT_CLOSED if by_client else Outcome.UPSTREAM_UNREACHABLE)

    def _upstream_lost(self, reason: Failure) -> None:
        if self._ended:
            return
        if self._open:
            return self.ended_by("upstream", reason)
        # Gone before it answered the upgrade.
        self._refuse(502, "api_error", failures.upstream_reason(reason), Outcome.UPSTREAM_UNREACHABLE)

    def _client_gone(self, reason: Failure) -> None:
        self._gone = True
        self.ended_by("client", reason)

    def abort(self) -> None:
        """For a stop that cannot wait: the session ends now, its responses accounted."""
        if self._open:
            self._close(websocket.GOING_AWAY, "the proxy is stopping", Outcome.SHUTDOWN)
        elif not self._ended:
            self._stop_upstream()
            self._refuse(503, "overloaded_error", "the proxy is stopping", Outcome.SHUTDOWN)

    def _stop_upstream(self) -> None:
        if self._connecting is not None:
            self._connecting.cancel()
        if self._upstream is not None and self._upstream.transport is not None:
            self._upstream.transport.abortConnection()

    def crashed(self, failure: Failure) -> None:
        log_failure(log, "modeltrack WebSocket session error on {route}", failure, route=self.endpoint.path)
        if self._open:
            self._close(websocket.BAD_GATEWAY, "the proxy failed", Outcome.PROXY_ERROR)
        elif not self._ended:
            self._refuse(500, "api_error", "modeltrack failed to process the request", Outcome.PROXY_ERROR)

    def _end(self, outcome: Outcome, status: int | None = None, error_type: str | None = None) -> None:
        """
        Account for the session once: an event for an upgrade that never opened, one
        for each response started and never billed; reservations not used released.
        """
        if self._ended:
            return
        self._ended = True
        self._open = False
        self._deadline(None)
        resource, now = self._resource, self._resource.clock.seconds()
        if status is not None:
            reading = Reading(error_type=error_type)
            call = SocketCall(self.endpoint, self.caller, self._model, self.started, status=status, outcome=outcome,
                              reading=reading, request_id=self.request_id)
            resource.accountant.call_ended(call)
        for key in list(self._responses):
            self._bill(Billed(key, self.meter.unfinished(key)), now, outcome)
        while self._reserved:
            resource.gate.release(self._reserved.popleft())
        resource.forget(self)

    def _deadline(self, seconds: float | None) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None if seconds is None else self._resource.clock.callLater(seconds, self._timed_out)

    def _timed_out(self) -> None:
        self._timer = None
        timeouts, clock = self._resource.timeouts, self._resource.clock
        if not self._open:
            self._stop_upstream()
            return self._refuse(504, "timeout_error", failures.no_response_headers(timeouts.headers),
                                Outcome.UPSTREAM_TIMEOUT)
        quiet = clock.seconds() - self._last
        if quiet < timeouts.idle:
            return self._deadline(timeouts.idle - quiet)
        self._close(websocket.GOING_AWAY, "idle for too long", Outcome.UPSTREAM_TIMEOUT)


def upgrade_wanted(headers: Headers) -> bool:
    """The request asks to become a WebSocket (on any route)."""
    return any(b"websocket" in value.lower() for value in headers.getRawHeaders(b"upgrade", ()))
