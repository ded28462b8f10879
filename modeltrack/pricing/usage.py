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
    extra: dict[str, int] | None = None
    """Every other billed dimension the provider reported (audio, image and video
    tokens), by genai-prices' usage name, L{None} for none (most calls: no dict each):
    each is also counted in the flat field it is part of (audio input tokens in
    C{input_tokens})."""

    def dimensions(self) -> dict[str, int]:
        """
        Every non-zero dimension, flat fields and extras, by genai-prices' names.
        """
        found = {}
        # Written out: this runs once a call, and a loop over names costs twice as much.
        if self.input_tokens:
            found["input_tokens"] = self.input_tokens
        if self.cache_read_tokens:
            found["cache_read_tokens"] = self.cache_read_tokens
        if self.cache_write_tokens:
            found["cache_write_tokens"] = self.cache_write_tokens
        if self.cache_write_1h_tokens:
            found["cache_write_1h_tokens"] = self.cache_write_1h_tokens
        if self.output_tokens:
            found["output_tokens"] = self.output_tokens
        if self.reasoning_tokens:
            found["output_reasoning_tokens"] = self.reasoning_tokens
        if self.web_searches:
            found["web_searches"] = self.web_searches
        if self.extra:
            found.update((name, n) for name, n in self.extra.items() if n)
        return found


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
    @ivar served: how the provider says it served the call, where it says so
        (C{service_tier}; Anthropic's C{inference_geo} and C{speed}).
    @ivar parts: where the provider reports a call's usage in parts, each billed on
        its own (Anthropic's C{usage.iterations}: a server-side tool loop's turns, a
        compaction, an advisor or fallback on another model), each part's model
        (L{None}: the call's) and usage; C{usage} is then their sum.
    @ivar usage_error: why the provider's usage could not be read (a count that is not
        an integer from 0 to 10^12): such a call is recorded unpriced, never guessed.
    @ivar unmetered: why an answer of a metered route carries no usage (a transcript
        as plain text): its call is unpriced with this note, never $0.
    """

    usage: Usage | None = None
    model: str | None = None
    price_context: dict[str, str] = field(default_factory=dict)
    served: dict[str, str] = field(default_factory=dict)
    parts: list[tuple[str | None, Usage]] | None = None
    final: bool = False
    error_type: str | None = None
    usage_error: str | None = None
    unmetered: str | None = None

    @property
    def complete(self) -> bool:
        """
        The provider's final usage was read, and every count in it was readable.
        """
        return self.final and self.usage_error is None


def total(parts: list[tuple[str | None, Usage]]) -> Usage:
    """
    The sum of the parts' usage, field by field.
    """
    summed = Usage()
    extra: dict[str, int] = {}
    for _, usage in parts:
        summed.input_tokens += usage.input_tokens
        summed.cache_read_tokens += usage.cache_read_tokens
        summed.cache_write_tokens += usage.cache_write_tokens
        summed.cache_write_1h_tokens += usage.cache_write_1h_tokens
        summed.output_tokens += usage.output_tokens
        summed.reasoning_tokens += usage.reasoning_tokens
        summed.web_searches += usage.web_searches
        for name, n in (usage.extra or {}).items():
            extra[name] = extra.get(name, 0) + n
    summed.extra = extra or None
    return summed


#: The largest count believed: more tokens than any call has, small enough that every
#: sum and price of counts stays a finite float and fits SQLite's 64-bit INTEGER.
MAX_COUNT = 10**12


class UnreadableUsage(ValueError):
    """
    A usage count that is not an integer from 0 to L{MAX_COUNT}.
    """

    def __init__(self) -> None:
        super().__init__(f"a usage count is not an integer from 0 to {MAX_COUNT:.0e}")


def count(value: Any) -> int:
    """
    A count from a provider's JSON: an integer from 0 to L{MAX_COUNT}; a missing one
    (L{None}) is 0; anything else (a string, a float, a negative or absurd number) is
    unreadable usage, raised as L{UnreadableUsage}.
    """
    if type(value) is int and 0 <= value <= MAX_COUNT:
        return value
    if value is None:
        return 0
    raise UnreadableUsage()


def limit_from(value: Any) -> int:
    """
    A request's own limit (C{max_tokens} and the like): a positive integer, else 0.
    """
    return value if type(value) is int and 0 < value <= MAX_COUNT else 0


def dig(obj: Any, *keys: str) -> Any:
    """
    C{obj[k1][k2]...}, or L{None} where any level is missing or not an object.
    """
    for key in keys:
        if not isinstance(obj, dict):
            return None
        obj = obj.get(key)
    return obj


def extras(found: dict[str, int], details: Any, names: tuple[tuple[str, str], ...]) -> None:
    """
    Add to C{found} the non-zero counts of C{details} (a usage details object, or
    anything else: then nothing), each C{(its field, the dimension's name)} of C{names}.
    """
    if isinstance(details, dict):
        for source, name in names:
            value = details.get(source)
            if value:
                n = count(value)
                if n:
                    found[name] = found.get(name, 0) + n


def text(value: Any, limit: int = 200) -> str | None:
    """
    A short string taken from a provider's JSON, or L{None}.
    """
    if isinstance(value, str) and value:
        return value[:limit]
    return None
