"""
The response cache held in Redis (C{--cache-backend redis}), shared by every process
and instance.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import msgpack
from twisted.logger import Logger

from modeltrack.controls.cache import Entry, ResponseCache
from modeltrack.controls.redis_client import COMMAND_SECONDS
from modeltrack.failures import log_failure

log = Logger()


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
