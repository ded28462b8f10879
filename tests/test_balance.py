"""
Workers' shares of their connections, on a clock: a worker holding more than the least
loaded one lets the others accept (its port paused a millisecond at a time), but never
keeps a connection waiting more than 20 ms; a worker that starts again holds none.
"""

from __future__ import annotations

from pathlib import Path

from twisted.internet.task import Clock

from modeltrack.web.balance import MOST_DEFERRED_SECONDS, Deferring, WorkerLoads


class Port:
    connected = True
    reading = True

    def stopReading(self) -> None:
        self.reading = False

    def startReading(self) -> None:
        self.reading = True


def test_a_worker_ahead_of_the_others_lets_them_accept(tmp_path: Path) -> None:
    path = tmp_path / "connections"
    first, second = WorkerLoads(path, 0, 2), WorkerLoads(path, 1, 2)
    clock, port = Clock(), Port()
    deferring = Deferring(first, clock)
    first.opened()
    assert not deferring.defer(port)  # one ahead: within the margin
    first.opened()
    assert deferring.defer(port) and not port.reading  # two ahead: the other worker's turn
    clock.advance(0.001)
    assert port.reading  # and it looks again a millisecond later
    second.opened()
    assert not deferring.defer(port)  # the other took one: back within the margin
    first.opened()
    assert deferring.defer(port)
    clock.advance(MOST_DEFERRED_SECONDS)
    assert not deferring.defer(port)  # the other is not taking them: accept anyway
    first.closed()
    first.closed()
    assert (first.open, second.open) == (1, 1)
    again = WorkerLoads(path, 1, 2)  # worker 1 started again: it holds none
    assert again.fewest() == 0 and first.should_wait() is False
