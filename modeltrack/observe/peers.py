"""
With C{--workers}, C{/stats} and C{/metrics} count the whole process tree: each worker
writes its running totals to C{<data-dir>/state/workers/wK.json} every second and reads
the others' (off the reactor thread), so whichever worker answers adds theirs to its
own. A peer's figures are at most about a second old; a replaced worker starts again
from zero, as any restarted process does.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from twisted.internet.task import LoopingCall
from twisted.internet.threads import deferToThread
from twisted.logger import Logger

from modeltrack.failures import log_failure
from modeltrack.store.datadir import write_atomically

log = Logger()

EXCHANGE_SECONDS = 1.0


class Peers:
    """
    @ivar totals: the other workers' last totals (their JSON documents).
    """

    def __init__(self, directory: Path, worker: int, workers: int, own: Callable[[], dict[str, Any]], clock: Any) -> None:
        self._path = directory / f"w{worker}.json"
        self._others = [directory / f"w{n}.json" for n in range(workers) if n != worker]
        self._own = own
        self.totals: list[dict[str, Any]] = []
        self._loop = LoopingCall(self._exchange)
        self._loop.clock = clock

    def start(self) -> None:
        self._loop.start(EXCHANGE_SECONDS, now=True)

    def stop(self) -> Any:
        if self._loop.running:
            self._loop.stop()
        return self._exchange()  # the last totals, for whoever answers next

    def _exchange(self) -> Any:
        document = json.dumps(self._own()).encode()  # taken here, on the reactor thread
        return deferToThread(self._write_and_read, document).addCallbacks(self._got, self._failed)

    def _write_and_read(self, document: bytes) -> list[dict[str, Any]]:
        write_atomically(self._path, document)
        found = []
        for path in self._others:
            try:
                found.append(json.loads(path.read_bytes()))
            except (FileNotFoundError, ValueError):
                continue  # not started yet, or being replaced
        return found

    def _got(self, totals: list[dict[str, Any]]) -> None:
        self.totals = totals

    def _failed(self, failure: Any) -> None:
        log_failure(log, "Could not exchange totals with the other workers", failure)


def add_counts(into: dict[str, Any], other: dict[str, Any]) -> dict[str, Any]:
    """
    C{into} plus C{other}, field by field: numbers added (decimal strings as exact
    decimals), objects merged the same way; anything else kept from C{into}.
    """
    from decimal import Decimal

    merged = dict(into)
    for key, value in other.items():
        mine = merged.get(key)
        if isinstance(value, bool) or value is None:
            merged.setdefault(key, value)
        elif isinstance(value, int | float) and isinstance(mine, int | float | None):
            merged[key] = (mine or 0) + value
        elif isinstance(value, dict):
            merged[key] = add_counts(mine if isinstance(mine, dict) else {}, value)
        elif isinstance(value, str) and key.endswith("_usd"):
            merged[key] = str(Decimal(mine or "0") + Decimal(value))
        else:
            merged.setdefault(key, value)
    return merged
