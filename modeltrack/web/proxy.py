"""
The proxy resource and the per-request pipeline.

Every request to a metered route ends in exactly one cost event, written from one
place (L{Exchange._record}), whatever happened: answered, refused, upstream failure,
timeout, client gone, or shut down.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Sequence
from datetime import UTC, datetime
from decimal import Decimal
from enum import IntEnum
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, NamedTuple

from twisted.internet.defer import Deferred, succeed
from twisted.internet.error import TimeoutError
from twisted.internet.interfaces import IPushProducer, IReactorTime
from twisted.internet.protocol import Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone
from twisted.web.http import PotentialDataLoss
from twisted.web.iweb import IResponse
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET
from zope.interface import implementer

from modeltrack.accounting import batches
from modeltrack.accounting import cost_event as events
from modeltrack.accounting.cost_event import Outcome
from modeltrack.accounting.records import Answer, CallRecord, sinks
from modeltrack.controls.budgets import NO_ONE, Who
from modeltrack.controls.cache import Entry
from modeltrack.controls.gate import NO_TICKET, Gate, Ticket
from modeltrack.controls.keys import NO_CALLER, Keyring, UnknownKeys
from modeltrack.failures import log_failure, safe_method, upstream_reason
from modeltrack.observe.stats import Stats
from modeltrack.pricing.prices import UNPRICED, Price
from modeltrack.pricing.usage import Reading
from modeltrack.providers import routes
from modeltrack.providers.meter import BodyMeter, RelayOnly
from modeltrack.store.journal import Journal
from modeltrack.web.status import Readiness, StatusPaths, json_response
from modeltrack.web.upstream import Upstream, for_client, for_upstream
from modeltrack.web.writethrough import after_sending

if TYPE_CHECKING:
    from modeltrack.web.site import ProxyRequest

log = Logger()

REQUEST_ID_HEADER = b"x-modeltrack-request-id"


class Phase(IntEnum):
    """
    Where a call is, in the only order a call moves through them (a later phase is
    never left for an earlier one).
    """

    RECEIVED = 1  # its request is whole, nothing decided yet
    ADMITTED = 2  # let through by the controls (a refusal or a cached answer ends it here)
    FORWARDED = 3  # sent upstream, waiting for the response head
    STREAMING = 4  # the response body is being relayed
    ENDING = 5  # ended, its answer held until its event is on disk (--fsync always)
    ENDED = 6  # ended and answered: nothing more happens to it


#: Checked on every chunk: a module global is read faster than an enum member.
_ENDING = Phase.ENDING
_NO_USAGE = Price(Decimal(0), None)
#: A Host header that may go into a URL given back to its client.
_HOST = re.compile(r"[A-Za-z0-9.-]+(:[0-9]{1,5})?|\[[0-9A-Fa-f:.]+\](:[0-9]{1,5})?")


class Timeouts(NamedTuple):
    """
    Seconds. C{connect} is given to the agent; the others are ours.

    @ivar headers: from sending the request to the upstream's response headers.
    @ivar idle: the longest gap between two chunks of the response body.
    """

    connect: float = 10.0
    headers: float = 600.0
    idle: float = 300.0


DEFAULT_TIMEOUTS = Timeouts()


class ProxyResource(Resource):
    """
    The site's only resource: status paths, the route table, and 404 for the rest.

    @ivar in_flight: the exchanges not yet ended, for a graceful stop to wait on.
    """

    isLeaf = True

    def __init__(
        self,
        *,
        upstreams: dict[str, Upstream],
        journal: Journal,
        gate: Gate,
        stats: Stats,
        readiness: Readiness,
        clock: IReactorTime,
        timeouts: Timeouts = DEFAULT_TIMEOUTS,
        max_body: int,
        keys: Keyring,
        metrics: Any = None,
        route_table: routes.RouteTable = routes.ROUTES,
        batch_book: batches.BatchBook | None = None,
        export: Any = None,
    ) -> None:
        super().__init__()
        self.upstreams = upstreams
        self.journal = journal
        self.gate = gate
        self.stats = stats
        self.readiness = readiness
        self.status_paths = StatusPaths(journal, stats, readiness, gate, clock)
        self.clock = clock
        self.timeouts = timeouts
        self.max_body = max_body
        self.routes = route_table
        self.keys = keys
        #: Where batch results fetched through the proxy are claimed (once each).
        self.batches = batch_book
        #: L{modeltrack.observe.metrics.Metrics}, when an admin listener serves them.
        self.metrics = metrics
        #: Where every finished metered call goes (L{modeltrack.accounting.records}).
        self.sinks = sinks(journal, stats, gate, metrics, export)
        self.in_flight: set[Exchange] = set()
        #: Every request from its first line to its end, so a drain also waits for
        #: one still arriving (it has no exchange yet).
        self.open_requests: set[ProxyRequest] = set()
        #: Set when a stop begins: every response then closes its connection.
        self.draining = False
        self._drain_waiters: list[Deferred[None]] = []

    def drain(self, seconds: float) -> Deferred[None]:
        """
        Fires once every exchange in flight has ended; those still running after
        C{seconds} are aborted (each recorded with outcome C{shutdown}).
        """
        if not self.in_flight and not self.open_requests:
            return succeed(None)
        drained: Deferred[None] = Deferred()
        self._drain_waiters.append(drained)
        deadline = self.clock.callLater(seconds, self._abort_all)

        def stop_deadline(result: object) -> object:
            if deadline.active():
                deadline.cancel()
            return result

        return drained.addBoth(stop_deadline)

    def _abort_all(self) -> None:
        for exchange in list(self.in_flight):
            exchange.abort()
        for request in list(self.open_requests):
            if request.channel is not None:
                request.channel.transport.abortConnection()
        # Torn down: their connections are going, whenever the transport gets to it.
        self.open_requests.clear()
        self._check_drained()

    def track(self, request: ProxyRequest) -> None:
        self.open_requests.add(request)
        request.notifyFinish().addBoth(self._untrack, request)

    def _untrack(self, result: object, request: ProxyRequest) -> None:
        self.open_requests.discard(request)
        self._check_drained()

    def forget(self, exchange: Exchange) -> None:
        self.in_flight.discard(exchange)
        self._check_drained()

    def _check_drained(self) -> None:
        if not self.in_flight and not self.open_requests and self._drain_waiters:
            waiters, self._drain_waiters = self._drain_waiters, []
            for waiter in waiters:
                waiter.callback(None)

    def render(self, request: ProxyRequest) -> bytes | int:
        if request.method == b"CONNECT" or not request.uri.startswith(b"/"):
            # Absolute-form targets and CONNECT are how a forward proxy is used.
            return _refuse(request, "this is not an open proxy")
        valid = valid_target(request.uri)
        found = self.routes.match(request.method, request.path.decode("latin-1"), request.requestHeaders)
        if not valid and (found is None or not found[0].metered):
            return _refuse(request, INVALID_TARGET)
        status = self.status_paths.render(request.path, request)
        if status is not None:
            return status
        if found is None:
            message = f"modeltrack has no route for this path and method ({safe_method(request.method)})"
            return _error(request, 404, "not_found_error", message)
        endpoint, upstream_path = found
        request.route = endpoint.path
        exchange = Exchange(self, request, endpoint, upstream_path)
        try:
            exchange.start(valid, body_too_large=request.too_large)
        except Exception:
            exchange.crashed(Failure())
        return NOT_DONE_YET


INVALID_TARGET = "the request target holds bytes other than visible ASCII"
UNKNOWN_KEY = "this API key is not listed in modeltrack's keys file, which admits listed keys only"
NO_TEAM = "modeltrack needs a team for every call: send X-ModelTrack-Team, or use a key whose entry names one"
#: Methods whose requests carry a body to forward (any other does if it came with one).
_WITH_BODY = frozenset((b"POST", b"PUT", b"PATCH"))
#: RFC 9112 3.2: a request target is visible ASCII, nothing else (what an upstream
#: client refuses to send must be refused here, before anything else happens).
_VISIBLE_ASCII = re.compile(rb"[!-~]+")


def valid_target(target: bytes) -> bool:
    return _VISIBLE_ASCII.fullmatch(target) is not None


def _refuse(request: ProxyRequest, message: str) -> bytes:
    """
    A 400 for a request no client of an API sends; its connection closes after it.
    """
    request.channel.persistent = False
    return _error(request, 400, "invalid_request_error", message)


def _error(request: ProxyRequest, code: int, error_type: str, message: str) -> bytes:
    """
    An error from the proxy itself, in the shape of the provider the caller speaks to
    (guessed from its auth headers when no route matched).
    """
    provider = routes.provider_by_auth(request.requestHeaders)
    return json_response(request, code, routes.error_body(provider, error_type, message))


def _may_have_length(request: ProxyRequest, code: int) -> bool:
    # RFC 9110 8.6: never on 1xx or 204; a HEAD or 304 answer's length is not its body's.
    return request.method != b"HEAD" and code not in (204, 304) and code >= 200


@implementer(IPushProducer)
class Exchange(Protocol):
    """
    One request's trip through the proxy. It is also the protocol that receives the
    upstream response body and, registered with the client's request, the producer a
    slow client pauses: a full client socket pauses the upstream read.
    """

    # What a response body is delivered through (IResponse.deliverBody): a producer,
    # not a byte transport; None until the body starts.
    transport: IPushProducer | None  # type: ignore[assignment]  # not an ITransport

    def __init__(
        self,
        resource: ProxyResource,
        request: ProxyRequest,
        endpoint: routes.Endpoint,
        upstream_path: str,
    ) -> None:
        self._resource = resource
        self.request = request
        self.endpoint = endpoint
        self._upstream_path = upstream_path
        self.request_id = "mt_" + os.urandom(12).hex()
        self.started: float = getattr(request, "started", 0.0) or resource.clock.seconds()
        self.requested_model: str | None = None
        self.streaming = False
        self._strip_usage = False
        self.meter: Any = RelayOnly()
        self.status = 0
        self._ttfb: float | None = None
        self._forwarded: float | None = None
        self._pending: Any = None
        self._timer: Any = None
        self.phase = Phase.RECEIVED
        self._client_gone = False
        self._paused = False
        self._labels = events.NO_LABELS
        self._who = NO_ONE
        self.caller = NO_CALLER
        self._from_headers: Reading | None = None
        self._last_data = 0.0
        self.ticket = NO_TICKET
        #: Under C{--fsync always}, an answer is not complete to its client until its
        #: event is on disk: its last bytes and its end wait in C{_held}.
        self._holds = endpoint.metered and resource.journal.holds_answers
        self._held: list[bytes] = []
        #: A relayed call whose answer tells about a batch (its results, its file).
        self._batch: batches.Watch | None = None

    # -- start ---------------------------------------------------------------

    def start(self, valid_target: bool = True, body_too_large: bool = False) -> None:
        resource = self._resource
        request = self.request
        request.notifyFinish().addErrback(self._lost_client)
        keys = resource.keys.book
        # Where the proxy signs with its own credentials, only named keys may call.
        known_only = keys.unknown_keys is UnknownKeys.DENY or resource.upstreams[self.endpoint.provider].signer is not None
        if not self.endpoint.metered and resource.batches is not None:
            self._batch = batches.watch(self.endpoint.provider, request.method, self._upstream_path, self._client_base())
        if self.endpoint.metered or known_only or self._batch:
            names, param = resource.routes.credentials(self.endpoint.provider)
            query = request.uri.partition(b"?")[2] if param is not None else b""
            self.caller = resource.keys.identify(request.requestHeaders, names, query, param)
        if self.endpoint.metered or self._batch:
            self._labels = labels = events.attribution(request.requestHeaders, self.caller.entry)
            self._who = Who(labels["team"] or "", labels["app"] or "", labels["feature"] or "", self.caller.key_name or "")
        resource.in_flight.add(self)
        resource.stats.requests += 1
        if not valid_target:
            request.channel.persistent = False
            return self._respond(400, "invalid_request_error", INVALID_TARGET, Outcome.REJECTED)
        if known_only and self.caller.entry is None:
            return self._respond(401, "unknown_key", UNKNOWN_KEY, Outcome.REJECTED)
        if keys.require_team and self.endpoint.metered and not self._who.team:
            return self._respond(400, "attribution_required", NO_TEAM, Outcome.REJECTED)
        body = None
        if request.method in _WITH_BODY or body_too_large or request.content.tell():
            if body_too_large:
                message = f"request body is larger than {resource.max_body} bytes"
                return self._respond(413, "request_too_large", message, Outcome.REJECTED)
            body = request.content.getvalue()
            if self.endpoint.metered:
                obj, body = self._read_request(body)
                if obj is None:
                    return None
                if not resource.journal.accepting:
                    message = "the event log is not writable; no call is made that cannot be recorded"
                    return self._respond(503, "overloaded_error", message, Outcome.REJECTED)
                if not resource.gate.idle:
                    return self._admit(obj, body)
        self._forward(body)
        return None

    def _client_base(self) -> str | None:
        """
        The proxy's URL as this client called it, up to the API path; L{None} if its
        Host header is not a plain host.
        """
        request = self.request
        host = (request.requestHeaders.getRawHeaders(b"host") or [b""])[0].decode("latin-1")
        if _HOST.fullmatch(host) is None:
            return None
        path = request.path.decode("latin-1")
        prefix = path[: len(path) - len(self._upstream_path)] if path.endswith(self._upstream_path) else ""
        # Behind a TLS-terminating balancer the client called https: it says so.
        forwarded = (request.requestHeaders.getRawHeaders(b"x-forwarded-proto") or [b""])[-1].strip().lower()
        scheme = forwarded.decode() if forwarded in (b"http", b"https") else "https" if request.isSecure() else "http"
        return f"{scheme}://{host}{prefix}"

    def _forward(self, body: bytes | None) -> None:
        resource = self._resource
        request = self.request
        self.phase = Phase.ADMITTED
        query = request.uri.partition(b"?")[2]
        target = self._upstream_path.encode("latin-1") + (b"?" + query if query else b"")
        upstream = resource.upstreams[self.endpoint.provider]
        self._forwarded = resource.clock.seconds()
        self._timer = resource.clock.callLater(resource.timeouts.headers, self._timed_out)
        self.phase = Phase.FORWARDED
        self._pending = upstream.request(
            request.method, target, for_upstream(request.requestHeaders), body
        )
        self._pending.addCallbacks(self._got_response, self._request_failed)
        self._pending.addErrback(self.crashed)

    def _admit(self, obj: dict[str, Any], body: bytes) -> None:
        """
        Put the call to the controls, then forward it, unless it was answered here
        (refused, or from the cache). A shared ledger decides later.
        """
        resource = self._resource
        decided = resource.gate.admit(
            self.endpoint.provider,
            self.endpoint.path,
            obj,
            body,
            self.request.requestHeaders,
            self._who,
            datetime.fromtimestamp(resource.clock.seconds(), UTC),
            self.request_id,
            self.caller.key_id,
        )
        if isinstance(decided, Deferred):
            decided.addCallback(self._admitted, body).addErrback(self.crashed)
        else:
            self._admitted(decided, body)

    def _admitted(self, ticket: Ticket, body: bytes) -> None:
        if self.phase >= _ENDING:
            # The client left while a shared ledger decided: nothing will settle this.
            self._resource.gate.release(ticket)
            return
        self.ticket = ticket
        if ticket.refusal is not None:
            # Both SDKs retry a 429 unless told not to; a budget does not free up in a
            # second, and each retry would be one more refused call and event.
            self.request.setHeader(b"x-should-retry", b"false")
            self._respond(ticket.refusal_code, *ticket.refusal, Outcome.REJECTED)
            return
        if ticket.hit is not None:
            self._answer_from_cache(ticket.hit)
            return
        self._forward(body if ticket.body is None else ticket.body)

    def _read_request(self, body: bytes) -> tuple[dict[str, Any] | None, bytes]:
        """
        Read the model and stream flag from a metered request; ask a chat stream for
        its usage if the client did not. The object is L{None} if the body was refused.
        """
        try:
            obj = json.loads(body)
        except ValueError:
            obj = None
        if not isinstance(obj, dict):
            message = "the request body must be a JSON object"
            self._respond(400, "invalid_request_error", message, Outcome.REJECTED)
            return None, body
        self.requested_model, self.streaming = self.endpoint.read_request(obj)
        if self.endpoint.model is not None:
            self.requested_model = self.endpoint.model
        self.streaming = self.streaming or self.endpoint.streams
        ask = self.endpoint.ask_for_usage
        if self.streaming and ask is not None and ask(obj):
            # The usage the provider now adds is read and kept from the client, which
            # sees the stream it asked for.
            self._strip_usage = True
            body = json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode()
        return obj, body

    def _answer_from_cache(self, entry: Entry) -> None:
        request = self.request
        self.status = entry.code
        self.meter.reading = Reading(model=entry.model)
        request.setResponseCode(entry.code, entry.phrase)
        for name, values in entry.headers:
            request.responseHeaders.setRawHeaders(name, values)
        request.setHeader(b"x-modeltrack-cache", b"HIT")
        request.setHeader(REQUEST_ID_HEADER, self.request_id.encode("ascii"))
        self._write_last(entry.body)
        self._end(Outcome.OK, finish=True)

    # -- upstream answers ----------------------------------------------------

    def _got_response(self, response: IResponse) -> None:
        self._pending = None
        if self.phase >= _ENDING:
            response.deliverBody(_Discard())
            return
        self.phase = Phase.STREAMING
        resource = self._resource
        request = self.request
        self._ttfb = resource.clock.seconds() - self.started
        self.status = response.code
        self.meter = self._meter_for(response)
        if self.endpoint.read_headers is not None:
            self._from_headers = self.endpoint.read_headers(response.headers, response.code)
        request.setResponseCode(response.code, response.phrase)
        request.responseHeaders = for_client(response.headers)
        if not self.meter.strips and isinstance(response.length, int) and _may_have_length(request, response.code):
            # for_client drops the provider's framing headers; a body relayed unchanged
            # gets its length back: no chunk framing, and the whole answer in one send.
            request.setHeader(b"content-length", b"%d" % response.length)
        request.setHeader(REQUEST_ID_HEADER, self.request_id.encode("ascii"))
        if resource.draining:
            request.setHeader(b"connection", b"close")
        for name, value in self.ticket.response_headers:
            request.setHeader(name, value)
        if self.ticket.cache_key is not None and response.code == 200:
            request.setHeader(b"x-modeltrack-cache", b"MISS")
        # A new timer, not a reset of the first: moving a call sooner costs a search
        # through every pending call, and the idle wait is usually the shorter one.
        self._cancel_timer()
        self._last_data = resource.clock.seconds()
        self._timer = resource.clock.callLater(resource.timeouts.idle, self._timed_out)
        request.registerProducer(self, True)
        response.deliverBody(self)

    def _meter_for(self, response: IResponse) -> Any:
        endpoint = self.endpoint
        if not endpoint.metered:
            return RelayOnly() if self._batch is None or response.code != 200 else batches.meter_for(self._batch)
        content_type = (response.headers.getRawHeaders(b"content-type") or [b""])[0]
        if endpoint.stream_meter is not None and content_type.startswith(endpoint.stream_type):
            return endpoint.stream_meter(strip=self._strip_usage)
        if endpoint.read_body is not None:
            return BodyMeter(endpoint.read_body)
        return RelayOnly()

    def connectionMade(self) -> None:
        if self._paused and self.transport is not None:
            self.transport.pauseProducing()

    def dataReceived(self, data: bytes) -> None:
        if self.phase >= _ENDING:
            return
        relay = self.meter.feed(data)
        if relay:
            if self._holds and (self.meter.ended or isinstance(self.meter, BodyMeter)):
                self._hold_back(relay)
            else:
                self.request.write(relay)
        # Noted, not re-armed: resetting a timer on every chunk costs more than
        # checking, when it fires, whether the stream was quiet all that time.
        self._last_data = self._resource.clock.seconds()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self.phase >= _ENDING:
            return  # we ended it: timeout, client gone, or shutdown
        if not reason.check(ResponseDone, PotentialDataLoss):
            # The upstream connection broke mid-body: make the truncation visible to
            # the client as a broken connection, not as a clean end. (What the meter
            # read from whole events stands; a cut-off body is not parsed.)
            return self._end(Outcome.UPSTREAM_UNREACHABLE, abort=True)
        tail = self.meter.close()
        if tail:
            self._write_last(tail)
        self._end(self._answered(), finish=True)

    def _answered(self) -> Outcome:
        """
        The outcome of a call whose answer reached its end.
        """
        if self.status >= 400:
            return Outcome.UPSTREAM_ERROR
        if self.streaming and self.meter.reading.error_type:
            return Outcome.STREAM_ERROR
        return Outcome.OK

    def crashed(self, failure: Failure) -> None:
        """
        A bug in the pipeline: log it, end the request, and still record its event.
        """
        log_failure(log, "modeltrack pipeline error on {route}", failure, route=self.endpoint.path)
        if self.phase < _ENDING:
            self._end(Outcome.PROXY_ERROR, abort=True)
            self._stop_upstream()

    def _request_failed(self, failure: Failure) -> None:
        self._pending = None
        if self.phase >= _ENDING:
            return None  # cancelled by us
        self._cancel_timer()
        origin = self._resource.upstreams[self.endpoint.provider].origin
        if failure.check(TimeoutError):
            seconds = self._resource.timeouts.connect
            message = f"could not connect to {origin} within {seconds:g} seconds"
            self._respond(504, "timeout_error", message, Outcome.UPSTREAM_TIMEOUT)
            return None
        if _tls_failure(failure):
            message = f"the TLS certificate of {origin} could not be verified"
            log.warn("Upstream TLS error: {message}", message=message)
            self._respond(502, "api_error", message, Outcome.UPSTREAM_TLS_ERROR)
            return None
        message = f"could not reach {origin}: {upstream_reason(failure)}"
        log.warn("Upstream unreachable: {message}", message=message)
        self._respond(502, "api_error", message, Outcome.UPSTREAM_UNREACHABLE)
        return None

    # -- time and the client -------------------------------------------------

    def _timed_out(self) -> None:
        self._timer = None
        if self.phase is Phase.STREAMING:
            clock, idle = self._resource.clock, self._resource.timeouts.idle
            quiet = clock.seconds() - self._last_data
            if quiet < idle:
                self._timer = clock.callLater(idle - quiet, self._timed_out)
                return
            if self.meter.ended:
                # Silent after its end marker: the answer is whole; end it cleanly.
                self._end(self._answered(), finish=True)
            else:
                # Headers came; the body went silent. The client sees a cut, not an end.
                self._end(Outcome.UPSTREAM_TIMEOUT, abort=True)
            self._stop_upstream()
            return
        pending = self._pending
        seconds = self._resource.timeouts.headers
        message = f"the upstream sent no response headers within {seconds:g} seconds"
        self._respond(504, "timeout_error", message, Outcome.UPSTREAM_TIMEOUT)
        pending.cancel()

    def _lost_client(self, failure: Failure | None) -> None:
        self._client_gone = True
        if self.phase < _ENDING:
            # A client may stop reading at a stream's end marker and close before the
            # provider ends its body: that call is complete, not abandoned (unless the
            # marker was still held back, waiting for the disk: then it never got it).
            complete = self.meter.ended and not self._held
            self._end(self._answered() if complete else Outcome.CLIENT_CLOSED)
            self._stop_upstream()
        return None

    def abort(self) -> None:
        """
        End now, for a shutdown that could not wait any longer.
        """
        if self.phase is Phase.ENDING:
            # Its event is queued but not yet on disk: the client never sees it complete.
            self.phase = Phase.ENDED
            if not self._client_gone:
                self.request.transport.abortConnection()
            self._resource.forget(self)
        elif self.phase < _ENDING:
            self._end(Outcome.SHUTDOWN, abort=True)
            self._stop_upstream()

    def _stop_upstream(self) -> None:
        if self._pending is not None:
            pending, self._pending = self._pending, None
            pending.cancel()
        elif self.transport is not None:
            self.transport.stopProducing()

    # IPushProducer, for the client connection.

    def pauseProducing(self) -> None:
        self._paused = True
        if self.transport is not None:
            self.transport.pauseProducing()

    def resumeProducing(self) -> None:
        self._paused = False
        if self.transport is not None and self.phase < _ENDING:
            self.transport.resumeProducing()

    def stopProducing(self) -> None:
        self._lost_client(None)

    # -- the end -------------------------------------------------------------

    def _respond(self, code: int, error_type: str, message: str, outcome: Outcome) -> None:
        """
        Answer the client with an error of our own, in the provider's shape.
        """
        self.status = code
        if not self._client_gone:
            self.request.setHeader(REQUEST_ID_HEADER, self.request_id.encode("ascii"))
            self._write_last(json_response(self.request, code, self.endpoint.error_body(error_type, message)))
        self._end(outcome, finish=True, error_type=error_type)

    def _write_last(self, data: bytes) -> None:
        """
        Write bytes that may complete the answer: held back while answers wait for
        their events.
        """
        if self._holds:
            self._hold_back(data)
        else:
            self.request.write(data)

    def _hold_back(self, data: bytes) -> None:
        """
        Under C{--fsync always}: keep the answer's last bytes until its event is on
        disk. A stream's bytes from its end marker on wait; a body waits one chunk
        behind (its last chunk may be the one that completes it).
        """
        if isinstance(self.meter, BodyMeter) and self.phase < _ENDING:
            held, self._held = self._held, [data]
            if held:
                self.request.write(b"".join(held))
        else:
            self._held.append(data)

    def _end(
        self, outcome: Outcome, *, finish: bool = False, abort: bool = False, error_type: str | None = None
    ) -> None:
        if self.phase >= _ENDING:
            return
        self.phase = Phase.ENDED
        self._cancel_timer()
        request = self.request
        if not self._client_gone:
            request.unregisterProducer()
            if abort:
                request.transport.abortConnection()
            elif finish:
                if self._holds:
                    self.phase = Phase.ENDING  # finished by _completed
                else:
                    self._finish()
        if error_type is not None and self.meter.reading.error_type is None:
            self.meter.reading.error_type = error_type
        # The answer leaves before its accounting is done.
        after_sending(self._record, outcome)

    def _finish(self) -> None:
        request = self.request
        request.finish()
        if self._resource.draining:
            # Stopping: no further request may come on this connection (see
            # ProxySite.close_idle_connections); it closes once the answer is out.
            request.transport.loseConnection()

    def _completed(self, _: object = None) -> None:
        """
        The event is on disk: the held answer may complete.
        """
        if self.phase is not Phase.ENDING:
            return  # aborted by a stop meanwhile
        self.phase = Phase.ENDED
        if not self._client_gone:
            if self._held:
                self.request.write(b"".join(self._held))
                self._held = []
            self._finish()
        self._resource.forget(self)

    def _record(self, outcome: Outcome) -> None:
        resource = self._resource
        if not self.endpoint.metered:
            resource.stats.relayed_call(self.endpoint.provider, self.endpoint.path)
            if self._batch is not None and self.status == 200:
                self._learn_batch()
            if outcome is not Outcome.REJECTED:
                # Relayed calls cost nothing and leave no event; one the proxy refused
                # (an unknown key, a body too large) does, as every refusal does.
                resource.forget(self)
                return
        now = resource.clock.seconds()
        when = datetime.fromtimestamp(now, UTC)
        reading = self.meter.reading
        told = self._from_headers
        if told is not None:  # what the headers said, where the body did not say it
            if reading.error_type is None:
                reading.error_type = told.error_type
            if reading.usage is None and told.usage is not None:
                reading.usage, reading.final = told.usage, True
            elif reading.usage is None and reading.usage_error is None:
                reading.usage_error = told.usage_error
        # The model the answer names, else the one asked for; an alias is resolved.
        model = self.endpoint.model if self.endpoint.priced_by_path else reading.model
        model = resource.gate.prices.alias(model or self.requested_model)
        price = _NO_USAGE
        if reading.usage_error is not None:
            price = UNPRICED  # counts that cannot be believed are not priced
        elif reading.usage is None:
            if 200 <= self.status < 300 and self.ticket.hit is None:
                # Answered, with no usage reported (a stream cut before it, a server
                # that ignores stream_options): the cost is unknown, never $0.
                price = UNPRICED
        else:
            price = self._price(model, reading, when)
        event = events.cost_event(
            timestamp=when,
            request_id=self.request_id,
            provider=self.endpoint.provider,
            endpoint=self.endpoint.path,
            requested_model=self.requested_model,
            model=model,
            streaming=self.streaming,
            status_code=self.status,
            outcome=outcome,
            reading=reading,
            price=price,
            latency_ms=(now - self.started) * 1000,
            ttfb_ms=None if self._ttfb is None else self._ttfb * 1000,
            labels=self._labels,
            caller=self.caller,
            deployment=self.endpoint.deployment
            or (self.requested_model if self.endpoint.model_names_deployment else None),
        )
        ticket = self.ticket
        # The controls settle first: what they saved and decided is part of the event.
        saved = resource.gate.settle(
            ticket, self.endpoint.provider, self._who, price, reading.usage, reading.price_context, when
        )
        event.update(ticket.event_fields(saved))
        answer = None
        if outcome == Outcome.OK and isinstance(self.meter, BodyMeter):
            phrase = self.request.code_message or b"OK"
            answer = Answer(self.status, phrase, self.request.responseHeaders, self.meter.body)
        record = CallRecord(
            MappingProxyType(event),
            events.encode(event),
            price,
            saved,
            None if self._forwarded is None else self._forwarded - self.started,
            ticket,
            answer,
            model,
            now,
            _first(self.request.requestHeaders.getRawHeaders(b"traceparent")),
        )
        for sink in resource.sinks:
            sink(record)
        if self.phase is Phase.ENDING:
            resource.journal.flush().addCallback(self._completed)
        else:
            resource.forget(self)

    def _price(self, model: str | None, reading: Reading, when: datetime) -> Price:
        if reading.usage is None:
            return UNPRICED
        prices = self._resource.gate.prices
        try:
            if reading.parts:
                return prices.price_parts(self.endpoint.provider, model, reading.parts, reading.price_context, when)
            return prices.price(self.endpoint.provider, model, reading.usage, reading.price_context, when)
        except Exception:
            log_failure(log, "Could not price a call on {route}", route=self.endpoint.path)
            return UNPRICED

    # -- batches -------------------------------------------------------------

    def _learn_batch(self) -> None:
        book, meter, watching = self._resource.batches, self.meter, self._batch
        assert book is not None and watching is not None
        if isinstance(meter, batches.ObjectsMeter):
            outputs = meter.outputs()
            if outputs:
                book.learn(outputs).addErrback(batches.failed)
        elif isinstance(meter, batches.ResultsMeter) and meter.results:
            book.claim(watching, meter.results).addCallback(self._record_results).addErrback(batches.failed)

    def _record_results(self, claimed: tuple[str, str, list[batches.Result]] | None) -> None:
        """
        One event per batch result not recorded before, at the batch price.
        """
        if claimed is None:
            return  # a file that is no batch's output
        batch_id, endpoint, results = claimed
        resource = self._resource
        now = resource.clock.seconds()
        when = datetime.fromtimestamp(now, UTC)
        for result in results:
            reading = batches.reading_of(endpoint, result)
            model = resource.gate.prices.alias(reading.model)
            price = UNPRICED if reading.usage_error is not None else self._price(model, reading, when)
            key = f"{self.endpoint.provider}/{batch_id}/{result.custom_id}".encode()
            event = events.cost_event(
                timestamp=when,
                request_id="mt_b" + hashlib.sha256(key).hexdigest()[:24],
                provider=self.endpoint.provider,
                endpoint=endpoint,
                requested_model=None,
                model=model,
                streaming=False,
                status_code=result.status,
                outcome=Outcome.OK if result.status < 400 else Outcome.UPSTREAM_ERROR,
                reading=reading,
                price=price,
                latency_ms=0.0,
                ttfb_ms=None,
                labels=self._labels,
                caller=self.caller,
                batch=(batch_id, result.custom_id),
            )
            resource.gate.settle(NO_TICKET, self.endpoint.provider, self._who, price, reading.usage, reading.price_context, when)
            record = CallRecord(
                MappingProxyType(event), events.encode(event), price, None, None, NO_TICKET, None, model, now,
                _first(self.request.requestHeaders.getRawHeaders(b"traceparent")),
            )
            for sink in resource.sinks:
                sink(record)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            if self._timer.active():
                self._timer.cancel()
            self._timer = None


def _first(values: Sequence[bytes] | None) -> bytes | None:
    return values[0] if values else None


class _Discard(Protocol):
    """
    Takes a response nobody wants any more and closes its connection.
    """

    transport: IPushProducer  # type: ignore[assignment]  # see Exchange.transport

    def connectionMade(self) -> None:
        self.transport.stopProducing()


def _tls_failure(failure: Failure) -> bool:
    """
    Did the connection fail because the upstream's certificate was refused (untrusted,
    expired, or for another hostname)?
    """
    from OpenSSL.SSL import Error as SSLError
    from service_identity import VerificationError

    for reason in getattr(failure.value, "reasons", None) or [failure]:
        if reason.check(SSLError, VerificationError):
            return True
    return False
