"""
Prices from genai-prices' bundled data (never fetched at run time), with per-model
overrides from C{<data-dir>/pricing.json}.

Finding a model in the price data is the slow part (regex and prefix matching over every
model), so the resolved per-token rates are memoised per provider, model and price
context; pricing a request is then a dictionary look-up and Decimal arithmetic.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from genai_prices import Usage as PriceUsage
from genai_prices import data_snapshot
from genai_prices.types import ModelPrice

from modeltrack.usage import Usage

#: The per-million-token rates a pricing.json entry may set (genai-prices' names).
OVERRIDE_KEYS = frozenset(
    ("input_mtok", "output_mtok", "cache_read_mtok", "cache_write_mtok", "cache_write_1h_mtok")
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

    @property
    def priced(self) -> bool:
        return self.cost_usd is not None


UNPRICED = Price(None, None)


class PriceBook:
    def __init__(self, overrides: dict[str, ModelPrice] | None = None) -> None:
        self._overrides = dict(overrides or {})
        self._rates: dict[tuple[str, str, tuple[tuple[str, str], ...], str], ModelPrice | None] = {}

    def price(
        self,
        provider: str,
        model: str | None,
        usage: Usage,
        context: dict[str, str],
        when: datetime,
    ) -> Price:
        """
        The list price of C{usage} on C{model}, at the time of the request.
        """
        if model is None:
            return UNPRICED
        override = self._overrides.get(model.lower())
        if override is not None:
            return Price(_cost(override, usage), "pricing.json")
        rates = self._resolve(provider, model, context, when)
        if rates is None:
            return UNPRICED
        try:
            return Price(_cost(rates, usage), "genai-prices")
        except ValueError:
            # genai-prices rejects inconsistent usage (more cache reads than input):
            # record it unpriced rather than guess.
            return UNPRICED

    def _resolve(
        self, provider: str, model: str, context: dict[str, str], when: datetime
    ) -> ModelPrice | None:
        # Price data changes with the date (price cuts, new variants); the minute is
        # fine enough for any constraint genai-prices has.
        key = (provider, model, tuple(sorted(context.items())), when.strftime("%Y%m%d%H%M"))
        try:
            return self._rates[key]
        except KeyError:
            pass
        try:
            _, info = data_snapshot.get_snapshot().find_provider_model(model, None, provider, None)
            rates = info.get_prices(when, context or None)
        except LookupError:
            rates = None
        if len(self._rates) > 10_000:
            self._rates.clear()
        self._rates[key] = rates
        return rates


def _cost(rates: ModelPrice, usage: Usage) -> Decimal:
    counts: dict[str, int] = {
        "input_tokens": usage.input_tokens,
        "output_tokens": usage.output_tokens,
        "cache_read_tokens": usage.cache_read_tokens,
        "cache_write_tokens": usage.cache_write_tokens,
    }
    if usage.cache_write_1h_tokens:
        counts["cache_write_1h_tokens"] = usage.cache_write_1h_tokens
    if usage.web_searches:
        counts["web_searches"] = usage.web_searches
    return rates.calc_price(PriceUsage(**counts))["total_price"]


def load_overrides(path: Path) -> dict[str, ModelPrice]:
    """
    Read pricing.json: C{{"models": {"<model>": {"input_mtok": 1.5, ...}}}}, rates in
    USD per million tokens. A missing file means no overrides.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    try:
        document = json.loads(text, parse_float=Decimal)
    except ValueError as e:
        raise PricingFileError(f"{path.name}: not valid JSON: {e}") from None
    models = document.get("models") if isinstance(document, dict) else None
    if not isinstance(models, dict):
        raise PricingFileError(f'{path.name}: expected an object with a "models" object')
    overrides = {}
    for model, rates in models.items():
        overrides[model.lower()] = _override(path.name, model, rates)
    return overrides


def _override(filename: str, model: str, rates: Any) -> ModelPrice:
    where = f"{filename}: {model}"
    if not isinstance(rates, dict) or not rates:
        raise PricingFileError(f"{where}: expected an object of per-million-token rates")
    unknown = set(rates) - OVERRIDE_KEYS
    if unknown:
        raise PricingFileError(f"{where}: unknown keys {sorted(unknown)}")
    if "input_mtok" not in rates or "output_mtok" not in rates:
        raise PricingFileError(f"{where}: input_mtok and output_mtok are required")
    values = {}
    for key, value in rates.items():
        if isinstance(value, bool) or not isinstance(value, (int, Decimal)) or value < 0:
            raise PricingFileError(f"{where}: {key} must be a non-negative number")
        values[key] = Decimal(value)
    return ModelPrice(**values)
