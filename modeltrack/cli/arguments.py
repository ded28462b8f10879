"""
The arguments several commands share: the data dir, a period, a format, progress.
"""

from __future__ import annotations

import argparse
import os
from datetime import date
from pathlib import Path

from modeltrack.store.fleet import Access

DATA_DIR_HELP = "the proxy's data dir [env MODELTRACK_DATA_DIR, default ./data]"


def day(value: str) -> str:
    try:
        return date.fromisoformat(value).isoformat()
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a date (YYYY-MM-DD)") from None


def month(value: str) -> tuple[str, str]:
    try:
        first = date.fromisoformat(value + "-01")
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a month (YYYY-MM)") from None
    following = date(first.year + first.month // 12, first.month % 12 + 1, 1)
    return first.isoformat(), following.isoformat()


def count(value: str) -> int:
    if not value.isdigit() or int(value) < 1:
        raise argparse.ArgumentTypeError(f"{value!r} is not a positive whole number")
    return int(value)


def seconds(value: str) -> float:
    try:
        found = float(value)
    except ValueError:
        found = 0.0
    if not 0 < found < float("inf"):
        raise argparse.ArgumentTypeError(f"{value!r} is not a positive number of seconds")
    return found


def add_data_dir(command: argparse.ArgumentParser) -> None:
    command.add_argument("--data-dir", type=Path, default=None, help=DATA_DIR_HELP)


def add_store(command: argparse.ArgumentParser) -> None:
    command.add_argument("--store", metavar="URL", default=os.environ.get("MODELTRACK_STORE"),
                         help="the fleet's PostgreSQL store (postgresql://user@host/db?sslmode=verify-full) "
                         "[env MODELTRACK_STORE]; its password from --store-password-file, never the URL")
    command.add_argument("--store-password-file", type=Path, metavar="FILE", help="the store's password (a systemd credential too)")
    command.add_argument("--ca-bundle", type=Path, metavar="FILE",
                         help="PEM file of the CAs the store's certificate chains to (sslmode=verify-full)")


def store_access(args: argparse.Namespace) -> Access:
    """How C{--store} is reached."""
    return Access(args.store, args.store_password_file, args.ca_bundle)


def add_progress(command: argparse.ArgumentParser) -> None:
    command.add_argument(
        "--progress", action=argparse.BooleanOptionalAction, default=None,
        help="show a progress bar while indexing (default: on a terminal, when over 4 MiB are new)",
    )


def add_period(command: argparse.ArgumentParser) -> None:
    command.add_argument("--since", type=day, help="first day, inclusive (YYYY-MM-DD)")
    command.add_argument("--until", type=day, help="last day, exclusive (YYYY-MM-DD)")
    command.add_argument("--month", type=month, help="a calendar month (YYYY-MM)")


def period(args: argparse.Namespace) -> tuple[str | None, str | None]:
    """
    The days C{--since}, C{--until} and C{--month} name: C{--month} wins.
    """
    return args.month if args.month else (args.since, args.until)


def add_format(command: argparse.ArgumentParser) -> None:
    command.add_argument("--format", choices=("table", "csv", "json"), default="table")


def add_report(command: argparse.ArgumentParser) -> None:
    """
    What every report over the index takes: the data dir, progress, a period, a format.
    """
    add_data_dir(command)
    add_progress(command)
    add_period(command)
    add_format(command)
