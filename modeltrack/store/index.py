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
import os
import select
import sqlite3
import sys
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson

from modeltrack.pricing.usage import MAX_COUNT
from modeltrack.store import rollups
from modeltrack.store.datadir import create_file
from modeltrack.store.journal import live_files, segments

PICO = Decimal(10) ** 12
DB_NAME = "modeltrack.db"

#: Raised whenever the events table changes; an index of another version is rebuilt.
SCHEMA_VERSION = 4
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
CREATE INDEX IF NOT EXISTS events_timestamp ON events (timestamp);
CREATE INDEX IF NOT EXISTS events_team ON events (team, timestamp);
CREATE INDEX IF NOT EXISTS events_app ON events (app, timestamp);
CREATE INDEX IF NOT EXISTS events_feature ON events (feature, timestamp);
CREATE INDEX IF NOT EXISTS events_model ON events (model, timestamp);
CREATE INDEX IF NOT EXISTS events_session ON events (session_id, timestamp);
CREATE INDEX IF NOT EXISTS events_key ON events (key_name, key_id, timestamp);
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
#: The events of a batch (L{rollups.add}: the same columns, in this order) into the index.
_INSERT_BATCH = f"INSERT OR IGNORE INTO events ({', '.join(_COLUMNS)}) SELECT {', '.join(_COLUMNS)} FROM batch"


def connect(data_dir: Path, check_same_thread: bool = True) -> sqlite3.Connection:
    # Created 0640 like the event log (SQLite gives its WAL files the same mode).
    create_file(data_dir / DB_NAME)
    db = sqlite3.connect(data_dir / DB_NAME, check_same_thread=check_same_thread)
    db.execute("PRAGMA journal_mode=WAL")
    with db:
        version = db.execute("PRAGMA user_version").fetchone()[0]
        if version != SCHEMA_VERSION:
            # An index made by another version: the event log is the truth, so it is
            # read again from the start into the current schema.
            db.executescript(
                "DROP TABLE IF EXISTS events; DROP TABLE IF EXISTS skipped_lines; DROP TABLE IF EXISTS sources; "
                "DROP TABLE IF EXISTS daily; DROP TABLE IF EXISTS session_days;"
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


def _decode_line(line: bytes) -> Any:
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


def _row(event: dict[str, Any]) -> tuple[Any, ...]:
    """
    The index row of one event; L{BadLine} if any field is not what an event holds.
    """
    if not isinstance(event, dict):
        raise BadLine("not a JSON object")
    latency = event.get("latency_ms")
    if latency is not None and (type(latency) not in (int, float) or not math.isfinite(latency)):
        raise BadLine("latency_ms is not a finite number")
    try:
        required = [event[name] for name in ("request_id", "timestamp", "provider", "endpoint", "outcome")]
    except KeyError:
        raise BadLine("a required field is missing") from None
    if not all(isinstance(value, str) for value in required):
        raise BadLine("a required field is not text")
    request_id, timestamp, provider, endpoint, outcome = required
    return (
        request_id, timestamp, timestamp[:10], provider, endpoint, _text(event.get("route_class")) or "metered",
        _text(event.get("model")), _text(event.get("team")), _text(event.get("app")),
        _text(event.get("feature")), _text(event.get("session_id")), _text(event.get("key_id")),
        _text(event.get("key_name")), _text(event.get("client")), outcome,
        _tokens(event.get("input_tokens")), _tokens(event.get("output_tokens")),
        _tokens(event.get("cache_read_tokens")), _tokens(event.get("cache_write_tokens")),
        _tokens(event.get("reasoning_tokens")), _pico(event.get("cost_usd")),
        _pico(event.get("saved_usd")), int(bool(event.get("priced"))),
        int(bool(event.get("cache_hit"))), latency,
    )


def _warn_on_stderr(message: str) -> None:
    sys.stderr.write(message + "\n")
    sys.stderr.flush()


def _whole_lines(path: Path, offset: int) -> Iterator[tuple[bytes, int]]:
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
_BATCH = 5_000


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
    for path, inode, offset, _, sealed in work:
        rows: list[tuple[Any, ...]] = []
        skipped: list[int] = []
        start = offset
        try:
            for line, offset_after in _whole_lines(path, offset):
                try:
                    rows.append(_row(_decode_line(line)))
                except (ValueError, RecursionError) as e:  # BadLine, JSON, UTF-8
                    problem = str(e) if isinstance(e, BadLine) else "not a JSON line"
                    warn(f"modeltrack index: skipped a line of {path.name} at offset {offset}: {problem}")
                    skipped.append(offset)
                offset = offset_after
                read += 1
                if len(rows) + len(skipped) >= _BATCH:
                    _commit(db, rows, skipped, path.name, inode, offset, False)
                    rows, skipped = [], []
                    if progress is not None:
                        progress(done + offset - start, total)
        except FileNotFoundError:
            continue  # the live file was sealed under us: read as a segment next time
        _commit(db, rows, skipped, path.name, inode, offset, sealed)
        done += offset - start
        if progress is not None:
            progress(done, total)
    return read


def _commit(
    db: sqlite3.Connection, rows: list[tuple[Any, ...]], skipped: list[int], name: str, inode: int, offset: int, sealed: bool
) -> None:
    with db:
        rollups.add(db, rows, _INSERT_BATCH)
        db.executemany("INSERT OR IGNORE INTO skipped_lines (name, offset) VALUES (?, ?)", [(name, at) for at in skipped])
        db.execute(
            "INSERT OR REPLACE INTO sources (name, inode, offset, sealed) VALUES (?, ?, ?, ?)",
            (name, inode, offset, int(sealed)),
        )


def follow(db: sqlite3.Connection, data_dir: Path, interval: float, requests: int, answers: Any) -> None:
    """
    Keep the index current until C{requests} (a file descriptor) reaches its end: an
    update every C{interval} seconds, and one as soon as a request line arrives, after
    which one answer line per request is written to C{answers}. Every request read
    before an update started is answered after it, so the asker sees every event
    written before it asked.
    """
    while True:
        ready, _, _ = select.select([requests], [], [], interval)
        asked = 0
        if ready:
            received = os.read(requests, 4096)
            if not received:
                return
            asked = received.count(b"\n")
        update(db, data_dir)
        if asked:
            answers.write(b"ok\n" * asked)
            answers.flush()
