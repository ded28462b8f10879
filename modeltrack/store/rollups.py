"""
The index's rollups: what every report reads instead of raw rows, so that a report's
cost grows with the number of groups, not with the log.

- C{daily}: per UTC day and (provider, endpoint, route class, model, team, app,
  feature, key, client, outcome, cache hit or not), the calls and their sums; and the
  last call's time.
- C{daily_labels}: the same without the model, provider and endpoint (route class,
  team, app, feature, key, client, outcome, cache hit): what the apps, keys and
  clients pages group, in a fraction of C{daily}'s rows. (The fleet's store has no
  such table: its reader reads C{daily} for it.)
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
from operator import itemgetter
from typing import Any

#: The labels a daily row is kept apart by, after its day (and whether it was a cache hit).
DAILY_KEYS = (
    "provider", "endpoint", "route_class", "model", "team", "app", "feature", "key_name", "key_id", "client", "outcome",
)
#: The labels of the coarse daily rollup, which most reports read (a few hundred rows a day).
COARSE_KEYS = ("provider", "endpoint", "route_class", "model", "team", "outcome")
#: The labels of the daily rollup without models.
LABEL_KEYS = ("route_class", "team", "app", "feature", "key_name", "key_id", "client", "outcome")
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


SCHEMA = _daily_table("daily", DAILY_KEYS) + _daily_table("daily_models", COARSE_KEYS) + _daily_table(
    "daily_labels", LABEL_KEYS) + f"""
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
_DAILY_LABELS = _daily("daily_labels", LABEL_KEYS)
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


def add(db: sqlite3.Connection, staged_rows: int, insert_events: str, before: int) -> None:
    """
    Within the caller's transaction, with a piece of the log attached as C{piece}
    (L{modeltrack.store.event_lines.stage}): its rows into the events table
    (C{insert_events}, which ignores an event indexed before), and those it added into
    the rollups: the piece's own sums, made as it was read, when every row was new;
    else summed by SQL from the rows added (past C{before}, the last row before them).
    """
    changes = db.total_changes
    db.execute(insert_events)
    if db.total_changes - changes == staged_rows:
        db.execute(_MERGE_DAILY)
        db.execute(_MERGE_MODELS)
        db.execute(_MERGE_LABELS)
        db.execute(_MERGE_SESSIONS)
        return
    past = {"before": before}
    db.execute(_DAILY, past)
    db.execute(_DAILY_MODELS, past)
    db.execute(_DAILY_LABELS, past)
    db.execute(_SESSIONS, past)


class Totals:
    """
    What a piece of rows adds to the rollups, summed as they are read (in the process
    that reads them): then only a row per group is written, not one per event. Used
    when every row of the batch turns out to be new; else the rollups are summed by
    SQL from the rows the batch added (L{add}). A label the event did not have is
    C{None} here, C{''} once written.
    """

    def __init__(self) -> None:
        self.daily: dict[tuple[Any, ...], list[Any]] = {}
        self.models: dict[tuple[Any, ...], list[Any]] = {}
        self.labels: dict[tuple[Any, ...], list[Any]] = {}
        self.sessions: dict[tuple[Any, ...], list[Any]] = {}

    def add(self, rows: list[tuple[Any, ...]]) -> None:
        """Each row's (in L{event_lines.ROW}'s places) sums into its groups."""
        # Written out by hand, by place: this runs for every event of a catch-up.
        daily, sessions, daily_key = self.daily, self.sessions, _DAILY_KEY
        for row in rows:
            key = daily_key(row)
            at = row[1]
            found = daily.get(key)
            if found is None:
                daily[key] = [1, row[14], row[15], row[16], row[17], row[18], row[25] or 0, row[26] or 0, 1 - row[21], at]
            else:
                found[0] += 1
                found[1] += row[14]
                found[2] += row[15]
                found[3] += row[16]
                found[4] += row[17]
                found[5] += row[18]
                found[6] += row[25] or 0
                found[7] += row[26] or 0
                found[8] += 1 - row[21]
                if at > found[9]:
                    found[9] = at
            if row[10] is not None:
                key = (row[10], row[24])
                found = sessions.get(key)
                if found is None:
                    sessions[key] = [{row[6]}, {row[7]}, at, at, 1, row[14], row[15], row[16], row[17], row[18],
                                     row[25] or 0, row[26] or 0, 1 - row[21]]
                    continue
                found[0].add(row[6])
                found[1].add(row[7])
                if at < found[2]:
                    found[2] = at
                if at > found[3]:
                    found[3] = at
                found[4] += 1
                found[5] += row[14]
                found[6] += row[15]
                found[7] += row[16]
                found[8] += row[17]
                found[9] += row[18]
                found[10] += row[25] or 0
                found[11] += row[26] or 0
                found[12] += 1 - row[21]
        # The coarser rollups from the daily groups: a step per group, not per row.
        self.models = _coarser(daily, _COARSE_OF_DAILY)
        self.labels = _coarser(daily, _LABELS_OF_DAILY)

    def stage(self, piece: sqlite3.Connection) -> None:
        """The sums into a piece's own database (L{PIECE_SCHEMA}); a label the event did not have as C{''}."""
        piece.executemany(_STAGE_DAILY, [(*_written(key), *values) for key, values in self.daily.items()])
        piece.executemany(_STAGE_MODELS, [(*_written(key), *values) for key, values in self.models.items()])
        piece.executemany(_STAGE_LABELS, [(*_written(key), *values) for key, values in self.labels.items()])
        piece.executemany(_STAGE_SESSIONS, [
            (session, day, ",".join(sorted(found[0] - {None})), ",".join(sorted(found[1] - {None})), *found[2:])
            for (session, day), found in self.sessions.items()
        ])


