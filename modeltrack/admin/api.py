"""
The admin JSON API: C{/api/summary}, C{/api/spend}, C{/api/sessions}, C{/api/budgets},
C{/api/keys}, C{/api/events}, C{/api/reconciliation}. Spend figures come from L{modeltrack.store.index}, the same queries as the
C{modeltrack} command, run on the index thread.
"""

from __future__ import annotations

import json
from datetime import UTC, date, datetime
from typing import Any

from twisted.internet.defer import Deferred

from modeltrack.accounting.reconcile import RESULT_FILE
from modeltrack.store import fleet, reports

#: Most events C{/api/events} returns.
MOST_EVENTS = 1000


class BadQuery(ValueError):
    """
    A query argument that cannot be used; the message names it.
    """


class AdminAPI:
    """
    @param indexer: L{modeltrack.store.index_process.IndexProcess}.
    @param gate: the controls, for the budgets' ledger.
    @param keys: the keys file in force (L{modeltrack.controls.keys.Keyring}).
    """

    def __init__(self, indexer: Any, gate: Any, data_dir: Any, clock: Any, keys: Any = None) -> None:
        self._indexer = indexer
        self._gate = gate
        self._keyring = keys
        self._data_dir = data_dir
        self._clock = clock

    def answer(self, name: str, args: dict[bytes, list[bytes]]) -> Deferred[Any] | None:
        """
        The body for C{/api/NAME}, or L{None} if there is no such endpoint. Raises
        L{BadQuery}.
        """
        handler = getattr(self, "_" + name, None) if name in (
            "summary", "spend", "sessions", "budgets", "keys", "events", "reconciliation", "fleet"
        ) else None
        if handler is None:
            return None
        query = {key.decode("utf-8", "replace"): values[-1].decode("utf-8", "replace") for key, values in args.items()}
        return handler(query)

    def _today(self) -> date:
        return datetime.fromtimestamp(self._clock.seconds(), UTC).date()

    def _summary(self, query: dict[str, str]) -> Deferred[Any]:
        today = self._today()
        since, until = _day(query, "since"), _day(query, "until")
        return self._indexer.query(lambda db: reports.summary(db, today, since, until))

    def _spend(self, query: dict[str, str]) -> Deferred[Any]:
        by = [key for key in query.get("by", "team").split(",") if key]
        try:
            reports.check_keys(by)
        except ValueError as e:
            raise BadQuery(f"by: {e}") from None
        since, until = _day(query, "since"), _day(query, "until")
        return self._indexer.query(lambda db: reports.report(db, by, since, until))

    def _sessions(self, query: dict[str, str]) -> Deferred[Any]:
        top = _whole(query, "top", 20, 1000)
        since, until = _day(query, "since"), _day(query, "until")
        return self._indexer.query(lambda db: reports.sessions(db, top, since, until))

    def _budgets(self, query: dict[str, str]) -> Deferred[Any]:
        result: Deferred[Any] = self._gate.ledger.standings(self._today().isoformat())
        return result

    def _keys(self, query: dict[str, str]) -> Deferred[Any]:
        """
        Spend per key in a period, with each named key's entry (listed even before
        its first call) and the budgets held to it, as they stand today.
        """
        since, until = _day(query, "since"), _day(query, "until")
        entries = [] if self._keyring is None else list(self._keyring.book.entries.values())
        standings = self._gate.ledger.report(self._today().isoformat())

        def merged(used: list[dict[str, Any]]) -> list[dict[str, Any]]:
            rows = {row["key"]: row for row in used}
            for entry in entries:
                row = rows.setdefault(entry.name, {
                    "key": entry.name, "key_name": entry.name, "key_ids": [], "last_call": None,
                    **reports.empty_totals(),
                })
                row.update(team=entry.team, app=entry.app, listed_key_ids=sorted(
                    {e.key_id for e in entries if e.name == entry.name}
                ))
            for row in rows.values():
                row["budgets"] = [standing for standing in standings if standing["scope"] == f"key={row['key']}"]
            return list(rows.values())

        return self._indexer.query(lambda db: reports.key_usage(db, since, until)).addCallback(merged)

    def _events(self, query: dict[str, str]) -> Deferred[Any]:
        limit = _whole(query, "limit", 100, MOST_EVENTS)
        data_dir = self._data_dir
        return self._indexer.query(lambda db: reports.recent(data_dir, limit))


    def _fleet(self, query: dict[str, str]) -> Deferred[Any]:
        """
        Each instance of the fleet: events shipped to the store, its last event's time,
        when it last shipped and its lag (bytes of its log not shipped, and in events).
        Without a store, this instance alone, from its index.
        """
        if not getattr(self._indexer, "fleet", False):
            def local(db: Any) -> dict[str, Any]:
                # From the rollups: a few rows a day, where counting raw rows reads them all.
                events, last = db.execute("SELECT COALESCE(SUM(requests), 0), MAX(last_at) FROM daily_models").fetchone()
                return {"store": False, "instances": [
                    {"instance": "this instance", "events": events, "last_event_at": last, "shipped_at": None,
                     "lag_bytes": 0, "lag_events": 0}]}
            return self._indexer.query(local)

        def shipped(db: Any) -> dict[str, Any]:
            rows = db.execute(fleet.FLEET)
            return {"store": True, "instances": [
                {"instance": name, "events": events, "last_event_at": last, "shipped_at": shipped_at,
                 "lag_bytes": lag_bytes, "lag_events": int(lag_events or 0)}
                for name, events, last, shipped_at, lag_bytes, lag_events in rows]}
        return self._indexer.query(shipped)

    def _reconciliation(self, query: dict[str, str]) -> Deferred[Any]:
        """
        The last C{modeltrack reconcile}'s result (C{{"ran_at": null}} before the first).
        """
        path = self._data_dir / "state" / RESULT_FILE

        def read(db: Any) -> Any:
            try:
                return json.loads(path.read_text(encoding="utf-8"))
            except FileNotFoundError:
                return {"ran_at": None, "rows": [], "summary": {}}

        return self._indexer.query(read)


def _day(query: dict[str, str], name: str) -> str | None:
    value = query.get(name)
    if not value:
        return None
    try:
        return date.fromisoformat(value).isoformat()
    except ValueError:
        raise BadQuery(f"{name}: {value!r} is not a date (YYYY-MM-DD)") from None


def _whole(query: dict[str, str], name: str, default: int, most: int) -> int:
    value = query.get(name)
    if value is None:
        return default
    if not value.isdigit() or not 1 <= int(value) <= most:
        raise BadQuery(f"{name}: {value!r} is not a whole number from 1 to {most}")
    return int(value)
