"""
A service tree's parts as steps in a declared order: L{Step} is one part's start and
stop; L{InOrder} starts its children in order and stops them last first, each once the
one before it has stopped, a failed stop logged and the rest still stopped.
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.application.service import IService, MultiService, Service
from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure

from modeltrack.failures import log_failure

log = Logger()


class Step(Service):
    """
    One part's start and stop, as a child service.
    """

    def __init__(
        self, name: str, start: Callable[[], object] | None = None, stop: Callable[[], object] | None = None
    ) -> None:
        self.setName(name)
        self._start = start
        self._stop = stop

    def startService(self) -> None:
        super().startService()
        if self._start is not None:
            self._start()

    def stopService(self) -> Deferred[object] | None:
        super().stopService()
        if self._stop is None:
            return None
        return maybeDeferred(self._stop)


def _stop_next(_: object, child: IService) -> Deferred[object]:
    return maybeDeferred(child.stopService)


def _stop_failed(failure: Failure, child: IService) -> None:
    log_failure(log, "Stopping {part} failed", failure, part=child.name)


class InOrder(MultiService):
    """
    A L{MultiService} that stops its children one after the other, last started
    first, each once the one before it has stopped; a child whose stop fails is logged
    and the others still stop.
    """

    def stopService(self) -> Deferred[None]:
        Service.stopService(self)
        done: Deferred[None] = succeed(None)
        for child in reversed(list(self)):
            done.addCallback(_stop_next, child).addErrback(_stop_failed, child)
        # A Deferred of its own: one that waits on another already counts as called.
        stopped: Deferred[None] = Deferred()
        done.addCallback(stopped.callback)
        return stopped
