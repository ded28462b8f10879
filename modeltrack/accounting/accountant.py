"""
The one place a finished call becomes its cost event and its L{CallRecord}: the reading
completed by what the response's headers said, the model it is priced by, its price, the
controls' settlement (and what they saved), then every sink in order. Batch results are
accounted here too, one event each, so every event in the log is built the same way.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from decimal import Decimal
from types import MappingProxyType
from typing import Protocol

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from modeltrack.accounting.batches import Claimed, reading_of
from modeltrack.accounting.cost_event import Outcome, RouteClass, cost_event, encode
from modeltrack.accounting.records import Answer, CallRecord, Sink
from modeltrack.controls.gate import NO_TICKET, Gate, Ticket
from modeltrack.controls.keys import Caller
from modeltrack.failures import log_failure
from modeltrack.pricing.prices import UNPRICED, Price
from modeltrack.pricing.usage import Reading
from modeltrack.providers.dialect import Endpoint

log = Logger()

#: The price of a call that reported no usage and needed none (refused, say).
_NO_USAGE = Price(Decimal(0), None)


class EndedCall(Protocol):
    """
    What the accountant reads of a call that has ended (a L{modeltrack.web.proxy.Exchange}).
    """

    request_id: str
    endpoint: Endpoint
    requested_model: str | None
    streaming: bool
    status: int
    outcome: Outcome | None
    caller: Caller
    ticket: Ticket
    started: float
    ttfb: float | None
    forwarded: float | None
    told: Reading | None
    reading: Reading | None
    answer: Answer | None

    @property
    def traceparent(self) -> bytes | None: ...


class Accountant:
    """
    Builds each cost event and record, settles the controls, and hands the record to
    L{sinks} (the event log first).
    """

    def __init__(self, gate: Gate, sinks: list[Sink], clock: IReactorTime) -> None:
        self.gate = gate
        #: Where every record goes, in order (L{modeltrack.accounting.records.sinks}).
        self.sinks = sinks
        self._clock = clock

    def call_ended(self, call: EndedCall) -> None:
        outcome, reading = call.outcome, call.reading
        assert outcome is not None and reading is not None  # it has ended
        now = self._clock.seconds()
        when = datetime.fromtimestamp(now, UTC)
        endpoint = call.endpoint
        told = call.told
        if told is not None:  # what the headers said, where the body did not say it
            if reading.error_type is None:
                reading.error_type = told.error_type
            if reading.usage is None and told.usage is not None:
                reading.usage, reading.final = told.usage, True
            elif reading.usage is None and reading.usage_error is None:
                reading.usage_error = told.usage_error
        # The model the answer names, else the one asked for; an alias is resolved.
        model = endpoint.model if endpoint.priced_by_path else reading.model
        model = self.gate.prices.alias(model or call.requested_model)
        price = _NO_USAGE
        if reading.usage_error is not None:
            price = UNPRICED  # counts that cannot be believed are not priced
        elif reading.usage is None:
            # (101: a WebSocket session's response, whose usage never came.)
            if (200 <= call.status < 300 or call.status == 101) and call.ticket.hit is None:
                # Answered, with no usage reported (a stream cut before it, a server
                # that ignores stream_options, a route billed by something else): the
                # cost is unknown, never $0.
                note = reading.unmetered or endpoint.billing
                price = UNPRICED if note is None else Price(None, None, note)
        else:
            price = self._price(endpoint.provider, endpoint.path, model, reading, when, endpoint.at_text_rate)
        ttfb = call.ttfb
        event = cost_event(
            timestamp=when,
            request_id=call.request_id,
            provider=endpoint.provider,
            endpoint=endpoint.path,
            requested_model=call.requested_model,
            model=model,
            streaming=call.streaming,
            status_code=call.status,
            outcome=outcome,
            reading=reading,
            price=price,
            latency_ms=(now - call.started) * 1000,
            ttfb_ms=None if ttfb is None else ttfb * 1000,
            labels=call.caller.labels,
            caller=call.caller,
            deployment=endpoint.deployment or (call.requested_model if endpoint.model_names_deployment else None),
            route_class=RouteClass.of(endpoint),
        )
        forwarded = call.forwarded
        overhead = None if forwarded is None else forwarded - call.started
        self._settle_and_hand_on(event, endpoint.provider, call.caller, call.ticket, price, reading, when, now, model,
                                 overhead, call.answer, call.traceparent)

    def batch_results(self, claimed: Claimed | None, provider: str, caller: Caller, traceparent: bytes | None) -> None:
        """
        One event per batch result not recorded before, at the batch price.
        """
        if claimed is None:
            return  # a file that is no batch's output, or nothing new in it
        batch_id, endpoint, results = claimed
        now = self._clock.seconds()
        when = datetime.fromtimestamp(now, UTC)
        for result in results:
            reading = reading_of(endpoint, result)
            model = self.gate.prices.alias(reading.model)
            price = UNPRICED if reading.usage_error is not None else self._price(provider, endpoint, model, reading, when)
            key = f"{provider}/{batch_id}/{result.custom_id}".encode()
            event = cost_event(
                timestamp=when,
                request_id="mt_b" + hashlib.sha256(key).hexdigest()[:24],
                provider=provider,
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
                labels=caller.labels,
                caller=caller,
                batch=(batch_id, result.custom_id),
            )
            self._settle_and_hand_on(event, provider, caller, NO_TICKET, price, reading, when, now, model,
                                     None, None, traceparent)

    def _settle_and_hand_on(
        self, event: dict[str, object], provider: str, caller: Caller, ticket: Ticket, price: Price, reading: Reading,
        when: datetime, now: float, model: str | None, overhead: float | None, answer: Answer | None,
        traceparent: bytes | None,
    ) -> None:
        # The controls settle first: what they saved and decided is part of the event.
        saved = self.gate.settle(ticket, provider, caller.who, price, reading.usage, reading.price_context, when)
        if ticket is not NO_TICKET:
            event.update(ticket.event_fields(saved))
        record = CallRecord(
            MappingProxyType(event), encode(event), price, saved, overhead, ticket, answer, model, now, traceparent
        )
        for sink in self.sinks:
            sink(record)

    def _price(
        self, provider: str, route: str, model: str | None, reading: Reading, when: datetime,
        at_text_rate: frozenset[str] = frozenset(),
    ) -> Price:
        if reading.usage is None:
            return UNPRICED
        prices = self.gate.prices
        try:
            if reading.parts:
                return prices.price_parts(provider, model, reading.parts, reading.price_context, when)
            return prices.price(provider, model, reading.usage, reading.price_context, when, at_text_rate)
        except Exception:
            log_failure(log, "Could not price a call on {route}", route=route)
            return UNPRICED

