"""
C{modeltrack keys}: name keys in C{<data-dir>/keys.json} by their fingerprints. A key
comes in on standard input only (arguments and the environment are visible to other
processes and kept in shell histories), is fingerprinted, and is forgotten.
"""

from __future__ import annotations

import argparse
import getpass
import json
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

from modeltrack.cli.arguments import add_data_dir, add_format
from modeltrack.cli.output import render
from modeltrack.controls.budgets import ConfigFileError
from modeltrack.controls.keys import KEYS_FILE, NO_KEYS, KeyEntry, fingerprint, install_secret, load_keys, save_keys
from modeltrack.store.datadir import make_data_dir, state_dir


def add_command(commands: Any) -> None:
    keys = commands.add_parser("keys", help="name keys in keys.json by their fingerprints").add_subparsers(
        dest="keys_command", required=True
    )
    for name, helptext in (
        ("add", "add the key on stdin to keys.json, and print its entry"),
        ("list", "the keys in keys.json"),
        ("fingerprint", "print the key_id of the key on stdin"),
    ):
        command = keys.add_parser(name, help=helptext)
        add_data_dir(command)
        # keys add and fingerprint make a new data dir: the secret must exist first.
        command.set_defaults(run=run, needs_data_dir=False)
    add = keys.choices["add"]
    add.add_argument("--name", required=True, help="what reports and budgets call the key (a rotated key keeps it)")
    add.add_argument("--team", help="the team its calls are attributed to, whatever their headers say")
    add.add_argument("--app", help="the app its calls are attributed to")
    add.add_argument("--provider-key-id", help="the provider's own id of the key (for reconciliation)")
    add_format(keys.choices["list"])


def run(args: argparse.Namespace) -> int:
    data_dir: Path = args.data_dir
    if args.keys_command == "list":
        return _list(data_dir, args.format)
    key = _read_key()
    if key is None:
        print("modeltrack: keys: no key on standard input", file=sys.stderr)
        return 2
    # A new data dir is made here: the secret has to exist before the first fingerprint.
    make_data_dir(data_dir)
    try:
        key_id = fingerprint(install_secret(state_dir(data_dir)), key)
    except ValueError as e:
        print(f"modeltrack: keys: {e}", file=sys.stderr)
        return 1
    if args.keys_command == "fingerprint":
        print(key_id)
        return 0
    return _add(data_dir, key_id, args)


def _read_key() -> bytes | None:
    """
    One key from standard input: typed without echo on a terminal, else its first line.
    """
    if sys.stdin.isatty():
        text = getpass.getpass("key (not echoed): ")
    else:
        text = sys.stdin.readline()
    key = text.strip().encode("utf-8")
    return key or None


def _add(data_dir: Path, key_id: str, args: argparse.Namespace) -> int:
    path = data_dir / KEYS_FILE
    try:
        book = load_keys(path) or NO_KEYS
    except ConfigFileError as e:
        print(f"modeltrack: keys add: {e}; fix it first (modeltrack check)", file=sys.stderr)
        return 1
    known = book.entries.get(key_id)
    if known is not None:
        print(f"modeltrack: keys add: this key is already listed, as {known.name!r}", file=sys.stderr)
        return 1
    entry = KeyEntry(key_id, args.name, args.team or None, args.app or None, args.provider_key_id or None)
    save_keys(path, replace(book, entries={**book.entries, key_id: entry}))
    print(json.dumps(entry.as_json()))
    return 0


def _list(data_dir: Path, form: str) -> int:
    try:
        book = load_keys(data_dir / KEYS_FILE) or NO_KEYS
    except ConfigFileError as e:
        print(f"modeltrack: keys list: {e}", file=sys.stderr)
        return 1
    rows = [entry.as_json() for entry in book.entries.values()]
    columns = ["key_id", "name", "team", "app", "provider_key_id"]
    sys.stdout.write(render(rows, columns, form))
    if form == "table":
        print(f"unknown keys: {book.unknown_keys}; team required: {'yes' if book.require_team else 'no'}")
    return 0

