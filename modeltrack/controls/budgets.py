"""
Budgets: what each team, app and feature has spent in the current period, and
reservations that keep concurrent calls from overrunning a limit.

A call is admitted only if its worst-case cost fits: spend + open reservations + this
reservation <= limit, for a C{block} budget. All of it runs on the reactor thread, so
admitting and reserving is one step no other call can interleave with. When the call
ends, its reservation is released and its actual cost (if any) becomes spend.

Spend is kept per (team, app, feature, UTC day); a budget's spend in its period is
derived from that, so budgets.json can change without losing anything.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal, InvalidOperation
from enum import StrEnum
from pathlib import Path
from typing import Any

PERIODS = ("monthly", "daily")
ACTIONS = ("block", "warn")
HUNDRED = Decimal(100)


class ConfigFileError(ValueError):
    """
    A control's config file is invalid; the message names the file, entry and problem.
    """


@dataclass(frozen=True, slots=True)
class Budget:
    team: str
    limit: Decimal
    app: str = ""
    feature: str = ""
    action: str = "block"
    period: str = "monthly"
    warn_at_percent: Decimal = Decimal(80)

    @property
    def scope(self) -> str:
        parts = [f"team={self.team}"]
        if self.app:
            parts.append(f"app={self.app}")
        if self.feature:
            parts.append(f"feature={self.feature}")
        return ",".join(parts)

    @property
    def specificity(self) -> int:
        return 1 + bool(self.app) + bool(self.feature)

    def matches(self, team: str | None, app: str | None, feature: str | None) -> bool:
        return (
            team == self.team
            and (not self.app or app == self.app)
            and (not self.feature or feature == self.feature)
        )

    def period_of(self, day: str) -> str:
        """
        The period a UTC day (YYYY-MM-DD) falls in, for this budget.
        """
        return day if self.period == "daily" else day[:7]


def day_of(when: datetime) -> str:
    return when.date().isoformat()  # YYYY-MM-DD, cheaper than strftime


class BudgetStatus(StrEnum):
    """
    A call's standing with its budget (the event's C{budget_status}).
    """

    NONE = "none"
    OK = "ok"
    WARNING = "warning"
    OVER = "over"
    UNPRICED = "unpriced"
    BLOCKED = "blocked"


@dataclass(slots=True)
class Admission:
    """
    What the ledger decided for one call.

    @ivar budget: the most specific budget matching the call's labels, if any.
    @ivar reserved: the amount held until the call ends.
    @ivar status: C{none} (no budget), C{ok}, C{warning} (at or past the warning
        percent), C{over} (past a C{warn} budget's limit), C{unpriced} (admitted with
        nothing reserved: the model has no known price), C{blocked}.
    @ivar percent: spend and reservations as a percentage of the limit, before this call.
    """

    budget: Budget | None = None
    period: str = ""
    reserved: Decimal = Decimal(0)
    status: BudgetStatus = BudgetStatus.NONE
    percent: Decimal = Decimal(0)
    spend: Decimal = Decimal(0)

    @property
    def warning(self) -> bytes | None:
        """
        The C{X-ModelTrack-Budget-Warning} header value, when there is one.
        """
        if self.budget is None or self.status not in (BudgetStatus.WARNING, BudgetStatus.OVER):
            return None
        return (
            f"{self.budget.scope} at {self.percent:.1f}% of {self.budget.limit} USD "
            f"({self.budget.period}, {self.budget.action})"
        ).encode("utf-8", "replace")


class BudgetLedger:
    def __init__(self, budgets: Iterable[Budget] = ()) -> None:
        self._budgets: list[Budget] = []
        self._daily: dict[tuple[str, str, str, str], Decimal] = {}
        self._spend: dict[tuple[Budget, str], Decimal] = {}
        self._reserved: dict[tuple[Budget, str], Decimal] = {}
        self.replace(list(budgets))

    @property
    def budgets(self) -> list[Budget]:
        return self._budgets

    def replace(self, budgets: list[Budget]) -> None:
        """
        Take a new set of budgets (a reloaded budgets.json). Spend is recomputed from
        the daily table; reservations of budgets that still exist are kept.
        """
        self._budgets = sorted(budgets, key=lambda b: -b.specificity)
        kept = set(budgets)
        self._reserved = {k: v for k, v in self._reserved.items() if k[0] in kept}
        self._spend = {}
        for (team, app, feature, day), cost in self._daily.items():
            self._add_to_budgets(team, app, feature, day, cost)

    def applicable(self, team: str | None, app: str | None, feature: str | None) -> Budget | None:
        if not team:
            return None
        for budget in self._budgets:  # most specific first
            if budget.matches(team, app, feature):
                return budget
        return None

    def spends(self, budgets: Iterable[Budget], day: str) -> list[tuple[Budget, str, Decimal]]:
        """
        Each budget's period containing C{day} and its spend in it.
        """
        return [(budget, budget.period_of(day), self.standing(budget, day)[0]) for budget in budgets]

    def matching(self, team: str | None, app: str | None, feature: str | None) -> list[Budget]:
        """
        Every budget a call with these labels counts toward.
        """
        if not team:
            return []
        return [budget for budget in self._budgets if budget.matches(team, app, feature)]

    def standing(self, budget: Budget, day: str) -> tuple[Decimal, Decimal, Decimal]:
        """
        Spend, open reservations, and their sum as a percentage of the limit.
        """
        key = (budget, budget.period_of(day))
        spend = self._spend.get(key, Decimal(0))
        reserved = self._reserved.get(key, Decimal(0))
        percent = (spend + reserved) * HUNDRED / budget.limit if budget.limit else HUNDRED
        return spend, reserved, percent

    def admit(self, budget: Budget | None, estimate: Decimal | None, day: str) -> Admission:
        """
        Reserve C{estimate} against C{budget}, or refuse (status C{blocked}).
        C{estimate} is L{None} for a model with no known price: admitted, flagged.
        """
        if budget is None:
            return Admission()
        period = budget.period_of(day)
        spend, reserved, percent = self.standing(budget, day)
        admission = Admission(budget, period, Decimal(0), BudgetStatus.OK, percent, spend)
        if estimate is None:
            admission.status = BudgetStatus.UNPRICED
            return admission
        if budget.action == "block" and spend + reserved + estimate > budget.limit:
            admission.status = BudgetStatus.BLOCKED
            return admission
        key = (budget, period)
        self._reserved[key] = reserved + estimate
        admission.reserved = estimate
        if spend + reserved >= budget.limit and budget.action == "warn":
            admission.status = BudgetStatus.OVER
        elif percent >= budget.warn_at_percent:
            admission.status = BudgetStatus.WARNING
        return admission

    def release(self, admission: Admission) -> None:
        """
        The call ended: its reservation no longer holds (idempotent).
        """
        if admission.budget is None or not admission.reserved:
            return
        key = (admission.budget, admission.period)
        left = self._reserved.get(key, Decimal(0)) - admission.reserved
        if left > 0:
            self._reserved[key] = left
        else:
            self._reserved.pop(key, None)
        admission.reserved = Decimal(0)

    def spend(self, team: str | None, app: str | None, feature: str | None, day: str, cost: Decimal) -> None:
        """
        Count a call's actual cost toward its day and every budget it falls under.
        """
        if not team or not cost:
            return
        key = (team, app or "", feature or "", day)
        self._daily[key] = self._daily.get(key, Decimal(0)) + cost
        self._add_to_budgets(team, app or "", feature or "", day, cost)

    def _add_to_budgets(self, team: str, app: str, feature: str, day: str, cost: Decimal) -> None:
        for budget in self._budgets:
            if budget.matches(team, app, feature):
                key = (budget, budget.period_of(day))
                self._spend[key] = self._spend.get(key, Decimal(0)) + cost

    def open_reservations(self) -> Decimal:
        return sum(self._reserved.values(), Decimal(0))

    def forget_before(self, month: str) -> None:
        """
        Drop daily spend older than C{month} (YYYY-MM): no period reaches back further.
        """
        self._daily = {k: v for k, v in self._daily.items() if k[3][:7] >= month}
        self._spend = {k: v for k, v in self._spend.items() if k[1][:7] >= month}

    def load_daily(self, rows: dict[tuple[str, str, str, str], Decimal]) -> None:
        for (team, app, feature, day), cost in rows.items():
            self.spend(team, app, feature, day, cost)

    def report(self, day: str) -> list[dict[str, Any]]:
        rows = []
        for budget in self._budgets:
            spend, reserved, percent = self.standing(budget, day)
            rows.append(
                {
                    "scope": budget.scope,
                    "period": budget.period,
                    "period_key": budget.period_of(day),
                    "action": budget.action,
                    "limit_usd": str(budget.limit),
                    "spend_usd": str(spend),
                    "reserved_usd": str(reserved),
                    "percent": float(round(percent, 2)),
                    "warn_at_percent": float(budget.warn_at_percent),
                }
            )
        return rows


def load_budgets(path: Path) -> list[Budget] | None:
    """
    budgets.json as in the original ModelTrack, plus optional C{feature}, C{period}
    and C{warn_at_percent}. L{None} if the file does not exist (budgets are off).
    """
    document = _read_json(path)
    if document is None:
        return None
    entries = document.get("budgets") if isinstance(document, dict) else None
    if not isinstance(entries, list):
        raise ConfigFileError(f'{path.name}: expected an object with a "budgets" list')
    budgets = []
    for i, entry in enumerate(entries):
        where = f"{path.name}: budgets[{i}]"
        if not isinstance(entry, dict):
            raise ConfigFileError(f"{where}: expected an object")
        team = entry.get("team")
        if not isinstance(team, str) or not team:
            raise ConfigFileError(f"{where}: team must be a non-empty string")
        where = f"{where} (team {team})"
        for name in ("app", "feature"):
            if not isinstance(entry.get(name, ""), str):
                raise ConfigFileError(f"{where}: {name} must be a string")
        limit = _decimal(entry.get("monthly_limit", entry.get("limit")), f"{where}: monthly_limit")
        action = entry.get("action", "block")
        if action not in ACTIONS:
            raise ConfigFileError(f"{where}: action must be one of {', '.join(ACTIONS)}")
        period = entry.get("period", "monthly")
        if period not in PERIODS:
            raise ConfigFileError(f"{where}: period must be one of {', '.join(PERIODS)}")
        warn_at = _decimal(entry.get("warn_at_percent", 80), f"{where}: warn_at_percent")
        budgets.append(
            Budget(team, limit, entry.get("app", ""), entry.get("feature", ""), action, period, warn_at)
        )
    return budgets


def _decimal(value: Any, what: str) -> Decimal:
    if isinstance(value, bool) or not isinstance(value, (int, float, Decimal, str)):
        raise ConfigFileError(f"{what} must be a non-negative number")
    try:
        number = Decimal(str(value))
    except InvalidOperation:
        raise ConfigFileError(f"{what} must be a non-negative number") from None
    if not number.is_finite() or number < 0:
        raise ConfigFileError(f"{what} must be a non-negative number")
    return number


def _read_json(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    try:
        return json.loads(text, parse_float=Decimal)
    except ValueError as e:
        raise ConfigFileError(f"{path.name}: not valid JSON: {e}") from None
