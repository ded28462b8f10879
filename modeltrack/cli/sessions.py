"""
C{modeltrack sessions}: the most expensive sessions.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from modeltrack.cli.arguments import add_report, add_store, count, period
from modeltrack.cli.output import TOTAL_COLUMNS, reading, render
from modeltrack.store import reports

COLUMNS = ["session_id", "teams", "models", "first_call", "duration_seconds", *TOTAL_COLUMNS]


def add_command(commands: Any) -> None:
    command = commands.add_parser("sessions", help="the most expensive sessions")
    add_report(command)
    command.add_argument("--top", type=count, default=20, help="how many sessions (default 20)")
    add_store(command)
    command.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    rows = reports.sessions(reading(args, args.progress), args.top, *period(args))
    if args.format != "json":
        for row in rows:
            row["models"] = " ".join(row["models"])
            row["teams"] = " ".join(row["teams"])
    sys.stdout.write(render(rows, COLUMNS, args.format))
    return 0
