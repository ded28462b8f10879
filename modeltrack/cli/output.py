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
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from modeltrack.cli.arguments import store_access
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
    # For people: thousands separators, costs to the cent, numbers to the right
    # (csv and json keep the exact figures).
    cells = [columns] + [[_for_people(c, row.get(c)) for c in columns] for row in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(columns))]
    numeric = [bool(rows) and all(_is_number(row.get(c)) for row in rows) for c in columns]
    return "".join(
        "  ".join(cell.rjust(w) if right else cell.ljust(w) for cell, w, right in zip(line, widths, numeric, strict=True)).rstrip()
        + "\n"
        for line in cells
    )


def _is_number(value: Any) -> bool:
    if isinstance(value, bool) or value is None:
        return value is None
    if isinstance(value, int | float | Decimal):
        return True
    try:
        Decimal(str(value))
    except InvalidOperation:
        return False
    return True


def _for_people(column: str, value: Any) -> str:
    """A cell of a table: C{-} for nothing, C{1,234,567}, C{$724.01} for a cost (C{<$0.01} under a cent)."""
    if value is None:
        return "-"
    if isinstance(value, bool) or not _is_number(value):
        return str(value)
    number = Decimal(str(value))
    if column.endswith("_usd"):
        if 0 < abs(number) < Decimal("0.01"):
            return "<$0.01"
        return f"${number.quantize(Decimal('0.01')):,}"
    if number == number.to_integral_value():
        return f"{int(number):,}"
    return f"{number:,}"


def reading(args: Any, show: bool | None = None) -> Any:
    """
    What a report reads: the fleet's store (C{--store}), else this data dir's index,
    brought up to date first.
    """
    if getattr(args, "store", None):
        from modeltrack.store import fleet

        return fleet.Reader(fleet.connect(*store_access(args)))
    db = index.connect(args.data_dir)
    update_with_progress(db, args.data_dir, show)
    return db


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
