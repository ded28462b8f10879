"""
The SQLite index of the event log (C{<data-dir>/modeltrack.db}), for reports.

The event log stays the truth; the index is rebuilt from it incrementally: each sealed
segment once (remembered by name), the live file from the offset reached last time (a
torn last line is left for the next pass). A live file sealed since keeps its inode
under its segment's name, and is read on from where it was; a live file of a new inode
is read from 0. Rows are keyed by request id, so reading an event twice changes
nothing. Costs are stored as whole picodollars (10^-12 USD), so sums stay exact.
"""

from __future__ import annotations

import multiprocessing
import os
import select
import sqlite3
import sys
import time
from collections import deque
from collections.abc import Callable, Collection, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple

from modeltrack.store import event_lines, rollups
from modeltrack.store.datadir import create_file
from modeltrack.store.journal import live_files, segments

DB_NAME = "modeltrack.db"

#: Raised whenever the events table changes; an index of another version is rebuilt.
SCHEMA_VERSION = 7
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
CREATE TABLE IF NOT EXISTS batches (
    first_rowid INTEGER PRIMARY KEY,
    last_rowid INTEGER NOT NULL,
    first_day TEXT NOT NULL,
    last_day TEXT NOT NULL
);
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

#: A piece's rows into the index (L{event_lines.stage}); an event indexed before is left.
_INSERT = f"INSERT OR IGNORE INTO events ({', '.join(event_lines.AT)}) SELECT {', '.join(event_lines.AT)} FROM piece.rows"


def connect(data_dir: Path, check_same_thread: bool = True) -> sqlite3.Connection:
    if not hasattr(sqlite3.Connection, "deserialize"):
        # Pieces of the log are handed over as serialized databases (event_lines.stage).
        raise RuntimeError(f"the index needs a Python whose sqlite3 can serialize databases (SQLite {sqlite3.sqlite_version}"
                           " here; 3.36 or later has it by default)")
    # Created 0640 like the event log (SQLite gives its WAL files the same mode).
    create_file(data_dir / DB_NAME)
    db = sqlite3.connect(data_dir / DB_NAME, check_same_thread=check_same_thread)
    # 16 KiB pages for a new index: fewer, fuller pages to write per batch (an
    # existing file keeps its own).
    db.execute("PRAGMA page_size=16384")
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
                "DROP TABLE IF EXISTS daily; DROP TABLE IF EXISTS daily_models; DROP TABLE IF EXISTS session_days; "
                "DROP TABLE IF EXISTS batches; DROP TABLE IF EXISTS daily_labels;"
            )
            db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        db.executescript(SCHEMA)
        rollups.create(db)
    return db


def _warn_on_stderr(message: str) -> None:
    sys.stderr.write(message + "\n")
    sys.stderr.flush()


def pending(db: sqlite3.Connection, data_dir: Path) -> list[tuple[Path, int, int, int, bool]]:
    """
    What an update would read: (file, inode, offset to start at, size, sealed) for
    each file with something new, oldest first.
    """
    known = {name: (inode, offset, sealed) for name, inode, offset, sealed in db.execute("SELECT * FROM sources")}
    # A live file sealed since keeps its inode under its segment's name: read on from where it was.
    carried = {inode: offset for inode, offset, sealed in known.values() if not sealed}
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
        if previous is None:
            offset = carried.get(stat.st_ino, 0)
        else:
            offset = previous[1] if previous[0] == stat.st_ino else 0
        # (A live file new since, even empty, is recorded: no stale inode is left to carry.)
        if stat.st_size > offset or previous is None or previous[0] != stat.st_ino:
            work.append((path, stat.st_ino, offset, stat.st_size, path not in lives))
    return work


#: Pieces read ahead of the one being written.
_AHEAD = 4
#: New bytes past which the lines are read in other processes (at a lower priority)
#: while this one writes the index (a rebuild, a long catch-up).
PARALLEL_BYTES = 64 << 20
#: Processes reading ahead: this one writes (a third of the work), they read.
_READERS = min(3, os.cpu_count() or 1)


