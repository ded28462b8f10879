"""
The running proxy as a Twisted service: builds the parts, starts them in order, and
stops them in the order that loses nothing: stop accepting, let in-flight calls finish
(bounded), flush and fsync the event log, close upstream connections.
"""

from __future__ import annotations

import gc
import os
import resource
import signal
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from twisted import version as twisted_version
from twisted.application.service import Service
from twisted.internet import endpoints
from twisted.internet.defer import Deferred, DeferredList, gatherResults, succeed
from twisted.internet.task import LoopingCall
from twisted.internet.threads import deferToThread
from twisted.logger import ILogObserver, Logger
from twisted.python.failure import Failure

from modeltrack.admin.api import AdminAPI
from modeltrack.admin.site import admin_site
from modeltrack.controls.alerts import BudgetAlerts
from modeltrack.controls.budgets import BudgetLedger
from modeltrack.controls.cache import ResponseCache, load_secret, load_snapshot, write_atomically
from modeltrack.controls.files import ControlFiles
from modeltrack.controls.gate import Gate
from modeltrack.controls.spendlog import rebuild
from modeltrack.datadir import state_dir
from modeltrack.indexer import Indexer
from modeltrack.journal import Journal
from modeltrack.logs import observer
from modeltrack.metrics import Metrics
from modeltrack.options import ConfigError, Settings, read_token
from modeltrack.pricing import PriceBook
from modeltrack.sdnotify import notify
from modeltrack.providers import anthropic, azure, compat, openai
from modeltrack.routes import RouteTable
from modeltrack.providers.registry import DIALECTS
from modeltrack.stats import Stats
from modeltrack.web.proxy import ProxyResource, Timeouts
from modeltrack.web.site import ProxySite
from modeltrack.web.status import Readiness
from modeltrack.web.tls import ReloadableServerTLS
from modeltrack.web import fastpath
from modeltrack.web.upstream import OriginAgent, Upstream, load_trust_root, make_pool, plain_agent

log = Logger()

#: Middle-generation collections between two full ones (CPython's default is 10).
FULL_COLLECTION_EVERY = 30

