"""
Budgets: what each team, app, feature, named key and the whole install has spent in the
current period, and reservations that keep concurrent calls from overrunning a limit.

A call counts toward every budget it falls under, and is admitted only if its
worst-case cost fits each C{block} one: spend + open reservations + this reservation
<= limit. All of it runs on the reactor thread, so
admitting and reserving is one step no other call can interleave with. When the call
ends, its reservation is released and its actual cost (if any) becomes spend.

Spend is kept per (team, app, feature, key name, UTC day); a budget's spend in its period is
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
from typing import Any, NamedTuple

from twisted.internet.defer import succeed

HUNDRED = Decimal(100)


class BudgetAction(StrEnum):
    """
    What a budget does at its limit.
    """

    BLOCK = "block"  # refuse a call that would pass it (429)
    WARN = "warn"  # let it through, with a warning header and an alert


class BudgetPeriod(StrEnum):
    """
    The period a budget's limit is per (UTC).
    """

    MONTHLY = "monthly"
    DAILY = "daily"


class ConfigFileError(ValueError):
    """
    A control's config file is invalid; the message names the file, entry and problem.
    """


class Who(NamedTuple):
    """
    What a call's spend is counted under: its labels (team, app, feature) and the
    name of the key that paid (from keys.json); C{""} where there is none.
    """

    team: str = ""
    app: str = ""
    feature: str = ""
    key: str = ""


NO_ONE = Who()


@dataclass(frozen=True, slots=True)
class Budget:
    """
    A limit on spend per period, held to one of: a team (or an app or feature of
    it), a named key (every key of that name: a rotated key keeps its budget), or
    everything (C{everything}).
    """

    team: str
    limit: Decimal
    app: str = ""
    feature: str = ""
    action: BudgetAction = BudgetAction.BLOCK
    period: BudgetPeriod = BudgetPeriod.MONTHLY
    warn_at_percent: Decimal = Decimal(80)
    key: str = ""
    everything: bool = False

    def __post_init__(self) -> None:
        # Given as the text of budgets.json or as members: held as members, so that
        # every test of them is an identity.
        object.__setattr__(self, "action", BudgetAction(self.action))
        object.__setattr__(self, "period", BudgetPeriod(self.period))

    @property
    def scope(self) -> str:
        if self.everything:
            return "all"
        if self.key:
            return f"key={self.key}"
        parts = [f"team={self.team}"]
        if self.app:
            parts.append(f"app={self.app}")
        if self.feature:
            parts.append(f"feature={self.feature}")
        return ",".join(parts)

    @property
    def specificity(self) -> int:
        if self.everything:
            return 0
        if self.key:
            return 1
        return 1 + bool(self.app) + bool(self.feature)

    def matches(self, who: Who) -> bool:
        if self.everything:
            return True
        if self.key:
            return who.key == self.key
        return (
            who.team == self.team
            and (not self.app or who.app == self.app)
            and (not self.feature or who.feature == self.feature)
        )

    def period_of(self, day: str) -> str:
        """
        The period a UTC day (YYYY-MM-DD) falls in, for this budget.
        """
        return day if self.period is BudgetPeriod.DAILY else day[:7]


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


#: Which budget a call's event and warning name when several hold it: the one that
#: refused it, else the one it stands worst with.
_SEVERITY = {
    BudgetStatus.NONE: 0, BudgetStatus.OK: 1, BudgetStatus.UNPRICED: 2,
    BudgetStatus.WARNING: 3, BudgetStatus.OVER: 4, BudgetStatus.BLOCKED: 5,
}


@dataclass(slots=True)
class Admission:
    """
    What the ledger decided for one call, under every budget it falls under.

    @ivar budget: the budget the call's event names: the one that refused it, else
        the one it stands worst with (see L{_SEVERITY}; then the highest percent,
        then the most specific).
    @ivar status: C{none} (no budget), C{ok}, C{warning} (at or past the warning
        percent), C{over} (past a C{warn} budget's limit), C{unpriced} (admitted with
        nothing reserved: the model has no known price), C{blocked}; for C{budget}.
    @ivar percent: C{budget}'s spend and reservations as a percentage of its limit,
        before this call.
    @ivar spend: C{budget}'s spend in its period, before this call.
    @ivar holds: (budget, period) pairs the call's reservation is held against.
    @ivar reserved: the amount held against each of them until the call ends.
    """

    budget: Budget | None = None
    period: str = ""
    reserved: Decimal = Decimal(0)
    status: BudgetStatus = BudgetStatus.NONE
    percent: Decimal = Decimal(0)
    spend: Decimal = Decimal(0)
    holds: tuple[tuple[Budget, str], ...] = ()
    #: Why the ledger could not decide (a shared ledger out of reach): the call is refused.
    unavailable: str | None = None
    #: The call's request id, which a shared ledger keys its reservation by.
    request_id: str = ""
    #: Admitted from this process's lease of a shared budget (no reservation of its own).
    leased: bool = False
    #: What calls under way held against C{budget} (reservations, leases), before this call.
    held: Decimal = Decimal(0)

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


Daily = dict[tuple[str, str, str, str, str], Decimal]


def decide(
    budgets: list[Budget], standings: list[tuple[Decimal, Decimal]], estimate: Decimal | None, day: str
) -> Admission:
    """
    A call's admission under C{budgets} (most specific first), given each one's spend
    and open reservations: refused (C{blocked}) if C{estimate} would take any C{block}
    budget past its limit; its C{holds} are every budget's (budget, period), to reserve
    against. The one rule, whichever ledger holds the figures.
    """
    rows = []
    for budget, (spend, reserved) in zip(budgets, standings, strict=True):
        percent = (spend + reserved) * HUNDRED / budget.limit if budget.limit else HUNDRED
        if estimate is None:
            status = BudgetStatus.UNPRICED
        elif budget.action is BudgetAction.BLOCK and spend + reserved + estimate > budget.limit:
            status = BudgetStatus.BLOCKED
        elif spend + reserved >= budget.limit and budget.action is BudgetAction.WARN:
            status = BudgetStatus.OVER
        elif percent >= budget.warn_at_percent:
            status = BudgetStatus.WARNING
        else:
            status = BudgetStatus.OK
        rows.append((budget, status, percent, spend, reserved))
    # max() keeps the first of equals: the most specific.
    budget, status, percent, spend, reserved = max(rows, key=lambda row: (_SEVERITY[row[1]], row[2]))
    admission = Admission(budget, budget.period_of(day), Decimal(0), status, percent, spend)
    admission.held = reserved
    admission.holds = tuple((held, held.period_of(day)) for held in budgets)
    return admission


def report_row(budget: Budget, day: str, spend: Decimal, reserved: Decimal) -> dict[str, Any]:
    percent = (spend + reserved) * HUNDRED / budget.limit if budget.limit else HUNDRED
    return {
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


class BudgetLedger:
    def __init__(self, budgets: Iterable[Budget] = ()) -> None:
        self._budgets: list[Budget] = []
        #: Spend per (team, app, feature, key name, UTC day).
        self._daily: Daily = {}
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
        for (team, app, feature, key, day), cost in self._daily.items():
            self._add_to_budgets(Who(team, app, feature, key), day, cost)

    def matching(self, who: Who) -> list[Budget]:
        """
        Every budget a call by C{who} counts toward, most specific first.
        """
        return [budget for budget in self._budgets if budget.matches(who)]

    def spends(self, budgets: Iterable[Budget], day: str) -> list[tuple[Budget, str, Decimal]]:
        """
        Each budget's period containing C{day} and its spend in it.
        """
        return [(budget, budget.period_of(day), self.standing(budget, day)[0]) for budget in budgets]

    def standing(self, budget: Budget, day: str) -> tuple[Decimal, Decimal, Decimal]:
        """
        Spend, open reservations, and their sum as a percentage of the limit.
        """
        key = (budget, budget.period_of(day))
        spend = self._spend.get(key, Decimal(0))
        reserved = self._reserved.get(key, Decimal(0))
        percent = (spend + reserved) * HUNDRED / budget.limit if budget.limit else HUNDRED
        return spend, reserved, percent

    def pressing(self, budgets: list[Budget], day: str) -> tuple[Budget, Decimal] | None:
        """
        Of C{budgets}, the one nearest its limit (most specific on a tie), with its percent.
        """
        best: tuple[Budget, Decimal] | None = None
        for budget in budgets:
            percent = self.standing(budget, day)[2]
            if best is None or percent > best[1]:
                best = (budget, percent)
        return best

    def admit(self, budgets: list[Budget], estimate: Decimal | None, day: str, request_id: str = "") -> Admission | Any:
        """
        Reserve C{estimate} against every one of C{budgets} (those the call falls
        under, most specific first), or refuse (status C{blocked}) if it would take
        any C{block} budget past its limit. C{estimate} is L{None} for a model with
        no known price: admitted, flagged, nothing reserved.
        """
        if not budgets:
            return Admission()
        standings = [self.standing(budget, day)[:2] for budget in budgets]
        admission = decide(budgets, standings, estimate, day)
        if admission.status is BudgetStatus.BLOCKED or estimate is None:
            return admission
        for (held, period), (_, reserved) in zip(admission.holds, standings, strict=True):
            self._reserved[(held, period)] = reserved + estimate
        admission.reserved = estimate
        return admission

    def release(self, admission: Admission) -> None:
        """
        The call ended: its reservations no longer hold (idempotent).
        """
        if not admission.reserved:
            return
        for key in admission.holds:
            left = self._reserved.get(key, Decimal(0)) - admission.reserved
            if left > 0:
                self._reserved[key] = left
            else:
                self._reserved.pop(key, None)
        admission.reserved = Decimal(0)
        admission.holds = ()

    def settle(self, admission: Admission, who: Who, day: str, cost: Decimal) -> None:
        """
        A call ended: its reservations released, its cost counted.
        """
        self.release(admission)
        self.spend(who, day, cost)

    def spend(self, who: Who, day: str, cost: Decimal) -> None:
        """
        Count a call's actual cost toward its day and every budget it falls under.
        """
        if not cost:
            return
        key = (who.team, who.app, who.feature, who.key, day)
        self._daily[key] = self._daily.get(key, Decimal(0)) + cost
        self._add_to_budgets(who, day, cost)

    def _add_to_budgets(self, who: Who, day: str, cost: Decimal) -> None:
        for budget in self._budgets:
            if budget.matches(who):
                key = (budget, budget.period_of(day))
                self._spend[key] = self._spend.get(key, Decimal(0)) + cost

    def open_reservations(self) -> Decimal:
        return sum(self._reserved.values(), Decimal(0))

    def forget_before(self, month: str) -> None:
        """
        Drop daily spend older than C{month} (YYYY-MM): no period reaches back further.
        """
        self._daily = {k: v for k, v in self._daily.items() if k[4][:7] >= month}
        self._spend = {k: v for k, v in self._spend.items() if k[1][:7] >= month}

    def load_daily(self, rows: Daily) -> None:
        for (team, app, feature, key, day), cost in rows.items():
            self.spend(Who(team, app, feature, key), day, cost)

    def report(self, day: str) -> list[dict[str, Any]]:
        return [report_row(budget, day, *self.standing(budget, day)[:2]) for budget in self._budgets]

    def standings(self, day: str) -> Any:
        """
        Every budget's standing (L{report}) and the open reservations, as a Deferred:
        a shared ledger reads them from where they are kept.
        """
        return succeed({"budgets": self.report(day), "open_reservations_usd": str(self.open_reservations())})


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
        team, key, scope = entry.get("team", ""), entry.get("key", ""), entry.get("scope")
        if scope is not None and scope != "all":
            raise ConfigFileError(f'{where}: scope must be "all" (or leave it out and give a team or a key)')
        if sum((bool(team), bool(key), scope == "all")) != 1:
            raise ConfigFileError(f'{where}: give one of team, key (a name in keys.json) or "scope": "all"')
        for name in ("team", "key", "app", "feature"):
            if not isinstance(entry.get(name, ""), str):
                raise ConfigFileError(f"{where}: {name} must be a string")
        if (entry.get("app") or entry.get("feature")) and not team:
            raise ConfigFileError(f"{where}: app and feature narrow a team's budget; give its team")
        where = f"{where} ({'all' if scope else f'key {key}' if key else f'team {team}'})"
        limit = _decimal(entry.get("monthly_limit", entry.get("limit")), f"{where}: monthly_limit")
        action, period = entry.get("action", "block"), entry.get("period", "monthly")
        if action not in set(BudgetAction):
            raise ConfigFileError(f"{where}: action must be one of {', '.join(BudgetAction)}")
        if period not in set(BudgetPeriod):
            raise ConfigFileError(f"{where}: period must be one of {', '.join(BudgetPeriod)}")
        warn_at = _decimal(entry.get("warn_at_percent", 80), f"{where}: warn_at_percent")
        budgets.append(
            Budget(
                team, limit, entry.get("app", ""), entry.get("feature", ""), action, period, warn_at, key, scope == "all"
            )
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
