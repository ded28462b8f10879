"""
The queries every reader of the index makes (the C{modeltrack} command, the admin API,
the dashboard): spend per group, the costliest sessions, the month's summary, each
key's use, the latest events. Sums are exact: picodollars in, decimal strings out.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from datetime import date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any, Protocol

from modeltrack.store.event_lines import PICO
from modeltrack.store.journal import live_files, segments

#: --by name -> the column (or expression) rows are grouped by, in the rollups (where a
#: missing label is ''). A key is named by its name in keys.json, or by its fingerprint
#: when it has none.
GROUP_KEYS = {
    "team": "NULLIF(team, '')", "app": "NULLIF(app, '')", "feature": "NULLIF(feature, '')",
    "model": "NULLIF(model, '')", "provider": "provider", "day": "day",
    "key": "COALESCE(NULLIF(key_name, ''), NULLIF(key_id, ''))", "client": "NULLIF(client, '')",
    "endpoint": "endpoint", "route_class": "route_class",
}

#: The --by keys the coarse daily rollup holds, and those the one without models holds.
_COARSE = frozenset(("team", "model", "provider", "day", "endpoint", "route_class"))
_LABELLED = frozenset(("team", "app", "feature", "key", "client", "day", "route_class"))
#: The totals of a group of rollup rows (see L{modeltrack.store.rollups}).
_TOTALS = (
    "SUM(requests), SUM(input_tokens), SUM(output_tokens), SUM(cost_pico), SUM(saved_pico), SUM(unpriced), "
    "SUM(CASE WHEN route_class = 'billable' THEN requests ELSE 0 END)"
)
_SESSION_TOTALS = _TOTALS.replace("CASE WHEN route_class = 'billable' THEN requests ELSE 0 END", "0")


def _usd(pico: int | None) -> str:
    return str(Decimal(pico or 0) / PICO)


def _totals(record: tuple[Any, ...]) -> dict[str, Any]:
    requests, tokens_in, tokens_out, cost, saved, unpriced, billable = record
    return {
        "requests": requests,
        "input_tokens": tokens_in or 0,
        "output_tokens": tokens_out or 0,
        "cost_usd": _usd(cost),
        "saved_usd": _usd(saved),
        "unpriced": unpriced or 0,
        # Of those unpriced: calls to routes billed by something their answers do not say.
        "billable_unmetered": billable or 0,
    }


def empty_totals() -> dict[str, Any]:
    return _totals((0, 0, 0, 0, 0, 0, 0))


def _between(since: str | None, until: str | None) -> tuple[str, list[str]]:
    where, params = [], []
    if since:
        where.append("day >= ?")
        params.append(since)
    if until:
        where.append("day < ?")
        params.append(until)
    return (" WHERE " + " AND ".join(where) if where else ""), params


def check_keys(by: list[str]) -> None:
    for key in by:
        if key not in GROUP_KEYS:
            raise ValueError(f"unknown --by key {key!r}: use {', '.join(GROUP_KEYS)}")


class Database(Protocol):
    """What a report reads: the index (SQLite), or the fleet's store (L{modeltrack.store.fleet.Reader})."""

    def execute(self, query: str, params: Any = ..., /) -> Iterable[Any]: ...


def report(
    db: Database, by: list[str], since: str | None = None, until: str | None = None
) -> list[dict[str, Any]]:
    """
    Spend per group between C{since} (inclusive) and C{until} (exclusive), both
    YYYY-MM-DD; each row has its group keys and requests, tokens, cost_usd, saved_usd,
    unpriced. The CLI, the admin API and the dashboard all read through here.
    """
    check_keys(by)
    columns = [GROUP_KEYS[key] for key in by]
    where, params = _between(since, until)
    # The smallest rollup that holds every label asked for.
    table = "daily_models" if set(by) <= _COARSE else "daily_labels" if set(by) <= _LABELLED else "daily"
    query = f"SELECT {', '.join(columns + [_TOTALS])} FROM {table}{where}"
    if columns:
        query += f" GROUP BY {', '.join(columns)} ORDER BY SUM(cost_pico) DESC, {', '.join(columns)}"
    rows = []
    for record in db.execute(query, params):
        totals = _totals(record[len(by):])
        if totals["requests"]:
            rows.append({**dict(zip(by, record[: len(by)], strict=True)), **totals})
    return rows