CACHE_SNAPSHOT_SECONDS = 300.0


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
        self.fast_path = settings.fast_path
        if self.fast_path:
            gaps = fastpath.missing(reactor)
            if gaps:
                log.warn(
                    "Twisted {version} lacks what the fast path uses ({gaps}): using its public API only",
                    version=twisted_version.short(), gaps=", ".join(gaps),
                )
                self.fast_path = False
        self._pools = []
        upstreams = {}
        trust_root = None if settings.ca_bundle is None else load_trust_root(settings.ca_bundle)
        urls = {openai.NAME: settings.openai_url, anthropic.NAME: settings.anthropic_url, **dict(settings.upstreams)}
        # Served only under their prefixes: the upstreams an operator configured.
        configured = tuple(compat.dialect(name) for name, _ in settings.upstreams)
        if settings.azure_url is not None:
            urls[azure.NAME] = settings.azure_url
            configured += (azure.DIALECT,)
        for dialect in (*configured, *DIALECTS):
            provider, url = dialect.name, urls[dialect.name]
            pool = make_pool(reactor, settings.pool_size, self.fast_path)
            self._pools.append(pool)
            if self.fast_path:
                agent: Any = OriginAgent(reactor, pool, url, settings.connect_timeout, trust_root)
            else:
                agent = plain_agent(reactor, pool, settings.connect_timeout, trust_root)
            upstreams[provider] = Upstream(url, agent)
        prices = PriceBook()
        cache = None
        if settings.cache:
            cache = ResponseCache(
                load_secret(state_dir(settings.data_dir)),
                reactor,
                max_entries=settings.cache_entries,
                max_bytes=settings.cache_bytes,
                ttl=settings.cache_ttl,
                sampled=settings.cache_sampled,
            )
        alerts = None
        if settings.alert_webhook is not None:
            from treq.client import HTTPClient
            from twisted.web.client import Agent

            alerts = BudgetAlerts(settings.alert_webhook, HTTPClient(Agent(reactor)), reactor)
        self.gate = Gate(
            prices,
            BudgetLedger(),
            None,
            cache,
            alerts,
            reserved_output_tokens=settings.reserve_output_tokens,
            default_context_tokens=settings.reserve_context_tokens,
        )
        self.control_files = ControlFiles(settings.data_dir, self.gate)
        self.indexer = Indexer(settings.data_dir, reactor, settings.index_seconds)
        # Counted only when the admin listener can serve them: a few microseconds a call.
        self.metrics = None
        self.admin = None
        if settings.admin_listen is not None:
            self.metrics = Metrics(self.journal, self.gate, reactor)
            api = AdminAPI(self.indexer, self.gate, settings.data_dir, reactor)
            self.admin = admin_site(api, self.metrics, settings.admin_token)
        self.resource = ProxyResource(
            upstreams=upstreams,
            journal=self.journal,
            gate=self.gate,
            stats=self.stats,
            readiness=self.readiness,
            clock=reactor,
            timeouts=Timeouts(
                settings.connect_timeout, settings.headers_timeout, settings.idle_timeout
            ),
            max_body=settings.max_body,
            metrics=self.metrics,
            route_table=RouteTable((*configured, *DIALECTS)),
        )
        self.site = ProxySite(
            self.resource,
            reactor,
            settings.max_body,
            settings.access_log,
            settings.head_timeout,
            self.fast_path,
            track=self.resource.track,
        )
        self.tls = None
        if settings.tls_cert is not None and settings.tls_key is not None:
            self.tls = ReloadableServerTLS(settings.tls_cert, settings.tls_key)
        self.ports: list[Any] = []

    def setServiceParent(self, parent: Any) -> None:
        """
        twistd hands its application in here before it starts logging; an
        L{ILogObserver} set on the application is the documented way for a plugin to
        choose how logs are written.
        """
        parent.setComponent(ILogObserver, observer(self.settings.log_format, sys.stdout))
        super().setServiceParent(parent)

    def startService(self) -> None:
        _raise_open_files_limit()
        self.control_files.reload(force=True)
        now = datetime.fromtimestamp(self._reactor.seconds(), timezone.utc)
        # Before the journal starts: its thread may seal a live file left from an
        # earlier day, and a file renamed under the scan would be missed.
        rebuild(self.gate.ledger, self.settings.data_dir, now.strftime("%Y-%m"))
        self.journal.start()
        if self.gate.alerts is not None:
            ledger = self.gate.ledger
            self.gate.alerts.seed(ledger.spends(ledger.budgets, now.date().isoformat()))
        if self.gate.cache is not None:
            load_snapshot(self.gate.cache, self._cache_path)
            self._snapshots = LoopingCall(self._save_cache)
            self._snapshots.clock = self._reactor
            self._snapshots.start(CACHE_SNAPSHOT_SECONDS, now=False)
        self._polling = LoopingCall(self._poll)
        self._polling.clock = self._reactor
        self._polling.start(self.settings.config_poll_seconds, now=False)
        self._previous_sighup = signal.signal(signal.SIGHUP, self._sighup)
        # Once the reactor has installed its own handlers, take SIGTERM: a stop asked
        # for by the service manager is the normal end of this process, and should exit
        # 0 after draining (twistd re-raises the signal it stopped for otherwise).
        self._previous_sigterm: Any = None
        self._reactor.callWhenRunning(self._take_sigterm)
        super().startService()
        # Every listener is bound here, before the reactor runs (so before any serves);
        # one that cannot be bound closes the others: nothing listens after a failed
        # start, and the line names the option that failed.
        listening = []
        for option, description, factory in self._listeners():
            endpoint = endpoints.serverFromString(self._reactor, description)
            if option == "--listen-tls":
                endpoint = endpoints.wrapServerTLS(self.tls, endpoint)
            d = endpoint.listen(factory)
            d.addCallbacks(lambda port, option=option: (option, port), lambda failure, option=option: (option, failure))
            listening.append(d)
        self.admin_port: Any = None
        self._early_failure: str | None = None
        gatherResults(listening).addCallback(self._bound)
        if self._early_failure is not None:
            # Before the reactor runs (a port in use): one line and a non-zero exit.
            sys.stderr.write(f"modeltrack: {self._early_failure}\n")
            raise SystemExit(1)

    def _listeners(self) -> list[tuple[str, str, Any]]:
        found = [("--listen", description, self.site) for description in self.settings.listen]
        found += [("--listen-tls", description, self.site) for description in self.settings.listen_tls]
        if self.admin is not None:
            found.append(("--admin-listen", self.settings.admin_listen, self.admin))
        return found

    def _bound(self, results: list[tuple[str, Any]]) -> None:
        failed = [(option, result) for option, result in results if isinstance(result, Failure)]
        if not failed:
            for option, port in results:
                if option == "--admin-listen":
                    self.admin_port = port
                else:
                    self.ports.append(port)
            self._listening()
            return
        for _, port in results:
            if not isinstance(port, Failure):
                port.stopListening()
        option, failure = failed[0]
        error = f"{option}: {getattr(failure.value, 'subFailure', failure).getErrorMessage()}"
        if not self._reactor.running:
            self._early_failure = error
            return
        log.critical("modeltrack could not listen: {error}", error=error)
        self._reactor.stop()

    def _listening(self) -> None:
        # Started only once listening: a failed start leaves no index process or
        # query thread behind to keep the process from exiting.
        self.indexer.start()
        # What start-up loaded (modules, price tables) lives as long as the process:
        # out of the collector's way, a full collection walks only what calls create.
        gc.freeze()
        # A full collection walks every live object (35-80 ms with 1,000 streams
        # open) and CPython starts one whenever the long-lived objects grow by a
        # quarter: three times while 1,000 streams open, each stalling all of them.
        # The relay makes no reference cycles per call, so full collections are
        # spaced further apart: every 30 middle-generation collections (about 8 s
        # under that load) instead of 10. What it costs: the cycles Twisted leaves
        # behind each closed upstream connection wait longer (150 s soaks, RSS
        # spread: 0.6 % at 10, 2.2 % at 30, 3.3 % at 50, 6.2 % at 100).
        gc.set_threshold(700, 10, FULL_COLLECTION_EVERY)
        self.readiness.listening = True
        # Listening and the event log open: tell systemd (Type=notify) we are ready.
        notify(b"READY=1\nMAINPID=%d" % os.getpid())
        for port in self.ports:
            log.info("modeltrack listening on {address}", address=str(port.getHost()))
        if self.admin_port is not None:
            log.info("Admin API, /metrics and dashboard on {address}", address=str(self.admin_port.getHost()))

    @property
    def _cache_path(self) -> Path:
        return self.settings.data_dir / "state" / "cache.msgpack"

    def _sighup(self, signum: int, frame: object) -> None:
        # Signal handlers run between bytecodes of whatever the reactor was doing: hop
        # onto the reactor properly before touching anything.
        self._reactor.callFromThread(self._reload_on_signal)

    def _take_sigterm(self) -> None:
        if self.running:
            self._previous_sigterm = signal.signal(signal.SIGTERM, self._sigterm)

    def _sigterm(self, signum: int, frame: object) -> None:
        self._reactor.callFromThread(self._stop_reactor)

    def _stop_reactor(self) -> None:
        log.info("SIGTERM: stopping")
        if self._reactor.running:
            self._reactor.stop()

    def _reload_on_signal(self) -> None:
        log.info("SIGHUP: reloading budgets, routing, pricing and the TLS certificate")
        self.control_files.reload(force=True)
        if self.tls is not None:
            self.tls.reload()
        token_file = self.settings.admin_token_file
        if self.admin is not None and token_file is not None:
            try:
                self.admin.resource.set_token(read_token(token_file))
            except ConfigError as e:
                log.error("Admin token not reloaded, the previous one stays: {problem}", problem=str(e))

    def _poll(self) -> None:
        self.control_files.reload()
        month = datetime.fromtimestamp(self._reactor.seconds(), timezone.utc).strftime("%Y-%m")
        self.gate.ledger.forget_before(month)

    def _save_cache(self) -> Deferred[None]:
        # Packing and writing happen on a thread: up to hundreds of MiB. The entries
        # are copied here, on the reactor thread, where the cache is changed.
        assert self.gate.cache is not None
        snapshot = self.gate.cache.copy()
        return deferToThread(write_atomically, self._cache_path, snapshot.snapshot())

    def stopService(self) -> Deferred[object]:
        notify(b"STOPPING=1")
        super().stopService()
        signal.signal(signal.SIGHUP, self._previous_sighup)
        if self._previous_sigterm is not None:
            signal.signal(signal.SIGTERM, self._previous_sigterm)
        self._polling.stop()
        if self.gate.cache is not None:
            self._snapshots.stop()
        self.readiness.listening = False
        self.resource.draining = True
        self.site.close_idle_connections()
        ports = self.ports + ([self.admin_port] if self.admin_port is not None else [])
        d: Deferred[Any] = DeferredList([port.stopListening() or succeed(None) for port in ports])
        self.ports = []
        self.admin_port = None
        d.addCallback(lambda _: self.resource.drain(self.settings.drain_seconds))
        d.addCallback(lambda _: self.journal.stop())
        d.addCallback(lambda _: self.indexer.stop())
        if self.gate.cache is not None:
            d.addCallback(lambda _: self._save_cache())
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
