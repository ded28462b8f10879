"""
How many client connections each worker holds, in a small file every worker maps
(C{<data-dir>/state/workers/connections}, one 8-byte slot per worker), so that a worker
that holds more than its share lets the others accept the next ones: the kernel wakes
every worker for a connection on their shared socket, and without this the first one
awake takes a whole burst, long-lived streams and all.
"""

from __future__ import annotations

import mmap
import os
import struct
from pathlib import Path
from typing import Any

_SLOT = struct.Struct("=q")
#: A worker holding this many more connections than the least loaded lets them accept.
MARGIN = 1
#: ... but never keeps a connection waiting longer than this (a worker that hangs with
#: none would otherwise keep every other from accepting).
MOST_DEFERRED_SECONDS = 0.02


class WorkerLoads:
    """
    This worker's slot of the shared counts, and a view of everyone's.

    @ivar open: the client connections this worker holds now.
    """

    def __init__(self, path: Path, worker: int, workers: int) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        size = _SLOT.size * workers
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            if os.fstat(fd).st_size < size:
                os.ftruncate(fd, size)
            self._map = mmap.mmap(fd, size)
        finally:
            os.close(fd)
        self._slot = worker * _SLOT.size
        self._workers = workers
        self.open = 0
        self._write()  # a worker that starts (again) holds none

    def _write(self) -> None:
        _SLOT.pack_into(self._map, self._slot, self.open)

    def opened(self) -> None:
        self.open += 1
        self._write()

    def closed(self) -> None:
        self.open -= 1
        self._write()

    def fewest(self) -> int:
        """The fewest connections any worker holds."""
        return min(_SLOT.unpack_from(self._map, i * _SLOT.size)[0] for i in range(self._workers))

    def should_wait(self) -> bool:
        """This worker holds more than its share: another should accept the next connection."""
        return self.open > self.fewest() + MARGIN

    def close(self) -> None:
        self.open = 0
        self._write()
        self._map.close()


class Deferring:
    """
    For a listening port: when its worker holds more than its share, it stops
    reading the socket for a moment (the others take what is waiting), for at most
    L{MOST_DEFERRED_SECONDS} in a row.
    """

    def __init__(self, loads: WorkerLoads, clock: Any) -> None:
        self.loads = loads
        self._clock = clock
        self._since: float | None = None

    def defer(self, port: Any) -> bool:
        """Whether C{port} should not accept now (it is paused, and resumes itself)."""
        if not self.loads.should_wait():
            self._since = None
            return False
        now = self._clock.seconds()
        if self._since is None:
            self._since = now
        elif now - self._since >= MOST_DEFERRED_SECONDS:
            self._since = None
            return False  # waited long enough: accept
        port.stopReading()
        self._clock.callLater(0.001, lambda: port.connected and port.startReading())
        return True
