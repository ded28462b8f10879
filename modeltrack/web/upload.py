"""
A request body that goes to the provider as it arrives (a file upload, a batch input
file: up to 512 MB at OpenAI), never held whole: the routes whose bodies the proxy
need not read (L{ProxyResource.streams}) and whose bodies are large or of unknown
length. It is the upstream request's L{IBodyProducer}; the client's connection is its
source, paused while the provider's is full (or not yet open), so the memory an upload
takes is a few socket buffers, whatever its size.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IConsumer, IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.web.iweb import UNKNOWN_LENGTH, IBodyProducer
from zope.interface import implementer

log = Logger()

#: Bodies of this size or more (or of unknown length) stream, where they may.
STREAM_FROM = 1 << 20
#: What is held while the provider's connection is being opened, before the client waits.
_HELD = 256 << 10


@implementer(IBodyProducer)
class BodyPipe:
    """
    A body streamed from the client's connection (C{source}, a push producer) to the
    upstream request's consumer. A client silent for C{idle} seconds mid-body is cut
    (its upload would hold a connection to the provider for ever).

    @ivar complete: the whole body has arrived.
    """

    def __init__(self, length: int | None, source: Any, clock: IReactorTime, idle: float) -> None:
        self.length: Any = UNKNOWN_LENGTH if length is None else length
        self._source = source
        self._clock = clock
        self._idle = idle
        self._held: list[bytes] = []
        self._held_bytes = 0
        self._consumer: IConsumer | None = None
        self._done: Deferred[None] | None = None
        self._paused = False  # the client's connection, by this pipe
        self._paused_by_consumer = False
        self._stopped = False
        self.complete = False
        #: Told when the whole body has gone to the provider.
        self.sent: Callable[[], None] = lambda: None
        self._last = clock.seconds()
        self._timer: IDelayedCall | None = clock.callLater(idle, self._check)

    # -- from the client -------------------------------------------------------

    def write(self, data: bytes) -> None:
        if self._stopped:
            return
        self._last = self._clock.seconds()
        if self._consumer is not None:
            self._consumer.write(data)
            return
        self._held.append(data)
        self._held_bytes += len(data)
        if self._held_bytes >= _HELD:
            self._pause_source()

    def finish(self) -> None:
        """The client's body has all arrived."""
        self.complete = True
        self._cancel_timer()
        if self._consumer is not None and self._done is not None and not self._stopped:
            done, self._done = self._done, None
            done.callback(None)
            self.sent()

    # -- to the provider (IBodyProducer) ----------------------------------------

    def startProducing(self, consumer: IConsumer) -> Deferred[None]:
        self._consumer = consumer
        self._done = Deferred(lambda _: self.stopProducing())
        held, self._held, self._held_bytes = self._held, [], 0
        for data in held:
            consumer.write(data)
        done = self._done
        if self.complete:
            self.finish()
        elif not self._paused_by_consumer:
            self._resume_source()
        return done

    def pauseProducing(self) -> None:
        self._paused_by_consumer = True
        self._pause_source()

    def resumeProducing(self) -> None:
        self._paused_by_consumer = False
        self._resume_source()

    def stopProducing(self) -> None:
        """The upstream request is gone (cancelled, failed): nothing more is wanted."""
        self._stopped = True
        self._cancel_timer()
        self._held = []
        self._resume_source()

    # -- the client's connection -----------------------------------------------

    def _pause_source(self) -> None:
        if not self._paused and not self.complete:
            self._paused = True
            self._source.pauseProducing()

    def _resume_source(self) -> None:
        if self._paused:
            self._paused = False
            self._source.resumeProducing()

    def _check(self) -> None:
        self._timer = None
        quiet = self._clock.seconds() - self._last
        if self.complete or self._stopped:
            return
        if self._paused:  # waiting on the provider, not on the client
            self._last = self._clock.seconds()
            quiet = 0.0
        if quiet < self._idle:
            self._timer = self._clock.callLater(self._idle - quiet, self._check)
            return
        log.info("A client stalled mid-upload for {seconds} s: its connection is cut", seconds=self._idle)
        self._source.abortConnection()

    def _cancel_timer(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
