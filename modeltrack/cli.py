"""
The C{modeltrack} command: reads a data dir (no proxy needs to run).

    modeltrack index  [--data-dir DIR] [--follow SECONDS]
    modeltrack check  [--data-dir DIR]
    modeltrack price  MODEL [--provider openai|anthropic] [--data-dir DIR]
    modeltrack report [--data-dir DIR] [--since DATE] [--until DATE] [--month YYYY-MM]
                      [--by team,app,feature,model,provider,day] [--format table|csv|json]
    modeltrack sessions [--data-dir DIR] [--top N] [--since DATE] [--until DATE] [--month YYYY-MM]
                        [--format table|csv|json]
    modeltrack keys add --name NAME [--team T] [--app A] [--provider-key-id ID] [--data-dir DIR]  < key
    modeltrack keys list [--data-dir DIR] [--format table|csv|json]
    modeltrack keys fingerprint [--data-dir DIR]  < key

A key is read from standard input (without echo on a terminal), never from arguments or
the environment, and is never printed or written: only its fingerprint is.

Every command that reads events first brings the index up to date, with a progress bar
on a terminal when there is much to read.

Exit codes: 0 done, 1 a config file has problems (check) or a model has no price
(price), 2 bad arguments or a missing data dir.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import sys
from datetime import UTC, date
from pathlib import Path
from typing import Any

from modeltrack import index


class Refused(Exception):
    """
    A problem with the arguments; the message is printed as is.
    """


def _day(value: str) -> str:
    try:
        return date.fromisoformat(value).isoformat()
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a date (YYYY-MM-DD)") from None


def _month(value: str) -> tuple[str, str]:
    try:
        first = date.fromisoformat(value + "-01")
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a month (YYYY-MM)") from None
    following = date(first.year + first.month // 12, first.month % 12 + 1, 1)
    return first.isoformat(), following.isoformat()


def _count(value: str) -> int:
    if not value.isdigit() or int(value) < 1:
        raise argparse.ArgumentTypeError(f"{value!r} is not a positive whole number")
    return int(value)


def _seconds(value: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        seconds = 0.0
    if not 0 < seconds < float("inf"):
        raise argparse.ArgumentTypeError(f"{value!r} is not a positive number of seconds")
    return seconds


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="modeltrack", description="Reports from a modeltrack data dir.")
    commands = top.add_subparsers(dest="command", required=True)
    for name, helptext in (
        ("index", "bring the SQLite index up to date"),
        ("report", "spend per group"),
        ("sessions", "the most expensive sessions"),
        ("check", "validate budgets.json, routing.json, pricing.json and keys.json"),
        ("price", "the per-million-token prices a model is charged at, and where they come from"),
    ):
        command = commands.add_parser(name, help=helptext)
        command.add_argument(
            "--data-dir", type=Path, default=None,
            help="the proxy's data dir [env MODELTRACK_DATA_DIR, default ./data]",
        )
        if name in ("index", "report", "sessions"):
            command.add_argument(
                "--progress", action=argparse.BooleanOptionalAction, default=None,
                help="show a progress bar while indexing (default: on a terminal, when over 4 MiB are new)",
            )
        if name == "index":
            command.add_argument(
                "--follow", type=_seconds, metavar="SECONDS",
                help="keep going: update every SECONDS, and at once for each line on stdin (answered "
                "with a line on stdout once done) until stdin ends; the proxy runs its index this way",
            )
        if name in ("report", "sessions"):
            command.add_argument("--since", type=_day, help="first day, inclusive (YYYY-MM-DD)")
            command.add_argument("--until", type=_day, help="last day, exclusive (YYYY-MM-DD)")
            command.add_argument("--month", type=_month, help="a calendar month (YYYY-MM)")
            command.add_argument("--format", choices=("table", "csv", "json"), default="table")
    commands.choices["report"].add_argument(
        "--by", default="team", help="group keys, comma-separated: " + ",".join(index.GROUP_KEYS)
    )
    commands.choices["sessions"].add_argument("--top", type=_count, default=20, help="how many sessions (default 20)")
    price = commands.choices["price"]
    price.add_argument("model")
    price.add_argument("--provider", choices=("openai", "anthropic"), default=None)
    from modeltrack.reconcilecli import add_arguments

    reconcile = commands.add_parser("reconcile", help="the log against the providers' usage and cost reports")
    reconcile.add_argument("--data-dir", type=Path, default=None, help="the proxy's data dir [env MODELTRACK_DATA_DIR]")
    add_arguments(reconcile)
    keys = commands.add_parser("keys", help="name keys in keys.json by their fingerprints").add_subparsers(
        dest="keys_command", required=True
    )
    for name, helptext in (
        ("add", "add the key on stdin to keys.json, and print its entry"),
        ("list", "the keys in keys.json"),
        ("fingerprint", "print the key_id of the key on stdin"),
    ):
        command = keys.add_parser(name, help=helptext)
        command.add_argument("--data-dir", type=Path, default=None, help="the proxy's data dir [env MODELTRACK_DATA_DIR]")
    add = keys.choices["add"]
    add.add_argument("--name", required=True, help="what reports and budgets call the key (a rotated key keeps it)")
    add.add_argument("--team", help="the team its calls are attributed to, whatever their headers say")
    add.add_argument("--app", help="the app its calls are attributed to")
    add.add_argument("--provider-key-id", help="the provider's own id of the key (for reconciliation)")
    keys.choices["list"].add_argument("--format", choices=("table", "csv", "json"), default="table")
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
    given = args.data_dir is not None or bool(os.environ.get("MODELTRACK_DATA_DIR"))
    args.data_dir = args.data_dir or Path(os.environ.get("MODELTRACK_DATA_DIR") or "data")
    if args.command == "keys":
        from modeltrack.keyscli import keys_command

        return keys_command(args)
    if args.command == "price" and not given and not args.data_dir.is_dir():
        # A price needs no data dir; only its pricing.json overrides live there.
        return show_price(None, args.model, args.provider)
    if not args.data_dir.is_dir():
        print(f"modeltrack: --data-dir: {str(args.data_dir)!r} is not a directory", file=sys.stderr)
        return 2
    if args.command == "check":
        return check(args.data_dir)
    if args.command == "reconcile":
        from modeltrack.reconcilecli import reconcile_command

        return reconcile_command(args)
    if args.command == "price":
        return show_price(args.data_dir, args.model, args.provider)
    if args.command == "report":
        by = [key for key in args.by.split(",") if key]
        try:
            index.check_keys(by)
        except ValueError as e:
            print(f"modeltrack: --by: {e}", file=sys.stderr)
            return 2
    db = index.connect(args.data_dir)
    if args.command == "index" and args.follow:
        os.nice(10)  # background work: whatever else runs here (the proxy) comes first
        index.follow(db, args.data_dir, args.follow, sys.stdin.fileno(), sys.stdout.buffer)
        return 0
    read = update_with_progress(db, args.data_dir, args.progress)
    if args.command == "index":
        print(f"indexed {read} event lines")
        return 0
    since, until = args.since, args.until
    if args.month:
        since, until = args.month
    if args.command == "sessions":
        rows = index.sessions(db, args.top, since, until)
        if args.format != "json":
            for row in rows:
                row["models"] = " ".join(row["models"])
                row["teams"] = " ".join(row["teams"])
        columns = ["session_id", "teams", "models", "first_call", "duration_seconds", *TOTAL_COLUMNS]
        sys.stdout.write(render(rows, columns, args.format))
        return 0
    rows = index.report(db, by, since, until)
    sys.stdout.write(render(rows, by + TOTAL_COLUMNS, args.format))
    return 0


#: New bytes above which a terminal gets a progress bar.
PROGRESS_BYTES = 4 << 20


def update_with_progress(db: Any, data_dir: Path, show: bool | None) -> int:
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


def check(data_dir: Path) -> int:
    from modeltrack.controls.budgets import ConfigFileError, load_budgets
    from modeltrack.controls.keys import KEYS_FILE, NO_KEYS, load_keys
    from modeltrack.controls.routing import load_routing
    from modeltrack.pricing import PricingFileError, load_overrides

    problems = 0
    loaded: dict[str, Any] = {}
    for name, load in (
        ("budgets.json", load_budgets), ("routing.json", load_routing), ("pricing.json", load_overrides), (KEYS_FILE, load_keys)
    ):
        try:
            found = loaded[name] = load(data_dir / name)
        except (ConfigFileError, PricingFileError) as e:
            print(e)
            problems += 1
            continue
        print(f"{name}: {'absent (off)' if found is None else 'ok'}")
    named = {entry.name for entry in (loaded.get(KEYS_FILE) or NO_KEYS).entries.values()}
    for i, budget in enumerate(loaded.get("budgets.json") or []):
        if budget.key and budget.key not in named:
            # It would hold nothing: no call is ever made with a key of that name.
            print(f"budgets.json: budgets[{i}] (key {budget.key}): no key is named {budget.key!r} in {KEYS_FILE}")
            problems += 1
    return 1 if problems else 0


def show_price(data_dir: Path | None, model: str, provider: str | None) -> int:
    from datetime import datetime

    from genai_prices import data_snapshot

    from modeltrack.pricing import Overrides, load_overrides

    overrides = (None if data_dir is None else load_overrides(data_dir / "pricing.json")) or Overrides()
    rates = overrides.get((provider or "", model.lower())) or overrides.get(("", model.lower()))
    source = "pricing.json"
    if rates is None:
        if provider is None:
            provider = "anthropic" if "claude" in model.lower() else "openai"
        try:
            _, info = data_snapshot.get_snapshot().find_provider_model(model, None, provider, None)
        except LookupError:
            print(f"modeltrack: {model}: no price known for it at {provider} (calls to it are recorded unpriced)", file=sys.stderr)
            return 1
        rates = info.get_prices(datetime.now(UTC))
        source = f"genai-prices ({provider} {info.id})"
    print(f"{model}: {source}, USD per million tokens")
    for key, value in sorted(vars(rates).items()):
        if value is None:
            continue
        tiers = getattr(value, "tiers", None)
        if tiers is not None:
            above = ", ".join(f"above {t.start} input tokens: {t.price}" for t in tiers)
            value = f"{value.base} ({above})"
        print(f"  {key}: {value}")
    return 0


TOTAL_COLUMNS = ["requests", "input_tokens", "output_tokens", "cost_usd", "saved_usd", "unpriced"]


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


if __name__ == "__main__":
    sys.exit(main())
