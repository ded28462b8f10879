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
import os
import sqlite3
from decimal import Decimal
from pathlib import Path
from typing import Any, Iterator

from modeltrack.journal import LIVE_NAME

PICO = Decimal(10) ** 12
DB_NAME = "modeltrack.db"

SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    request_id TEXT PRIMARY KEY,
    timestamp TEXT NOT NULL,
    day TEXT NOT NULL,
    provider TEXT NOT NULL,
    endpoint TEXT NOT NULL,
    model TEXT,
    team TEXT,
    app TEXT,
    feature TEXT,
    session_id TEXT,
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
CREATE TABLE IF NOT EXISTS sources (
    name TEXT PRIMARY KEY,
    inode INTEGER NOT NULL,
    offset INTEGER NOT NULL,
    sealed INTEGER NOT NULL
);
"""

_COLUMNS = (
    "request_id", "timestamp", "day", "provider", "endpoint", "model", "team", "app", "feature",
    "session_id", "outcome", "input_tokens", "output_tokens", "cache_read_tokens",
    "cache_write_tokens", "reasoning_tokens", "cost_pico", "saved_pico", "priced", "cache_hit",
    "latency_ms",
)
_INSERT = f"INSERT OR IGNORE INTO events ({', '.join(_COLUMNS)}) VALUES ({', '.join('?' * len(_COLUMNS))})"


def connect(data_dir: Path) -> sqlite3.Connection:
    db = sqlite3.connect(data_dir / DB_NAME)
    db.execute("PRAGMA journal_mode=WAL")
    db.executescript(SCHEMA)
    return db


def _pico(value: Any) -> int | None:
    if value is None:
        return None
    return int(Decimal(str(value)) * PICO)


def _row(event: dict[str, Any]) -> tuple[Any, ...]:
    return (
        event["request_id"], event["timestamp"], event["timestamp"][:10], event["provider"],
        event["endpoint"], event.get("model"), event.get("team"), event.get("app"),
        event.get("feature"), event.get("session_id"), event["outcome"],
        event["input_tokens"], event["output_tokens"], event["cache_read_tokens"],
        event["cache_write_tokens"], event["reasoning_tokens"], _pico(event.get("cost_usd")),
        _pico(event.get("saved_usd")), int(bool(event.get("priced"))),
        int(bool(event.get("cache_hit"))), event.get("latency_ms"),
    )


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


def update(db: sqlite3.Connection, data_dir: Path) -> int:
    """
    Bring the index up to date with the event log; returns how many lines were read.
    Run it off the reactor thread (SQLite and file I/O block).
    """
    known = {name: (inode, offset, sealed) for name, inode, offset, sealed in db.execute("SELECT * FROM sources")}
    read = 0
    files = sorted(data_dir.glob("events-*.jsonl")) + [data_dir / LIVE_NAME]
    for path in files:
        if not path.exists():
            continue
        sealed = path.name != LIVE_NAME
        inode = os.stat(path).st_ino
        previous = known.get(path.name)
        if previous is not None and previous[2]:
            continue  # a sealed segment never changes
        offset = previous[1] if previous is not None and previous[0] == inode else 0
        rows = []
        for line, offset_after in _whole_lines(path, offset):
            try:
                rows.append(_row(json.loads(line)))
            except (ValueError, KeyError):
                pass  # not an event line; skipped, never fatal
            offset = offset_after
            read += 1
        with db:
            db.executemany(_INSERT, rows)
            db.execute(
                "INSERT OR REPLACE INTO sources (name, inode, offset, sealed) VALUES (?, ?, ?, ?)",
                (path.name, inode, offset, int(sealed)),
            )
    return read


GROUP_KEYS = {"team": "team", "app": "app", "feature": "feature", "model": "model", "provider": "provider", "day": "day"}


def report(
    db: sqlite3.Connection, by: list[str], since: str | None = None, until: str | None = None
) -> list[dict[str, Any]]:
    """
    Spend per group between C{since} (inclusive) and C{until} (exclusive), both
    YYYY-MM-DD; each row has its group keys and requests, tokens, cost_usd, saved_usd,
    unpriced.
    """
    for key in by:
        if key not in GROUP_KEYS:
            raise ValueError(f"unknown --by key {key!r}: use {', '.join(GROUP_KEYS)}")
    columns = [GROUP_KEYS[key] for key in by]
    where, params = [], []
    if since:
        where.append("day >= ?")
        params.append(since)
    if until:
        where.append("day < ?")
        params.append(until)
    select = ", ".join(columns + [
        "COUNT(*)", "SUM(input_tokens)", "SUM(output_tokens)", "SUM(cost_pico)",
        "SUM(saved_pico)", "SUM(1 - priced)",
    ])
    query = f"SELECT {select} FROM events"
    if where:
        query += " WHERE " + " AND ".join(where)
    if columns:
        query += f" GROUP BY {', '.join(columns)} ORDER BY SUM(cost_pico) DESC"
    rows = []
    for record in db.execute(query, params):
        keys = dict(zip(by, record[: len(by)]))
        requests, tokens_in, tokens_out, cost, saved, unpriced = record[len(by):]
        if not requests:
            continue
        rows.append({
            **keys,
            "requests": requests,
            "input_tokens": tokens_in or 0,
            "output_tokens": tokens_out or 0,
            "cost_usd": str(Decimal(cost or 0) / PICO),
            "saved_usd": str(Decimal(saved or 0) / PICO),
            "unpriced": unpriced or 0,
        })
    return rows
