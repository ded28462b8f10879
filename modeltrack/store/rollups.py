"""
The index's rollups: what every report reads instead of raw rows, so that a report's
cost grows with the number of groups, not with the log.

- C{daily}: per UTC day and (provider, endpoint, route class, model, team, app,
  feature, key, client, outcome, cache hit or not), the calls and their sums; and the
  last call's time.
- C{daily_models}: the same with only (provider, endpoint, route class, model, team,
  outcome, cache hit): what most reports group by, in a few hundred rows a day.
- C{session_days}: per session and day, the same sums, its models and teams, and its
  first and last call.

They are added to in the same transaction as the raw rows, from the rows of a batch
that were not in the index yet (read twice, an event counts once), so each rollup
equals a sum over the raw events, to the picodollar. A label the event did not have is
C{''} here (SQLite's UNIQUE holds NULLs apart), and C{NULL} again when read.
"""

from __future__ import annotations

import sqlite3
from typing import Any

#: The labels a daily row is kept apart by, after its day (and whether it was a cache hit).
DAILY_KEYS = (
    "provider", "endpoint", "route_class", "model", "team", "app", "feature", "key_name", "key_id", "client", "outcome",
)
#: The labels of the coarse daily rollup, which most reports read (a few hundred rows a day).
COARSE_KEYS = ("provider", "endpoint", "route_class", "model", "team", "outcome")
#: The sums every rollup row holds.
SUMS = (
    "requests", "input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens", "reasoning_tokens",
    "cost_pico", "saved_pico", "unpriced",
)


def _daily_table(name: str, keys: tuple[str, ...]) -> str:
    """A daily rollup's table: per day and C{keys} (and cache hit), the sums."""
    return f"""CREATE TABLE IF NOT EXISTS {name} (
    day TEXT NOT NULL,
    {", ".join(f"{key} TEXT NOT NULL" for key in keys)},
    cache_hit INTEGER NOT NULL,
    {", ".join(f"{total} INTEGER NOT NULL" for total in SUMS)},
    last_at TEXT NOT NULL,
    PRIMARY KEY (day, {", ".join(keys)}, cache_hit)
) WITHOUT ROWID;
"""


SCHEMA = _daily_table("daily", DAILY_KEYS) + _daily_table("daily_models", COARSE_KEYS) + f"""
CREATE TABLE IF NOT EXISTS session_days (
    session_id TEXT NOT NULL,
    day TEXT NOT NULL,
    models TEXT NOT NULL,
    teams TEXT NOT NULL,
    first_at TEXT NOT NULL,
    last_at TEXT NOT NULL,
    {", ".join(f"{name} INTEGER NOT NULL" for name in SUMS)},
    PRIMARY KEY (day, session_id)
) WITHOUT ROWID;
"""

_ROW_SUMS = (
    "COUNT(*), SUM(input_tokens), SUM(output_tokens), SUM(cache_read_tokens), SUM(cache_write_tokens), "
    "SUM(reasoning_tokens), COALESCE(SUM(cost_pico), 0), COALESCE(SUM(saved_pico), 0), SUM(1 - priced)"
)
_ADDED = ", ".join(f"{name} = {name} + excluded.{name}" for name in SUMS)
#: Only the rows the batch added: past the last row before it (an event already
#: indexed was ignored, and added no row).
_NEW = "FROM events WHERE rowid > :before"



def _daily(table: str, keys: tuple[str, ...]) -> str:
    labels = ", ".join(f"COALESCE({key}, '')" for key in keys)
    return f"""
INSERT INTO {table} (day, {", ".join(keys)}, cache_hit, {", ".join(SUMS)}, last_at)
SELECT day, {labels}, cache_hit, {_ROW_SUMS}, MAX(timestamp)
{_NEW} GROUP BY day, {labels}, cache_hit
ON CONFLICT DO UPDATE SET {_ADDED}, last_at = MAX(last_at, excluded.last_at)
"""


_DAILY = _daily("daily", DAILY_KEYS)
_DAILY_MODELS = _daily("daily_models", COARSE_KEYS)
#: A session's models (or teams) already listed are not listed again (read as a set).
_MORE = (
    "CASE WHEN excluded.{0} = '' OR instr(',' || {0} || ',', ',' || excluded.{0} || ',') > 0 THEN {0} "
    "WHEN {0} = '' THEN excluded.{0} ELSE {0} || ',' || excluded.{0} END"
)
_SESSIONS = f"""
INSERT INTO session_days (session_id, day, models, teams, first_at, last_at, {", ".join(SUMS)})
SELECT session_id, day, COALESCE(GROUP_CONCAT(DISTINCT model), ''), COALESCE(GROUP_CONCAT(DISTINCT team), ''),
       MIN(timestamp), MAX(timestamp), {_ROW_SUMS}
{_NEW} AND session_id IS NOT NULL GROUP BY session_id, day
ON CONFLICT DO UPDATE SET {_ADDED},
    models = {_MORE.format("models")},
    teams = {_MORE.format("teams")},
    first_at = MIN(first_at, excluded.first_at), last_at = MAX(last_at, excluded.last_at)
"""