def sessions(
    db: Database, top: int, since: str | None = None, until: str | None = None
) -> list[dict[str, Any]]:
    """
    The C{top} most expensive sessions: their calls, models, first and last call and
    duration in seconds, with the same totals as L{report}.
    """
    where, params = _between(since, until)
    # The top sessions by their sums alone first: their models, teams and totals are then
    # gathered for those few, not for every session (a third of the time).
    query = (
        f"WITH top AS (SELECT session_id FROM session_days{where} "
        f"GROUP BY session_id ORDER BY SUM(cost_pico) DESC, session_id LIMIT ?) "
        f"SELECT session_id, GROUP_CONCAT(NULLIF(models, '')), GROUP_CONCAT(NULLIF(teams, '')), "
        f"MIN(first_at), MAX(last_at), {_SESSION_TOTALS} FROM session_days "
        f"WHERE session_id IN (SELECT session_id FROM top){where.replace(' WHERE ', ' AND ')} "
        f"GROUP BY session_id ORDER BY SUM(cost_pico) DESC, session_id"
    )
    rows = []
    for session, models, teams, first, last, *totals in db.execute(query, [*params, top, *params]):
        started, ended = _instant(first), _instant(last)
        rows.append({
            "session_id": session,
            "models": sorted({model for model in (models or "").split(",") if model}),
            "teams": sorted({team for team in (teams or "").split(",") if team}),
            "first_call": first,
            "last_call": last,
            "duration_seconds": round((ended - started).total_seconds(), 3),
            **_totals(tuple(totals)),
        })
    return rows


def _instant(timestamp: str) -> datetime:
    return datetime.fromisoformat(timestamp.replace("Z", "+00:00"))


def month_bounds(day: date) -> tuple[str, str]:
    """
    The first day of C{day}'s month and of the next, as YYYY-MM-DD.
    """
    first = day.replace(day=1)
    following = date(first.year + first.month // 12, first.month % 12 + 1, 1)
    return first.isoformat(), following.isoformat()


def summary(db: Database, today: date, since: str | None = None, until: str | None = None) -> dict[str, Any]:
    """
    Spend today and in a period (UTC days C{since} inclusive to C{until} exclusive;
    this month if not given), per day of the period, and a projection to its end at
    its daily average so far (a past period's projection is its total). Read through
    L{report} like every other figure. (C{month} and C{month_totals} name the period.)
    """
    first, following = month_bounds(today)
    if since is not None or until is not None:
        first = since or first
        following = until or following
    days = report(db, ["day"], first, following)
    days.sort(key=lambda row: row["day"])
    period = report(db, [], first, following)
    empty = empty_totals()
    period_totals = period[0] if period else empty
    today_totals = report(db, [], today.isoformat(), (today + timedelta(days=1)).isoformat())
    start, end = date.fromisoformat(first), date.fromisoformat(following)
    length = max((end - start).days, 1)
    elapsed = min(max((today - start).days + 1, 1), length)
    projection = Decimal(period_totals["cost_usd"]) / elapsed * length
    return {
        "today": today.isoformat(),
        "month": first[:7],
        "since": first,
        "until": following,
        "today_totals": today_totals[0] if today_totals else empty,
        "month_totals": period_totals,
        "projected_month_usd": str(projection.quantize(Decimal("0.000001"))),
        "by_day": days,
    }


def key_usage(db: Database, since: str | None = None, until: str | None = None) -> list[dict[str, Any]]:
    """
    Spend per key (named by its keys.json name, else its fingerprint) between C{since}
    and C{until}, with its fingerprints and its last call, most expensive first.
    """
    where, params = _between(since, until)
    query = (
        f"SELECT {GROUP_KEYS['key']} AS k, NULLIF(key_name, ''), GROUP_CONCAT(DISTINCT NULLIF(key_id, '')), MAX(last_at), "
        f"{_TOTALS} FROM daily_labels{where}{' AND' if where else ' WHERE'} {GROUP_KEYS['key']} IS NOT NULL "
        f"GROUP BY k ORDER BY SUM(cost_pico) DESC, k"
    )
    rows = []
    for key, name, key_ids, last, *totals in db.execute(query, params):
        rows.append({
            "key": key,
            "key_name": name,
            "key_ids": sorted(key_ids.split(",")),
            "last_call": last,
            **_totals(tuple(totals)),
        })
    return rows


def recent(data_dir: Path, limit: int) -> list[dict[str, Any]]:
    """
    The last C{limit} events of the log, newest first, read from the end of the live
    file and then of the newest segments.
    """
    found: list[dict[str, Any]] = []
    for path in live_files(data_dir) + segments(data_dir)[::-1]:
        for line in _last_lines(path, limit - len(found)):
            try:
                found.append(json.loads(line))
            except ValueError:
                continue
        if len(found) >= limit:
            break
    return found


def _last_lines(path: Path, count: int, block: int = 1 << 16) -> list[bytes]:
    """
    Up to C{count} whole lines from the end of C{path}, last first.
    """
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        return []
    with f:
        end = f.seek(0, os.SEEK_END)
        position, tail = end, b""
        while position > 0:
            position = max(0, position - block)
            f.seek(position)
            tail = f.read(end - position)
            if tail.count(b"\n") > count:
                break
    lines = tail.split(b"\n")
    lines.pop()  # after the last newline: empty, or a line still being written
    if position > 0:
        lines.pop(0)  # may have started before the block read
    return [line for line in reversed(lines) if line][:count]
