"""
Budget alerts (C{--alert-webhook URL}): a JSON POST with a Slack-compatible C{text} when a
budget's spend crosses its warning percent or its limit, once per scope, period and
level. Sending never holds up a call: the POST runs on its own, retried with doubling
delays, and a webhook that stays down costs a log line, nothing else.
"""

from __future__ import annotations

from collections.abc import Iterable
from decimal import Decimal
from typing import Any

from twisted.internet.defer import Deferred
from twisted.logger import Logger

from modeltrack.controls.budgets import Budget, BudgetAction
from modeltrack.failures import upstream_reason

log = Logger()

#: Levels, lowest first: spend at or past the warning percent, spend at or past the limit
#: (or a call refused by a block budget).
LEVELS = ("warning", "limit")


class BudgetAlerts:
    """
    @param client: a treq C{HTTPClient} (or C{StubTreq} in tests).
    @param clock: for the retry delays and the request timeout.
    """

    def __init__(
        self,
        url: str,
        client: Any,
        clock: Any,
        attempts: int = 8,
        first_delay: float = 2.0,
        max_delay: float = 300.0,
        timeout: float = 10.0,
    ) -> None:
        self._url = url
        self._client = client
        self._clock = clock
        self._attempts = attempts
        self._first_delay = first_delay
        self._max_delay = max_delay
        self._timeout = timeout
        self._sent: set[tuple[str, str, str]] = set()
        #: Deliveries still trying, for a stop (or a test) to wait on.
        self.pending: set[Deferred[None]] = set()

    def seed(self, spends: Iterable[tuple[Budget, str, Decimal]]) -> None:
        """
        Levels already reached at start-up (spend rebuilt from the log) were announced
        by the run that reached them: not again. C{spends}: (budget, period, spend).
        """
        for budget, period, spend in spends:
            for level in reached(budget, spend):
                self._sent.add((budget.scope, period, level))

    def check(self, spends: Iterable[tuple[Budget, str, Decimal]]) -> None:
        """
        Spend was just counted toward these budgets (budget, period, spend): announce
        any level newly reached.
        """
        for budget, period, spend in spends:
            levels = reached(budget, spend)
            if levels:
                self.announce(budget, period, levels[-1], spend)

    def announce(self, budget: Budget, period: str, level: str, spend: Decimal) -> None:
        key = (budget.scope, period, level)
        if key in self._sent:
            return
        # A higher level implies the lower ones: never announce a warning after the limit.
        for lower in LEVELS[: LEVELS.index(level) + 1]:
            self._sent.add((budget.scope, period, lower))
        percent = spend * 100 / budget.limit if budget.limit else Decimal(100)
        what = "reached its limit" if level == "limit" else f"passed {budget.warn_at_percent}% of its limit"
        if level == "limit" and budget.action is BudgetAction.BLOCK:
            what += "; calls that would exceed it are refused"
        payload = {
            "text": (
                f"modeltrack: budget {budget.scope} {what}: spent {spend.quantize(Decimal('0.01'))} of "
                f"{budget.limit} USD ({percent:.1f}%) for {budget.period} period {period}"
            ),
            "scope": budget.scope,
            "period": period,
            "level": level,
            "action": budget.action,
            "spend_usd": str(spend),
            "limit_usd": str(budget.limit),
            "percent": float(round(percent, 2)),
        }
        done: Deferred[None] = Deferred()
        self.pending.add(done)
        done.addBoth(self._delivered, done)
        self._attempt(payload, 1, done)

    def _delivered(self, result: object, done: Deferred[None]) -> None:
        self.pending.discard(done)

    def _attempt(self, payload: dict[str, Any], attempt: int, done: Deferred[None]) -> None:
        d = self._client.post(self._url, json=payload, timeout=self._timeout, reactor=self._clock)
        d.addCallback(self._check_status)
        d.addCallbacks(lambda _: done.callback(None), lambda failure: self._retry(failure, payload, attempt, done))

    @staticmethod
    def _check_status(response: Any) -> Deferred[Any]:
        d = response.content()  # read it all: frees the connection
        if not 200 <= response.code < 300:
            d.addCallback(lambda _: _raise(response.code))
        return d

    def _retry(self, failure: Any, payload: dict[str, Any], attempt: int, done: Deferred[None]) -> None:
        # The webhook's URL often holds its secret: a fixed text, never the error's own.
        reason = f"HTTP {failure.value.code}" if failure.check(WebhookRefused) else upstream_reason(failure)
        if attempt >= self._attempts:
            log.error(
                "Budget alert for {scope} not delivered after {attempts} attempts: {reason}",
                scope=payload["scope"], attempts=attempt, reason=reason,
            )
            done.callback(None)
            return
        delay = min(self._first_delay * 2 ** (attempt - 1), self._max_delay)
        log.warn(
            "Budget alert for {scope} failed ({reason}); retrying in {delay:.0f} s",
            scope=payload["scope"], reason=reason, delay=delay,
        )
        self._clock.callLater(delay, self._attempt, payload, attempt + 1, done)


def reached(budget: Budget, spend: Decimal) -> list[str]:
    """
    The levels a period's spend has reached, lowest first.
    """
    if not budget.limit:
        return []
    levels = []
    if spend * 100 >= budget.warn_at_percent * budget.limit:
        levels.append("warning")
    if spend >= budget.limit:
        levels.append("limit")
    return levels


class WebhookRefused(Exception):
    """
    The webhook answered with a status other than 2xx.
    """

    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


def _raise(code: int) -> None:
    raise WebhookRefused(code)
