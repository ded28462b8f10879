"""
The SQLite index kept current while the proxy runs, by a child process: C{modeltrack
index --follow}. Parsing every event line again and inserting it costs about 20 us of
CPU; in a thread of the proxy that work, and SQLite handing the GIL back and forth on
every row, slowed the relay by a tenth or more under load. In its own process, at a
lower priority, it costs the proxy nothing but a pipe.

The admin API's queries run on two threads of the proxy, each with its own read
connection (WAL lets them read while the child writes; a page's answers are read side
by side, SQLite letting go of the GIL as it reads), each after asking the child for an update,
so an answer includes every event written before it was asked for. Nothing here runs
SQLite or file I/O on the reactor thread.
"""

from __future__ import annotations

import os
import sys
import threading
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from twisted.internet.defer import Deferred, succeed
from twisted.internet.error import ProcessDone
from twisted.internet.interfaces import IProcessTransport
from twisted.internet.protocol import ProcessProtocol
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

from modeltrack.failures import log_failure
from modeltrack.store import index
from modeltrack.store.fleet import Access
from modeltrack.store.index import KEEP_ALL, Retention

log = Logger()
T = TypeVar("T")

#: Threads reading for the admin API, each with its own connection.
QUERY_THREADS = 2
#: How long a stopping proxy waits for the child to finish its pass before killing it.
STOP_SECONDS = 10.0


class IndexGone(Exception):
    """
    The index process ended before it answered.
    """


class _Child(ProcessProtocol):
    """
    One line out per update asked for, one line back when it is done.
    """

    transport: IProcessTransport  # set by spawnProcess before anything is asked of it

    def __init__(self) -> None:
        self.waiting: deque[Deferred[None]] = deque()
        self.ended: Deferred[str | None] = Deferred()
        self._partial = b""

    def refresh(self) -> Deferred[None]:
        d: Deferred[None] = Deferred()
        self.waiting.append(d)
        self.transport.write(b"u\n")
        return d

    def outReceived(self, data: bytes) -> None:
        self._partial += data
        *lines, self._partial = self._partial.split(b"\n")
        for _ in lines:
            if self.waiting:
                self.waiting.popleft().callback(None)

    def errReceived(self, data: bytes) -> None:
        for line in data.decode("utf-8", "replace").splitlines():
            log.error("Index process: {line}", line=line)

    def processEnded(self, reason: Failure) -> None:
        while self.waiting:
            self.waiting.popleft().errback(IndexGone(reason.getErrorMessage()))
        self.ended.callback(None if reason.check(ProcessDone) else reason.getErrorMessage())


class IndexProcess:
    """
    The index's child process (C{modeltrack index --follow}): started, asked for an
    update every C{interval} and before each query, replaced if it dies; and the one
    thread the proxy's queries run on.
    """

    def __init__(
        self, data_dir: Path, reactor: Any, interval: float = 10.0, keep: Retention = KEEP_ALL,
        store: tuple[Access, str] | None = None,
    ) -> None:
        """
        @param store: the fleet's store the child ships to, and this instance's name in it.
        """
        self._data_dir = data_dir
        self._keep = keep
        self._store = store
        self._local = threading.local()  # each query thread's connection
        self._opened: list[Any] = []  # every connection they opened, closed at the end
        self._reactor = reactor
        self._interval = interval
        self._pool = ThreadPool(1, QUERY_THREADS, name="modeltrack-index")
        self._process: _Child | None = None
        self._stopping = False

    def start(self) -> None:
        self._pool.start()
        self._spawn()

    def _spawn(self) -> None:
        process = self._process = _Child()
        argv = [
            sys.executable, "-m", "modeltrack.cli", "index", "--data-dir", str(self._data_dir),
            "--follow", str(self._interval),
        ]
        if self._keep.index_days is not None:
            argv += ["--retain-days", str(self._keep.index_days)]
        if self._keep.log_days is not None:
            argv += ["--log-retain-days", str(self._keep.log_days)]
        if self._store is not None:
            access, instance = self._store
            argv += ["--store", access.url, "--instance", instance]
            if access.password_file is not None:
                argv += ["--store-password-file", str(access.password_file)]
            if access.ca_bundle is not None:
                argv += ["--ca-bundle", str(access.ca_bundle)]
        # The child inherits the environment (PYTHONPATH, a virtualenv); it nices itself.
        self._reactor.spawnProcess(
            process, sys.executable, argv, env=dict(os.environ), childFDs={0: "w", 1: "r", 2: "r"},
        )
        process.ended.addCallback(self._ended, process)

    def _ended(self, problem: str | None, process: _Child) -> None:
        if self._stopping:
            return
        log.error("Index process ended ({problem}); starting another in {seconds} s",
                  problem=problem or "exit 0", seconds=self._interval)
        self._reactor.callLater(self._interval, self._respawn, process)

    def _respawn(self, process: _Child) -> None:
        if not self._stopping and self._process is process:
            self._spawn()

    def stop(self) -> Deferred[None]:
        """
        Ends the child after its current pass (killed after L{STOP_SECONDS}) and the
        query thread after its current query.
        """
        self._stopping = True
        self._pool.stop()
        for connection in self._opened:
            connection.close()  # the threads are gone: no other user is left
        process, self._process = self._process, None
        if process is None or process.ended.called:
            return succeed(None)
        process.transport.closeStdin()
        kill = self._reactor.callLater(STOP_SECONDS, process.transport.signalProcess, "KILL")

        def stopped(_: object) -> None:
            if kill.active():
                kill.cancel()

        return process.ended.addBoth(stopped)

    def _from_store(self, read: Callable[[Any], T]) -> T:
        """C{read} on the fleet's store (on a query thread), connected again if it was lost."""
        from modeltrack.store import fleet

        assert self._store is not None
        conn = getattr(self._local, "fleet", None)
        if conn is None or conn.closed:
            conn = self._local.fleet = fleet.connect(*self._store[0])
            self._opened.append(conn)
        try:
            return read(fleet.Reader(conn))
        except Exception:
            conn.close()
            raise

    @property
    def fleet(self) -> bool:
        """Queries read the whole fleet, from its store."""
        return self._store is not None

    def query(self, read: Callable[[Any], T]) -> Deferred[T]:
        """
        C{read(connection)} on the query thread, once the index holds every event
        written before this call (or, if the index process is down, on what it holds);
        with a store, on the store (once this instance's events are shipped).
        """
        if self._process is None or self._process.ended.called:
            refreshed: Deferred[None] = succeed(None)
        else:
            refreshed = self._process.refresh()
            refreshed.addErrback(lambda failure: log_failure(log, "Index not brought up to date", failure))

        def run() -> T:
            if self._store is not None:
                return self._from_store(read)
            db = getattr(self._local, "db", None)
            if db is None:
                db = self._local.db = index.connect(self._data_dir, check_same_thread=False)
                self._opened.append(db)
            return read(db)

        return refreshed.addCallback(lambda _: deferToThreadPool(self._reactor, self._pool, run))
