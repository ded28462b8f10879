"""
A finished metered call becomes one L{CallRecord}, which every sink receives from one
list (L{sinks}): the event log, the running totals, the metrics, the response cache.
Adding a sink, or a field, touches this module and the sink, not the pipeline.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from decimal import Decimal
from typing import Any, NamedTuple

from twisted.web.http_headers import Headers

from modeltrack.controls.gate import Gate, Ticket
from modeltrack.pricing.prices import Price


class Answer(NamedTuple):
    """
    A whole non-streaming answer that was relayed unchanged (what a cache may keep).
    (A tuple, like L{CallRecord}: a frozen dataclass takes twice as long to build.)
    """

    code: int
    phrase: bytes
    headers: Headers
    body: bytes


class CallRecord(NamedTuple):
    """
    One finished metered call (a tuple: immutable, and built in a fraction of what a
    frozen dataclass takes, once per call).

    @ivar event: the cost event's fields (read-only).
    @ivar line: the event as its line in the log.
    @ivar price: what it cost (C{price.cost_usd} is the exact Decimal behind the
        event's C{cost_usd}).
    @ivar saved: what the controls saved on it, exactly, if anything.
    @ivar overhead: seconds from its arrival to its forwarding; L{None} if never sent.
    @ivar ticket: its standing with the controls.
    @ivar answer: its whole answer, when it was an ok, unchanged, non-streaming body.
    @ivar model: the model it was priced by.
    @ivar ended: when it ended (seconds since the epoch).
    @ivar traceparent: the caller's W3C C{traceparent} header, if it sent one.
    """

    event: Mapping[str, Any]
    line: bytes
    price: Price
    saved: Decimal | None
    overhead: float | None
    ticket: Ticket
    answer: Answer | None
    model: str | None
    ended: float
    traceparent: bytes | None = None


Sink = Callable[[CallRecord], object]


def sinks(journal: Any, stats: Any, gate: Gate, metrics: Any = None, export: Sink | None = None) -> list[Sink]:
    """
    Where every finished call goes, in order: the event log first (the sooner it is
    queued, the sooner it is on disk), then the totals, the metrics (when an admin
    listener serves them), the response cache (when there is one) and the
    OpenTelemetry export (C{--otlp-endpoint}).
    """
    found: list[Sink] = [
        lambda record: journal.append(record.line),
        lambda record: stats.record(record.event, record.price.cost_usd),
    ]
    if metrics is not None:
        found.append(lambda record: metrics.observe(record.event, record.price.cost_usd, record.saved, record.overhead))
    if gate.cache is not None:  # set at start-up, for the process's life
        found.append(_cache_store(gate))
    if export is not None:
        found.append(export)
    return found


def _cache_store(gate: Gate) -> Sink:
    def store(record: CallRecord) -> None:
        answer = record.answer
        if answer is not None:
            gate.store(
                record.ticket, answer.code, answer.phrase, answer.headers, answer.body, record.price, record.model, record.ended
            )

    return store
