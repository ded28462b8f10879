"""
Running totals since start-up, served as JSON at C{/stats}.
"""

from __future__ import annotations

from collections import Counter
from decimal import Decimal
from typing import Any

TOKEN_FIELDS = (
    "input_tokens",
    "output_tokens",
    "cache_read_tokens",
    "cache_write_tokens",
    "reasoning_tokens",
)


MAX_RELAYED_ROUTES = 200


class Stats:
    def __init__(self) -> None:
        self.requests = 0
        self.events = 0
        self.unpriced = 0
        self.outcomes: Counter[str] = Counter()
        #: Calls to routes relayed without metering, by provider and route (at most
        #: L{MAX_RELAYED_ROUTES}: a path's first segments are the caller's to choose).
        self.relayed: Counter[tuple[str, str]] = Counter()
        self._providers: dict[str, dict[str, Any]] = {}

    def relayed_call(self, provider: str, route: str) -> None:
        key = (provider, route)
        if key not in self.relayed and len(self.relayed) >= MAX_RELAYED_ROUTES:
            key = (provider, "_other")
        self.relayed[key] += 1

    def record(self, event: dict[str, Any], cost: Decimal | None) -> None:
        """
        Count one cost event (C{cost} is the exact Decimal behind its C{cost_usd}).
        """
        self.events += 1
        self.outcomes[event["outcome"]] += 1
        totals = self._providers.get(event["provider"])
        if totals is None:
            totals = self._providers[event["provider"]] = dict.fromkeys(TOKEN_FIELDS, 0)
            totals["requests"] = 0
            totals["cost_usd"] = Decimal(0)
        totals["requests"] += 1
        for field in TOKEN_FIELDS:
            totals[field] += event[field]
        if cost is None:
            self.unpriced += 1
        else:
            totals["cost_usd"] += cost

    def snapshot(self, journal: Any) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "events": self.events,
            "events_written": journal.written,
            "writer_queue_depth": journal.queued,
            "writer_healthy": journal.healthy,
            "write_errors": journal.write_errors,
            "unpriced": self.unpriced,
            "outcomes": dict(self.outcomes),
            "relayed": _nested(self.relayed),
            "providers": {
                name: {**totals, "cost_usd": str(totals["cost_usd"])}
                for name, totals in sorted(self._providers.items())
            },
        }


def _nested(counts: Counter[tuple[str, str]]) -> dict[str, dict[str, int]]:
    nested: dict[str, dict[str, int]] = {}
    for (provider, route), n in sorted(counts.items()):
        nested.setdefault(provider, {})[route] = n
    return nested
