"""
One budget across processes and instances: spend and open reservations in Redis
(C{--redis-url}), through txredisapi, the Twisted-native client.

Per budget and period (C{<prefix><scope>|<period>}): a hash of spend per contributor
(a process: this install's id and its worker number), a hash of open reservations by
request id, a sorted set of their expiry times, and their total. All amounts are whole
nano-USD (a call's cost rounded up, at most $10^-9 a call: a budget never under-counts).

- Reserve is one Lua script over every budget a call falls under: expired reservations
  are dropped, then the call is refused if it would take any C{block} budget past its
  limit, else its estimate is held against all of them. Keyed by request id: a retry
  holds nothing twice. Reservations expire (C{ttl}): a crashed process's free up.
- Spend is each contributor's own total, set (never added): rebuilt from its event log
  at start, published again after every call and every few seconds, so a restart, a
  lost write or an emptied Redis never counts a call twice, and heals by itself.
- Leases: most calls take no round trip. Each process holds a lease per budget (one
  more reservation in Redis, under C{lease|<contributor>}), taken together with a
  call's own reservation: up to L{LEASE_CALLS} times the call's estimate, at most
  L{LEASE_SHARE} of the limit, and at most a quarter of what is left (so near the limit
  leases shrink to nothing and every call is reserved on its own). A call whose
  estimate fits in what is left of the lease is admitted at once; its cost is moved
  from the lease into the spend when it is settled. The lease only grows in Redis
  before this process counts the growth, and only shrinks here before Redis hears:
  what this process hands out is always held in Redis, so a limit holds exactly as
  with one reservation a call. A lease left idle is given back after
  L{LEASE_IDLE_SECONDS} (and at stop); a crashed process's expires. The price: while
  one process holds a lease, another may be refused up to that lease (at most
  L{LEASE_SHARE} of the limit) early.
- Redis out of reach: C{closed} refuses calls under a budget (503); C{open} decides by
  this process's own ledger, logging the first failure and the recovery. (A call that
  fits in a lease taken before Redis went away is admitted until the first command
  fails, within milliseconds: the lease was reserved while Redis could say.)
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal
from enum import StrEnum
from typing import Any

from twisted.internet.defer import Deferred, gatherResults, succeed
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from modeltrack.controls import redis_scripts
from modeltrack.controls.budgets import (
    Admission,
    Budget,
    BudgetAction,
    BudgetLedger,
    BudgetStatus,
    Who,
    decide,
    report_row,
)
from modeltrack.controls.redis_client import COMMAND_SECONDS
from modeltrack.failures import log_failure

log = Logger()

class RedisFailure(StrEnum):
    """
    What a call under a budget meets while Redis is out of reach (C{--redis-failure}).
    """

    CLOSED = "closed"  # refused (503): no budget can be overrun
    OPEN = "open"  # decided by this process's own ledger


NANO = Decimal(10) ** 9
#: How long an unsettled reservation holds (longer than any call: the idle and
#: headers timeouts end a call well before).
RESERVATION_SECONDS = 3600
#: How often each contributor's spend is written again (heals lost writes).
PUBLISH_SECONDS = 10.0
#: Keys outlive their period by this long (a month's keys live about 40 days).
KEEP_SECONDS = 40 * 86400

#: Calls that ended are settled together, this long after the first of them: one
#: script for many calls (each round trip costs this process more CPU than the Lua).
SETTLE_SECONDS = 0.005
#: A lease is asked for to cover this many calls like the one that asks...
LEASE_CALLS = 16
#: ... but never more than this share of the budget's limit, and none at all if that
#: would not cover a few such calls.
LEASE_SHARE = Decimal("0.01")
LEASE_FEWEST_CALLS = 4
#: A lease no call has used for this long is given back.
LEASE_IDLE_SECONDS = 0.25
#: A lease outlives its last use in Redis by this long (a crashed process's expires).
LEASE_SECONDS = 60


@dataclass(slots=True)
class Lease:
    """
    This process's lease of one budget in one period, in nano-USD.

    @ivar granted: what it may hand out (never more than Redis holds for it).
    @ivar used: the estimates of the calls under way that it admitted.
    @ivar spent: the budget's spend, all contributors, at the last answer from Redis.
    @ivar others: what everything else held then (other processes' reservations and
        leases, and this one's own calls reserved one by one).
    @ivar limit: the budget's limit.
    """

    granted: int = 0
    used: int = 0
    spent: int = 0
    others: int = 0
    limit: int = 0
    idle: Any = None




def nano_up(amount: Decimal) -> int:
    return int((amount * NANO).to_integral_value(ROUND_CEILING))


class RedisLedger(BudgetLedger):
    """
    A L{BudgetLedger} whose admissions are decided by the figures in Redis. It keeps
    its own ledger too: this contributor's spend (what it publishes), and the figures
    routing and C{--redis-failure open} use.
    """

    def __init__(
        self, redis: Any, clock: Any, contributor: str, failure: RedisFailure = RedisFailure.CLOSED, prefix: str = "modeltrack:"
    ) -> None:
        self._redis = redis
        self._clock = clock
        self.contributor = contributor
        self._failure = RedisFailure(failure)
        self._prefix = prefix
        self._down = False
        self._publishing = LoopingCall(self.publish)
        self._publishing.clock = clock
        self._settling: Any = None
        self._settling_keys: list[str] = []
        self._settling_args: list[str] = []
        self._settling_bases: list[str] = []  # each budget's, in the order of the keys
        #: This process's leases, by the budget's and period's key base.
        self._leases: dict[str, Lease] = {}
        self._lease_id = f"lease|{contributor}"
        #: Calls admitted from a lease, and calls reserved in Redis one by one.
        self.from_lease = 0
        self.one_by_one = 0
        super().__init__()

    def start(self) -> None:
        self._publishing.start(PUBLISH_SECONDS, now=True)

    def stop(self) -> Deferred[Any]:
        if self._publishing.running:
            self._publishing.stop()
        if self._settling is not None:
            self._settling.cancel()
        for base in list(self._leases):
            self._give_back(base)
        return self._settle_now()  # what ended last still settles, and the leases go back

    def _base(self, budget: Budget, period: str) -> str:
        return f"{self._prefix}{budget.scope}|{period}"

    def _keys(self, budget: Budget, period: str) -> list[str]:
        base = self._base(budget, period)
        return [f"{base}:spend", f"{base}:held", f"{base}:expiry", f"{base}:total"]

    def _lease_wanted(self, budget: Budget, estimate: int) -> int:
        most = int((budget.limit * LEASE_SHARE * NANO).to_integral_value(ROUND_FLOOR))
        return min(LEASE_CALLS * estimate, most) if most >= LEASE_FEWEST_CALLS * estimate else 0

    def _from_lease(self, budgets: list[Budget], estimate: int, day: str, request_id: str) -> Admission | None:
        """
        The call admitted from this process's leases, if it fits in every one.
        """
        leases = []
        for budget in budgets:
            lease = self._leases.get(self._base(budget, budget.period_of(day)))
            if lease is None or lease.granted - lease.used < estimate:
                return None
            leases.append(lease)
        standings = [(Decimal(lease.spent) / NANO, Decimal(lease.others + lease.used) / NANO) for lease in leases]
        amount = Decimal(estimate) / NANO
        admission = decide(budgets, standings, amount, day)
        if admission.status is BudgetStatus.BLOCKED:
            return None  # the figures moved on: ask Redis
        for lease in leases:
            lease.used += estimate
            if lease.idle is not None:
                lease.idle.cancel()
                lease.idle = None
        admission.request_id, admission.reserved, admission.leased = request_id, amount, True
        self._hold_locally(admission, amount)
        self.from_lease += 1
        return admission

    def _hold_locally(self, admission: Admission, amount: Decimal) -> None:
        # This process's own view of what is held, for routing and reports.
        for held, period in admission.holds:
            self._reserved[(held, period)] = self._reserved.get((held, period), Decimal(0)) + amount

    def _command(self, d: Deferred[Any]) -> Deferred[Any]:
        return d.addTimeout(COMMAND_SECONDS, self._clock)

    def admit(
        self, budgets: list[Budget], estimate: Decimal | None, day: str, request_id: str = "", again: bool = False
    ) -> Any:
        """
        A call's admission by the figures in Redis (or from a lease). One that would be
        refused is asked about once more (C{again}) after this process has settled the
        calls that ended and given back its idle leases.
        """
        if not budgets:
            return Admission()
        if estimate is None:
            return super().admit(budgets, estimate, day, request_id)  # unpriced: nothing reserved anywhere
        estimate_nano = nano_up(estimate)
        leased = self._from_lease(budgets, estimate_nano, day, request_id) if estimate_nano else None
        if leased is not None:
            return leased
        keys, args = [], []
        bases = []
        for budget in budgets:
            period = budget.period_of(day)
            base = self._base(budget, period)
            bases.append(base)
            keys += self._keys(budget, period)
            limit = int((budget.limit * NANO).to_integral_value(ROUND_FLOOR))
            lease = self._leases.get(base)
            idle = max(0, lease.granted - lease.used) if lease else 0
            blocks = "1" if budget.action is BudgetAction.BLOCK else "0"
            args += [str(limit), blocks, str(self._lease_wanted(budget, estimate_nano)), str(idle)]
        now_ms = int(self._clock.seconds() * 1000)
        argv = [
            request_id, str(estimate_nano), str(now_ms), str(RESERVATION_SECONDS * 1000), str(KEEP_SECONDS * 1000),
            str(len(budgets)), self._lease_id, str(LEASE_SECONDS * 1000),
        ]
        d = self._command(self._redis.eval(redis_scripts.RESERVE, keys, argv + args))

        def decided(figures: list[Any]) -> Admission | Deferred[Admission]:
            self._recovered()
            rows = [[int(x) for x in figures[5 * i : 5 * i + 5]] for i in range(len(budgets))]
            for budget, base, (spent, _, grant, held, others) in zip(budgets, bases, rows, strict=True):
                lease = self._leases.get(base)
                if lease is None and (grant or held):
                    lease = self._leases[base] = Lease()
                if lease is not None:
                    lease.limit = int((budget.limit * NANO).to_integral_value(ROUND_FLOOR))
                    # Redis may hold less than counted here only if it lost the lease
                    # (an emptied Redis): then only what it holds.
                    lease.granted = min(lease.granted + grant, held)
                    lease.spent, lease.others = spent, others
            standings = [(Decimal(spent) / NANO, Decimal(held_else) / NANO) for spent, held_else, *_ in rows]
            # The same rule as in one process, on the shared figures (the estimate as reserved).
            admission = decide(budgets, standings, Decimal(estimate_nano) / NANO, day)
            admission.request_id = request_id
            if admission.status is BudgetStatus.BLOCKED and not again and self._holds_back(bases):
                return self._free(bases).addCallback(lambda _: self.admit(budgets, estimate, day, request_id, again=True))
            if admission.status is not BudgetStatus.BLOCKED:
                admission.reserved = estimate
                self._hold_locally(admission, estimate)
            self.one_by_one += 1
            return admission

        def unreachable(failure: Any) -> Admission:
            self._failed(failure)
            if self._failure is RedisFailure.OPEN:
                return super(RedisLedger, self).admit(budgets, estimate, day, request_id)
            admission = Admission()
            admission.unavailable = (
                "the shared budget ledger (Redis) cannot be reached; calls under a budget are refused "
                "until it can (--redis-failure closed)"
            )
            return admission

        return d.addCallbacks(decided, unreachable)

    def _holds_back(self, bases: list[str]) -> bool:
        """This process holds something it no longer needs: ended calls not yet settled, or idle leases."""
        return bool(self._settling_args) or any(
            (lease := self._leases.get(base)) is not None and lease.granted > lease.used for base in bases
        )

    def _free(self, bases: list[str]) -> Deferred[Any]:
        """Give back the idle part of these budgets' leases and settle every call that ended, now."""
        for base in bases:
            lease = self._leases.get(base)
            if lease is not None and lease.granted > lease.used:
                idle, lease.granted = lease.granted - lease.used, lease.used
                self._return(base, idle)
        if self._settling is not None:
            self._settling.cancel()
        return self._settle_now()

    def release(self, admission: Admission) -> None:
        self.settle(admission, Who(), "", Decimal(0))

    def settle(self, admission: Admission, who: Who, day: str, cost: Decimal) -> None:
        """
        One script for the calls that ended: each call's reservation released (or, for
        a call admitted from a lease, its cost taken off the lease), and this
        contributor's new spend set in every budget a call counts toward.
        """
        holds, request_id, reserved = admission.holds if admission.reserved else (), admission.request_id, admission.reserved
        super().release(admission)  # (which zeroes what the admission holds: idempotent)
        charged: list[tuple[Budget, str]] = []
        if cost:
            super().spend(who, day, cost)
            charged = [(budget, budget.period_of(day)) for budget in self.budgets if budget.matches(who)]
        if admission.leased:
            admission.leased = False  # settled once
            self._settle_leased(nano_up(reserved), holds, charged, day, nano_up(cost) if cost else 0)
            return
        if not charged and not (holds and request_id):
            return
        budgets = list(dict.fromkeys([*holds, *charged]))
        self._queue(request_id or "-", "", budgets, charged, day)

    def _settle_leased(self, estimate: int, holds: Any, charged: list[tuple[Budget, str]], day: str, cost: int) -> None:
        for budget, period in holds:
            base = self._base(budget, period)
            lease = self._leases.get(base)
            if lease is None:
                continue
            lease.used = max(0, lease.used - estimate)
            lease.granted = max(0, lease.granted - cost)  # here first, in Redis with the batch
            if not lease.used and lease.idle is None:
                lease.idle = self._clock.callLater(LEASE_IDLE_SECONDS, self._give_back, base)
        if cost:
            # The cost moves from the lease to the spend, in one script: never counted twice.
            self._queue(self._lease_id, str(cost), list(dict.fromkeys([*holds, *charged])), charged, day)
        elif charged:
            self._queue("-", "", charged, charged, day)

    def _give_back(self, base: str) -> None:
        """
        Give back what is left of an idle lease (this process stops counting it at once,
        Redis with the next batch).
        """
        lease = self._leases.get(base)
        if lease is None:
            return
        if lease.idle is not None and lease.idle.active():
            lease.idle.cancel()
        lease.idle = None
        if lease.used:
            return  # in use again
        del self._leases[base]  # (a call settled later finds none, and only sets its spend)
        self._return(base, lease.granted)

    def _return(self, base: str, amount: int) -> None:
        if amount:
            self._settling_keys += [f"{base}:spend", f"{base}:held", f"{base}:expiry", f"{base}:total"]
            self._settling_args += [self._lease_id, str(amount), "1", ""]
            self._settling_bases.append(base)
            self._schedule_settle()

    def _queue(self, rid: str, take: str, budgets: list[tuple[Budget, str]], charged: list[tuple[Budget, str]], day: str) -> None:
        self._settling_keys += [key for budget, period in budgets for key in self._keys(budget, period)]
        self._settling_args += [rid, take, str(len(budgets))] + [
            str(nano_up(self.standing(budget, day)[0])) if (budget, period) in charged else "" for budget, period in budgets
        ]
        self._settling_bases += [self._base(budget, period) for budget, period in budgets]
        self._schedule_settle()

    def _settled(self, figures: list[Any], bases: list[str]) -> None:
        """
        What Redis said after a batch: where the unheld rest of a budget is less than a
        lease, this process's idle lease goes back now, not when idle, so that no other
        process is refused for it longer than a batch.
        """
        self._recovered()
        for i, base in enumerate(bases):
            lease = self._leases.get(base)
            if lease is None:
                continue
            spent, held = int(figures[2 * i]), int(figures[2 * i + 1])
            lease.spent = spent
            idle = lease.granted - lease.used
            if idle > 0 and lease.limit - spent - held < lease.limit * LEASE_SHARE:
                lease.granted = lease.used
                self._return(base, idle)

    def _schedule_settle(self) -> None:
        if self._settling is None:
            self._settling = self._clock.callLater(SETTLE_SECONDS, self._settle_now)

    def _settle_now(self) -> Deferred[Any]:
        keys, args, bases = self._settling_keys, self._settling_args, self._settling_bases
        self._settling, self._settling_keys, self._settling_args, self._settling_bases = None, [], [], []
        if not args:
            return succeed(None)
        lease_until = int(self._clock.seconds() * 1000) + LEASE_SECONDS * 1000
        argv = [self.contributor, str(KEEP_SECONDS * 1000), str(lease_until), *args]
        return self._command(self._redis.eval(redis_scripts.SETTLE, keys, argv)).addCallbacks(self._settled, self._failed, callbackArgs=(bases,))

    def replace(self, budgets: list[Budget]) -> None:
        super().replace(budgets)
        # Leases were sized for the limits before: what is idle goes back, and the next
        # call that needs one takes it under the new limits.
        for base, lease in self._leases.items():
            idle = lease.granted - lease.used
            if idle > 0:
                lease.granted = lease.used
                self._return(base, idle)
        self.publish()

    def standings(self, day: str) -> Any:
        """
        Every budget's standing as Redis holds it: all contributors' spend and every
        process's open reservations (this process's own view if Redis cannot answer).
        """
        budgets = list(self.budgets)
        keys = []
        for budget in budgets:
            spend, _, _, total = self._keys(budget, budget.period_of(day))
            keys += [spend, total]

        def shared(figures: list[Any]) -> dict[str, Any]:
            rows, reserved = [], Decimal(0)
            for i, budget in enumerate(budgets):
                spend, held = Decimal(int(figures[2 * i])) / NANO, Decimal(int(figures[2 * i + 1])) / NANO
                rows.append(report_row(budget, day, spend, held))
                reserved += held
            return {"budgets": rows, "open_reservations_usd": str(reserved), "shared": True}

        def local(failure: Any) -> Any:
            self._failed(failure)
            return super(RedisLedger, self).standings(day).addCallback(lambda body: {**body, "shared": False})

        if not budgets:
            return succeed({"budgets": [], "open_reservations_usd": "0", "shared": True})
        return self._command(self._redis.eval(redis_scripts.STANDING, keys, [])).addCallbacks(shared, local)

    def publish(self, day: str | None = None) -> Deferred[Any]:
        """
        Write this contributor's spend in the current period of every budget (set, not
        added).
        """
        if day is None:
            day = datetime.fromtimestamp(self._clock.seconds(), UTC).date().isoformat()
        return self._publish(self.budgets, day)

    def _publish(self, budgets: list[Budget], day: str) -> Deferred[Any]:
        if not budgets and not self._leases:
            return succeed(None)
        writes = []
        for budget in budgets:
            period = budget.period_of(day)
            spend_key = self._keys(budget, period)[0]
            writes.append(self._redis.hset(spend_key, self.contributor, nano_up(self.standing(budget, day)[0])))
            writes.append(self._redis.expire(spend_key, KEEP_SECONDS))
        # A lease in use (a long stream under it) must not expire while its process lives.
        lease_until = int(self._clock.seconds() * 1000) + LEASE_SECONDS * 1000
        for base, lease in self._leases.items():
            if lease.granted:
                writes.append(self._redis.zadd(f"{base}:expiry", lease_until, self._lease_id))
        return self._command(gatherResults(writes, consumeErrors=True)).addCallbacks(
            lambda _: self._recovered(), self._failed
        )

    def _failed(self, failure: Any) -> None:
        # Out of reach: no more calls from leases (Redis may have lost them); they
        # expire there, and are taken again once Redis answers.
        for lease in self._leases.values():
            if lease.idle is not None and lease.idle.active():
                lease.idle.cancel()
        self._leases.clear()
        if not self._down:
            self._down = True
            log_failure(log, "The shared budget ledger (Redis) cannot be reached", failure)

    def _recovered(self) -> None:
        if self._down:
            self._down = False
            log.info("The shared budget ledger (Redis) is reachable again")