def _written(key: tuple[Any, ...]) -> tuple[Any, ...]:
    return tuple(map(_BLANK.get, key, key))  # (a missing label as '', in C: a step per group)


_BLANK: dict[Any, Any] = {None: ""}


#: A row's day, C{DAILY_KEYS} and cache hit, in that order.
_DAILY_KEY = itemgetter(24, 2, 3, 5, 6, 7, 8, 9, 12, 11, 13, 4, 22)
#: A daily group's key's day, C{COARSE_KEYS} and cache hit.
_COARSE_OF_DAILY = itemgetter(0, 1, 2, 3, 4, 5, 11, 12)
#: A daily group's key's day, C{LABEL_KEYS} and cache hit.
_LABELS_OF_DAILY = itemgetter(0, 3, 5, 6, 7, 8, 9, 10, 11, 12)


def _coarser(daily: dict[tuple[Any, ...], list[Any]], key_of: Any) -> dict[tuple[Any, ...], list[Any]]:
    """The daily groups summed again by the fewer labels C{key_of} takes from their keys."""
    groups: dict[tuple[Any, ...], list[Any]] = {}
    for key, sums in daily.items():
        coarse = key_of(key)
        found = groups.get(coarse)
        if found is None:
            groups[coarse] = list(sums)
        else:
            for i in range(9):
                found[i] += sums[i]
            if sums[9] > found[9]:
                found[9] = sums[9]
    return groups


def _columns(keys: tuple[str, ...]) -> str:
    return f"day, {', '.join(keys)}, cache_hit, {', '.join(SUMS)}, last_at"


_SESSION_COLUMNS = f"session_id, day, models, teams, first_at, last_at, {', '.join(SUMS)}"
#: A piece's sums, in its own database: rows to merge, not yet keyed.
PIECE_SCHEMA = f"""
CREATE TABLE daily ({_columns(DAILY_KEYS)});
CREATE TABLE daily_models ({_columns(COARSE_KEYS)});
CREATE TABLE daily_labels ({_columns(LABEL_KEYS)});
CREATE TABLE session_days ({_SESSION_COLUMNS});
"""
_STAGE_DAILY = f"INSERT INTO daily VALUES ({', '.join('?' * (len(DAILY_KEYS) + len(SUMS) + 3))})"
_STAGE_MODELS = f"INSERT INTO daily_models VALUES ({', '.join('?' * (len(COARSE_KEYS) + len(SUMS) + 3))})"
_STAGE_LABELS = f"INSERT INTO daily_labels VALUES ({', '.join('?' * (len(LABEL_KEYS) + len(SUMS) + 3))})"
_STAGE_SESSIONS = f"INSERT INTO session_days VALUES ({', '.join('?' * (6 + len(SUMS)))})"


def _merge(table: str, keys: tuple[str, ...]) -> str:
    # (WHERE true: SQLite's parser needs it before ON CONFLICT in an INSERT ... SELECT.)
    return (
        f"INSERT INTO {table} ({_columns(keys)}) SELECT {_columns(keys)} FROM piece.{table} WHERE true "
        f"ON CONFLICT DO UPDATE SET {_ADDED}, last_at = MAX(last_at, excluded.last_at)"
    )


_MERGE_DAILY = _merge("daily", DAILY_KEYS)
_MERGE_MODELS = _merge("daily_models", COARSE_KEYS)
_MERGE_LABELS = _merge("daily_labels", LABEL_KEYS)
_MERGE_SESSIONS = f"""
INSERT INTO session_days ({_SESSION_COLUMNS}) SELECT {_SESSION_COLUMNS} FROM piece.session_days WHERE true
ON CONFLICT DO UPDATE SET {_ADDED}, models = {_MORE.format("models")}, teams = {_MORE.format("teams")},
    first_at = MIN(first_at, excluded.first_at), last_at = MAX(last_at, excluded.last_at)
"""
