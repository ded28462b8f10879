"""
The SQLite index of the event log (C{<data-dir>/modeltrack.db}), for reports.

The event log stays the truth; the index is rebuilt from it incrementally: each sealed
segment once (remembered by name), the live file from the offset reached last time (a
torn last line is left for the next pass; a new inode means the file was sealed and
rotated, so reading starts again at 0). Rows are keyed by request id, so reading an
event twice changes nothing. Costs are stored as whole picodollars (10^-12 USD), so
sums stay exact.
"""

from __future__ import annotations

import json
import math
import multiprocessing
import os
import select
import sqlite3
import sys
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any, NamedTuple

import orjson

from modeltrack.pricing.usage import MAX_COUNT
from modeltrack.store import rollups
from modeltrack.store.datadir import create_file
from modeltrack.store.journal import live_files, segments

PICO = Decimal(10) ** 12
DB_NAME = "modeltrack.db"

#: Raised whenever the events table changes; an index of another version is rebuilt.
SCHEMA_VERSION = 5
SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    request_id TEXT PRIMARY KEY,
    timestamp TEXT NOT NULL,
    day TEXT NOT NULL,
    provider TEXT NOT NULL,
    endpoint TEXT NOT NULL,
    route_class TEXT NOT NULL,
    model TEXT,
    team TEXT,
    app TEXT,
    feature TEXT,
    session_id TEXT,
    key_id TEXT,
    key_name TEXT,
    client TEXT,
    outcome TEXT NOT NULL,
    input_tokens INTEGER NOT NULL,
    output_tokens INTEGER NOT NULL,
    cache_read_tokens INTEGER NOT NULL,
    cache_write_tokens INTEGER NOT NULL,
    reasoning_tokens INTEGER NOT NULL,
    cost_pico INTEGER,
    saved_pico INTEGER,
    priced INTEGER NOT NULL,
    cache_hit INTEGER NOT NULL,
    latency_ms REAL
);
CREATE INDEX IF NOT EXISTS events_day ON events (day);
CREATE TABLE IF NOT EXISTS skipped_lines (
    name TEXT NOT NULL,
    offset INTEGER NOT NULL,
    PRIMARY KEY (name, offset)
);
CREATE TABLE IF NOT EXISTS sources (
    name TEXT PRIMARY KEY,
    inode INTEGER NOT NULL,
    offset INTEGER NOT NULL,
    sealed INTEGER NOT NULL
);
"""

_COLUMNS = (
    "request_id", "timestamp", "day", "provider", "endpoint", "route_class", "model", "team", "app", "feature",
    "session_id", "key_id", "key_name", "client", "outcome", "input_tokens", "output_tokens", "cache_read_tokens",
    "cache_write_tokens", "reasoning_tokens", "cost_pico", "saved_pico", "priced", "cache_hit",
    "latency_ms",
)
_INSERT = f"INSERT OR IGNORE INTO events ({', '.join(_COLUMNS)}) VALUES ({', '.join('?' * len(_COLUMNS))})"


def connect(data_dir: Path, check_same_thread: bool = True) -> sqlite3.Connection:
    # Created 0640 like the event log (SQLite gives its WAL files the same mode).
    create_file(data_dir / DB_NAME)
    db = sqlite3.connect(data_dir / DB_NAME, check_same_thread=check_same_thread)
    db.execute("PRAGMA journal_mode=WAL")
    # The index is rebuilt from the log, which is the truth: a commit need not wait for
    # the disk (WAL keeps the file whole; a crash loses at most the last batches, read
    # again from their offsets).
    db.execute("PRAGMA synchronous=NORMAL")
    db.execute("PRAGMA cache_size=-65536")  # 64 MiB
    with db:
        version = db.execute("PRAGMA user_version").fetchone()[0]
        if version != SCHEMA_VERSION:
            # An index made by another version: the event log is the truth, so it is
            # read again from the start into the current schema.
            db.executescript(
                "DROP TABLE IF EXISTS events; DROP TABLE IF EXISTS skipped_lines; DROP TABLE IF EXISTS sources; "
                "DROP TABLE IF EXISTS daily; DROP TABLE IF EXISTS daily_models; DROP TABLE IF EXISTS session_days;"
            )
            db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        db.executescript(SCHEMA)
        rollups.create(db)
    return db


class BadLine(ValueError):
    """
    A line of the event log that is not an event the index can hold.
    """


#: SQLite's INTEGER is 64 bits: a cost past this many picodollars (9.2 million USD)
#: cannot be stored, and is no real call's.
_MOST_PICO = 2**63 - 1


def _refuse_constant(name: str) -> None:
    raise BadLine(f"{name} is not JSON")


#: json.loads takes NaN and Infinity; an event line never holds them.
_decode = json.JSONDecoder(parse_constant=_refuse_constant).decode


def decode_line(line: bytes) -> Any:
    """
    One event line's JSON: orjson's (a quarter of the time), else the standard
    library's, which also reads an escaped lone surrogate (the log writes one as
    JSON allows) and says what is wrong with a line that is not JSON.
    """
    try:
        return orjson.loads(line)
    except orjson.JSONDecodeError:
        return _decode(line.decode("utf-8"))


def _pico(value: Any) -> int | None:
    if value is None:
        return None
    if type(value) not in (int, float) or not math.isfinite(value):
        raise BadLine("a cost is not a finite number")
    pico = int(Decimal(str(value)) * PICO)
    if abs(pico) > _MOST_PICO:
        raise BadLine("a cost is out of range")
    return pico


def _tokens(value: Any) -> int:
    if type(value) is not int or not 0 <= value <= MAX_COUNT:
        raise BadLine("a token count is not an integer from 0 to 10^12")
    return value


def _text(value: Any) -> str | None:
    if value is not None and not isinstance(value, str):
        raise BadLine("a label is not text")
    return value


_LABELS = ("model", "team", "app", "feature", "session_id", "key_id", "key_name", "client")
_COUNTS = ("input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens", "reasoning_tokens")


def event_row(event: dict[str, Any]) -> tuple[Any, ...]:
    """
    The index row of one event; L{BadLine} if any field is not what an event holds.
    (The checks are written for speed: this runs for every line of the log.)
    """
    if type(event) is not dict:
        raise BadLine("not a JSON object")
    get = event.get
    request_id, timestamp, provider, endpoint, outcome = (
        get("request_id"), get("timestamp"), get("provider"), get("endpoint"), get("outcome"),
    )
    if not (type(request_id) is type(timestamp) is type(provider) is type(endpoint) is type(outcome) is str):
        raise BadLine("a required field is missing or not text")
    labels = [get(name) for name in _LABELS]
    for value in labels:
        if value is not None and type(value) is not str:
            raise BadLine("a label is not text")
    counts = [get(name) for name in _COUNTS]
    for value in counts:
        if type(value) is not int or not 0 <= value <= MAX_COUNT:
            raise BadLine("a token count is not an integer from 0 to 10^12")
    latency = get("latency_ms")
    if latency is not None and (type(latency) not in (int, float) or not math.isfinite(latency)):
        raise BadLine("latency_ms is not a finite number")
    return (
        request_id, timestamp, timestamp[:10], provider, endpoint, _text(get("route_class")) or "metered",
        *labels, outcome, *counts, _pico(get("cost_usd")), _pico(get("saved_usd")), int(bool(get("priced"))),
        int(bool(get("cache_hit"))), latency,
    )


def _warn_on_stderr(message: str) -> None:
    sys.stderr.write(message + "\n")
    sys.stderr.flush()


def whole_lines(path: Path, offset: int) -> Iterator[tuple[bytes, int]]:
    """
    Complete lines from C{offset} on, each with the offset just past it; a last line
    without its newline (being written) is not returned.
    """
    with open(path, "rb") as f:
        f.seek(offset)
        for line in f:
            if not line.endswith(b"\n"):
                return
            offset += len(line)
            yield line, offset


#: Rows written per transaction: bounds memory on a large segment.
_BATCH = 20_000
#: Progress is told every this many lines.
_PROGRESS_LINES = 5_000


def pending(db: sqlite3.Connection, data_dir: Path) -> list[tuple[Path, int, int, int, bool]]:
    """
    What an update would read: (file, inode, offset to start at, size, sealed) for
    each file with something new, oldest first.
    """
    known = {name: (inode, offset, sealed) for name, inode, offset, sealed in db.execute("SELECT * FROM sources")}
    work = []
    lives = live_files(data_dir)
    for path in segments(data_dir) + lives:
        try:
            stat = os.stat(path)
        except FileNotFoundError:
            continue  # sealed between the listing and now: found as a segment next time
        previous = known.get(path.name)
        if previous is not None and previous[2]:
            continue  # a sealed segment never changes
        offset = previous[1] if previous is not None and previous[0] == stat.st_ino else 0
        if stat.st_size > offset or previous is None:
            work.append((path, stat.st_ino, offset, stat.st_size, path not in lives))
    return work


def _chunks(path: Path, offset: int) -> Iterator[tuple[list[bytes], list[int], int]]:
    """
    The whole lines of C{path} from C{offset} on, L{_PROGRESS_LINES} at a time: the
    lines, where each starts, and the offset past the chunk (the last may be empty).
    """
    lines: list[bytes] = []
    starts: list[int] = []
    for line, after in whole_lines(path, offset):
        lines.append(line)
        starts.append(offset)
        offset = after
        if len(lines) == _PROGRESS_LINES:
            yield lines, starts, offset
            lines, starts = [], []
    yield lines, starts, offset


def read_chunk(
    lines: list[bytes], starts: list[int]
) -> tuple[list[tuple[Any, ...]], list[tuple[int, str]], rollups.Totals]:
    """
    The index rows of C{lines}, the lines that are none (where each starts, and why),
    and what the rows add to the rollups.
    """
    rows, bad = [], []
    for line, start in zip(lines, starts, strict=True):
        try:
            rows.append(event_row(decode_line(line)))
        except (ValueError, RecursionError) as e:  # BadLine, JSON, UTF-8
            bad.append((start, str(e) if isinstance(e, BadLine) else "not a JSON line"))
    totals = rollups.Totals()
    totals.add(rows)
    return rows, bad, totals


def _read(chunks: Iterator[tuple[list[bytes], list[int], int]], pool: ProcessPoolExecutor | None) -> Iterator[Any]:
    """Each chunk read (rows, bad lines, offset past it, lines), in order: in C{pool}, two ahead, if one is given."""
    if pool is None:
        for lines, starts, after in chunks:
            yield (*read_chunk(lines, starts), after, len(lines))
        return
    ahead: deque[tuple[Future[Any], int, int]] = deque()
    for lines, starts, after in chunks:
        ahead.append((pool.submit(read_chunk, lines, starts), after, len(lines)))
        if len(ahead) > 2:
            future, done_at, count = ahead.popleft()
            yield (*future.result(), done_at, count)
    while ahead:
        future, done_at, count = ahead.popleft()
        yield (*future.result(), done_at, count)


#: New bytes past which the lines are decoded and checked in a second process while
#: this one writes the index (a rebuild, a long catch-up): two cores instead of one.
PARALLEL_BYTES = 64 << 20


def update(
    db: sqlite3.Connection,
    data_dir: Path,
    progress: Callable[[int, int], None] | None = None,
    warn: Callable[[str], None] = _warn_on_stderr,
) -> int:
    """
    Bring the index up to date with the event log; returns how many lines were read.
    C{progress(done, total)} is told the bytes read so far. A line that is not an
    event the index can hold is skipped, counted (C{skipped_lines}) and passed to
    C{warn} once, with its file and offset: one bad line never stops the index. Run it
    off the reactor thread (SQLite and file I/O block).
    """
    work = pending(db, data_dir)
    total = sum(size - offset for _, _, offset, size, _ in work)
    done = read = 0
    pool = None
    if total >= PARALLEL_BYTES and (os.cpu_count() or 1) > 1:
        # Spawned, not forked: the caller may have threads (a fork copies their locks).
        pool = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"))
    try:
        for path, inode, start, _, sealed in work:
            rows: list[tuple[Any, ...]] = []
            skipped: list[int] = []
            totals: list[rollups.Totals] = []
            offset = start
            try:
                for chunk_rows, bad, chunk_totals, offset, count in _read(_chunks(path, start), pool):
                    for at, problem in bad:
                        warn(f"modeltrack index: skipped a line of {path.name} at offset {at}: {problem}")
                        skipped.append(at)
                    rows += chunk_rows
                    totals.append(chunk_totals)
                    read += count
                    if len(rows) + len(skipped) >= _BATCH:
                        _commit(db, rows, skipped, path.name, inode, offset, False, totals)
                        rows, skipped, totals = [], [], []
                    if progress is not None and count == _PROGRESS_LINES:
                        progress(done + offset - start, total)
            except FileNotFoundError:
                continue  # the live file was sealed under us: read as a segment next time
            _commit(db, rows, skipped, path.name, inode, offset, sealed, totals)
            done += offset - start
            if progress is not None:
                progress(done, total)
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    return read


def _commit(
    db: sqlite3.Connection, rows: list[tuple[Any, ...]], skipped: list[int], name: str, inode: int, offset: int, sealed: bool,
    totals: list[rollups.Totals] | None = None,
) -> None:
    with db:
        rollups.add(db, rows, _INSERT, totals)
        db.executemany("INSERT OR IGNORE INTO skipped_lines (name, offset) VALUES (?, ?)", [(name, at) for at in skipped])
        db.execute(
            "INSERT OR REPLACE INTO sources (name, inode, offset, sealed) VALUES (?, ?, ?, ?)",
            (name, inode, offset, int(sealed)),
        )


class Retention(NamedTuple):
    """
    How long things are kept (L{None}: for ever): raw index rows (never the rollups),
    and sealed segments of the event log once they are indexed whole.
    """

    index_days: int | None = None
    log_days: int | None = None


#: Everything kept for ever (the default).
KEEP_ALL = Retention()
#: Retention runs at most this often while following the log.
RETAIN_SECONDS = 3600.0


def retain(db: sqlite3.Connection, data_dir: Path, keep: Retention, now: float) -> tuple[int, list[str]]:
    """
    Drop raw rows of days before C{keep.index_days} (reports read the rollups, which
    stay), and delete sealed segments last written more than C{keep.log_days} ago that
    the index has read to their end. Returns the rows dropped and the segments deleted.
    """
    dropped, deleted = 0, []
    if keep.index_days is not None:
        cutoff = datetime.fromtimestamp(now - keep.index_days * 86400, UTC).date().isoformat()
        with db:
            dropped = db.execute("DELETE FROM events WHERE day < ?", (cutoff,)).rowcount
    if keep.log_days is not None:
        read = {name: offset for name, offset, sealed in db.execute("SELECT name, offset, sealed FROM sources") if sealed}
        for path in segments(data_dir):
            try:
                stat = path.stat()
            except FileNotFoundError:
                continue
            if read.get(path.name) == stat.st_size and stat.st_mtime < now - keep.log_days * 86400:
                path.unlink(missing_ok=True)
                deleted.append(path.name)
    return dropped, deleted


def follow(
    db: sqlite3.Connection, data_dir: Path, interval: float, requests: int, answers: Any, keep: Retention = KEEP_ALL,
    after: Callable[[], object] | None = None,
) -> None:
    """
    Keep the index current until C{requests} (a file descriptor) reaches its end: an
    update every C{interval} seconds, and one as soon as a request line arrives, after
    which one answer line per request is written to C{answers}. Every request read
    before an update started is answered after it, so the asker sees every event
    written before it asked. C{after} runs after each pass (the shipper to the fleet's
    store).
    """
    retained = 0.0
    while True:
        ready, _, _ = select.select([requests], [], [], interval)
        asked = 0
        if ready:
            received = os.read(requests, 4096)
            if not received:
                return
            asked = received.count(b"\n")
        update(db, data_dir)
        now = time.time()
        if keep != KEEP_ALL and now - retained >= RETAIN_SECONDS:
            retained = now
            retain(db, data_dir, keep, now)
        if asked:
            answers.write(b"ok\n" * asked)
            answers.flush()
        if after is not None:  # (the fleet's store: after the answers, which wait for no one else)
            after()
