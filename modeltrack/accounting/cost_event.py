"""
The cost event: one JSON object per line, one per request that reached a metered route.
This module is the only place that decides its fields (documented in the README).
"""

from __future__ import annotations

import json
import math
import os
import time
from datetime import datetime
from decimal import Decimal
from enum import StrEnum
from typing import Any

import orjson

from modeltrack.controls.gate import NO_CONTROLS
from modeltrack.controls.keys import NO_CALLER, Caller
from modeltrack.pricing.prices import Price
from modeltrack.pricing.usage import Reading, Usage
from modeltrack.providers.dialect import Endpoint


def new_request_id() -> str:
    """
    A call's id: C{mt_}, the time in milliseconds (12 hex digits), then 48 random bits.
    Ordered by time, so the index's and the fleet store's keys grow at their end
    instead of landing all over a key index larger than memory.
    """
    return f"mt_{time.time_ns() // 1_000_000:012x}{os.urandom(6).hex()}"


class Outcome(StrEnum):
    """
    How a metered call ended (the event's C{outcome}; the README's table says when).
    """

    OK = "ok"
    UPSTREAM_ERROR = "upstream_error"
    STREAM_ERROR = "stream_error"
    UPSTREAM_UNREACHABLE = "upstream_unreachable"
    UPSTREAM_TLS_ERROR = "upstream_tls_error"
    UPSTREAM_TIMEOUT = "upstream_timeout"
    CLIENT_CLOSED = "client_closed"
    REJECTED = "rejected"
    SHUTDOWN = "shutdown"
    PROXY_ERROR = "proxy_error"


class RouteClass(StrEnum):
    """
    What the call's route is (the event's C{route_class}).
    """

    METERED = "metered"  # its answer says what it cost
    BILLABLE = "billable"  # billed, but its answer cannot say what: unpriced
    FREE = "free"  # costs nothing (an event only when the proxy refused it)

    @staticmethod
    def of(endpoint: Endpoint) -> RouteClass:
        if endpoint.metered:
            return RouteClass.METERED
        return RouteClass.FREE if endpoint.billing is None else RouteClass.BILLABLE


def cost_event(
    *,
    timestamp: datetime,
    request_id: str,
    provider: str,
    endpoint: str,
    requested_model: str | None,
    model: str | None,
    streaming: bool,
    status_code: int,
    outcome: Outcome,
    reading: Reading,
    price: Price,
    latency_ms: float,
    ttfb_ms: float | None,
    labels: dict[str, str | None],
    caller: Caller = NO_CALLER,
    deployment: str | None = None,
    batch: tuple[str, str] | None = None,
    route_class: RouteClass = RouteClass.METERED,
) -> dict[str, Any]:
    usage = reading.usage or Usage()
    cost: Decimal | None = price.cost_usd
    served = reading.served
    return {
        "timestamp": timestamp.isoformat(timespec="microseconds").replace("+00:00", "Z"),
        "request_id": request_id,
        "provider": provider,
        "endpoint": endpoint,
        "route_class": route_class,
        "model": model,
        "requested_model": requested_model,
        "deployment": deployment,
        "streaming": streaming,
        "status_code": status_code,
        "outcome": outcome,
        "input_tokens": usage.input_tokens,
        "output_tokens": usage.output_tokens,
        "cache_read_tokens": usage.cache_read_tokens,
        "cache_write_tokens": usage.cache_write_tokens,
        "reasoning_tokens": usage.reasoning_tokens,
        "usage": usage.dimensions(),
        "service_tier": served.get("service_tier") if served else None,
        "inference_geo": served.get("inference_geo") if served else None,
        "speed": served.get("speed") if served else None,
        "usage_complete": reading.complete,
        # repr of the float is the shortest text that reads back as the same number,
        # so a Decimal cost with up to 15 significant digits is written exactly.
        "cost_usd": None if cost is None else float(cost),
        "priced": cost is not None,
        "price_source": price.source,
        "price_note": price.note,
        "latency_ms": round(latency_ms, 3),
        "ttfb_ms": None if ttfb_ms is None else round(ttfb_ms, 3),
        **labels,
        "key_id": caller.key_id,
        "key_name": caller.key_name,
        "client": caller.client,
        "error_type": reading.error_type,
        "usage_error": reading.usage_error,
        "batch": batch is not None,
        "batch_id": batch[0] if batch else None,
        "custom_id": batch[1] if batch else None,
        **NO_CONTROLS,
    }


#: Line breaks to Unicode but not to JSON: readers that split lines on them (Python's
#: str.splitlines, many log shippers) would cut a line in two. Escaped, they read the same.
_UNICODE_BREAKS = {0x85: "\\u0085", 0x2028: "\\u2028", 0x2029: "\\u2029"}


def encode(event: dict[str, Any]) -> bytes:
    """
    One line of the event log: JSON (no NaN or infinity, which JSON has not: orjson
    writes them as null), one line whatever the reader takes for a line break. orjson
    takes under a microsecond where the standard library takes ten; a text it cannot
    write (a lone surrogate from a provider's JSON) goes the standard library's way.
    """
    try:
        data = orjson.dumps(event)
    except TypeError:
        return _encode_slowly(event)
    # U+2028, U+2029, U+0085; most lines are ASCII, which is checked much faster.
    if not data.isascii() and (b"\xe2\x80\xa8" in data or b"\xe2\x80\xa9" in data or b"\xc2\x85" in data):
        data = data.decode("utf-8").translate(_UNICODE_BREAKS).encode("utf-8")
    return data + b"\n"


def _encode_slowly(event: dict[str, Any]) -> bytes:
    # ASCII with escapes: a lone surrogate is written as \\udXXX, still valid JSON.
    try:
        text = json.dumps(event, separators=(",", ":"), allow_nan=False)
    except ValueError:
        # A number that is not finite never reaches here from a reading (counts are
        # bounded); should one come from elsewhere, it is written as null.
        event = {key: None if isinstance(value, float) and not math.isfinite(value) else value
                 for key, value in event.items()}
        text = json.dumps(event, separators=(",", ":"), allow_nan=False)
    if "\x85" in text or "\u2028" in text or "\u2029" in text:
        text = text.translate(_UNICODE_BREAKS)
    return text.encode("utf-8") + b"\n"
