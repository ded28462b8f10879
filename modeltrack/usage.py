"""
Token usage in one normalised shape, whatever the provider's wire format.

Providers disagree on whether cached tokens are part of the input count (OpenAI: yes,
Anthropic: no). Every dialect converts into L{Usage}, where C{input_tokens} always
includes cache reads and writes and C{output_tokens} always includes reasoning, so that
one pricing function serves them all.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(slots=True)
class Usage:
    input_tokens: int = 0
    """Every input token, cache reads and cache writes included."""
    cache_read_tokens: int = 0
    """The part of the input read from the provider's prompt cache."""
    cache_write_tokens: int = 0
    """The part of the input written to the prompt cache (all lifetimes)."""
    cache_write_1h_tokens: int = 0
    """The part of C{cache_write_tokens} written with a one-hour lifetime."""
    output_tokens: int = 0
    """Every output token, reasoning included."""
    reasoning_tokens: int = 0
    """The part of the output spent on reasoning or thinking."""
    web_searches: int = 0
    """Server-side web searches, billed per thousand."""


@dataclass(slots=True)
class Reading:
    """
    What a usage meter read out of one response.

    @ivar usage: the provider's own token counts, or L{None} if none arrived.
    @ivar model: the model as the provider reported it.
    @ivar price_context: what selects a price variant (service tier, batch, speed).
    @ivar final: the provider's final usage report was seen; a stream cut before it
        leaves only what was known by then.
    @ivar error_type: the provider's error type, for an error body or an error event.
    """

    usage: Usage | None = None
    model: str | None = None
    price_context: dict[str, str] = field(default_factory=dict)
    final: bool = False
    error_type: str | None = None


def count(value: Any) -> int:
    """
    A token count from a JSON value: non-negative ints pass, anything else is 0.
    """
    if type(value) is int and value > 0:
        return value
    return 0


def dig(obj: Any, *keys: str) -> Any:
    """
    C{obj[k1][k2]...}, or L{None} where any level is missing or not an object.
    """
    for key in keys:
        if not isinstance(obj, dict):
            return None
        obj = obj.get(key)
    return obj


def text(value: Any, limit: int = 200) -> str | None:
    """
    A short string taken from a provider's JSON, or L{None}.
    """
    if isinstance(value, str) and value:
        return value[:limit]
    return None
