"""
The SQLite index kept current inside the running proxy. One thread owns the connection:
it brings the index up to date every few seconds and runs the admin API's queries, each
after an update, so an answer includes every event written before it was asked for.
Nothing here runs SQLite or file I/O on the reactor thread.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any, Callable, TypeVar

from twisted.internet.defer import Deferred
from twisted.internet.task import LoopingCall
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool

from modeltrack import index

log = Logger()
T = TypeVar("T")


class Indexer:
    def __init__(self, data_dir: Path, reactor: Any, interval: float = 10.0) -> None:
        self._data_dir = data_dir
        self._reactor = reactor
        self._interval = interval
        self._pool = ThreadPool(1, 1, name="modeltrack-index")
        self._db: sqlite3.Connection | None = None
        self._loop = LoopingCall(self._update)
        self._loop.clock = reactor

    def start(self) -> None:
        self._pool.start()
        self._loop.start(self._interval, now=True)

    def stop(self) -> None:
        if self._loop.running:
            self._loop.stop()
        # Joins the thread: waits for a running update or query to finish.
        self._pool.stop()
        if self._db is not None:
            self._db.close()  # the thread is gone: no other user is left

    def query(self, read: Callable[[sqlite3.Connection], T]) -> Deferred[T]:
        """
        C{read(connection)} on the index thread, after an update.
        """
        def run() -> T:
            db = self._connection()
            index.update(db, self._data_dir)
            return read(db)

        return deferToThreadPool(self._reactor, self._pool, run)

    def _connection(self) -> sqlite3.Connection:
        if self._db is None:
            self._db = index.connect(self._data_dir, check_same_thread=False)
        return self._db

    def _update(self) -> Deferred[None]:
        d = self.query(lambda db: None)
        # A failed pass is logged and tried again at the next tick, never fatal.
        d.addErrback(lambda failure: log.failure("Could not update the SQLite index", failure))
        return d

