"""
The C{modeltrack} command: reads a data dir (no proxy needs to run). One module per
command, each adding its own parser and naming its C{run} with C{set_defaults}.

    modeltrack index  [--data-dir DIR] [--follow SECONDS]
    modeltrack check  [--data-dir DIR]
    modeltrack price  MODEL [--provider openai|anthropic] [--data-dir DIR]
    modeltrack report [--data-dir DIR] [--since DATE] [--until DATE] [--month YYYY-MM]
                      [--by team,app,feature,model,provider,day] [--format table|csv|json]
    modeltrack sessions [--data-dir DIR] [--top N] [--since DATE] [--until DATE] [--month YYYY-MM]
                        [--format table|csv|json]
    modeltrack reconcile (--report FILE | --fetch PROVIDER) [--data-dir DIR] ...
    modeltrack keys add --name NAME [--team T] [--app A] [--provider-key-id ID] [--data-dir DIR]  < key
    modeltrack keys list [--data-dir DIR] [--format table|csv|json]
    modeltrack keys fingerprint [--data-dir DIR]  < key

A key is read from standard input (without echo on a terminal), never from arguments or
the environment, and is never printed or written: only its fingerprint is.

Every command that reads events first brings the index up to date, with a progress bar
on a terminal when there is much to read.

Exit codes: 0 done, 1 a config file has problems (check) or a model has no price
(price), 2 bad arguments or a missing data dir.

May import: every package but L{modeltrack.ops}.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from modeltrack.cli import check, index, keys, price, reconcile, report, sessions

#: Every command, in the order its help lists them.
COMMANDS = (index, report, sessions, check, price, reconcile, keys)


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="modeltrack", description="Reports from a modeltrack data dir.")
    top.set_defaults(needs_data_dir=True)
    commands = top.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        command.add_command(commands)
    return top


def main(argv: list[str] | None = None) -> int:
    """
    The command line's entry point. Output cut short by its reader (C{| head}) ends
    the command quietly, as it does for any Unix tool.
    """
    try:
        code = _main(argv)
        sys.stdout.flush()
        return code
    except BrokenPipeError:
        # Python would try to flush stdout again at exit, and fail again, loudly.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141  # 128 + SIGPIPE, as a shell reports a command killed by it


def _main(argv: list[str] | None) -> int:
    args = parser().parse_args(argv)
    args.data_dir_given = args.data_dir is not None or bool(os.environ.get("MODELTRACK_DATA_DIR"))
    args.data_dir = args.data_dir or Path(os.environ.get("MODELTRACK_DATA_DIR") or "data")
    if args.needs_data_dir and not args.data_dir.is_dir():
        print(f"modeltrack: --data-dir: {str(args.data_dir)!r} is not a directory", file=sys.stderr)
        return 2
    code: int = args.run(args)
    return code
