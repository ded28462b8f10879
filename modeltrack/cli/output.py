"""
What the commands print: rows as a table, CSV or JSON, and a progress bar on a terminal
while the index catches up with a large log.
"""

from __future__ import annotations

import csv
import io
import json
import sqlite3
import sys
from pathlib import Path
from typing import Any

from modeltrack.store import index

#: The totals every spend report ends its rows with.
TOTAL_COLUMNS = ["requests", "input_tokens", "output_tokens", "cost_usd", "saved_usd", "unpriced", "billable_unmetered"]
#: New bytes above which a terminal gets a progress bar.
PROGRESS_BYTES = 4 << 20


def render(rows: list[dict[str, Any]], columns: list[str], form: str) -> str:
    if form == "json":
        return json.dumps(rows, indent=1) + "\n"
    if form == "csv":
        out = io.StringIO()
        writer = csv.DictWriter(out, columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
        return out.getvalue()
    cells = [columns] + [[str(row.get(c) if row.get(c) is not None else "-") for c in columns] for row in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(columns))]
    return "".join("  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip() + "\n" for line in cells)


def update_with_progress(db: sqlite3.Connection, data_dir: Path, show: bool | None) -> int:
    """
    Bring the index up to date; with a progress bar if C{show}, or (L{None}) on a
    terminal when more than L{PROGRESS_BYTES} are new.
    """
    if show is None:
        show = sys.stderr.isatty() and sum(size - offset for _, _, offset, size, _ in index.pending(db, data_dir)) > PROGRESS_BYTES
    if not show:
        return index.update(db, data_dir)
    read = index.update(db, data_dir, _progress_bar)
    sys.stderr.write("\n")
    return read


def _progress_bar(done: int, total: int) -> None:
    fraction = done / total if total else 1.0
    filled = int(fraction * 30)
    sys.stderr.write(f"\rindexing [{'#' * filled}{'.' * (30 - filled)}] {fraction:4.0%} {done >> 20}/{total >> 20} MiB")
    sys.stderr.flush()
