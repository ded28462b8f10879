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
- Redis out of reach: C{closed} refuses calls under a budget (503); C{open} decides by
  this process's own ledger, logging the first failure and the recovery.
"""

from __future__ import annotations

import os
import secrets
from datetime import UTC, datetime
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import msgpack
from twisted.internet.defer import Deferred, gatherResults, succeed
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from modeltrack.controls.budgets import Admission, Budget, BudgetLedger, BudgetStatus, Who, decide, report_row
from modeltrack.controls.cache import Entry, ResponseCache
from modeltrack.failures import log_failure

log = Logger()

NANO = Decimal(10) ** 9
#: How long an unsettled reservation holds (longer than any call: the idle and
#: headers timeouts end a call well before).
RESERVATION_SECONDS = 3600
#: How long a command may take before Redis counts as out of reach.
COMMAND_SECONDS = 2.0
#: How often each contributor's spend is written again (heals lost writes).
PUBLISH_SECONDS = 10.0
#: Keys outlive their period by this long (a month's keys live about 40 days).
KEEP_SECONDS = 40 * 86400

_RESERVE = """
local rid, estimate, now, ttl, keep, n = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4]), ARGV[5], tonumber(ARGV[6])
local out, blocked = {}, false
for i = 1, n do
  local spend, held, expiry, total = KEYS[4*i-3], KEYS[4*i-2], KEYS[4*i-1], KEYS[4*i]
  for _, gone in ipairs(redis.call('ZRANGEBYSCORE', expiry, '-inf', now)) do
    local amount = redis.call('HGET', held, gone)
    if amount then redis.call('DECRBY', total, amount); redis.call('HDEL', held, gone) end
    redis.call('ZREM', expiry, gone)
  end
  local spent = 0
  for _, v in ipairs(redis.call('HVALS', spend)) do spent = spent + tonumber(v) end
  local mine = tonumber(redis.call('HGET', held, rid) or '0')
  local reserved = tonumber(redis.call('GET', total) or '0') - mine
  if mine == 0 and ARGV[6 + 2*i] == '1' and spent + reserved + estimate > tonumber(ARGV[5 + 2*i]) then blocked = true end
  out[2*i-1], out[2*i] = tostring(spent), tostring(reserved)
end
if not blocked and estimate > 0 then
  for i = 1, n do
    local held, expiry, total = KEYS[4*i-2], KEYS[4*i-1], KEYS[4*i]
    if redis.call('HSETNX', held, rid, estimate) == 1 then redis.call('INCRBY', total, estimate) end
    redis.call('ZADD', expiry, now + ttl, rid)
    for _, key in ipairs({KEYS[4*i-3], held, expiry, total}) do redis.call('PEXPIRE', key, keep) end
  end
end
return out
"""

_SETTLE = """
-- Calls that ended, in order. KEYS: per call, per budget: spend, held, expiry, total.
-- ARGV: contributor, keep (ms), then per call: its request id, its number of budgets,
-- and per budget this contributor's spend to set, or '' to leave it.
local contributor, keep = ARGV[1], ARGV[2]
local a, k = 3, 0
while a <= #ARGV do
  local rid, n = ARGV[a], tonumber(ARGV[a + 1])
  for i = 1, n do
    local spend, held, expiry, total = KEYS[k + 1], KEYS[k + 2], KEYS[k + 3], KEYS[k + 4]
    local amount = redis.call('HGET', held, rid)
    if amount then redis.call('DECRBY', total, amount); redis.call('HDEL', held, rid) end
    redis.call('ZREM', expiry, rid)
    local share = ARGV[a + 1 + i]
    if share ~= '' then
      redis.call('HSET', spend, contributor, share)
      redis.call('PEXPIRE', spend, keep)
    end
    k = k + 4
  end
  a = a + 2 + n
end
return 1
"""
#: Calls that ended are settled together, this long after the first of them: one
#: script for many calls (each round trip costs this process more CPU than the Lua).
SETTLE_SECONDS = 0.005


_STANDING = """
-- KEYS: per budget: spend, total. Returns each one's spend (all contributors) and open reservations.
local out = {}
for i = 1, #KEYS / 2 do
  local spent = 0
  for _, v in ipairs(redis.call('HVALS', KEYS[2*i-1])) do spent = spent + tonumber(v) end
  out[2*i-1], out[2*i] = tostring(spent), redis.call('GET', KEYS[2*i]) or '0'
