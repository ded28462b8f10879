"""
C{modeltrack index}: bring the SQLite index up to date, once or (C{--follow}) for as
long as the proxy that runs it asks.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any

from modeltrack.cli.arguments import add_data_dir, add_progress, add_store, seconds, store_access
from modeltrack.cli.output import update_with_progress
from modeltrack.store import index


def add_command(commands: Any) -> None:
    command = commands.add_parser("index", help="bring the SQLite index up to date")
    add_data_dir(command)
    add_progress(command)
    command.add_argument(
        "--follow", type=seconds, metavar="SECONDS",
        help="keep going: update every SECONDS, and at once for each line on stdin (answered "
        "with a line on stdout once done) until stdin ends; the proxy runs its index this way",
    )
    command.add_argument("--retain-days", type=int, metavar="N",
                         help="drop raw rows older than N days (the rollups every report reads stay)")
    command.add_argument("--log-retain-days", type=int, metavar="N",
                         help="delete sealed segments of the event log older than N days once indexed whole "
                         "(and, with --store, shipped whole)")
    add_store(command)
    command.add_argument("--instance", help="this instance's name in the fleet's store (default: the install's id)")
    command.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    db = index.connect(args.data_dir)
    keep = index.Retention(args.retain_days, args.log_retain_days)
    shipper = None
    if args.store:
        from modeltrack.store import fleet
        from modeltrack.store.datadir import install_id, state_dir

        instance = args.instance or install_id(state_dir(args.data_dir))
        shipper = fleet.Shipper(store_access(args), args.data_dir, instance, index._warn_on_stderr, args.retain_days)
    if args.follow:
        os.nice(10)  # background work: whatever else runs here (the proxy) comes first
        index.follow(db, args.data_dir, args.follow, sys.stdin.fileno(), sys.stdout.buffer, keep, shipper,
                     shipper.whole if shipper is not None else None)
        return 0
    read = update_with_progress(db, args.data_dir, args.progress)
    print(f"indexed {read} event lines")
    if shipper is not None:
        print(f"shipped {shipper()} events to the fleet's store")
    if keep != index.KEEP_ALL:
        dropped, deleted = index.retain(db, args.data_dir, keep, time.time(), shipper.whole if shipper is not None else None)
        print(f"dropped {dropped} raw rows, deleted {len(deleted)} sealed segments")
    return 0
