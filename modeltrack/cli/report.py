"""
C{modeltrack report}: spend per group (team, app, feature, model, provider, day, ...).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from modeltrack.cli.arguments import add_report, add_store, period
from modeltrack.cli.output import TOTAL_COLUMNS, reading, render
from modeltrack.store import reports


def add_command(commands: Any) -> None:
    command = commands.add_parser("report", help="spend per group")
    add_report(command)
    command.add_argument("--by", default="team", help="group keys, comma-separated: " + ",".join(reports.GROUP_KEYS))
    add_store(command)
    command.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    by = [key for key in args.by.split(",") if key]
    try:
        reports.check_keys(by)
    except ValueError as e:
        print(f"modeltrack: --by: {e}", file=sys.stderr)
        return 2
    rows = reports.report(reading(args, args.progress), by, *period(args))  # (with --store: the whole fleet)
    sys.stdout.write(render(rows, by + TOTAL_COLUMNS, args.format))
    return 0
