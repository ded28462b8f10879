"""
A call's trip through the proxy, as explicit phases (L{Exchange}, L{Phase}). It decides;
the parts work: who is calling (L{Keyring.caller}), the controls (L{Gate}), the upstream
(L{Upstream}), the answer's bytes (L{Relay}), the words of a failure (L{failures}), the
cost event (L{Accountant}). A metered call ends in exactly one event, whatever happened.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import IResponse

from modeltrack import failures
from modeltrack.accounting import batches
from modeltrack.accounting.cost_event import Outcome, new_request_id
from modeltrack.accounting.records import Answer
from modeltrack.controls.gate import NO_TICKET, Ticket
from modeltrack.controls.keys import NO_CALLER
from modeltrack.failures import log_failure
from modeltrack.pricing.usage import Reading
from modeltrack.providers.dialect import CallRequest, Endpoint
from modeltrack.web.relay import Discard, Relay
from modeltrack.web.serving import Phase, Serving
from modeltrack.web.upload import BodyPipe
from modeltrack.web.upstream import for_upstream
from modeltrack.web.writethrough import after_sending

if TYPE_CHECKING:
    from modeltrack.web.site import ProxyRequest

log = Logger()

REQUEST_ID_HEADER = b"x-modeltrack-request-id"


class Exchange:
    """One request's trip through the proxy, from its arrival to its event."""

    def __init__(self, resource: Serving, request: ProxyRequest, endpoint: Endpoint, upstream_path: str) -> None:
        self._resource = resource
        self.request = request
        self.endpoint = endpoint
        self._upstream_path = upstream_path
        self.request_id = new_request_id()
        self._id_header = (REQUEST_ID_HEADER, self.request_id.encode("ascii"))
        self.started: float = request.started or resource.clock.seconds()
        self.phase = Phase.RECEIVED
        #: How it ended, once it has: its outcome, what the meter read, and its whole
        #: answer if a cache may keep it (what the accountant reads: EndedCall).
        self.outcome: Outcome | None = None
        self.reading: Reading | None = None
        self.answer: Answer | None = None
        self.requested_model: str | None = None
        self.streaming = False
        self.status = 0
        self.ttfb: float | None = None
        self.forwarded: float | None = None
        self.caller = NO_CALLER
        self.ticket = NO_TICKET
        #: What the response's headers reported, where a dialect reads them.
        self.told: Reading | None = None
        self.relay = Relay(self, request, resource.clock, endpoint.metered and resource.journal.holds_answers)
        self._call: CallRequest | None = None
        self._pending: Deferred[IResponse] | None = None
        self._timer: IDelayedCall | None = None
        self._client_gone = False
        #: For a relayed call whose answer tells about a batch, the meter that reads it.
        self._batch: batches.BatchMeter | None = None

    # -- received --------------------------------------------------------------

    def start(self, refused: str | None = None, body_too_large: bool = False) -> None:
        resource, request, endpoint = self._resource, self.request, self.endpoint
        request.notifyFinish().addErrback(self.client_gone)
        if not endpoint.metered and resource.batches is not None:
            watch = batches.watch(endpoint.provider, request.method, self._upstream_path, request.base_url(self._upstream_path))
            self._batch = None if watch is None else batches.meter_for(watch, resource.batches)
        self.caller, refusal = resource.keys.caller(
            request.requestHeaders, request.uri, resource.routes.credentials(endpoint.provider), metered=endpoint.metered,
            attributed=self._batch is not None or endpoint.billing is not None,
            signs=resource.upstreams[endpoint.provider].signer is not None,
        )
        refusal = refusal or resource.gate.billable_refusal(endpoint, self.caller.who)
        resource.in_flight.add(self)
        resource.stats.requests += 1
        if refused is not None:  # a target or an upgrade no API client sends
            request.channel.persistent = False
            return self._respond(400, "invalid_request_error", refused, Outcome.REJECTED)
        if refusal is not None:
            return self._respond(*refusal, Outcome.REJECTED)
        body = None
        if request.has_body or body_too_large:
            if body_too_large:
                return self._respond(413, "request_too_large", failures.too_large(resource.max_body), Outcome.REJECTED)
            body = request.body_pipe or request.content.getvalue()
            if endpoint.metered and isinstance(body, bytes):
                call = endpoint.read_call(body, request.getHeader(b"content-type") or b"")
                if call is None:
                    return self._respond(400, "invalid_request_error", endpoint.unreadable, Outcome.REJECTED)
                self.requested_model, self.streaming, self._call = call.model, call.streaming, call
                body = call.data
                if not resource.journal.accepting:
                    return self._respond(503, "overloaded_error", failures.LOG_NOT_WRITABLE, Outcome.REJECTED)
                if resource.gate.has_controls:
                    return self._admit(call.body, body)
        self._forward(body)
        return None

    # -- admitted --------------------------------------------------------------

    def _admit(self, obj: dict[str, Any], body: bytes) -> None:
        """Put the call to the controls (a shared ledger decides later), then to _admitted."""
        resource = self._resource
        decided = resource.gate.admit(
            self.endpoint, obj, body, self.request.requestHeaders, self.caller, self.request_id, resource.clock.seconds()
        )
        if isinstance(decided, Deferred):
            decided.addCallback(self._admitted, body).addErrback(self.crashed)
        else:
            self._admitted(decided, body)

    def _admitted(self, ticket: Ticket, body: bytes) -> None:
        if self.phase >= Phase.ENDING:
            # The client left while a shared ledger decided: nothing will settle this.
            self._resource.gate.release(ticket)
            return
        self.ticket = ticket
        if ticket.refusal is not None:
            # Both SDKs retry a 429 unless told not to; a budget does not free up in a
            # second, and each retry would be one more refused call and event.
            self.request.setHeader(b"x-should-retry", b"false")
            self._respond(ticket.refusal_code, *ticket.refusal, Outcome.REJECTED)
        elif ticket.hit is not None:
            self.status = ticket.hit.code
            self.relay.send_cached(ticket.hit, [(b"x-modeltrack-cache", b"HIT"), self._id_header])
            self._end(Outcome.OK, finish=True)
        else:
            self._forward(body if ticket.body is None else ticket.body)

    # -- forwarded -------------------------------------------------------------

    def _forward(self, body: bytes | BodyPipe | None) -> None:
        resource, request = self._resource, self.request
        self.phase = Phase.ADMITTED
        query = request.uri.partition(b"?")[2]
        target = self._upstream_path.encode("latin-1") + (b"?" + query if query else b"")
        upstream = resource.upstreams[self.endpoint.provider]
        self.forwarded = resource.clock.seconds()
        if isinstance(body, BodyPipe):  # the answer is awaited once the body has all gone
            body.sent = lambda: self._deadline(resource.timeouts.headers) if self.phase is Phase.FORWARDED else None
        self._deadline(None if isinstance(body, BodyPipe) else resource.timeouts.headers)
        self.phase = Phase.FORWARDED
        self._pending = upstream.request(request.method, target, for_upstream(request.requestHeaders), body)
        self._pending.addCallbacks(self._got_response, self._request_failed)
        self._pending.addErrback(self.crashed)

    def _request_failed(self, failure: Failure) -> None:
        self._pending = None
        if self.phase >= Phase.ENDING:
            return  # cancelled by us
        self._deadline(None)
        resource = self._resource
        origin = resource.upstreams[self.endpoint.provider].origin
        said = failures.upstream_failure(failure, origin, resource.timeouts.connect)
        if said.logged is not None:
            log.warn("{problem}: {message}", problem=said.logged, message=said.message)
        self._respond(said.status, said.error_type, said.message, Outcome(said.outcome))

    # -- streaming -------------------------------------------------------------

    def _got_response(self, response: IResponse) -> None:
        self._pending = None
        if self.phase >= Phase.ENDING:
            response.deliverBody(Discard())
            return
        self.phase = Phase.STREAMING
        resource, relay = self._resource, self.relay
        self.ttfb = resource.clock.seconds() - self.started
        self.status = response.code
        content_type = (response.headers.getRawHeaders(b"content-type") or [b""])[0]
        if self._batch is not None and response.code == 200:
            relay.meter = self._batch
        else:
            relay.meter = self.endpoint.meter_for(content_type, self._call if response.code < 300 else None)
        if self.endpoint.read_headers is not None:
            self.told = self.endpoint.read_headers(response.headers, response.code)
        headers = [self._id_header, *self.ticket.response_headers]
        if resource.draining:
            headers.append((b"connection", b"close"))
        if self.ticket.cache_key is not None and response.code == 200:
            headers.append((b"x-modeltrack-cache", b"MISS"))
        self._deadline(resource.timeouts.idle)
        relay.start(response, headers)

    def body_ended(self, whole: bool) -> None:
        """The answer arrived C{whole} (its tail relayed), or its connection broke."""
        if whole:
            self._end(self._answered(), finish=True)
        else:
            self._end(Outcome.UPSTREAM_UNREACHABLE, abort=True)

    def _answered(self) -> Outcome:
        """The outcome of a call whose answer reached its end."""
        if self.status >= 400:
            return Outcome.UPSTREAM_ERROR
        if self.streaming and self.relay.meter.reading.error_type:
            return Outcome.STREAM_ERROR
        return Outcome.OK

    def _timed_out(self) -> None:
        self._timer = None
        clock, timeouts = self._resource.clock, self._resource.timeouts
        if self.phase is Phase.STREAMING:
            quiet = clock.seconds() - self.relay.last_data
            if quiet < timeouts.idle:
                self._deadline(timeouts.idle - quiet)
                return
            if self.relay.meter.ended:
                # Silent after its end marker: the answer is whole; end it cleanly.
                self._end(self._answered(), finish=True, stop=True)
            else:
                # Headers came; the body went silent. The client sees a cut, not an end.
                self._end(Outcome.UPSTREAM_TIMEOUT, abort=True, stop=True)
            return
        self._respond(504, "timeout_error", failures.no_response_headers(timeouts.headers), Outcome.UPSTREAM_TIMEOUT)

    # -- ending ----------------------------------------------------------------

    def crashed(self, failure: Failure) -> None:
        """A bug in the pipeline: log it, end the request, and still record its event."""
        log_failure(log, "modeltrack pipeline error on {route}", failure, route=self.endpoint.path)
        if self.phase < Phase.ENDING:
            self._end(Outcome.PROXY_ERROR, abort=True, stop=True)

    def client_gone(self, failure: Failure | None) -> None:
        self._client_gone = True
        if self.phase < Phase.ENDING:
            # A client may stop reading at a stream's end marker and close before the
            # provider ends its body: that call is complete, not abandoned (unless the
            # marker was still held back, waiting for the disk: then it never got it).
            complete = self.relay.meter.ended and not self.relay.holding
            self._end(self._answered() if complete else Outcome.CLIENT_CLOSED, stop=True)

    def abort(self) -> None:
        """End now, for a shutdown that could not wait any longer."""
        if self.phase is Phase.ENDING:
            # Its event is queued but not yet on disk: the client never sees it complete.
            self.phase = Phase.ENDED
            if not self._client_gone:
                self.request.transport.abortConnection()
            self._resource.forget(self)
        elif self.phase < Phase.ENDING:
            self._end(Outcome.SHUTDOWN, abort=True, stop=True)

    def _stop_upstream(self) -> None:
        if self._pending is not None:
            pending, self._pending = self._pending, None
            pending.cancel()
        else:
            self.relay.stop_upstream()

    def _respond(self, code: int, error_type: str, message: str, outcome: Outcome) -> None:
        """Answer the client with an error of our own, in the provider's shape."""
        self.status = code
        if not self._client_gone:
            self.relay.send_error(code, self.endpoint.error_body(error_type, message), [self._id_header])
        # Whatever was still asked of the upstream (a response head) is not wanted.
        self._end(outcome, finish=True, error_type=error_type, stop=True)

    def _end(
        self, outcome: Outcome, *, finish: bool = False, abort: bool = False, error_type: str | None = None, stop: bool = False
    ) -> None:
        """The call has ended: answer (C{finish}) or cut (C{abort}) the client, C{stop} the upstream, account for it."""
        if self.phase >= Phase.ENDING:
            return
        self.phase = Phase.ENDED
        self.outcome = outcome
        self.relay.ended()
        self._deadline(None)
        request = self.request
        if not self._client_gone:
            request.unregisterProducer()
            if abort:
                request.transport.abortConnection()
            elif finish:
                if self.relay.holds:
                    self.phase = Phase.ENDING  # finished by _completed
                else:
                    self.relay.finish(self._resource.draining)
        if error_type is not None and self.relay.meter.reading.error_type is None:
            self.relay.meter.reading.error_type = error_type
        if stop:
            self._stop_upstream()
        # The answer leaves before its accounting is done.
        after_sending(self._account)

    def _completed(self, _: object = None) -> None:
        """The event is on disk: the held answer may complete."""
        if self.phase is not Phase.ENDING:
            return  # aborted by a stop meanwhile
        self.phase = Phase.ENDED
        if not self._client_gone:
            self.relay.release()
            self.relay.finish(self._resource.draining)
        self._resource.forget(self)

    def _deadline(self, seconds: float | None) -> None:
        """
        The next deadline (L{_timed_out}) in place of the last; L{None}: none. (A new
        timer, not a reset: moving one sooner searches every pending call.)
        """
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None if seconds is None else self._resource.clock.callLater(seconds, self._timed_out)

    # -- ended -----------------------------------------------------------------

    def _account(self) -> None:
        resource, endpoint = self._resource, self.endpoint
        if not endpoint.metered:
            resource.stats.relayed_call(endpoint.provider, endpoint.path)
            if self._batch is not None and self.status == 200:
                told = self._batch.told()
                told.addCallback(resource.accountant.batch_results, endpoint.provider, self.caller, self.traceparent)
                told.addErrback(batches.failed)
            if self.outcome is not Outcome.REJECTED and endpoint.billing is None:
                # Relayed calls cost nothing and leave no event; one the proxy refused
                # (an unknown key, a body too large), or one billed, does.
                resource.forget(self)
                return
        self.reading = self.relay.meter.reading  # now, the answer gone: a body's decoding takes a while
        self.answer = self.relay.whole_answer(self.status) if self.outcome is Outcome.OK else None
        resource.accountant.call_ended(self)
        if self.phase is Phase.ENDING:
            resource.journal.flush().addCallback(self._completed)
        else:
            resource.forget(self)

    @property
    def traceparent(self) -> bytes | None:
        values = self.request.requestHeaders.getRawHeaders(b"traceparent")
        return values[0] if values else None