def _read(path: Path, inode: int, start: int, size: int, pool: ProcessPoolExecutor | None) -> Iterator[event_lines.Piece]:
    """
    C{path}'s pieces from C{start} to C{size}, read in order: in C{pool}, if one is
    given, L{_AHEAD} ahead (enough to go on while this process writes one).
    """
    if pool is None:
        for begin, end in event_lines.pieces(path, inode, start, size):
            yield event_lines.read_piece(path, inode, begin, end)
        return
    ahead: deque[Future[event_lines.Piece]] = deque()
    for begin, end in event_lines.pieces(path, inode, start, size):
        ahead.append(pool.submit(event_lines.read_piece, path, inode, begin, end))
        if len(ahead) > _AHEAD:
            yield ahead.popleft().result()
    while ahead:
        yield ahead.popleft().result()


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
    if total >= PARALLEL_BYTES and _READERS > 1:
        # Spawned, not forked: the caller may have threads (a fork copies their locks).
        pool = ProcessPoolExecutor(
            _READERS, mp_context=multiprocessing.get_context("spawn"), initializer=event_lines.reader_started
        )
    db.execute("ATTACH ':memory:' AS piece")
    try:
        for path, inode, start, size, sealed in work:
            offset = start
            try:
                for piece in _read(path, inode, start, size, pool):
                    for at, problem in piece.bad:
                        warn(f"modeltrack index: skipped a line of {path.name} at offset {at}: {problem}")
                    _commit(db, piece, path.name, inode, False)
                    read += piece.lines
                    offset = piece.end
                    if progress is not None:
                        progress(done + offset - start, total)
            except (FileNotFoundError, event_lines.Replaced):
                continue  # the live file was sealed under us: read as a segment next time
            if sealed or offset == start:  # (a file seen for the first time is known even if empty)
                _commit(db, event_lines.Piece(b"", 0, [], 0, offset), path.name, inode, sealed)
            done += size - start
            if progress is not None:
                progress(done, total)
    finally:
        db.execute("DETACH piece")
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    return read


def _commit(db: sqlite3.Connection, piece: event_lines.Piece, name: str, inode: int, sealed: bool) -> None:
    """A piece in one transaction: its rows, their rollups, its bad lines, and where reading got to."""
    if piece.rows:
        db.deserialize(piece.staged, name="piece")
    with db:
        if piece.rows:
            first = db.execute("SELECT COALESCE(MAX(rowid), 0) + 1 FROM events").fetchone()[0]
            rollups.add(db, piece.rows, _INSERT, first - 1)
            last = db.execute("SELECT COALESCE(MAX(rowid), 0) FROM events").fetchone()[0]
            if last >= first:  # where the piece's rows are, and their days: retention needs no index on day
                db.execute("INSERT INTO batches SELECT ?, ?, MIN(day), MAX(day) FROM piece.rows", (first, last))
        db.executemany(
            "INSERT OR IGNORE INTO skipped_lines (name, offset) VALUES (?, ?)", [(name, at) for at, _ in piece.bad]
        )
        db.execute(
            "INSERT OR REPLACE INTO sources (name, inode, offset, sealed) VALUES (?, ?, ?, ?)",
            (name, inode, piece.end, int(sealed)),
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


def retain(
    db: sqlite3.Connection, data_dir: Path, keep: Retention, now: float, shipped: Callable[[], Collection[str]] | None = None,
) -> tuple[int, list[str]]:
    """
    Drop raw rows of days before C{keep.index_days} (reports read the rollups, which
    stay), and delete sealed segments last written more than C{keep.log_days} ago that
    the index has read to their end and, with a store below (C{shipped}: the segments
    it holds whole), that the store has too. Returns the rows dropped and the segments
    deleted.
    """
    dropped, deleted = 0, []
    if keep.index_days is not None:
        cutoff = datetime.fromtimestamp(now - keep.index_days * 86400, UTC).date().isoformat()
        with db:
            # Batch by batch (a range of rows, with its first and last day): no index on day to keep up.
            for first, last, last_day in db.execute(
                "SELECT first_rowid, last_rowid, last_day FROM batches WHERE first_day < ?", (cutoff,)
            ).fetchall():
                dropped += db.execute(
                    "DELETE FROM events WHERE rowid BETWEEN ? AND ? AND day < ?", (first, last, cutoff)
                ).rowcount
                if last_day < cutoff:
                    db.execute("DELETE FROM batches WHERE first_rowid = ?", (first,))
                else:
                    db.execute("UPDATE batches SET first_day = ? WHERE first_rowid = ?", (cutoff, first))
    if keep.log_days is not None:
        read = {name: offset for name, offset, sealed in db.execute("SELECT name, offset, sealed FROM sources") if sealed}
        for path in segments(data_dir):
            try:
                stat = path.stat()
            except FileNotFoundError:
                continue
            if (read.get(path.name) == stat.st_size and stat.st_mtime < now - keep.log_days * 86400
                    and (shipped is None or path.name in shipped())):
                path.unlink(missing_ok=True)
                deleted.append(path.name)
    return dropped, deleted


def follow(
    db: sqlite3.Connection, data_dir: Path, interval: float, requests: int, answers: Any, keep: Retention = KEEP_ALL,
    after: Callable[[], object] | None = None, shipped: Callable[[], Collection[str]] | None = None,
) -> None:
    """
    Keep the index current until C{requests} (a file descriptor) reaches its end: an
    update every C{interval} seconds, and one as soon as a request line arrives, after
    which one answer line per request is written to C{answers}. Every request read
    before an update started is answered after it, so the asker sees every event
    written before it asked. C{after} runs after each pass (the shipper to the fleet's
    store; C{shipped} says what it holds whole, for L{retain}).
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
            retain(db, data_dir, keep, now, shipped)
        if asked:
            answers.write(b"ok\n" * asked)
            answers.flush()
        if after is not None:  # (the fleet's store: after the answers, which wait for no one else)
            after()
