"""
Prices from genai-prices' bundled data (never fetched at run time), with per-model
overrides from C{<data-dir>/pricing.json}.

Finding a model in the price data and applying genai-prices' unit decomposition are
the slow parts (about 100 microseconds), so each model's rates are resolved once per
provider, model, price context and minute into L{LinearPrice} coefficients; pricing a
request is then a dictionary look-up and a few Decimal multiplications.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from genai_prices import Usage as PriceUsage
from genai_prices import data_snapshot
from genai_prices.types import ModelPrice, TieredPrices

from modeltrack.pricing.usage import Usage

#: The dimensions kept in L{Usage.extra}, by genai-prices' usage name, and the name of
#: their rate in its prices (and pricing.json).
EXTRA_RATES = {
    "input_audio_tokens": "input_audio_mtok",
    "output_audio_tokens": "output_audio_mtok",
    "cache_audio_read_tokens": "cache_audio_read_mtok",
    "input_image_tokens": "input_image_mtok",
    "output_image_tokens": "output_image_mtok",
    "cache_image_read_tokens": "cache_image_read_mtok",
    "input_video_tokens": "input_video_mtok",
    "output_video_tokens": "output_video_mtok",
    "cache_video_read_tokens": "cache_video_read_mtok",
    "audio_seconds": "audio_hours",
    "input_characters": "input_mchars",
}
#: Dimensions a provider bills at the rate of the tokens they are part of, which is
#: what genai-prices charges for a dimension the model has no rate of its own for.
#: Google prices image and video input with text; anywhere else, a dimension without a
#: rate of its own leaves the call unpriced rather than priced at the text rate.
AT_TEXT_RATE = {
    provider: frozenset(("input_image_tokens", "input_video_tokens", "cache_image_read_tokens", "cache_video_read_tokens"))
    for provider in ("google", "google-vertex")
}
#: What Anthropic's C{inference_geo} multiplies every rate by: US-only inference is
#: billed at 1.1 times (Claude 4.6 and later, the models that take the parameter) on
#: Anthropic's own API; genai-prices has no variant for it. Any other geography leaves
#: a call unpriced.
GEO_RATES = {"global": Decimal(1), "us": Decimal("1.1")}
#: A rate genai-prices has no unit for: USD per second of video generated (Veo), set in
#: pricing.json; the usage dimension it prices is C{video_seconds}.
VIDEO_SECOND = "video_second"
#: The per-million-token rates a pricing.json entry may set (genai-prices' names).
OVERRIDE_KEYS = frozenset(
    ("input_mtok", "output_mtok", "cache_read_mtok", "cache_write_mtok", "cache_write_1h_mtok", *EXTRA_RATES.values(),
     VIDEO_SECOND)
)


class PricingFileError(ValueError):
    """
    pricing.json is not valid; the message names the entry and the problem.
    """


@dataclass(frozen=True, slots=True)
class Price:
    """
    A priced request: C{cost_usd} is L{None} when the model has no known price.
    """

    cost_usd: Decimal | None
    source: str | None  # "genai-prices" or "pricing.json"
    note: str | None = None  # why a call with usage is unpriced, where it is not plain

    @property
    def priced(self) -> bool:
        return self.cost_usd is not None


UNPRICED = Price(None, None)


class PriceBook:
    def __init__(self, overrides: Overrides | None = None) -> None:
        # genai-prices imports its 1.6 MB price data and its pricing modules on first
        # use: price something now, at start-up, not on the reactor thread in the middle
        # of a request (where the import stalls every stream, and fails outright if the
        # process is out of file descriptors).
        _, info = data_snapshot.get_snapshot().find_provider_model("gpt-4o", None, "openai", None)
        LinearPrice(info.get_prices(datetime.now(UTC)))
        self._overrides: dict[tuple[str, str], LinearPrice] = {}
        #: Model names that stand for another (a Bedrock ARN for its model), from pricing.json.
        self.aliases: dict[str, str] = {}
        self.set_overrides(overrides)
        self._rates: dict[tuple[str, str, tuple[tuple[str, str], ...], int], LinearPrice | None] = {}
        self._windows: dict[tuple[str, str], int | None] = {}
        #: A provider's name in events -> genai-prices' id for it, where they differ
        #: (from the dialects: Bedrock's is aws).
        self.price_providers: dict[str, str] = {}

    def alias(self, model: str | None) -> str | None:
        """
        The model C{model} stands for, if pricing.json's C{aliases} name one.
        """
        if model is None or not self.aliases:
            return model
        return self.aliases.get(model, model)

    def set_overrides(self, overrides: Overrides | None) -> None:
        """
        Per-model rates from pricing.json (L{None}: the file is gone, no overrides).
        """
        per_second = {} if overrides is None else overrides.video_second
        self._overrides = {key: LinearPrice(rates, per_second.get(key)) for key, rates in (overrides or {}).items()}
        self.aliases = {} if overrides is None else dict(overrides.aliases)

    def price(
        self,
        provider: str,
        model: str | None,
        usage: Usage,
        context: dict[str, str],
        when: datetime,
        at_text_rate: frozenset[str] = frozenset(),
    ) -> Price:
        """
        The list price of C{usage} on C{model}, at the time of the request;
        C{at_text_rate}: dimensions billed at the rate of the tokens they are part of
        where the model has no rate of their own (besides the provider's).
        """
        if model is None:
            return UNPRICED
        if (
            usage.cache_read_tokens + usage.cache_write_tokens > usage.input_tokens
            or usage.cache_write_1h_tokens > usage.cache_write_tokens
        ):
            return UNPRICED  # inconsistent counts: record them unpriced rather than guess
        price_provider = self.price_providers.get(provider, provider)
        factor = None
        if context and "inference_geo" in context:
            context = dict(context)
            geo = context.pop("inference_geo")
            if price_provider == "anthropic":  # Bedrock's and Vertex's regions are priced by their own ids
                if geo not in GEO_RATES:
                    return Price(None, None, f"no rate for inference_geo {geo}")
                factor = GEO_RATES[geo]
        lower = model.lower()
        source = "pricing.json"
        rates = self._overrides.get((provider, lower)) or self._overrides.get(("", lower))
        if rates is None:
            source = "genai-prices"
            rates = self._resolve(price_provider, model, context, when)
            if rates is None:
                if usage.extra and "video_seconds" in usage.extra:
                    return Price(None, None, f"no rate per second of video for {model}: set {VIDEO_SECOND} in pricing.json")
                return UNPRICED
        if usage.extra:
            unrated = rates.unrated(usage, AT_TEXT_RATE.get(price_provider, frozenset()) | at_text_rate)
            if unrated:
                return Price(None, None, f"no rate for {unrated} on {model} in {source}")
        cost = rates.cost(usage)
        return Price(cost if factor is None else cost * factor, source)

    def price_parts(
        self, provider: str, model: str | None, parts: list[tuple[str | None, Usage]], context: dict[str, str], when: datetime
    ) -> Price:
        """
        A call billed in parts (L{modeltrack.pricing.usage.Reading.parts}): the sum of each
        part's price on its own model (the call's, where it names none); unpriced if
        any part is.
        """
        cost, sources = Decimal(0), set()
        for part_model, usage in parts:
            named = self.alias(part_model) if part_model else model
            price = self.price(provider, named, usage, context, when)
            if price.cost_usd is None:
                return Price(None, None, price.note or f"no price for {named}, which served part of the call")
            cost += price.cost_usd
            sources.add(price.source)
        return Price(cost, "+".join(sorted(source for source in sources if source)))

    def context_window(self, provider: str, model: str) -> int | None:
        """
        The model's context window in tokens, as genai-prices knows it, or L{None}.
        """
        provider = self.price_providers.get(provider, provider)
        try:
            return self._windows[(provider, model)]
        except KeyError:
            pass
        try:
            _, info = data_snapshot.get_snapshot().find_provider_model(model, None, provider, None)
            window = info.context_window
        except LookupError:
            window = None
        if len(self._windows) > 10_000:
            self._windows.clear()
        self._windows[(provider, model)] = window
        return window

    def _resolve(
        self, provider: str, model: str, context: dict[str, str], when: datetime
    ) -> LinearPrice | None:
        # Price data changes with the date (price cuts, new variants); the minute is
        # fine enough for any constraint genai-prices has.
        key = (provider, model, tuple(sorted(context.items())) if context else (), int(when.timestamp()) // 60)
        try:
            return self._rates[key]
        except KeyError:
            pass
        try:
            _, info = data_snapshot.get_snapshot().find_provider_model(model, None, provider, None)
            rates: LinearPrice | None = LinearPrice(info.get_prices(when, context or None))
        except LookupError:
            rates = None
        if len(self._rates) > 10_000:
            self._rates.clear()
        self._rates[key] = rates
        return rates


#: The usage fields a price is linear in, in the order of L{LinearPrice} coefficients.
_FIELDS = (
    "input_tokens",
    "cache_read_tokens",
    "cache_write_tokens",
    "cache_write_1h_tokens",
    "output_tokens",
    "web_searches",
)


class LinearPrice:
    """
    One model's prices as Decimal coefficients per usage field, per long-context tier.

    genai-prices prices each usage unit at a per-unit rate (the rate of a tier chosen
    by total input tokens), after splitting input into uncached, cache-read and
    cache-write parts. Within a tier that is linear in our usage fields, so the
    coefficients are read once by asking genai-prices itself the price of unit
    increments; a request is then priced with a few multiplications, exactly as
    genai-prices would price it (a property test holds the two equal).
    """

    def __init__(self, rates: ModelPrice, video_second: Decimal | None = None) -> None:
        self._rates = rates
        self._video_second = video_second
        starts = sorted(
            {
                tier.start
                for value in vars(rates).values()
                if isinstance(value, TieredPrices)
                for tier in value.tiers
            }
        )
        # A tier applies above its start: the one starting at S covers S + 1 and up.
        self._tiers = [_coefficients(rates, 0)] + [_coefficients(rates, s + 1) for s in starts]

    def unrated(self, usage: Usage, at_text_rate: frozenset[str]) -> str | None:
        """
        The first dimension of C{usage} this model has no rate of its own for, and
        which is not billed at the text rate either (L{None} if every one is priced).
        """
        for name, n in (usage.extra or {}).items():
            if name == "video_seconds":
                rated = self._video_second is not None
            else:
                rated = name in at_text_rate or getattr(self._rates, EXTRA_RATES.get(name, name), None) is not None
            if n and not rated:
                return name
        return None

    def cost(self, usage: Usage) -> Decimal:
        if usage.extra and "video_seconds" in usage.extra:
            assert self._video_second is not None  # else unrated
            return self._video_second * usage.extra["video_seconds"]  # a video call bills nothing else
        if usage.extra:
            # Audio, image or video: rare enough to ask genai-prices itself (100 us).
            return self._rates.calc_price(
                PriceUsage(
                    input_tokens=usage.input_tokens,
                    cache_read_tokens=usage.cache_read_tokens,
                    cache_write_tokens=usage.cache_write_tokens,
                    cache_write_1h_tokens=usage.cache_write_1h_tokens,
                    output_tokens=usage.output_tokens,
                    web_searches=usage.web_searches,
                    **usage.extra,
                )
            )["total_price"]
        lowest, constant, coefficients = self._tiers[0]
        for tier in reversed(self._tiers):
            if usage.input_tokens >= tier[0]:
                lowest, constant, coefficients = tier
                break
        total = constant
        for field, coefficient in zip(_FIELDS, coefficients, strict=True):
            if coefficient:
                total += coefficient * getattr(usage, field)
        return total


def _coefficients(rates: ModelPrice, base: int) -> tuple[int, Decimal, tuple[Decimal, ...]]:
    """
    The price at C{base} input tokens and the price of one more of each usage field,
    from genai-prices, for the tier that C{base} input tokens fall in.
    """

    def cost(**counts: int) -> Decimal:
        counts["input_tokens"] = counts.get("input_tokens", 0) + base
        counts.setdefault("cache_read_tokens", 0)
        counts.setdefault("cache_write_tokens", 0)
        return rates.calc_price(PriceUsage(**counts))["total_price"]

    at_base = cost()
    one_in = cost(input_tokens=1)
    one_write = cost(input_tokens=1, cache_write_tokens=1)
    coefficients = (
        one_in - at_base,
        cost(input_tokens=1, cache_read_tokens=1) - one_in,
        one_write - one_in,
        cost(input_tokens=1, cache_write_tokens=1, cache_write_1h_tokens=1) - one_write,
        cost(output_tokens=1) - at_base,
        cost(web_searches=1) - at_base,
    )
    return base, at_base - coefficients[0] * base, coefficients


#: pricing.json's entries: (provider, model) -> rates; the provider is "" for an entry
#: that holds for every provider.
class Overrides(dict[tuple[str, str], ModelPrice]):
    """
    pricing.json: rates per (provider or C{""}, lower-case model), and C{aliases}: model
    names that stand for another (a Bedrock application inference profile's ARN for the
    model it runs), priced as that one.
    """

    aliases: dict[str, str]

    def __init__(self) -> None:
        super().__init__()
        self.aliases = {}
        #: USD per second of video generated, per entry (a rate genai-prices has no unit for).
        self.video_second: dict[tuple[str, str], Decimal] = {}


def load_overrides(path: Path) -> Overrides | None:
    """
    Read pricing.json: C{{"models": {"<model>": {"input_mtok": 1.5, ...}}, "providers":
    {"<provider>": {"models": {...}}}}}, rates in USD per million tokens; an entry under
    a provider holds only for it (two upstreams may serve one model name at different
    prices) and comes before one for every provider. Rates of 0 declare a model free.
    A missing file means no overrides.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    try:
        document = json.loads(text, parse_float=Decimal)
    except ValueError as e:
        raise PricingFileError(f"{path.name}: not valid JSON: {e}") from None
    models = document.get("models", {}) if isinstance(document, dict) else None
    providers = document.get("providers", {}) if isinstance(document, dict) else None
    aliases = document.get("aliases", {}) if isinstance(document, dict) else None
    if not isinstance(models, dict) or not isinstance(providers, dict) or not isinstance(aliases, dict) or not (
        models or providers or aliases
    ):
        raise PricingFileError(f'{path.name}: expected an object with a "models" object (and/or "providers", "aliases")')
    overrides = Overrides()
    for name, target in aliases.items():
        if not isinstance(target, str) or not target:
            raise PricingFileError(f"{path.name}: aliases.{name}: expected the name of the model it stands for")
        overrides.aliases[name] = target
    for model, rates in models.items():
        overrides["", model.lower()] = _override(path.name, model, rates, overrides)
    for provider, section in providers.items():
        scoped = section.get("models") if isinstance(section, dict) else None
        if not isinstance(scoped, dict):
            raise PricingFileError(f'{path.name}: providers.{provider}: expected an object with a "models" object')
        for model, rates in scoped.items():
            overrides[provider, model.lower()] = _override(path.name, f"{provider} {model}", rates, overrides, provider)
    return overrides


def _override(filename: str, model: str, rates: Any, overrides: Overrides, provider: str = "") -> ModelPrice:
    where = f"{filename}: {model}"
    if not isinstance(rates, dict) or not rates:
        raise PricingFileError(f"{where}: expected an object of per-million-token rates")
    unknown = set(rates) - OVERRIDE_KEYS
    if unknown:
        raise PricingFileError(f"{where}: unknown keys {sorted(unknown)}")
    if set(rates) != {VIDEO_SECOND} and ("input_mtok" not in rates or "output_mtok" not in rates):
        raise PricingFileError(f"{where}: input_mtok and output_mtok are required")
    values = {}
    for key, value in rates.items():
        if isinstance(value, bool) or not isinstance(value, (int, Decimal)) or value < 0:
            raise PricingFileError(f"{where}: {key} must be a non-negative number")
        values[key] = Decimal(value)
    if VIDEO_SECOND in values:
        overrides.video_second[provider, model.rpartition(" ")[2].lower()] = values.pop(VIDEO_SECOND)
    return ModelPrice(**values)
