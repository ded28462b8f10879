"""
Anthropic's Messages API: usage is exclusive (C{input_tokens} is the uncached part), and
a stream reports it in C{message_start} and then cumulatively in each C{message_delta}.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.web.http_headers import Headers

from modeltrack.pricing.usage import Reading, Usage, count, dig, text, total
from modeltrack.providers.dialect import Dialect, Endpoint, Origin
from modeltrack.providers.meter import SSEMeter

NAME = "anthropic"

def usage_from(raw: dict[str, Any]) -> Usage:
    uncached = count(raw.get("input_tokens"))
    cache_write = count(raw.get("cache_creation_input_tokens"))
    cache_read = count(raw.get("cache_read_input_tokens"))
    return Usage(
        input_tokens=uncached + cache_write + cache_read,
        cache_read_tokens=cache_read,
        cache_write_tokens=cache_write,
        cache_write_1h_tokens=min(
            cache_write, count(dig(raw, "cache_creation", "ephemeral_1h_input_tokens"))
        ),
        output_tokens=count(raw.get("output_tokens")),
        reasoning_tokens=count(dig(raw, "output_tokens_details", "thinking_tokens")),
        web_searches=count(dig(raw, "server_tool_use", "web_search_requests")),
    )


#: Iterations another model served: an advisor's sub-inference, a server-side fallback.
_OTHER_MODEL = frozenset(("advisor_message", "fallback_message"))


def parts_from(raw: dict[str, Any]) -> list[tuple[str | None, Usage]] | None:
    """
    C{usage.iterations}, where reported: each iteration is billed on its own, on its
    own model (an advisor's, a fallback's), at its own long-context tier, and a
    compaction's tokens are in no top-level field. Web searches, counted only at the
    top level, go with the call's own model.
    """
    iterations = raw.get("iterations")
    if not isinstance(iterations, list) or not iterations:
        return None
    parts: list[tuple[str | None, Usage]] = []
    for entry in iterations:
        if isinstance(entry, dict):
            model = text(entry.get("model")) if entry.get("type") in _OTHER_MODEL else None
            parts.append((model, usage_from({**entry, "server_tool_use": None})))
    searches = count(dig(raw, "server_tool_use", "web_search_requests"))
    if searches:
        own = next((usage for model, usage in parts if model is None), None)
        if own is None:
            parts.append((None, own := Usage()))
        own.web_searches += searches
    return parts or None


def _read_usage(reading: Reading, raw: dict[str, Any]) -> None:
    parts = parts_from(raw)
    reading.parts = parts
    reading.usage = usage_from(raw) if parts is None else total(parts)


def price_context(raw: dict[str, Any]) -> dict[str, str]:
    context = {}
    if raw.get("service_tier") == "batch":
        context["processing"] = "batch"
    if raw.get("speed") == "fast":
        context["speed"] = "fast"
    geo = text(raw.get("inference_geo"), 32)
    if geo:
        context["inference_geo"] = geo  # the price book knows what each costs
    return context


def served(raw: dict[str, Any]) -> dict[str, str]:
    """
    How Anthropic says it served the call: C{service_tier} (standard, priority,
    batch), C{inference_geo}, C{speed}.
    """
    said = {name: text(raw.get(name), 32) for name in ("service_tier", "inference_geo", "speed")}
    return {name: value for name, value in said.items() if value}


def read_body(obj: dict[str, Any]) -> Reading:
    """
    A non-streaming Messages response, or an error body.
    """
    if obj.get("type") == "error":
        return Reading(error_type=text(dig(obj, "error", "type")) or "error")
    raw = obj.get("usage")
    if not isinstance(raw, dict):
        return Reading(model=text(obj.get("model")))
    reading = Reading(model=text(obj.get("model")), price_context=price_context(raw), served=served(raw), final=True)
    _read_usage(reading, raw)
    return reading


class MessagesStreamMeter(SSEMeter):
    """
    A Messages event stream: C{message_start} then C{message_delta} events carry usage;
    C{error} events may arrive after the 200; pings and unknown events are ignored.
    """

    def __init__(self, strip: bool = False) -> None:
        super().__init__(strip)
        self._raw: dict[str, Any] = {}

    def wanted(self, chunk: bytes) -> bool:
        return (
            b"message_start" in chunk or b"message_delta" in chunk or b"message_stop" in chunk or b"error" in chunk
        )

    def on_event(self, name: bytes, data: bytes) -> object:
        if name == b"message_start":
            message = json.loads(data).get("message") or {}
            self.reading.model = text(message.get("model"))
            self._raw = dict(message.get("usage") or {})
        elif name == b"message_delta":
            # Cumulative: each field replaces the one from message_start, never adds to
            # it. The cache lifetime split and the service tier only come in the start.
            delta = json.loads(data).get("usage") or {}
            self._raw.update((key, value) for key, value in delta.items() if value is not None)
            self.reading.final = True
        elif name == b"error":
            self.reading.error_type = text(dig(json.loads(data), "error", "type")) or "error"
            return None
        elif name == b"message_stop":
            self.ended = True
            return None
        else:
            return None
        _read_usage(self.reading, self._raw)
        self.reading.price_context = price_context(self._raw)
        self.reading.served = served(self._raw)
        return None


def error_body(error_type: str, message: str) -> dict[str, Any]:
    return {"type": "error", "error": {"type": error_type, "message": message}}


def claims(headers: Headers) -> bool:
    """
    The Anthropic SDKs send C{x-api-key} (or a bearer token with C{anthropic-version}).
    """
    return headers.hasHeader(b"x-api-key") or headers.hasHeader(b"anthropic-version")


DIALECT = Dialect(
    name=NAME,
    prefix="/anthropic",
    endpoints=(
        Endpoint(NAME, "/v1/messages", error_body, read_body=read_body, stream_meter=MessagesStreamMeter),
        Endpoint(NAME, "/v1/messages/count_tokens", error_body, metered=False),
        Endpoint(NAME, "/v1/models", error_body, method=b"GET", metered=False),
    ),
    error_body=error_body,
    credential_headers=(b"x-api-key", b"authorization"),
    claims=claims,
    relayed=("/v1/",),
    origin=Origin("anthropic-url", "https://api.anthropic.com", "Anthropic API origin"),
)
