"""
The fleet's store (C{--store postgresql://...}, psycopg 3): every instance ships its own
event log to one PostgreSQL database, **exactly once**, so that one query sees the whole
fleet's spend.

Each batch of lines (a file from the checkpoint on) is one transaction: the events are
inserted with C{ON CONFLICT DO NOTHING} on (request id, time), the rollups are added to
from the rows actually inserted (C{RETURNING}), and the instance's checkpoint for that
file (its inode and the offset reached) is moved, all or nothing. A crash, a lost
connection or a stopped server anywhere replays the batch harmlessly; the log is the
buffer meanwhile, and calls are still served. Raw events are partitioned by month, so
retention drops whole partitions.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime
from operator import itemgetter
from pathlib import Path
from typing import Any, NamedTuple

from modeltrack.store import rollups
from modeltrack.store.event_lines import AT, decode_line, event_row, whole_lines
from modeltrack.store.journal import live_files, segments

#: Lines per transaction.
BATCH = 5_000

_COLUMNS = (
    "request_id", "ts", "day", "provider", "endpoint", "route_class", "model", "team", "app", "feature", "session_id",
    "key_id", "key_name", "client", "outcome", "input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens",
    "reasoning_tokens", "cost_pico", "saved_pico", "priced", "cache_hit", "latency_ms", "instance",
)
_TYPES = (
    "text", "timestamptz", "text", "text", "text", "text", "text", "text", "text", "text", "text", "text", "text", "text",
    "text", "bigint", "bigint", "bigint", "bigint", "bigint", "bigint", "bigint", "integer", "integer", "double precision",
    "text",
)
#: A row's places in the order of the store's columns (its priced and cache hit as numbers).
_STORED = itemgetter(*(AT["timestamp" if name == "ts" else name] for name in _COLUMNS[:-1]))
_SUM_COLUMNS = ", ".join(f"{name} bigint NOT NULL" for name in rollups.SUMS)


def _rollup_table(name: str, keys: tuple[str, ...]) -> str:
    return f"""CREATE TABLE IF NOT EXISTS {name} (
        day text NOT NULL, {", ".join(f"{key} text NOT NULL" for key in keys)}, cache_hit integer NOT NULL,
        {_SUM_COLUMNS}, last_at text NOT NULL, PRIMARY KEY (day, {", ".join(keys)}, cache_hit))"""


SCHEMA = [
    f"""CREATE TABLE IF NOT EXISTS events ({", ".join(f"{c} {t}" for c, t in zip(_COLUMNS, _TYPES, strict=True))},
        PRIMARY KEY (request_id, ts)) PARTITION BY RANGE (ts)""",
    _rollup_table("daily", rollups.DAILY_KEYS),
    _rollup_table("daily_models", rollups.COARSE_KEYS),
    f"""CREATE TABLE IF NOT EXISTS session_days (session_id text NOT NULL, day text NOT NULL, models text[] NOT NULL,
        teams text[] NOT NULL, first_at text NOT NULL, last_at text NOT NULL, {_SUM_COLUMNS}, PRIMARY KEY (day, session_id))""",
    """CREATE TABLE IF NOT EXISTS shipped (instance text NOT NULL, source text NOT NULL, inode bigint NOT NULL,
        "offset" bigint NOT NULL, sealed boolean NOT NULL, PRIMARY KEY (instance, source))""",
    """CREATE TABLE IF NOT EXISTS instances (instance text PRIMARY KEY, events bigint NOT NULL,
        last_event_at text, shipped_at timestamptz NOT NULL, pending_bytes bigint NOT NULL DEFAULT 0)""",
]

_SUMS = (
    "count(*), sum(input_tokens), sum(output_tokens), sum(cache_read_tokens), sum(cache_write_tokens), "
    "sum(reasoning_tokens), coalesce(sum(cost_pico), 0), coalesce(sum(saved_pico), 0), sum(1 - priced)"
)
_ADDED = ", ".join(f"{name} = {{table}}.{name} + excluded.{name}" for name in rollups.SUMS)


def _rollup(table: str, keys: tuple[str, ...], source: str) -> str:
    labels = ", ".join(f"coalesce({key}, '')" for key in keys)
    return f"""INSERT INTO {table} (day, {", ".join(keys)}, cache_hit, {", ".join(rollups.SUMS)}, last_at)
        SELECT day, {labels}, cache_hit, {_SUMS}, max(ts_text) FROM {source} GROUP BY day, {labels}, cache_hit
        ON CONFLICT (day, {", ".join(keys)}, cache_hit) DO UPDATE SET {_ADDED.format(table=table)},
        last_at = greatest({table}.last_at, excluded.last_at)"""


#: One statement: the batch's events inserted (each once, whatever replays), and only
#: those the insert returned added to the rollups.
_SHIP = f"""
WITH inserted AS (
    INSERT INTO events SELECT * FROM incoming ON CONFLICT DO NOTHING
    RETURNING *, to_char(ts AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"') AS ts_text
), d AS ({_rollup("daily", rollups.DAILY_KEYS, "inserted")}
), m AS ({_rollup("daily_models", rollups.COARSE_KEYS, "inserted")}
), s AS (
    INSERT INTO session_days (session_id, day, models, teams, first_at, last_at, {", ".join(rollups.SUMS)})
    SELECT session_id, day, coalesce(array_agg(DISTINCT model) FILTER (WHERE model IS NOT NULL), '{{}}'),
        coalesce(array_agg(DISTINCT team) FILTER (WHERE team IS NOT NULL), '{{}}'), min(ts_text), max(ts_text), {_SUMS}
    FROM inserted WHERE session_id IS NOT NULL GROUP BY session_id, day
    ON CONFLICT (day, session_id) DO UPDATE SET {_ADDED.format(table="session_days")},
        models = ARRAY(SELECT DISTINCT unnest(session_days.models || excluded.models) ORDER BY 1),
        teams = ARRAY(SELECT DISTINCT unnest(session_days.teams || excluded.teams) ORDER BY 1),
        first_at = least(session_days.first_at, excluded.first_at), last_at = greatest(session_days.last_at, excluded.last_at)
)
SELECT count(*), max(ts_text) FROM inserted
"""


class Access(NamedTuple):
    """
    How the store is reached: its URL (never with a password), the file its password
    is in, and the CAs its certificate must chain to (C{--ca-bundle}, for
    C{sslmode=verify-full}; else libpq's own, C{~/.postgresql/root.crt}).
    """

    url: str
    password_file: Path | None = None
    ca_bundle: Path | None = None


def connect(url: str, password_file: Path | None = None, ca_bundle: Path | None = None) -> Any:
    """A connection to the store, its tables made (psycopg 3: C{pip install 'modeltrack[postgres]'})."""
    import psycopg

    options: dict[str, Any] = {}
    if password_file is not None and (password := password_file.read_text().strip()):
        options["password"] = password
    if ca_bundle is not None:
        options["sslrootcert"] = str(ca_bundle)
    # Autocommit: each batch's transaction is its own (a block, not a savepoint).
    conn = psycopg.connect(url, connect_timeout=10, autocommit=True, **options)
    with conn.transaction():
        for statement in SCHEMA:
            conn.execute(statement)
    return conn


def _partition(conn: Any, month: date) -> None:
    following = date(month.year + month.month // 12, month.month % 12 + 1, 1)
    conn.execute(
        f"CREATE TABLE IF NOT EXISTS events_{month:%Y_%m} PARTITION OF events "
        f"FOR VALUES FROM ('{month.isoformat()}') TO ('{following.isoformat()}')"
    )


def _batches(path: Path, offset: int, instance: str) -> Iterator[tuple[list[tuple[Any, ...]], int]]:
    rows: list[tuple[Any, ...]] = []
    for line, after in whole_lines(path, offset):
        try:
            stored = _STORED(event_row(decode_line(line)))
            rows.append((*stored[:-3], int(stored[-3]), int(stored[-2]), stored[-1], instance))
        except (ValueError, ArithmeticError, RecursionError):  # (BadLine is a ValueError)
            pass  # the index counts and reports such lines; the store leaves them out
        offset = after
        if len(rows) >= BATCH:
            yield rows, offset
            rows = []
    yield rows, offset


def ship(conn: Any, data_dir: Path, instance: str, progress: Callable[[int], None] | None = None) -> int:
    """
    Ship what this instance's log holds past its checkpoints: returns the events the
    store took (inserted now; a replayed event is not counted again).
    """
    known = {
        source: (inode, offset, sealed)
        for source, inode, offset, sealed in conn.execute('SELECT source, inode, "offset", sealed FROM shipped WHERE instance = %s', (instance,))
    }
    carried = {inode: offset for inode, offset, sealed in known.values() if not sealed}
    lives = live_files(data_dir)
    shipped = 0
    for path in segments(data_dir) + lives:
        try:
            inode = os.stat(path).st_ino
        except FileNotFoundError:
            continue
        previous = known.get(path.name)
        if previous is not None and previous[2]:
            continue  # a sealed segment shipped whole
        if previous is None:  # a live file sealed since keeps its inode: shipped on from where it was
            offset = carried.get(inode, 0)
        else:
            offset = previous[1] if previous[0] == inode else 0
        sealed = path not in lives
        try:
            for rows, reached in _batches(path, offset, instance):
                shipped += _ship_batch(conn, rows, instance, path.name, inode, reached, sealed)
                if progress is not None:
                    progress(shipped)
        except FileNotFoundError:
            continue  # sealed under us: shipped as a segment next time
    return shipped


def _ship_batch(conn: Any, rows: list[tuple[Any, ...]], instance: str, source: str, inode: int, offset: int, sealed: bool) -> int:
    with conn.transaction():
        conn.execute("CREATE TEMP TABLE IF NOT EXISTS incoming (LIKE events) ON COMMIT DELETE ROWS")
        for month in {date.fromisoformat(row[2][:7] + "-01") for row in rows}:
            _partition(conn, month)
        inserted, last = 0, None
        if rows:
            with conn.cursor().copy(f"COPY incoming ({', '.join(_COLUMNS)}) FROM STDIN") as copy:
                for row in rows:
                    copy.write_row(row)
            inserted, last = conn.execute(_SHIP).fetchone()
        conn.execute(
            """INSERT INTO shipped (instance, source, inode, "offset", sealed) VALUES (%s, %s, %s, %s, %s)
               ON CONFLICT (instance, source) DO UPDATE SET inode = excluded.inode, "offset" = excluded."offset",
               sealed = excluded.sealed""",
            (instance, source, inode, offset, sealed),
        )
        conn.execute(
            """INSERT INTO instances (instance, events, last_event_at, shipped_at) VALUES (%s, %s, %s, %s)
               ON CONFLICT (instance) DO UPDATE SET events = instances.events + excluded.events,
               last_event_at = greatest(instances.last_event_at, excluded.last_event_at), shipped_at = excluded.shipped_at""",
            (instance, inserted, last, datetime.now(UTC)),
        )
    return int(inserted)


def drop_partitions(conn: Any, days: int, now: datetime) -> list[str]:
    """Drop the months of raw events wholly older than C{days} (the rollups stay)."""
    cutoff = (now.timestamp() - days * 86400)
    dropped = []
    for (name,) in conn.execute("SELECT tablename FROM pg_tables WHERE tablename ~ '^events_[0-9]{4}_[0-9]{2}$'").fetchall():
        year, month = int(name[7:11]), int(name[12:14])
        following = datetime(year + month // 12, month % 12 + 1, 1, tzinfo=UTC)
        if following.timestamp() <= cutoff:
            conn.execute(f"DROP TABLE {name}")
            dropped.append(name)
    return dropped


def pending_bytes(conn: Any, data_dir: Path, instance: str) -> int:
    """What this instance's log holds past its checkpoints, in bytes (its lag)."""
    known = {source: (inode, offset) for source, inode, offset in conn.execute(
        'SELECT source, inode, "offset" FROM shipped WHERE instance = %s', (instance,))}
    pending = 0
    for path in segments(data_dir) + live_files(data_dir):
        try:
            stat = os.stat(path)
        except FileNotFoundError:
            continue
        inode, offset = known.get(path.name, (stat.st_ino, 0))
        pending += stat.st_size - (offset if inode == stat.st_ino else 0)
    return max(0, pending)


#: The fleet's instances, as the store knows them: events shipped, the last one's time,
#: when each last shipped, and its lag (bytes of its log not shipped; in events, at the
#: mean size of those it shipped).
FLEET = """
SELECT i.instance, i.events, i.last_event_at, to_char(i.shipped_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"'),
       i.pending_bytes, CASE WHEN i.events > 0 THEN ceil(i.pending_bytes / (s.bytes::float / i.events)) ELSE 0 END
FROM instances i LEFT JOIN (SELECT instance, sum("offset") AS bytes FROM shipped GROUP BY instance) s USING (instance)
ORDER BY i.instance
"""


class Shipper:
    """
    Ships this instance's log to the store after each pass of the index. A store out of
    reach is tried again on the next pass, from its checkpoint (the log is the buffer);
    the first failure and the recovery are said once each, never with the URL.
    """

    def __init__(self, access: Access, data_dir: Path, instance: str, warn: Callable[[str], None],
                 retain_days: int | None = None) -> None:
        self._access = access
        self._data_dir, self._instance, self._warn = data_dir, instance, warn
        self._retain_days = retain_days
        self._conn: Any = None
        self._down = False
        self._retained = 0.0
        self._whole: frozenset[str] = frozenset()

    def whole(self) -> frozenset[str]:
        """The sealed segments the store holds whole, as it last said (none until it has)."""
        return self._whole

    def __call__(self) -> int:
        try:
            if self._conn is None or self._conn.closed:
                self._conn = connect(*self._access)
            shipped = ship(self._conn, self._data_dir, self._instance)
            self._whole = frozenset(source for (source,) in self._conn.execute(
                "SELECT source FROM shipped WHERE instance = %s AND sealed", (self._instance,)))
            self._conn.execute("UPDATE instances SET pending_bytes = %s WHERE instance = %s",
                               (pending_bytes(self._conn, self._data_dir, self._instance), self._instance))
            now = datetime.now(UTC)
            if self._retain_days is not None and now.timestamp() - self._retained >= 3600:
                self._retained = now.timestamp()
                drop_partitions(self._conn, self._retain_days, now)
        except Exception as e:  # psycopg's errors, OSError: out of reach, or gone mid-batch
            if not self._down:
                self._warn(f"modeltrack index: the fleet store cannot be reached ({type(e).__name__}); "
                           "shipping resumes from its checkpoint")
            self._down = True
            if self._conn is not None:
                self._conn.close()
            self._conn = None
            return 0
        if self._down:
            self._warn("modeltrack index: the fleet store is reachable again")
            self._down = False
        return shipped


#: The index's SQLite aggregates as PostgreSQL says them (a session's models and teams
#: are arrays in the store).
_SPOKEN = {
    " FROM daily_labels": " FROM daily",  # the store has no rollup without models: it reads the full one
    "GROUP_CONCAT(NULLIF(models, ''))": "string_agg(array_to_string(models, ','), ',')",
    "GROUP_CONCAT(NULLIF(teams, ''))": "string_agg(array_to_string(teams, ','), ',')",
    "GROUP_CONCAT(DISTINCT NULLIF(key_id, ''))": "string_agg(DISTINCT NULLIF(key_id, ''), ',')",
}


class Reader:
    """
    The store read through the index's report queries (L{modeltrack.store.reports}):
    their C{?} parameters as psycopg's, their few SQLite aggregates as PostgreSQL's,
    their sums as whole numbers.
    """

    def __init__(self, conn: Any) -> None:
        self._conn = conn

    def execute(self, query: str, params: Any = ()) -> list[tuple[Any, ...]]:
        for sqlite, spoken in _SPOKEN.items():
            query = query.replace(sqlite, spoken)
        rows = self._conn.execute(query.replace("?", "%s"), tuple(params)).fetchall()
        return [tuple(int(v) if type(v).__name__ == "Decimal" and v == v.to_integral_value() else v for v in row) for row in rows]
