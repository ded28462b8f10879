"""
C{modeltrack price MODEL}: the per-million-token prices a model is charged at, and
where they come from (C{pricing.json}, else genai-prices). Exit 1 when it has none.
"""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from modeltrack.cli.arguments import add_data_dir


def add_command(commands: Any) -> None:
    command = commands.add_parser("price", help="the per-million-token prices a model is charged at, and where they come from")
    add_data_dir(command)
    command.add_argument("model")
    command.add_argument("--provider", choices=("openai", "anthropic"), default=None)
    # A price needs no data dir; only its pricing.json overrides live there.
    command.set_defaults(run=run, needs_data_dir=False)


def run(args: argparse.Namespace) -> int:
    if args.data_dir_given or args.data_dir.is_dir():
        if not args.data_dir.is_dir():
            print(f"modeltrack: --data-dir: {str(args.data_dir)!r} is not a directory", file=sys.stderr)
            return 2
        return show_price(args.data_dir, args.model, args.provider)
    return show_price(None, args.model, args.provider)


def show_price(data_dir: Path | None, model: str, provider: str | None) -> int:
    from genai_prices import data_snapshot

    from modeltrack.pricing.prices import Overrides, load_overrides

    overrides = (None if data_dir is None else load_overrides(data_dir / "pricing.json")) or Overrides()
    rates: Any = overrides.get((provider or "", model.lower())) or overrides.get(("", model.lower()))
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
