"""
C{/metrics} on the admin listener, in Prometheus' text format (prometheus-client).

Each cost event is counted once, on the reactor thread, into plain dicts (a few
microseconds); the Prometheus families are built from them only when scraped. Label
values chosen by callers (team, model) are bounded: past L{LABEL_VALUES} distinct values
of one label, new ones are counted under C{_other}, so a caller cannot grow the series
without limit. Session and request ids are never labels.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from modeltrack.observe.stats import TOKEN_FIELDS

#: Distinct values kept per caller-chosen label.
LABEL_VALUES = 200
OTHER = "_other"

_LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
_OVERHEAD_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1)


class _BoundedLabel:
    def __init__(self, limit: int) -> None:
        self._seen: set[str] = set()
        self._limit = limit

    def __call__(self, value: str | None) -> str:
        value = value or ""
        if value in self._seen:
            return value
        if len(self._seen) >= self._limit:
            return OTHER
        self._seen.add(value)
        return value


class Metrics:
    """
    @param journal: the event log (queue depth, written lines, write errors).
    @param gate: the controls (budget utilisation).
    @param clock: for the current budget period.
    """

    def __init__(self, journal: Any, gate: Any, clock: Any, label_values: int = LABEL_VALUES) -> None:
        self._journal = journal
        self._gate = gate
        self._clock = clock
        self._model = _BoundedLabel(label_values)
        self._team = _BoundedLabel(label_values)
        self._requests: Counter[tuple[str, str, str]] = Counter()
        self._tokens: Counter[tuple[str, str, str]] = Counter()
        self._cost: dict[tuple[str, str, str], Decimal] = {}
        self._unpriced: Counter[tuple[str, str]] = Counter()
        self._cache_hits = 0
        self._saved: dict[str, Decimal] = {"cache": Decimal(0), "routing": Decimal(0)}
        self.registry = CollectorRegistry(auto_describe=False)
        self._duration = Histogram(
            "modeltrack_request_duration_seconds",
            "Time from a metered request's arrival to its end.",
            ["provider"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self._overhead = Histogram(
            "modeltrack_proxy_overhead_seconds",
            "Time the proxy added before forwarding a call: from its arrival to the request going upstream.",
            ["provider"],
            buckets=_OVERHEAD_BUCKETS,
            registry=self.registry,
        )
        self._histograms: dict[str, tuple[Any, Any]] = {}
        #: The other workers' counters (L{modeltrack.observe.peers.Peers}), with --workers.
        self.peers: Any = None
        self.registry.register(self)

    def counters(self) -> dict[str, Any]:
        """
        The counters as JSON, for the other workers' C{/metrics}.
        """
        return {
            "requests": [[*key, n] for key, n in self._requests.items()],
            "tokens": [[*key, n] for key, n in self._tokens.items()],
            "cost": [[*key, str(usd)] for key, usd in self._cost.items()],
            "unpriced": [[*key, n] for key, n in self._unpriced.items()],
            "cache_hits": self._cache_hits,
            "saved": {reason: str(usd) for reason, usd in self._saved.items()},
        }

    def _with_peers(self) -> tuple[Any, Any, Any, Any, int, dict[str, Decimal]]:
        requests, tokens, unpriced = Counter(self._requests), Counter(self._tokens), Counter(self._unpriced)
        cost, saved, hits = dict(self._cost), dict(self._saved), self._cache_hits
        for peer in (self.peers.totals if self.peers is not None else []):
            counted = peer.get("metrics") or {}
            for *key, n in counted.get("requests", []):
                requests[tuple(key)] += n
            for *key, n in counted.get("tokens", []):
                tokens[tuple(key)] += n
            for *key, n in counted.get("unpriced", []):
                unpriced[tuple(key)] += n
            for *key, usd in counted.get("cost", []):
                cost[tuple(key)] = cost.get(tuple(key), Decimal(0)) + Decimal(usd)
            for reason, usd in (counted.get("saved") or {}).items():
                saved[reason] = saved.get(reason, Decimal(0)) + Decimal(usd)
            hits += counted.get("cache_hits", 0)
        return requests, tokens, cost, unpriced, hits, saved

    def observe(self, event: dict[str, Any], cost: Decimal | None, saved: Decimal | None, overhead: float | None) -> None:
        """
        Count one cost event (C{cost} and C{saved} are the exact Decimals behind its
        C{cost_usd} and C{saved_usd}; C{overhead} is in seconds, L{None} if the call was
        never forwarded).
        """
        provider = event["provider"]
        model = self._model(event["model"])
        self._requests[provider, model, event["outcome"]] += 1
        for field in TOKEN_FIELDS:
            if event[field]:
                self._tokens[provider, model, field[:-7]] += event[field]
        if cost is None:
            if event["input_tokens"] or event["output_tokens"]:
                self._unpriced[provider, model] += 1
        elif cost:
            key = (provider, model, self._team(event["team"]))
            self._cost[key] = self._cost.get(key, Decimal(0)) + cost
        if event["cache_hit"]:
            self._cache_hits += 1
        if saved:
            reason = "cache" if event["cache_hit"] else "routing"
            self._saved[reason] += saved
        histograms = self._histograms.get(provider)
        if histograms is None:  # .labels() takes a lock and builds a key: once per provider
            histograms = self._histograms[provider] = (self._duration.labels(provider), self._overhead.labels(provider))
        histograms[0].observe(event["latency_ms"] / 1000)
        if overhead is not None:
            histograms[1].observe(overhead)

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def collect(self) -> Iterator[Metric]:
        requests = CounterMetricFamily(
            "modeltrack_requests", "Metered calls, by provider, model and outcome.", labels=["provider", "model", "outcome"]
        )
        errors = CounterMetricFamily(
            "modeltrack_errors", "Metered calls that did not end ok, by provider, model and outcome.",
            labels=["provider", "model", "outcome"],
        )
        all_requests, all_tokens, all_cost, all_unpriced, all_hits, all_saved = self._with_peers()
        for (provider, model, outcome), n in sorted(all_requests.items()):
            requests.add_metric([provider, model, outcome], n)
            if outcome != "ok":
                errors.add_metric([provider, model, outcome], n)
        tokens = CounterMetricFamily(
            "modeltrack_tokens", "Tokens read from responses, by kind (input includes cache reads and writes; output includes reasoning).",
            labels=["provider", "model", "kind"],
        )
        for key, n in sorted(all_tokens.items()):
            tokens.add_metric(list(key), n)
        cost = CounterMetricFamily("modeltrack_cost_usd", "Cost at list price, by provider, model and team.", labels=["provider", "model", "team"])
        for key, usd in sorted(all_cost.items()):
            cost.add_metric(list(key), float(usd))
        unpriced = CounterMetricFamily("modeltrack_unpriced", "Calls with usage but no known price.", labels=["provider", "model"])
        for provider_model, n in sorted(all_unpriced.items()):
            unpriced.add_metric(list(provider_model), n)
        yield from (requests, errors, tokens, cost, unpriced)
        yield CounterMetricFamily("modeltrack_cache_hits", "Calls answered from the response cache.", value=all_hits)
        saved = CounterMetricFamily("modeltrack_saved_usd", "What the cache and routing saved, at list price.", labels=["reason"])
        for reason, usd in sorted(all_saved.items()):
            saved.add_metric([reason], float(usd))
        yield saved
        journal = self._journal
        yield GaugeMetricFamily("modeltrack_writer_queue_depth", "Event lines waiting for the writer thread.", value=journal.queued)
        yield CounterMetricFamily("modeltrack_write_errors", "Failed writes to the event log (retried).", value=journal.write_errors)
        yield CounterMetricFamily("modeltrack_events_written", "Event lines written to the event log.", value=journal.written)
        yield from self._budgets()

    def _budgets(self) -> Iterator[Metric]:
        labels = ["scope", "period", "action"]
        ratio = GaugeMetricFamily(
            "modeltrack_budget_utilisation_ratio", "Spend and open reservations over the limit, this period.", labels=labels
        )
        spend = GaugeMetricFamily("modeltrack_budget_spend_usd", "Spend this period.", labels=labels)
        limit = GaugeMetricFamily("modeltrack_budget_limit_usd", "The budget's limit per period.", labels=labels)
        today = datetime.fromtimestamp(self._clock.seconds(), UTC).date().isoformat()
        for row in self._gate.ledger.report(today):
            key = [row["scope"], row["period"], row["action"]]
            ratio.add_metric(key, row["percent"] / 100)
            spend.add_metric(key, float(row["spend_usd"]))
            limit.add_metric(key, float(row["limit_usd"]))
        yield from (ratio, spend, limit)