end
return out
"""


def nano_up(amount: Decimal) -> int:
    return int((amount * NANO).to_integral_value(ROUND_CEILING))


def install_id(state_dir: Path) -> str:
    """
    This install's name among the contributors to a shared budget, made once.
    """
    path = state_dir / "instance-id"
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        name = secrets.token_hex(8)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(name + "\n")
        return name


class RedisLedger(BudgetLedger):
    """
    A L{BudgetLedger} whose admissions are decided by the figures in Redis. It keeps
    its own ledger too: this contributor's spend (what it publishes), and the figures
    routing and C{--redis-failure open} use.
    """

    def __init__(self, redis: Any, clock: Any, contributor: str, failure: str = "closed", prefix: str = "modeltrack:") -> None:
        self._redis = redis
        self._clock = clock
        self.contributor = contributor
        self._failure = failure
        self._prefix = prefix
        self._down = False
        self._publishing = LoopingCall(self.publish)
        self._publishing.clock = clock
        self._settling: Any = None
        self._settling_keys: list[str] = []
        self._settling_args: list[str] = []
        super().__init__()

    def start(self) -> None:
        self._publishing.start(PUBLISH_SECONDS, now=True)

    def stop(self) -> Deferred[Any]:
        if self._publishing.running:
            self._publishing.stop()
        if self._settling is not None:
            self._settling.cancel()
        return self._settle_now()  # what ended last still settles

    def _keys(self, budget: Budget, period: str) -> list[str]:
        base = f"{self._prefix}{budget.scope}|{period}"
        return [f"{base}:spend", f"{base}:held", f"{base}:expiry", f"{base}:total"]

    def _command(self, d: Deferred[Any]) -> Deferred[Any]:
        return d.addTimeout(COMMAND_SECONDS, self._clock)

    def admit(self, budgets: list[Budget], estimate: Decimal | None, day: str, request_id: str = "") -> Any:
        if not budgets:
            return Admission()
        if estimate is None:
            return super().admit(budgets, estimate, day, request_id)  # unpriced: nothing reserved anywhere
        keys, args = [], []
        estimate_nano = nano_up(estimate)
        for budget in budgets:
            keys += self._keys(budget, budget.period_of(day))
            limit = int((budget.limit * NANO).to_integral_value(ROUND_FLOOR))
            args += [str(limit), "1" if budget.action == "block" else "0"]
        now_ms = int(self._clock.seconds() * 1000)
        argv = [request_id, str(estimate_nano), str(now_ms), str(RESERVATION_SECONDS * 1000), str(KEEP_SECONDS * 1000), str(len(budgets))]
        d = self._command(self._redis.eval(_RESERVE, keys, argv + args))

        def decided(figures: list[Any]) -> Admission:
            self._recovered()
            standings = [
                (Decimal(int(figures[2 * i])) / NANO, Decimal(int(figures[2 * i + 1])) / NANO) for i in range(len(budgets))
            ]
            # The same rule as in one process, on the shared figures (the estimate as reserved).
            admission = decide(budgets, standings, Decimal(estimate_nano) / NANO, day)
            admission.request_id = request_id
            if admission.status is not BudgetStatus.BLOCKED:
                admission.reserved = estimate
                for held, period in admission.holds:  # this process's view, for routing and reports
                    self._reserved[(held, period)] = self._reserved.get((held, period), Decimal(0)) + estimate
            return admission

        def unreachable(failure: Any) -> Admission:
            self._failed(failure)
            if self._failure == "open":
                return super(RedisLedger, self).admit(budgets, estimate, day, request_id)
            admission = Admission()
            admission.unavailable = (
                "the shared budget ledger (Redis) cannot be reached; calls under a budget are refused "
                "until it can (--redis-failure closed)"
            )
            return admission

        return d.addCallbacks(decided, unreachable)

    def release(self, admission: Admission) -> None:
        self.settle(admission, Who(), "", Decimal(0))

    def settle(self, admission: Admission, who: Who, day: str, cost: Decimal) -> None:
        """
        One script: the call's reservations released everywhere, and this contributor's
        new spend set in every budget the call counts toward.
        """
        holds, request_id = admission.holds if admission.reserved else (), admission.request_id
        super().release(admission)
        charged: list[tuple[Budget, str]] = []
        if cost:
            super().spend(who, day, cost)
            charged = [(budget, budget.period_of(day)) for budget in self.budgets if budget.matches(who)]
        if not charged and not (holds and request_id):
            return
        budgets = list(dict.fromkeys([*holds, *charged]))
        self._settling_keys += [key for budget, period in budgets for key in self._keys(budget, period)]
        self._settling_args += [request_id or "-", str(len(budgets))] + [
            str(nano_up(self.standing(budget, day)[0])) if (budget, period) in charged else "" for budget, period in budgets
        ]
        if self._settling is None:
            self._settling = self._clock.callLater(SETTLE_SECONDS, self._settle_now)

    def _settle_now(self) -> Deferred[Any]:
        keys, args = self._settling_keys, self._settling_args
        self._settling, self._settling_keys, self._settling_args = None, [], []
        if not args:
            return succeed(None)
        argv = [self.contributor, str(KEEP_SECONDS * 1000), *args]
        return self._command(self._redis.eval(_SETTLE, keys, argv)).addErrback(self._failed)

    def replace(self, budgets: list[Budget]) -> None:
        super().replace(budgets)
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
        return self._command(self._redis.eval(_STANDING, keys, [])).addCallbacks(shared, local)

    def publish(self, day: str | None = None) -> Deferred[Any]:
        """
        Write this contributor's spend in the current period of every budget (set, not
        added).
        """
        if day is None:
            day = datetime.fromtimestamp(self._clock.seconds(), UTC).date().isoformat()
        return self._publish(self.budgets, day)

    def _publish(self, budgets: list[Budget], day: str) -> Deferred[Any]:
        if not budgets:
            return succeed(None)
        writes = []
        for budget in budgets:
            period = budget.period_of(day)
            spend_key = self._keys(budget, period)[0]
            writes.append(self._redis.hset(spend_key, self.contributor, nano_up(self.standing(budget, day)[0])))
            writes.append(self._redis.expire(spend_key, KEEP_SECONDS))
        return self._command(gatherResults(writes, consumeErrors=True)).addCallbacks(
            lambda _: self._recovered(), self._failed
        )

    def _failed(self, failure: Any) -> None:
        if not self._down:
            self._down = True
            log_failure(log, "The shared budget ledger (Redis) cannot be reached", failure)

    def _recovered(self) -> None:
        if self._down:
            self._down = False
            log.info("The shared budget ledger (Redis) is reachable again")


def connect(url: str, password: str | None = None, trust_root: Any = None) -> Any:
    """
    A lazy, self-reconnecting txredisapi connection for C{redis://} or C{rediss://}
    (TLS, the server's certificate and name verified against C{trust_root}, the
    system's CAs if L{None}) URLs: C{redis://[:PASSWORD@]HOST:PORT/DB}.
    """
    import txredisapi
    from twisted.internet import ssl

    parts = urlsplit(url)
    tls: Any = False
    if parts.scheme == "rediss":
        tls = ssl.optionsForClientTLS(parts.hostname or "", trustRoot=trust_root)
    db = int(parts.path.strip("/") or 0)
    return txredisapi.lazyConnection(
        host=parts.hostname or "localhost",
        port=parts.port or 6379,
        dbid=db,
        password=password or (unquote(parts.password) if parts.password else None),
        ssl_context_factory=tls,
        connectTimeout=COMMAND_SECONDS,
        replyTimeout=COMMAND_SECONDS,
        convertNumbers=False,
        charset=None,  # replies as bytes: cached answers are binary
    )


class RedisCache(ResponseCache):
    """
    The response cache held in Redis (C{--cache-backend redis}), so that instances
    share hits: keyed and scoped as the in-memory one (L{ResponseCache.key}), each entry
    one msgpack value with the cache's TTL. Its size is Redis's to bound (its
    C{maxmemory} and eviction policy); a look-up Redis cannot answer in time is a miss.
    """

    def __init__(self, redis: Any, secret: bytes, clock: Any, *, ttl: float, sampled: bool, prefix: str = "modeltrack:") -> None:
        super().__init__(secret, clock, ttl=ttl, sampled=sampled)
        self._redis = redis
        self._prefix = prefix + "cache:"

    def get(self, key: bytes) -> Any:
        def found(value: Any) -> Entry | None:
            if value is None:
                self.misses += 1
                return None
            code, phrase, headers, body, stored_at, cost, model = msgpack.unpackb(value)
            self.hits += 1
            if cost is not None:
                self.saved += Decimal(cost)
            return Entry(code, phrase, [(name, list(values)) for name, values in headers], body, stored_at, cost, model)

        def unreachable(failure: Any) -> None:
            self.misses += 1
            log_failure(log, "The shared response cache (Redis) did not answer; a miss", failure)
            return None

        return self._redis.get(self._prefix + key.hex()).addTimeout(COMMAND_SECONDS, self._clock).addCallbacks(
            found, unreachable
        )

    def put(self, key: bytes, entry: Entry) -> None:
        value = msgpack.packb(
            [entry.code, entry.phrase, entry.headers, entry.body, entry.stored_at, entry.cost_usd, entry.model]
        )
        d = self._redis.set(self._prefix + key.hex(), value, expire=max(1, int(self.ttl)))
        d.addErrback(lambda failure: log_failure(log, "Could not store an answer in the shared cache", failure))

    def stats(self) -> dict[str, Any]:
        return {**super().stats(), "backend": "redis", "entries": None, "bytes": None}
