"""
The C{modeltrack} command: reads a data dir (no proxy needs to run).

    modeltrack index  [--data-dir DIR]
    modeltrack check  [--data-dir DIR]
    modeltrack price  MODEL [--provider openai|anthropic] [--data-dir DIR]
    modeltrack report [--data-dir DIR] [--since DATE] [--until DATE] [--month YYYY-MM]
                      [--by team,app,feature,model,provider,day] [--format table|csv|json]

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
from datetime import date
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


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="modeltrack", description="Reports from a modeltrack data dir.")
    commands = top.add_subparsers(dest="command", required=True)
    for name, helptext in (
        ("index", "bring the SQLite index up to date"),
        ("report", "spend per group"),
        ("check", "validate budgets.json, routing.json and pricing.json"),
        ("price", "the per-million-token prices a model is charged at, and where they come from"),
    ):
        command = commands.add_parser(name, help=helptext)
        command.add_argument("--data-dir", type=Path, default=Path(os.environ.get("MODELTRACK_DATA_DIR") or "data"))
    report = commands.choices["report"]
    report.add_argument("--since", type=_day, help="first day, inclusive (YYYY-MM-DD)")
    report.add_argument("--until", type=_day, help="last day, exclusive (YYYY-MM-DD)")
    report.add_argument("--month", type=_month, help="a calendar month (YYYY-MM)")
    report.add_argument("--by", default="team", help="group keys, comma-separated: " + ",".join(index.GROUP_KEYS))
    report.add_argument("--format", choices=("table", "csv", "json"), default="table")
    price = commands.choices["price"]
    price.add_argument("model")
    price.add_argument("--provider", choices=("openai", "anthropic"), default=None)
    return top


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if not args.data_dir.is_dir():
        print(f"modeltrack: --data-dir: {str(args.data_dir)!r} is not a directory", file=sys.stderr)
        return 2
    if args.command == "check":
        return check(args.data_dir)
    if args.command == "price":
        return show_price(args.data_dir, args.model, args.provider)
    db = index.connect(args.data_dir)
    read = index.update(db, args.data_dir)
    if args.command == "index":
        print(f"indexed {read} event lines")
        return 0
    since, until = args.since, args.until
    if args.month:
        since, until = args.month
    by = [key for key in args.by.split(",") if key]
    try:
        rows = index.report(db, by, since, until)
    except ValueError as e:
        print(f"modeltrack: --by: {e}", file=sys.stderr)
        return 2
    sys.stdout.write(render(rows, by, args.format))
    return 0


def check(data_dir: Path) -> int:
    from modeltrack.controls.budgets import ConfigFileError, load_budgets
    from modeltrack.controls.routing import load_routing
    from modeltrack.pricing import PricingFileError, load_overrides

    problems = 0
    for name, load in (("budgets.json", load_budgets), ("routing.json", load_routing), ("pricing.json", load_overrides)):
        try:
            found = load(data_dir / name)
        except (ConfigFileError, PricingFileError) as e:
            print(e)
            problems += 1
            continue
        print(f"{name}: {'absent (off)' if found is None else 'ok'}")
    return 1 if problems else 0


def show_price(data_dir: Path, model: str, provider: str | None) -> int:
    from datetime import datetime, timezone

    from genai_prices import data_snapshot

    from modeltrack.pricing import load_overrides

    overrides = load_overrides(data_dir / "pricing.json") or {}
    rates = overrides.get(model.lower())
    source = "pricing.json"
    if rates is None:
        if provider is None:
            provider = "anthropic" if "claude" in model.lower() else "openai"
        try:
            _, info = data_snapshot.get_snapshot().find_provider_model(model, None, provider, None)
        except LookupError:
            print(f"modeltrack: {model}: no price known for it at {provider} (calls to it are recorded unpriced)", file=sys.stderr)
            return 1
        rates = info.get_prices(datetime.now(timezone.utc))
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


def render(rows: list[dict[str, Any]], by: list[str], form: str) -> str:
    if form == "json":
        return json.dumps(rows, indent=1) + "\n"
    columns = by + ["requests", "input_tokens", "output_tokens", "cost_usd", "saved_usd", "unpriced"]
    if form == "csv":
        out = io.StringIO()
        writer = csv.DictWriter(out, columns)
        writer.writeheader()
        writer.writerows(rows)
        return out.getvalue()
    cells = [columns] + [[str(row.get(c) if row.get(c) is not None else "-") for c in columns] for row in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(columns))]
    return "".join("  ".join(cell.ljust(w) for cell, w in zip(line, widths)).rstrip() + "\n" for line in cells)


if __name__ == "__main__":
    sys.exit(main())