def create(db: sqlite3.Connection) -> None:
    db.executescript(SCHEMA)


def add(db: sqlite3.Connection, rows: list[tuple[object, ...]], insert_events: str, totals: list[Totals] | None = None) -> None:
    """
    Within the caller's transaction: C{rows} into the events table (C{insert_events},
    which ignores an event indexed before), and those it added into the rollups: from
    C{totals} (their sums, made as they were read) when every row was new, else summed
    by SQL from the rows added.
    """
    before = {"before": db.execute("SELECT COALESCE(MAX(rowid), 0) FROM events").fetchone()[0]}
    changes = db.total_changes
    db.executemany(insert_events, rows)
    if totals is not None and db.total_changes - changes == len(rows):
        add_totals(db, totals)
        return
    db.execute(_DAILY, before)
    db.execute(_DAILY_MODELS, before)
    db.execute(_SESSIONS, before)


class Totals:
    """
    What a chunk of rows adds to the rollups, summed as they are read (in the process
    that reads them): then only a row per group is written, not one per event. Used
    when every row of the batch turns out to be new; else the rollups are summed by
    SQL from the rows the batch added (L{add}).
    """

    _DAILY_AT = (3, 4, 5, 6, 7, 8, 9, 12, 11, 13, 14)  # the row's fields of DAILY_KEYS, in order
    _COARSE_AT = (3, 4, 5, 6, 7, 14)

    def __init__(self) -> None:
        self.daily: dict[tuple[object, ...], list[Any]] = {}
        self.models: dict[tuple[object, ...], list[Any]] = {}
        self.sessions: dict[tuple[object, ...], list[Any]] = {}

    def add(self, rows: list[tuple[Any, ...]]) -> None:
        daily, models, sessions = self.daily, self.models, self.sessions
        for row in rows:
            sums = (1, row[15], row[16], row[17], row[18], row[19], row[20] or 0, row[21] or 0, 1 - row[22])
            day, at = row[2], row[1]
            for table, fields in ((daily, self._DAILY_AT), (models, self._COARSE_AT)):
                key = (day, *(row[i] or "" for i in fields), row[23])
                found = table.get(key)
                if found is None:
                    table[key] = [*sums, at]
                else:
                    for i, value in enumerate(sums):
                        found[i] += value
                    if at > found[9]:
                        found[9] = at
            if row[10] is not None:
                key = (row[10], day)
                found = sessions.get(key)
                if found is None:
                    sessions[key] = [set(), set(), at, at, *sums]
                    found = sessions[key]
                else:
                    for i, value in enumerate(sums):
                        found[4 + i] += value
                    found[2], found[3] = min(found[2], at), max(found[3], at)
                if row[6] is not None:
                    found[0].add(row[6])
                if row[7] is not None:
                    found[1].add(row[7])


def _upsert(table: str, keys: tuple[str, ...]) -> str:
    return (
        f"INSERT INTO {table} (day, {', '.join(keys)}, cache_hit, {', '.join(SUMS)}, last_at) "
        f"VALUES ({', '.join('?' * (len(keys) + len(SUMS) + 3))}) "
        f"ON CONFLICT DO UPDATE SET {_ADDED}, last_at = MAX(last_at, excluded.last_at)"
    )


_UPSERT_DAILY = _upsert("daily", DAILY_KEYS)
_UPSERT_MODELS = _upsert("daily_models", COARSE_KEYS)
_UPSERT_SESSIONS = f"""
INSERT INTO session_days (session_id, day, models, teams, first_at, last_at, {", ".join(SUMS)})
VALUES ({", ".join("?" * (6 + len(SUMS)))})
ON CONFLICT DO UPDATE SET {_ADDED}, models = {_MORE.format("models")}, teams = {_MORE.format("teams")},
    first_at = MIN(first_at, excluded.first_at), last_at = MAX(last_at, excluded.last_at)
"""


def add_totals(db: sqlite3.Connection, totals: list[Totals]) -> None:
    """Within the caller's transaction: each chunk's sums into the rollups."""
    for chunk in totals:
        db.executemany(_UPSERT_DAILY, [(*key, *values) for key, values in chunk.daily.items()])
        db.executemany(_UPSERT_MODELS, [(*key, *values) for key, values in chunk.models.items()])
        db.executemany(_UPSERT_SESSIONS, [
            (session, day, ",".join(sorted(found[0])), ",".join(sorted(found[1])), found[2], found[3], *found[4:])
            for (session, day), found in chunk.sessions.items()
        ])
