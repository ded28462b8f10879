"""
The controls' config files in the data dir: budgets.json, routing.json, pricing.json,
keys.json.
Read at start-up, and again whenever one changes (polled) or on SIGHUP. A file that does
not parse is rejected with a log line naming the file, the entry and the problem, and the
last good configuration stays in force; a missing file turns its control off.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from twisted.logger import Logger

from modeltrack.controls.budgets import ConfigFileError, load_budgets
from modeltrack.controls.gate import Gate
from modeltrack.controls.keys import KEYS_FILE, Keyring, load_keys
from modeltrack.controls.routing import load_routing
from modeltrack.pricing.prices import PricingFileError, load_overrides

log = Logger()


class ControlFiles:
    def __init__(self, data_dir: Path, gate: Gate, keys: Keyring) -> None:
        self._data_dir = data_dir
        self._gate = gate
        self._seen: dict[str, tuple[float, int] | None] = {}
        self._files: tuple[tuple[str, Callable[[Path], Any], Callable[[Any], None]], ...] = (
            ("budgets.json", load_budgets, lambda budgets: gate.ledger.replace(budgets or [])),
            ("routing.json", load_routing, self._set_routing),
            ("pricing.json", load_overrides, gate.prices.set_overrides),
            (KEYS_FILE, load_keys, keys.set_book),
        )

    def _set_routing(self, routing: Any) -> None:
        self._gate.routing = routing

    def reload(self, force: bool = False) -> None:
        """
        Re-read the files that changed since the last look (all of them if C{force}).
        """
        for name, load, apply in self._files:
            path = self._data_dir / name
            try:
                stat = path.stat()
                stamp: tuple[float, int] | None = (stat.st_mtime, stat.st_size)
            except FileNotFoundError:
                stamp = None
            if not force and name in self._seen and self._seen[name] == stamp:
                continue
            self._seen[name] = stamp
            try:
                value = load(path)
            except (ConfigFileError, PricingFileError, OSError) as e:
                log.error("Rejected {problem}; the last good configuration stays in force", problem=str(e))
                continue
            apply(value)
            if stamp is not None:
                log.info("Loaded {file}", file=name)
