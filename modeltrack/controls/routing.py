"""
Routing rules, as in the original ModelTrack's routing.json: when a call's budget is
past a threshold, send calls for expensive models to a cheaper one (C{downgrade}), or
refuse them naming the cheaper one (C{block_expensive}).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from decimal import Decimal
from enum import StrEnum
from pathlib import Path
from typing import Any

from modeltrack.controls.budgets import ConfigFileError, _decimal, _read_json

TRIGGERS = ("budget_percent_above",)
class RouteAction(StrEnum):
    """
    What a routing rule does to a call past its threshold.
    """

    DOWNGRADE = "downgrade"
    BLOCK_EXPENSIVE = "block_expensive"


ROUTE_ACTIONS = tuple(action.value for action in RouteAction)
DEFAULT_OPT_OUT_HEADER = "X-ModelTrack-No-Route"


@dataclass(frozen=True, slots=True)
class Rule:
    name: str
    threshold: Decimal
    from_models: tuple[str, ...]
    to_model: str
    provider: str = ""
    action: RouteAction = RouteAction.DOWNGRADE
    trigger: str = "budget_percent_above"
    enabled: bool = True

    def applies(self, provider: str, model: str | None, budget_percent: Decimal | None) -> bool:
        return (
            self.enabled
            and budget_percent is not None
            and budget_percent > self.threshold
            and model in self.from_models
            and (not self.provider or self.provider == provider)
        )


@dataclass(frozen=True, slots=True)
class Routing:
    rules: tuple[Rule, ...] = ()
    opt_out_header: str = DEFAULT_OPT_OUT_HEADER

    def decide(self, provider: str, model: str | None, budget_percent: Decimal | None) -> Rule | None:
        for rule in self.rules:
            if rule.applies(provider, model, budget_percent):
                return rule
        return None


class RoutingStats:
    def __init__(self) -> None:
        self.routed: Counter[str] = Counter()
        self.blocked: Counter[str] = Counter()
        self.saved: dict[str, Decimal] = {}

    def report(self) -> dict[str, Any]:
        rules = sorted(set(self.routed) | set(self.blocked))
        return {
            "routed": sum(self.routed.values()),
            "blocked": sum(self.blocked.values()),
            "saved_usd": str(sum(self.saved.values(), Decimal(0))),
            "rules": {
                name: {
                    "routed": self.routed[name],
                    "blocked": self.blocked[name],
                    "saved_usd": str(self.saved.get(name, Decimal(0))),
                }
                for name in rules
            },
        }


def load_routing(path: Path) -> Routing | None:
    """
    routing.json: C{{"rules": [...], "opt_out_header": "X-ModelTrack-No-Route"}}.
    L{None} if the file does not exist (routing is off).
    """
    document = _read_json(path)
    if document is None:
        return None
    entries = document.get("rules") if isinstance(document, dict) else None
    if not isinstance(entries, list):
        raise ConfigFileError(f'{path.name}: expected an object with a "rules" list')
    rules = []
    for i, entry in enumerate(entries):
        where = f"{path.name}: rules[{i}]"
        if not isinstance(entry, dict):
            raise ConfigFileError(f"{where}: expected an object")
        name = entry.get("name")
        if not isinstance(name, str) or not name:
            raise ConfigFileError(f"{where}: name must be a non-empty string")
        where = f"{where} ({name})"
        trigger = entry.get("trigger", "budget_percent_above")
        if trigger not in TRIGGERS:
            raise ConfigFileError(f"{where}: trigger must be one of {', '.join(TRIGGERS)}")
        action = entry.get("action", "downgrade")
        if action not in ROUTE_ACTIONS:
            raise ConfigFileError(f"{where}: action must be one of {', '.join(ROUTE_ACTIONS)}")
        from_models = entry.get("from_models")
        if not isinstance(from_models, list) or not all(isinstance(m, str) and m for m in from_models):
            raise ConfigFileError(f"{where}: from_models must be a list of model names")
        to_model = entry.get("to_model")
        if not isinstance(to_model, str) or not to_model:
            raise ConfigFileError(f"{where}: to_model must be a model name")
        provider = entry.get("provider", "")
        if provider not in ("", "openai", "anthropic"):
            raise ConfigFileError(f"{where}: provider must be openai or anthropic")
        enabled = entry.get("enabled", True)
        if not isinstance(enabled, bool):
            raise ConfigFileError(f"{where}: enabled must be true or false")
        threshold = _decimal(entry.get("threshold"), f"{where}: threshold")
        rules.append(Rule(name, threshold, tuple(from_models), to_model, provider, RouteAction(action), trigger, enabled))
    header = document.get("opt_out_header", DEFAULT_OPT_OUT_HEADER)
    if not isinstance(header, str) or not header:
        raise ConfigFileError(f"{path.name}: opt_out_header must be a header name")
    return Routing(tuple(rules), header)
