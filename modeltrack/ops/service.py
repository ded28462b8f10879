"""
The running proxy as a tree of Twisted services: the parent builds the parts and
holds them as children in a declared order, starts them in that order and stops them
in the reverse one, each after the last, so that nothing is lost: stop accepting and
let in-flight calls finish (bounded), stop polling, stop the index, close upstream
connections, save the cache, flush and fsync the event log. What belongs to the
process (signals, the collector, the open-files limit) is in L{modeltrack.ops.process}.
"""

from __future__ import annotations

import os
import socket
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from twisted.internet import endpoints
from twisted.internet.defer import Deferred, DeferredList, gatherResults, succeed
from twisted.internet.task import LoopingCall
from twisted.internet.threads import deferToThread
from twisted.logger import ILogObserver, Logger
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure
from twisted.web.server import Site

from modeltrack.accounting.batches import BatchBook
from modeltrack.admin.api import AdminAPI
from modeltrack.admin.site import admin_site
from modeltrack.controls.alerts import BudgetAlerts
from modeltrack.controls.budgets import BudgetLedger
from modeltrack.controls.cache import CacheBackend, ResponseCache, load_snapshot
from modeltrack.controls.files import ControlFiles
from modeltrack.controls.gate import Gate
from modeltrack.controls.keys import Keyring, install_secret
from modeltrack.controls.redis_cache import RedisCache
from modeltrack.controls.redis_client import connect
from modeltrack.controls.redis_ledger import RedisLedger
from modeltrack.controls.spendlog import rebuild
from modeltrack.observe.logs import destination, observer
from modeltrack.observe.metrics import Metrics
from modeltrack.observe.peers import Peers
from modeltrack.observe.stats import Stats
from modeltrack.ops.checks import read_token
from modeltrack.ops.process import Signals, pace_the_collector, raise_open_files_limit
from modeltrack.ops.sdnotify import notify
from modeltrack.ops.settings import ConfigError, Settings
from modeltrack.ops.steps import InOrder, Step
from modeltrack.pricing.prices import PriceBook
from modeltrack.providers import registry
from modeltrack.providers.dialect import Dialect
from modeltrack.providers.routes import RouteTable
from modeltrack.store.datadir import install_id, state_dir, write_atomically
from modeltrack.store.fleet import Access
from modeltrack.store.index import Retention
from modeltrack.store.index_process import IndexProcess
from modeltrack.store.journal import Journal, series_of
from modeltrack.web import fastpath
from modeltrack.web.balance import Deferring, WorkerLoads
from modeltrack.web.resource import ProxyResource
from modeltrack.web.serving import Timeouts
from modeltrack.web.site import ProxySite
from modeltrack.web.status import Readiness
from modeltrack.web.tls import ReloadableServerTLS
from modeltrack.web.upstream import OriginAgent, Upstream, load_trust_root, make_pool, origin_endpoint, plain_agent
from modeltrack.web.writethrough import WriteThroughListening, adopt_shared
from twisted import version as twisted_version

log = Logger()

CACHE_SNAPSHOT_SECONDS = 300.0


