"""
The proxy listener's one resource: status paths, the route table, an L{Exchange} for
each routed request, 404 for the rest; and the calls in flight, for a graceful stop.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure
from twisted.web.http_headers import Headers
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from modeltrack import failures
from modeltrack.accounting.accountant import Accountant
from modeltrack.accounting.batches import BatchBook
from modeltrack.accounting.records import Sink, sinks
from modeltrack.controls.gate import Gate
from modeltrack.controls.keys import Keyring
from modeltrack.observe.stats import Stats
from modeltrack.providers import routes
from modeltrack.store.journal import Journal
from modeltrack.web.proxy import Exchange
from modeltrack.web.serving import DEFAULT_TIMEOUTS, Timeouts
from modeltrack.web.socket_session import SocketSession, upgrade_wanted
from modeltrack.web.status import Readiness, StatusPaths, json_response
from modeltrack.web.upstream import Upstream

if TYPE_CHECKING:
    from modeltrack.web.site import ProxyRequest


class ProxyResource(Resource):
    """
    The site's only resource: status paths, the route table, and 404 for the rest.

    @ivar in_flight: the exchanges not yet ended, for a graceful stop to wait on.
    """

    isLeaf = True

    def __init__(
        self,
        *,
        upstreams: dict[str, Upstream],
        journal: Journal,
        gate: Gate,
        stats: Stats,
        readiness: Readiness,
        clock: IReactorTime,
        timeouts: Timeouts = DEFAULT_TIMEOUTS,
        max_body: int,
        keys: Keyring,
        metrics: Any = None,
        route_table: routes.RouteTable = routes.ROUTES,
        batch_book: BatchBook | None = None,
        export: Any = None,
    ) -> None:
        super().__init__()
        self.upstreams = upstreams
        self.journal = journal
        self.gate = gate
        self.stats = stats
        self.readiness = readiness
        self.status_paths = StatusPaths(journal, stats, readiness, gate, clock)
        self.clock = clock
        self.timeouts = timeouts
        self.max_body = max_body
        self.routes = route_table
        self.keys = keys
        #: Where batch results fetched through the proxy are claimed (once each).
        self.batches = batch_book
        #: L{modeltrack.observe.metrics.Metrics}, when an admin listener serves them.
        self.metrics = metrics
        #: Turns every finished call into its event and record, for the sinks.
        self.accountant = Accountant(gate, sinks(journal, stats, gate, metrics, export), clock)
        self.in_flight: set[Exchange | SocketSession] = set()
        #: Every request from its first line to its end, so a drain also waits for
        #: one still arriving (it has no exchange yet).
        self.open_requests: set[ProxyRequest] = set()
        #: Set when a stop begins: every response then closes its connection.
        self.draining = False
        self._drain_waiters: list[Deferred[None]] = []

    @property
    def sinks(self) -> list[Sink]:
        """
        Where every finished metered call goes (L{modeltrack.accounting.records}).
        """
        return self.accountant.sinks

    def drain(self, seconds: float) -> Deferred[None]:
        """
        Fires once every exchange in flight has ended; those still running after
        C{seconds} are aborted (each recorded with outcome C{shutdown}).
        """
        if not self.in_flight and not self.open_requests:
            return succeed(None)
        drained: Deferred[None] = Deferred()
        self._drain_waiters.append(drained)
        deadline = self.clock.callLater(seconds, self._abort_all)

        def stop_deadline(result: object) -> object:
            if deadline.active():
                deadline.cancel()
            return result

        return drained.addBoth(stop_deadline)

    def _abort_all(self) -> None:
        for exchange in list(self.in_flight):
            exchange.abort()
        for request in list(self.open_requests):
            if request.channel is not None:
                request.channel.transport.abortConnection()
        # Torn down: their connections are going, whenever the transport gets to it.
        self.open_requests.clear()
        self._check_drained()

    def track(self, request: ProxyRequest) -> None:
        self.open_requests.add(request)
        request.notifyFinish().addBoth(self._untrack, request)

    def _untrack(self, result: object, request: ProxyRequest) -> None:
        self.open_requests.discard(request)
        self._check_drained()

    def forget(self, exchange: Exchange | SocketSession) -> None:
        self.in_flight.discard(exchange)
        self._check_drained()

    def _check_drained(self) -> None:
        if not self.in_flight and not self.open_requests and self._drain_waiters:
            waiters, self._drain_waiters = self._drain_waiters, []
            for waiter in waiters:
                waiter.callback(None)

    def render(self, request: ProxyRequest) -> bytes | int:
        if request.method == b"CONNECT" or not request.uri.startswith(b"/"):
            # Absolute-form targets and CONNECT are how a forward proxy is used.
            return self._refuse(request, failures.NOT_AN_OPEN_PROXY)
        valid = valid_target(request.uri)
        found = self.routes.match(request.method, request.path.decode("latin-1"), request.requestHeaders)
        if not valid and (found is None or not found[0].metered):
            return self._refuse(request, failures.INVALID_TARGET)
        status = self.status_paths.render(request.path, request)
        if status is not None:
            return status
        if found is None:
            return self._error(request, 404, "not_found_error", failures.no_route(request.method))
        endpoint, upstream_path = found
        request.route = endpoint.path
        refused = None if valid else failures.INVALID_TARGET
        if endpoint.socket is not None:
            session = SocketSession(self, request, endpoint, upstream_path)
            try:
                session.start(refused)
            except Exception:
                session.crashed(Failure())
            return NOT_DONE_YET
        if refused is None and upgrade_wanted(request.requestHeaders):
            # Relayed, the upgrade would be dropped: a plain answer to a client waiting for frames.
            refused = failures.NOT_A_SOCKET
        exchange = Exchange(self, request, endpoint, upstream_path)
        try:
            exchange.start(refused, body_too_large=request.too_large)
        except Exception:
            exchange.crashed(Failure())
        return NOT_DONE_YET

    def streams(self, method: bytes, path: bytes, headers: Headers) -> bool:
        """
        Whether a body to C{method path} may go on as it arrives (L{BodyPipe}): a route
        whose bodies the proxy never reads (relayed, billable or not), to a provider
        whose calls it does not sign (a signature covers the whole body).
        """
        if not valid_target(path):
            return False
        found = self.routes.match(method, path.decode("latin-1"), headers)
        if found is None:
            return False
        endpoint = found[0]
        return not endpoint.metered and endpoint.socket is None and self.upstreams[endpoint.provider].signer is None

    def _refuse(self, request: ProxyRequest, message: str) -> bytes:
        """
        A 400 for a request no client of an API sends; its connection closes after it.
        """
        request.channel.persistent = False
        return self._error(request, 400, "invalid_request_error", message)

    def _error(self, request: ProxyRequest, code: int, error_type: str, message: str) -> bytes:
        """
        An error from the proxy itself, in the shape of the provider the caller speaks to
        (guessed from its auth headers when no route matched).
        """
        provider = self.routes.provider_by_auth(request.requestHeaders)
        return json_response(request, code, self.routes.error_body(provider, error_type, message))


#: RFC 9112 3.2: a request target is visible ASCII, nothing else (what an upstream
#: client refuses to send must be refused here, before anything else happens).
_VISIBLE_ASCII = re.compile(rb"[!-~]+")


def valid_target(target: bytes) -> bool:
    return _VISIBLE_ASCII.fullmatch(target) is not None
