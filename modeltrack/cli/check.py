"""
C{modeltrack check}: validate budgets.json, routing.json, pricing.json and keys.json.
Exit 1 when any has a problem.
"""

from __future__ import annotations

import argparse
from typing import Any

from modeltrack.cli.arguments import add_data_dir
from modeltrack.controls.budgets import ConfigFileError, load_budgets
from modeltrack.controls.keys import KEYS_FILE, NO_KEYS, load_keys
from modeltrack.controls.routing import load_routing
from modeltrack.pricing.prices import PricingFileError, load_overrides


def add_command(commands: Any) -> None:
    command = commands.add_parser("check", help="validate budgets.json, routing.json, pricing.json and keys.json")
    add_data_dir(command)
    command.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    data_dir = args.data_dir
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