class ModeltrackService(InOrder):
    """
    The running proxy: builds every part from L{Settings} (upstreams from the
    provider registry, the event log, the controls, the index, the admin side, the
    listeners) and holds them as L{Step}s, started in the order declared at the end of
    L{__init__} and stopped in the reverse one.
    """

    def __init__(self, settings: Settings, reactor: Any, dialects: tuple[Dialect, ...] = registry.DIALECTS) -> None:
        super().__init__()
        self.setName("modeltrack")
        self.settings = settings
        self._reactor = reactor
        #: A worker of several writes its own series of the event log.
        self.series = series_of(settings.worker) if settings.workers > 1 else ""
        self.journal = Journal(
            settings.data_dir,
            series=self.series,
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
        trust_root = None if settings.ca_bundle is None else load_trust_root(settings.ca_bundle)
        served = registry.served(settings.urls, settings.upstreams, dialects)
        upstreams, self._idle_closers, signers = _upstreams(served, settings, reactor, self.fast_path, trust_root)
        prices = PriceBook()
        prices.price_providers = {d.name: d.price_provider for d, _ in served if d.price_provider}
        try:
            secret = install_secret(state_dir(settings.data_dir))
        except ValueError as e:  # a damaged secret: fingerprints depend on it, so no guessing
            sys.stderr.write(f"modeltrack: --data-dir: {e}\n")
            raise SystemExit(1) from None
        self.keys = Keyring(secret)
        redis = None
        if settings.redis_url is not None:
            # A rediss:// server's certificate chains to --ca-bundle when one is given.
            redis = connect(settings.redis_url, settings.redis_password, trust_root)
        cache: ResponseCache | None = None
        if settings.cache and redis is not None and settings.cache_backend is CacheBackend.REDIS:
            cache = RedisCache(redis, secret, reactor, ttl=settings.cache_ttl, sampled=settings.cache_sampled)
        elif settings.cache:
            cache = ResponseCache(
                secret,
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
        ledger = BudgetLedger()
        self.shared_ledger: RedisLedger | None = None
        if settings.redis_url is not None:
            contributor = install_id(state_dir(settings.data_dir)) + self.series
            ledger = self.shared_ledger = RedisLedger(redis, reactor, contributor, settings.redis_failure)
        self.gate = Gate(
            prices,
            ledger,
            None,
            cache,
            alerts,
            reserved_output_tokens=settings.reserve_output_tokens,
            default_context_tokens=settings.reserve_context_tokens,
            unmetered_billable=settings.unmetered_billable,
        )
        self.control_files = ControlFiles(settings.data_dir, self.gate, self.keys)
        store = None
        if settings.store is not None:
            store = (Access(settings.store, settings.store_password_file, settings.ca_bundle),
                     install_id(state_dir(settings.data_dir)))
        self.indexer = IndexProcess(settings.data_dir, reactor, settings.index_seconds,
                                    Retention(settings.index_retain_days, settings.log_retain_days), store)
        # Counted only when the admin listener can serve them: a few microseconds a call.
        self.metrics = None
        self.admin = None
        if settings.admin_listen is not None:
            self.metrics = Metrics(self.journal, self.gate, reactor)
            api = AdminAPI(self.indexer, self.gate, settings.data_dir, reactor, self.keys)
            self.admin = admin_site(api, self.metrics, settings.admin_token)
        self.export: Any = None
        if settings.otlp_endpoint is not None:
            from modeltrack.observe.otel import OtlpExport

            self.export = OtlpExport(settings.otlp_endpoint)
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
            keys=self.keys,
            metrics=self.metrics,
            route_table=RouteTable(dialect for dialect, _ in served),
            batch_book=BatchBook(state_dir(settings.data_dir) / "batches", reactor, reactor.getThreadPool()),
            export=self.export,
        )
        self.peers: Peers | None = None
        if settings.workers > 1:
            metrics = self.metrics

            def own_totals() -> dict[str, Any]:
                return {
                    "stats": self.stats.snapshot(self.journal),
                    "metrics": metrics.counters() if metrics is not None else {},
                }

            self.peers = Peers(state_dir(settings.data_dir) / "workers", settings.worker, settings.workers, own_totals, reactor)
            self.resource.status_paths.peers = self.peers
            if metrics is not None:
                metrics.peers = self.peers
        self.site = ProxySite(
            self.resource,
            reactor,
            settings.max_body,
            settings.access_log,
            settings.head_timeout,
            self.fast_path,
            track=self.resource.track,
            upload_idle=settings.idle_timeout,
        )
        if settings.workers > 1:  # each worker's connections, where every worker sees them
            self.site.loads = WorkerLoads(state_dir(settings.data_dir) / "workers" / "connections", settings.worker, settings.workers)
        self.tls = None
        if settings.tls_cert is not None and settings.tls_key is not None:
            self.tls = ReloadableServerTLS(settings.tls_cert, settings.tls_key)
        self.ports: list[Any] = []
        self.admin_port: Any = None
        #: Where the log goes: standard output, or twistd's --logfile.
        self.log_output = destination(settings.log_file)
        self.signals = Signals(reactor, self._reload_on_signal, self._stop_reactor, self.log_output)
        self._polling = LoopingCall(self._poll)
        self._polling.clock = reactor
        self._snapshots = LoopingCall(self._save_cache)
        self._snapshots.clock = reactor
        # Started in this order, stopped in the reverse one.
        steps = [
            Step("controls", start=self._load_controls),
            Step("event log", start=self.journal.start, stop=self.journal.stop),
            # Snapshotted to disk only when this process holds it.
            Step("response cache", start=self._start_cache, stop=self._stop_cache) if type(cache) is ResponseCache else None,
            Step("upstream pools", stop=self._close_pools),
            Step("shared ledger", start=self.shared_ledger.start, stop=self.shared_ledger.stop) if self.shared_ledger else None,
            *(Step(f"{name} credentials", start=signer.start, stop=signer.stop) for name, signer in signers.items()),
            Step("index", stop=self.indexer.stop),  # started once listening
            Step("OpenTelemetry export", stop=lambda: deferToThread(self.export.shutdown)) if self.export is not None else None,
            Step("worker totals", start=self.peers.start, stop=self.peers.stop) if self.peers is not None else None,
            Step("config polling", start=self._start_polling, stop=self._stop_polling),
            Step("listeners", start=self._listen, stop=self._stop_listening_and_drain),
        ]
        for step in steps:
            if step is not None:
                step.setServiceParent(self)

    def setServiceParent(self, parent: Any) -> None:
        """
        twistd hands its application in here before it starts logging; an
        L{ILogObserver} set on the application is the documented way for a plugin to
        choose how logs are written.
        """
        parent.setComponent(ILogObserver, observer(self.settings.log_format, self.log_output))
        super().setServiceParent(parent)

    def startService(self) -> None:
        raise_open_files_limit()
        self.signals.install()
        super().startService()

    def _load_controls(self) -> None:
        self.control_files.reload(force=True)
        now = datetime.fromtimestamp(self._reactor.seconds(), UTC)
        # Before the event log starts: its thread may seal a live file left from an
        # earlier day, and a file renamed under the scan would be missed.
        # With a shared ledger, each worker contributes (and so rebuilds) its own series.
        series = self.series if self.shared_ledger is not None and self.settings.workers > 1 else None
        rebuild(self.gate.ledger, self.settings.data_dir, now.strftime("%Y-%m"), series)
        if self.gate.alerts is not None:
            ledger = self.gate.ledger
            self.gate.alerts.seed(ledger.spends(ledger.budgets, now.date().isoformat()))

    def _start_cache(self) -> None:
        assert self.gate.cache is not None
        load_snapshot(self.gate.cache, self._cache_path)
        self._snapshots.start(CACHE_SNAPSHOT_SECONDS, now=False)

    def _stop_cache(self) -> Deferred[None]:
        if self._snapshots.running:
            self._snapshots.stop()
        return self._save_cache()

    def _start_polling(self) -> None:
        self._polling.start(self.settings.config_poll_seconds, now=False)

    def _stop_polling(self) -> None:
        if self._polling.running:  # not if start-up failed before it
            self._polling.stop()

    def _close_pools(self) -> Deferred[Any]:
        return DeferredList([close() for close in self._idle_closers])

    def _listen(self) -> None:
        # Every listener is bound here, before the reactor runs (so before any serves);
        # one that cannot be bound closes the others: nothing listens after a failed
        # start, and the line names the option that failed.
        listening = []
        if self.settings.inherited:
            return self._adopt()
        for option, description, factory in self._listeners():
            endpoint = endpoints.serverFromString(self._listening_for(option), description)
            if option == "--listen-tls":
                assert self.tls is not None  # options: --listen-tls needs --tls-cert and --tls-key
                endpoint = endpoints.wrapServerTLS(self.tls, endpoint)
            d = endpoint.listen(factory)
            d.addCallbacks(lambda port, option=option: (option, port), lambda failure, option=option: (option, failure))
            listening.append(d)
        self._early_failure: str | None = None
        gatherResults(listening).addCallback(self._bound)
        if self._early_failure is not None:
            # Before the reactor runs (a port in use): one line and a non-zero exit.
            sys.stderr.write(f"modeltrack: {self._early_failure}\n")
            raise SystemExit(1)

    def _adopt(self) -> None:
        """
        A worker: serve the sockets the supervisor bound and handed over.
        """
        results: list[tuple[str, Any]] = []
        for option, fd in self.settings.inherited:
            factory: Any = self.admin if option == "--admin-listen" else self.site
            if factory is None:
                continue
            if option == "--listen-tls":
                assert self.tls is not None
                factory = TLSMemoryBIOFactory(self.tls, False, factory)
            with socket.socket(fileno=os.dup(fd)) as probe:
                family = probe.family
            if option == "--admin-listen":
                port = self._reactor.adoptStreamPort(fd, family, factory)
            else:  # shared with the other workers
                deferring = None if self.site.loads is None else Deferring(self.site.loads, self._reactor)
                port = adopt_shared(self._reactor, fd, family, factory, self.fast_path, deferring)
            os.close(fd)  # the reactor holds its own copy
            results.append((option, port))
        self._bound(results)

    def _listening_for(self, option: str) -> Any:
        """
        The reactor a listener of C{option} listens with: on the fast path, the
        proxy's accept connections that write through.
        """
        if self.fast_path and option != "--admin-listen":
            return WriteThroughListening(self._reactor)
        return self._reactor

    def _listeners(self) -> list[tuple[str, str, Site]]:
        found: list[tuple[str, str, Site]] = [("--listen", description, self.site) for description in self.settings.listen]
        found += [("--listen-tls", description, self.site) for description in self.settings.listen_tls]
        if self.admin is not None and self.settings.admin_listen is not None:
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
        # query thread behind to keep the process from exiting. One index for all
        # workers: the first one's.
        if self.settings.worker == 0:
            self.indexer.start()
        pace_the_collector()
        self.readiness.listening = True
        ready = os.environ.get("MODELTRACK_READY_FD")
        if ready is not None:
            # A worker tells its supervisor, which tells systemd once all are.
            os.write(int(ready), b"ready\n")
        else:
            # Listening and the event log open: tell systemd (Type=notify) we are ready.
            notify(b"READY=1\nMAINPID=%d" % os.getpid())
        for port in self.ports:
            log.info("modeltrack listening on {address}", address=str(port.getHost()))
        if self.admin_port is not None:
            log.info("Admin API, /metrics and dashboard on {address}", address=str(self.admin_port.getHost()))

    @property
    def _cache_path(self) -> Path:
        return self.settings.data_dir / "state" / "cache.msgpack"

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
        month = datetime.fromtimestamp(self._reactor.seconds(), UTC).strftime("%Y-%m")
        self.gate.ledger.forget_before(month)

    def _save_cache(self) -> Deferred[None]:
        # Packing and writing happen on a thread: up to hundreds of MiB. The entries
        # are copied here, on the reactor thread, where the cache is changed.
        assert self.gate.cache is not None
        snapshot = self.gate.cache.copy()
        return deferToThread(write_atomically, self._cache_path, snapshot.snapshot())

    def _stop_listening_and_drain(self) -> Deferred[Any]:
        self.readiness.listening = False
        self.resource.draining = True
        self.site.close_idle_connections()
        ports = self.ports + ([self.admin_port] if self.admin_port is not None else [])
        d: Deferred[Any] = DeferredList([port.stopListening() or succeed(None) for port in ports])
        self.ports = []
        self.admin_port = None
        d.addCallback(lambda _: self.resource.drain(self.settings.drain_seconds))
        # Batch results being claimed still have their events to write.
        return d.addCallback(lambda _: self.resource.batches.wait() if self.resource.batches else None)

    def stopService(self) -> Deferred[None]:
        notify(b"STOPPING=1")
        self.signals.restore()
        d = super().stopService()
        d.addCallback(lambda _: log.info("modeltrack stopped: {events} events written", events=self.journal.written))
        return d


def _upstreams(
    served: list[tuple[Dialect, str]], settings: Settings, reactor: Any, fast: bool, trust_root: Any
) -> tuple[dict[str, Upstream], list[Any], dict[str, Any]]:
    """
    Each served provider's L{Upstream}: its agent over idle connections of its own
    (the fast path's L{OriginAgent}, or Twisted's C{Agent} and pool), and its signer
    where the proxy signs its calls. Also what closes each one's idle connections (at
    stop) and the signers (started and stopped).
    """
    upstreams: dict[str, Upstream] = {}
    closers: list[Callable[[], Deferred[None]]] = []
    signers: dict[str, Any] = {}
    for dialect, url in served:
        if fast:
            agent: Any = OriginAgent(reactor, url, settings.connect_timeout, trust_root, settings.pool_size)
            closers.append(agent.connections.close)
        else:
            pool = make_pool(reactor, settings.pool_size)
            agent = plain_agent(reactor, pool, settings.connect_timeout, trust_root)
            closers.append(pool.closeCachedConnections)
        signer = None
        if dialect.signing is not None and dialect.name in settings.signing:
            from modeltrack.web.signing import NoCredentials, SigV4Signer

            try:
                signer = SigV4Signer(dialect.signing, settings.regions[dialect.name], reactor)
            except NoCredentials as e:
                sys.stderr.write(f"modeltrack: {e}\n")
                raise SystemExit(1) from None
            signers[dialect.name] = signer
        sockets = origin_endpoint(reactor, url, settings.connect_timeout, trust_root) if dialect.serves_sockets else None
        uploads = None
        if fast:  # the fast path sends bodies from memory; a streamed one goes through Agent
            pool = make_pool(reactor, 2)
            uploads = plain_agent(reactor, pool, settings.connect_timeout, trust_root)
            closers.append(pool.closeCachedConnections)
        upstreams[dialect.name] = Upstream(url, agent, signer, sockets, uploads)
    return upstreams, closers, signers
