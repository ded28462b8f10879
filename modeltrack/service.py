"""
The running proxy as a Twisted service: builds the parts, starts them in order, and
stops them in the order that loses nothing: stop accepting, let in-flight calls finish
(bounded), flush and fsync the event log, close upstream connections.
"""

from __future__ import annotations

import resource
import sys
from typing import Any

from twisted.application.service import Service
from twisted.internet import endpoints
from twisted.internet.defer import Deferred, DeferredList, gatherResults, succeed
from twisted.logger import Logger

from modeltrack.journal import Journal
from modeltrack.options import Settings
from modeltrack.pricing import PriceBook, load_overrides
from modeltrack.providers import anthropic, openai
from modeltrack.stats import Stats
from modeltrack.web.proxy import ProxyResource, Timeouts
from modeltrack.web.site import ProxySite
from modeltrack.web.status import Readiness
from modeltrack.web.upstream import Upstream, make_agent, make_pool

log = Logger()


class ModeltrackService(Service):
    name = "modeltrack"

    def __init__(self, settings: Settings, reactor: Any) -> None:
        self.settings = settings
        self._reactor = reactor
        self.journal = Journal(
            settings.data_dir,
            fsync=settings.fsync,
            rotate_bytes=settings.rotate_bytes,
            call_from_thread=reactor.callFromThread,
        )
        self.stats = Stats()
        self.readiness = Readiness()
        self._pools = []
        upstreams = {}
        for provider, url in ((openai.NAME, settings.openai_url), (anthropic.NAME, settings.anthropic_url)):
            pool = make_pool(reactor, settings.pool_size)
            self._pools.append(pool)
            upstreams[provider] = Upstream(url, make_agent(reactor, pool, url, settings.connect_timeout))
        self.resource = ProxyResource(
            upstreams=upstreams,
            journal=self.journal,
            prices=PriceBook(load_overrides(settings.data_dir / "pricing.json")),
            stats=self.stats,
            readiness=self.readiness,
            clock=reactor,
            timeouts=Timeouts(
                settings.connect_timeout, settings.headers_timeout, settings.idle_timeout
            ),
            max_body=settings.max_body,
        )
        self.site = ProxySite(self.resource, reactor, settings.max_body, settings.access_log)
        self.ports: list[Any] = []

    def startService(self) -> None:
        _raise_open_files_limit()
        self.journal.start()
        super().startService()
        listening = []
        for description in self.settings.listen:
            endpoint = endpoints.serverFromString(self._reactor, description)
            listening.append(endpoint.listen(self.site).addCallback(self.ports.append))
        self._early_failure: str | None = None
        gatherResults(listening, consumeErrors=True).addCallbacks(
            self._listening, self._listen_failed
        )
        if self._early_failure is not None:
            # Before the reactor runs (a port in use): one line and a non-zero exit.
            sys.stderr.write(f"modeltrack: --listen: {self._early_failure}\n")
            raise SystemExit(1)

    def _listening(self, _: object) -> None:
        self.readiness.listening = True
        for port in self.ports:
            log.info("modeltrack listening on {address}", address=str(port.getHost()))

    def _listen_failed(self, failure: Any) -> None:
        error = getattr(failure.value, "subFailure", failure).getErrorMessage()
        if not self._reactor.running:
            self._early_failure = error
            return
        log.critical("modeltrack could not listen: {error}", error=error)
        self._reactor.stop()

    def stopService(self) -> Deferred[object]:
        super().stopService()
        self.readiness.listening = False
        d: Deferred[Any] = DeferredList([port.stopListening() or succeed(None) for port in self.ports])
        self.ports = []
        d.addCallback(lambda _: self.resource.drain(self.settings.drain_seconds))
        d.addCallback(lambda _: self.journal.stop())
        d.addCallback(lambda _: DeferredList([pool.closeCachedConnections() for pool in self._pools]))
        d.addCallback(lambda _: log.info("modeltrack stopped: {events} events written", events=self.journal.written))
        return d


def _raise_open_files_limit() -> None:
    """
    Every proxied call holds two sockets (client and upstream); the usual soft limit
    of 1,024 open files would cap a proxy at a few hundred streams. Raise it to the
    hard limit, as far as the process is allowed.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError):
            return
    log.info("Open files limit: {limit}", limit=max(soft, hard))
