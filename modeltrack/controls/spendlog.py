"""
Rebuilding the budget ledger's spend from the event log at start-up.

Sealed segments never change, so each one's spend is summed once and kept in a msgpack
checkpoint (C{<data-dir>/state/ledger-2.msgpack}; 2: rows name the key); a restart reads the checkpoint and
scans only the live file and segments it has not seen.
"""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path

import msgpack
from twisted.logger import Logger

from modeltrack.controls.budgets import BudgetLedger, Daily
from modeltrack.store.datadir import write_atomically
from modeltrack.store.journal import live_files, segment_month, segments

log = Logger()

def scan(path: Path) -> Daily:
    """
    Spend per (team, app, feature, key name, day) in one event log file. A torn last
    line (a crash mid-write) is skipped.
    """
    rows: Daily = {}
    with open(path, "rb") as f:
        for line in f:
            try:
                event = json.loads(line)
            except ValueError:
                continue
            cost = event.get("cost_usd")
            if not cost:
                continue
            key = (
                event.get("team") or "",
                event.get("app") or "",
                event.get("feature") or "",
                event.get("key_name") or "",
                event["timestamp"][:10],
            )
            rows[key] = rows.get(key, Decimal(0)) + Decimal(str(cost))
    return rows


def rebuild(ledger: BudgetLedger, data_dir: Path, month: str, series: str | None = None) -> None:
    """
    Load this month's spend (C{month} is YYYY-MM) into C{ledger}: of every series, or
    of one (a worker's own, when a shared ledger adds the workers up), with a
    checkpoint of its own.
    """
    checkpoint = data_dir / "state" / f"ledger-2{series or ''}.msgpack"
    known = _load(checkpoint)
    kept: dict[str, list[list[str]]] = {}
    total: Daily = {}
    for segment in segments(data_dir, series):
        if segment_month(segment) < month:
            continue  # the journal seals at UTC midnight: nothing of this month in there
        rows = known.get(segment.name)
        if rows is None:
            rows = [[*key, str(cost)] for key, cost in scan(segment).items()]
        kept[segment.name] = rows
        for team, app, feature, key_name, day, cost in rows:
            key = (team, app, feature, key_name, day)
            total[key] = total.get(key, Decimal(0)) + Decimal(cost)
    for live in live_files(data_dir, series):
        if live.exists():
            for key, live_cost in scan(live).items():
                total[key] = total.get(key, Decimal(0)) + live_cost
    ledger.load_daily({k: v for k, v in total.items() if k[4][:7] == month})
    _save(checkpoint, kept)


def _load(path: Path) -> dict[str, list[list[str]]]:
    try:
        data = msgpack.unpackb(path.read_bytes())
        if not isinstance(data, dict):
            raise ValueError("not a map")
        return data
    except FileNotFoundError:
        return {}
    except Exception as e:
        log.warn("Ignoring an unreadable ledger checkpoint {path}: {error}", path=str(path), error=str(e))
        return {}


def _save(path: Path, data: dict[str, list[list[str]]]) -> None:
    write_atomically(path, msgpack.packb(data))
