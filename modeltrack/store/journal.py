"""
The event log: C{<data-dir>/events.jsonl}, appended by a dedicated writer thread and
sealed into timestamped segments by size and at UTC midnight.

The reactor thread only encodes a line and appends it to an in-memory queue; the writer
thread takes everything queued at once and writes it with one C{write(2)}, so a process
killed mid-write leaves whole lines (a regular-file write is not torn by a signal). A
failed or short write (disk full) is cut back to the last whole line and retried, the
batch staying queued, so nothing is lost while the disk recovers.
"""

from __future__ import annotations

import errno
import json
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path

from twisted.internet.defer import Deferred
from twisted.logger import Logger

from modeltrack.store.datadir import FILE_MODE, make_data_dir

log = Logger()

LIVE_NAME = "events.jsonl"


class FsyncPolicy(StrEnum):
    """
    When the event log is fsynced (C{--fsync}).
    """

    ALWAYS = "always"  # after every batch; an answer completes once its event is on disk
    INTERVAL = "interval"  # once a second
    NEVER = "never"  # when the kernel chooses


FSYNC_INTERVAL = 1.0
RETRY_INTERVAL = 1.0
BATCH_WINDOW = 0.005
DAY = 86400


#: A sealed segment's name: the UTC time of its first write, to the microsecond, then
#: its series (the only place the format is written or read: see L{segment_name},
#: L{segments}, L{segment_month}, L{live_files}). One process writes the series C{""}
#: (C{events.jsonl}, C{events-20261130T090000.000000Z.jsonl}); worker K of several, K > 0,
#: writes C{.wK} (C{events.w1.jsonl}, C{events-20261130T090000.000000Z.w1.jsonl}). One
#: glob, C{events*.jsonl}, finds them all.
_SEGMENT_PREFIX, _SEGMENT_TIME, _SEGMENT_SUFFIX = "events-", "%Y%m%dT%H%M%S.%fZ", ".jsonl"


def series_of(worker: int) -> str:
    """
    The series worker C{worker} writes (0, or the only process: the plain names).
    """
    return f".w{worker}" if worker else ""


def live_name(series: str = "") -> str:
    return f"events{series}{_SEGMENT_SUFFIX}"


def segment_name(first_write: float, directory: Path, series: str = "") -> Path:
    """
    A sealed segment's path, named for the UTC time of its first write, to the
    microsecond, so that names sort in time order (a name already taken moves on by a
    microsecond, keeping that order).
    """
    micros = int(first_write * 1_000_000)
    while True:
        moment = datetime.fromtimestamp(micros / 1_000_000, UTC)
        path = directory / f"{_SEGMENT_PREFIX}{moment.strftime(_SEGMENT_TIME)}{series}{_SEGMENT_SUFFIX}"
        if not path.exists():
            return path
        micros += 1


def segments(directory: Path, series: str | None = None) -> list[Path]:
    """
    The sealed segments in C{directory} (of one series, if given), oldest first (the
    live files not among them).
    """
    found = sorted(directory.glob(f"{_SEGMENT_PREFIX}*{_SEGMENT_SUFFIX}"))
    if series is None:
        return found
    return [path for path in found if _series(path) == series]


def live_files(directory: Path, series: str | None = None) -> list[Path]:
    """
    The live files in C{directory} (every series', or one's), the plain one first.
    """
    if series is not None:
        return [directory / live_name(series)]
    return [directory / LIVE_NAME] + sorted(directory.glob("events.w*" + _SEGMENT_SUFFIX))


def _series(path: Path) -> str:
    return path.name[len(_SEGMENT_PREFIX) : -len(_SEGMENT_SUFFIX)].partition("Z")[2]


def segment_month(path: Path) -> str:
    """
    The UTC month (YYYY-MM) a segment's first event was written in.
    """
    started = path.name[len(_SEGMENT_PREFIX) : -len(_SEGMENT_SUFFIX)].partition("Z")[0] + "Z"
    return datetime.strptime(started, _SEGMENT_TIME).strftime("%Y-%m")


