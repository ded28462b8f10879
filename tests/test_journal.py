"""
The event log writer: size and midnight rotation, whole lines only (also after SIGKILL
mid-write), everything flushed on stop, and a failing disk.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from modeltrack.store.journal import DAY, Journal, SegmentFile

REPO = Path(__file__).resolve().parent.parent


def line(n: int, size: int = 0) -> bytes:
    return json.dumps({"timestamp": "2026-11-27T23:59:59.000000Z", "n": n, "pad": "x" * size}).encode() + b"\n"


def direct(f: Callable[..., object], *args: object, **kwargs: object) -> None:
    f(*args, **kwargs)


def all_lines(directory: Path) -> list[dict[str, object]]:
    found = []
    for path in sorted(directory.glob("events-*.jsonl")) + [directory / "events.jsonl"]:
        if path.exists():
            data = path.read_bytes()
            assert data == b"" or data.endswith(b"\n"), f"{path.name} ends in a torn line"
            found += [json.loads(l) for l in data.splitlines()]
    return found


def test_size_rotation_seals_whole_lines(tmp_path: Path) -> None:
    segment = SegmentFile(tmp_path, rotate_bytes=1000)
    segment.open()
    for n in range(50):
        segment.append(line(n, 50))
    segment.close()
    sealed = sorted(tmp_path.glob("events-*.jsonl"))
    assert len(sealed) >= 4
    for path in sealed:
        assert path.stat().st_size <= 1000
    assert [e["n"] for e in all_lines(tmp_path)] == list(range(50))


def test_midnight_rotation(tmp_path: Path) -> None:
    now = [DAY * 20000 + DAY - 5.0]  # five seconds to midnight, UTC
    segment = SegmentFile(tmp_path, rotate_bytes=1 << 20, now=lambda: now[0])
    segment.open()
    segment.append(line(1))
    assert not segment.day_ended(now[0])
    now[0] += 10
    assert segment.day_ended(now[0])
    segment.append(line(2))
    segment.close()
    [sealed] = tmp_path.glob("events-*.jsonl")
    assert sealed.name.endswith("T235955.000000Z.jsonl")
    assert [e["n"] for e in all_lines(tmp_path)] == [1, 2]


def test_idle_file_is_sealed_at_midnight_by_the_writer(tmp_path: Path) -> None:
    now = [DAY * 20000 + DAY - 1.0]
    journal = Journal(tmp_path, fsync="never", call_from_thread=direct, now=lambda: now[0])
    journal.start()
    journal.append(line(1))
    flushed = journal.flush()
    while not flushed.called:
        journal.join(0.01)
    now[0] += 2  # past midnight, nothing more to write
    with journal._wake:
        journal._wake.notify()
    journal.stop()
    journal.join(5)
    assert len(list(tmp_path.glob("events-*.jsonl"))) == 1
    assert (tmp_path / "events.jsonl").read_bytes() == b""


def test_stop_flushes_everything(tmp_path: Path) -> None:
    for policy in ("always", "interval", "never"):
        directory = tmp_path / policy
        directory.mkdir()
        journal = Journal(directory, fsync=policy, call_from_thread=direct)
        journal.start()
        for n in range(1000):
            journal.append(line(n))
        stopped = journal.stop()
        journal.join(10)
        assert stopped.called
        assert journal.written == 1000
        assert [e["n"] for e in all_lines(directory)] == list(range(1000))


def test_torn_tail_is_cut_on_open(tmp_path: Path) -> None:
    (tmp_path / "events.jsonl").write_bytes(line(1) + line(2) + b'{"timestamp": "2026-11-2')
    segment = SegmentFile(tmp_path, rotate_bytes=1 << 20)
    segment.open()
    segment.append(line(3))
    segment.close()
    assert [e["n"] for e in all_lines(tmp_path)] == [1, 2, 3]


def test_disk_full_keeps_events_and_recovers(tmp_path: Path) -> None:
    """
    The disk fills (ENOSPC after part of a batch is written): the partial batch is cut
    back, events stay queued, the journal reports unhealthy; once space returns, every
    event is written once, in order.
    """
    full = [True]

    def write(fd: int, data: memoryview) -> int:
        if full[0]:
            os.write(fd, bytes(data[: len(data) // 2]))  # a short write, then the error
            raise OSError(errno.ENOSPC, "No space left on device")
        return os.write(fd, data)

    now = [1000.0]
    journal = Journal(tmp_path, fsync="always", call_from_thread=direct, write=write, now=lambda: now[0])
    journal.start()
    for n in range(10):
        journal.append(line(n))
    while journal.write_errors == 0:
        journal.join(0.01)
    assert not journal.healthy
    assert journal.queued == 10
    assert (tmp_path / "events.jsonl").read_bytes() == b""  # the half-written batch was cut
    full[0] = False
    now[0] += 2  # past the retry interval
    flushed = journal.flush()
    while not flushed.called:
        with journal._wake:
            journal._wake.notify()
        journal.join(0.01)
    assert journal.healthy
    journal.stop()
    journal.join(5)
    assert [e["n"] for e in all_lines(tmp_path)] == list(range(10))


WRITER = """
import sys, json
from pathlib import Path
from modeltrack.store.journal import Journal
journal = Journal(Path(sys.argv[1]), fsync="never", rotate_bytes=200_000, call_from_thread=lambda f, *a, **k: f(*a, **k))
journal.start()
pad = "x" * 300
n = 0
announced = False
while True:
    for _ in range(500):
        journal.append(json.dumps({"n": n, "pad": pad}).encode() + b"\\n")
        n += 1
    if journal.written >= 5000 and not announced:
        print("written", flush=True)  # segments sealed, writes still going on
        announced = True
"""


def test_sigkill_mid_write_leaves_whole_lines(tmp_path: Path) -> None:
    """
    A writer process killed with SIGKILL while writing as fast as it can: every file
    left behind holds only whole lines, and sealed segments hold consecutive events.
    """
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    child = subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path)], stdout=subprocess.PIPE, env=env)
    assert child.stdout is not None
    assert child.stdout.readline() == b"written\n"
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    events = all_lines(tmp_path)
    assert len(events) > 0
    assert [e["n"] for e in events] == list(range(len(events)))


def test_what_the_proxy_creates_is_private_to_its_user_and_group(tmp_path: Path) -> None:
    import stat

    from modeltrack.controls.keys import install_secret
    from modeltrack.ops.checks import check_data_dir
    from modeltrack.store import index
    from modeltrack.store.datadir import state_dir

    old = os.umask(0o022)  # a common default: the modes asked for must not rely on it
    try:
        data_dir = tmp_path / "new" / "data"
        check_data_dir(data_dir)
        journal = Journal(data_dir, call_from_thread=lambda f, *a, **k: f(*a, **k))
        journal.start()
        journal.append(b"{}\n")
        journal.stop()
        journal.join(10)
        install_secret(state_dir(data_dir))
        index.connect(data_dir).close()
    finally:
        os.umask(old)
    mode = lambda p: stat.S_IMODE(os.stat(p).st_mode)  # noqa: E731
    assert mode(data_dir) == 0o750
    assert mode(data_dir / "state") == 0o700
    assert mode(data_dir / "state" / "cache.secret") == 0o600
    assert mode(data_dir / "events.jsonl") == 0o640
    assert mode(data_dir / "modeltrack.db") == 0o640