class SegmentFile:
    """
    The live file and its sealing. Not thread-safe: used only by the writer thread
    (and by start-up, before that thread exists).
    """

    def __init__(
        self,
        directory: Path,
        rotate_bytes: int,
        now: Callable[[], float] = time.time,
        write: Callable[[int, memoryview], int] = os.write,
        series: str = "",
    ) -> None:
        self.directory = directory
        self.series = series
        self.path = directory / live_name(series)
        self.rotate_bytes = rotate_bytes
        self._now = now
        self._write = write
        self._fd = -1
        self.size = 0
        self.first_write: float | None = None
        self.dirty = False

    def open(self) -> None:
        """
        Open the live file for appending. A torn last line (a power cut mid-write)
        cannot be recovered; it is cut off, and the loss logged, so that every line
        in the file is whole.
        """
        self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, FILE_MODE)
        self.size = os.fstat(self._fd).st_size
        self.first_write = None
        if self.size:
            self._repair_tail()
            self.first_write = self._first_timestamp()

    def _repair_tail(self) -> None:
        keep = self._end_of_last_line()
        if keep == self.size:
            return
        os.ftruncate(self._fd, keep)
        log.warn(
            "Cut a torn last line ({bytes} bytes) from {path}",
            bytes=self.size - keep,
            path=str(self.path),
        )
        self.size = keep

    def _end_of_last_line(self) -> int:
        """
        The offset just past the file's last newline (0 if it has none).
        """
        with open(self.path, "rb") as f:
            end = self.size
            while end > 0:
                start = max(0, end - 65536)
                f.seek(start)
                cut = f.read(end - start).rfind(b"\n")
                if cut >= 0:
                    return start + cut + 1
                end = start
        return 0

    def _first_timestamp(self) -> float:
        with open(self.path, "rb") as f:
            first = f.readline()
        try:
            stamp = json.loads(first)["timestamp"].replace("Z", "+00:00")
            return datetime.fromisoformat(stamp).timestamp()
        except (ValueError, KeyError, TypeError, AttributeError):
            return os.stat(self.path).st_mtime

    def append(self, data: bytes) -> None:
        """
        Write whole lines, sealing the live file first if they would take it past the
        size limit or if it holds an earlier UTC day. On any failure the file is cut
        back to its last whole line and the error raised.
        """
        now = self._now()
        if self.size and (self.size + len(data) > self.rotate_bytes or self.day_ended(now)):
            self.seal()
        view = memoryview(data)
        done = 0
        try:
            while done < len(data):
                n = self._write(self._fd, view[done:])
                if n <= 0:
                    raise OSError(errno.ENOSPC, "short write")
                done += n
        except OSError:
            try:
                os.ftruncate(self._fd, self.size)  # back to the last whole line
            except OSError:
                pass
            raise
        if self.first_write is None:
            self.first_write = now
        self.size += len(data)
        self.dirty = True

    def day_ended(self, now: float) -> bool:
        return self.first_write is not None and int(now // DAY) != int(self.first_write // DAY)

    def fsync(self) -> None:
        if self.dirty:
            os.fsync(self._fd)
            self.dirty = False

    def seal(self) -> Path | None:
        """
        Make the live file a sealed segment: fsync it (whatever the policy, a sealed
        segment is durable), rename it, fsync the directory, open a new live file.
        """
        if not self.size:
            return None
        os.fsync(self._fd)
        self.dirty = False
        os.close(self._fd)
        self._fd = -1
        sealed = segment_name(self.first_write or self._now(), self.directory, self.series)
        os.rename(self.path, sealed)
        _fsync_directory(self.directory)
        self.open()
        return sealed

    def close(self) -> None:
        if self._fd >= 0:
            self.fsync()
            os.close(self._fd)
            self._fd = -1


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Journal:
    """
    The writer thread and its queue.

    @ivar healthy: the last write succeeded; L{False} turns C{/readyz} to 503.
    @ivar written: events written (and fsynced under C{always}) so far.
    """

    def __init__(
        self,
        directory: Path,
        *,
        fsync: FsyncPolicy = FsyncPolicy.INTERVAL,
        rotate_bytes: int = 64 << 20,
        max_queued: int = 100_000,
        call_from_thread: Callable[..., object],
        now: Callable[[], float] = time.time,
        write: Callable[[int, memoryview], int] = os.write,
        series: str = "",
    ) -> None:
        self.file = SegmentFile(directory, rotate_bytes, now, write, series)
        self.fsync_policy = FsyncPolicy(fsync)
        #: Under C{always}, an answer is complete to its client only once its event
        #: is on disk (see L{modeltrack.web.relay.Relay}).
        self.holds_answers = self.fsync_policy is FsyncPolicy.ALWAYS
        self.max_queued = max_queued
        self._call_from_thread = call_from_thread
        self._now = now
        self._queue: deque[bytes] = deque()
        self._wake = threading.Condition()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._stopped: Deferred[None] = Deferred()
        self._last_fsync = 0.0
        self.healthy = True
        self.written = 0
        self.write_errors = 0
        self._appended = 0
        self._signalled = False
        self._flush_waiters: list[tuple[int, Deferred[None]]] = []

    @property
    def queued(self) -> int:
        return len(self._queue)

    @property
    def accepting(self) -> bool:
        """
        Room for more events; when the disk has been failing long enough to fill the
        queue, the proxy refuses metered calls rather than serve one it cannot record.
        """
        return len(self._queue) < self.max_queued and not self._stopping

    def start(self) -> None:
        make_data_dir(self.file.directory)
        self.file.open()
        self._thread = threading.Thread(target=self._run, name="modeltrack-journal", daemon=True)
        self._thread.start()

    def append(self, line: bytes) -> None:
        """
        Queue one encoded event (reactor thread). Never blocks on the disk.
        """
        # No lock: deque appends are atomic, and the writer thread is woken only when
        # it is not already on its way, so a busy proxy pays for one wake-up a batch.
        self._queue.append(line)
        self._appended += 1
        if not self._signalled:
            self._signalled = True
            with self._wake:
                self._wake.notify()

    def flush(self) -> Deferred[None]:
        """
        Fires (on the reactor thread) once every event appended so far is written.
        """
        d: Deferred[None] = Deferred()
        with self._wake:
            if self.written >= self._appended:
                d.callback(None)
            else:
                self._flush_waiters.append((self._appended, d))
        return d

    def stop(self) -> Deferred[None]:
        """
        Write everything queued, fsync, close; the Deferred fires when done.
        """
        with self._wake:
            self._stopping = True
            self._wake.notify()
        if self._thread is None:
            self._stopped.callback(None)
        return self._stopped

    def join(self, timeout: float | None = None) -> None:
        """
        Block until the writer thread has ended (tests and off-reactor tools only).
        """
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        try:
            self._loop()
        finally:
            try:
                self.file.close()
            except OSError as e:
                self._report_error(e)
            self._call_from_thread(self._stopped.callback, None)

    def _loop(self) -> None:
        retry_at = 0.0
        while True:
            with self._wake:
                while not self._should_wake(retry_at):
                    self._wake.wait(self._wait_time(retry_at))
                if self._queue and not self._stopping and self.fsync_policy != "always":
                    # Let a batch gather: one write for many events, not one each.
                    self._wake.wait(BATCH_WINDOW)
                self._signalled = False
                batch = list(self._queue)
                stopping = self._stopping
            now = self._now()
            try:
                if batch and now >= retry_at:
                    self.file.append(b"".join(batch))
                    with self._wake:
                        for _ in batch:
                            self._queue.popleft()
                    if self.fsync_policy is FsyncPolicy.ALWAYS:
                        self.file.fsync()
                    self._wrote(len(batch))
                if self.file.dirty and self.fsync_policy is FsyncPolicy.INTERVAL and (
                    stopping or now - self._last_fsync >= FSYNC_INTERVAL
                ):
                    self.file.fsync()
                    self._last_fsync = now
                if self.file.day_ended(now):
                    self.file.seal()
                if not self.healthy:
                    self._set_healthy(True, None)
                retry_at = 0.0
            except OSError as e:
                retry_at = now + RETRY_INTERVAL
                self.write_errors += 1
                if self.healthy:
                    self._set_healthy(False, e)
                if stopping and self._stop_given_up(now):
                    return
                continue
            if stopping and not self._queue:
                return

    def _wrote(self, count: int) -> None:
        with self._wake:
            self.written += count
            ready = [d for target, d in self._flush_waiters if target <= self.written]
            self._flush_waiters = [(t, d) for t, d in self._flush_waiters if t > self.written]
        for d in ready:
            self._call_from_thread(d.callback, None)

    def _should_wake(self, retry_at: float) -> bool:
        now = self._now()
        if retry_at:
            return now >= retry_at
        if self._stopping:
            return True
        if self._queue:
            return True
        if self.file.dirty and self.fsync_policy is FsyncPolicy.INTERVAL:
            return now - self._last_fsync >= FSYNC_INTERVAL
        return self.file.day_ended(now)

    def _wait_time(self, retry_at: float) -> float:
        now = self._now()
        if retry_at:
            return max(0.0, retry_at - now)
        wait = DAY - now % DAY  # wake at midnight to seal an idle file
        if self.file.dirty and self.fsync_policy is FsyncPolicy.INTERVAL:
            wait = min(wait, max(0.0, self._last_fsync + FSYNC_INTERVAL - now))
        return wait

    _stop_deadline: float | None = None

    def _stop_given_up(self, now: float) -> bool:
        """
        A stop with a failing disk keeps retrying for 30 seconds, then gives up rather
        than hang the shutdown forever; what could not be written is counted in the log.
        """
        if self._stop_deadline is None:
            self._stop_deadline = now + 30.0
        if now < self._stop_deadline:
            return False
        self._call_from_thread(
            log.critical,
            "Stopping with {count} events not written: the disk kept failing",
            count=len(self._queue),
        )
        return True

    def _set_healthy(self, healthy: bool, error: OSError | None) -> None:
        self.healthy = healthy
        if error is None:
            self._call_from_thread(log.info, "Event log writable again")
        else:
            self._report_error(error)

    def _report_error(self, error: OSError) -> None:
        self._call_from_thread(
            log.error,
            "Event log write failed, events stay queued: {error}",
            error=os.strerror(error.errno) if error.errno else str(error),
        )
