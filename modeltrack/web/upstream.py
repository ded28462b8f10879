"""
Where one provider's calls go: an L{OriginAgent} over its own idle connections (or
Twisted's C{Agent} and C{HTTPConnectionPool}, the public-API path), with the header
hygiene of a reverse proxy.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from twisted.internet.abstract import isIPAddress, isIPv6Address
from twisted.internet.defer import Deferred, fail, gatherResults, succeed
from twisted.internet.endpoints import (
    HostnameEndpoint,
    TCP4ClientEndpoint,
    TCP6ClientEndpoint,
    wrapClientTLS,
)
from twisted.internet.interfaces import IConsumer, IDelayedCall, IReactorTime, IStreamClientEndpoint
from twisted.internet.protocol import Factory
from twisted.internet.ssl import Certificate, trustRootFromCertificates
from twisted.web.client import Agent, BrowserLikePolicyForHTTPS, HTTPConnectionPool
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgent, IBodyProducer, IResponse
from zope.interface import implementer

from modeltrack.web.client import ConnectionState, UpstreamConnection

#: RFC 9110 5.6.2: a method is a token.
_TOKEN = re.compile(rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
#: RFC 9112 3.2: a request target is visible ASCII.
_VISIBLE_ASCII = re.compile(rb"[!-~]+")

#: RFC 9110 hop-by-hop headers: they describe one connection, never the next one.
HOP_BY_HOP = frozenset(
    (
        b"connection",
        b"keep-alive",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"trailers",
        b"transfer-encoding",
        b"upgrade",
    )
)
#: Set by the agent for the upstream request itself.
_SET_BY_AGENT = frozenset((b"host", b"content-length", b"accept-encoding"))
_OURS = b"x-modeltrack-"


def _connection_tokens(headers: Headers) -> frozenset[bytes]:
    tokens: set[bytes] = set()
    for value in headers.getRawHeaders(b"connection", ()):
        tokens.update(token.strip().lower() for token in value.split(b","))
    return frozenset(tokens)


def for_upstream(headers: Headers) -> Headers:
    """
    Make the client's request headers the upstream request's, in place: every value
    byte for byte (keys and auth included), minus hop-by-hop headers, C{Host},
    C{Content-Length} and every C{X-ModelTrack-*} label. C{Accept-Encoding} becomes
    C{identity} so that the response bytes the meter reads are the bytes the provider
    wrote. (In place: rebuilding a L{Headers} re-validates every value, per request.)
    """
    _strip(headers, HOP_BY_HOP | _SET_BY_AGENT, strip_ours=True)
    headers.setRawHeaders(b"accept-encoding", [b"identity"])
    return headers


def for_client(headers: Headers) -> Headers:
    """
    Make the provider's response headers the client's, in place: minus hop-by-hop
    ones and C{Content-Length} (the proxy sets its own: see
    L{modeltrack.web.relay.Relay.send_head}).
    """
    _strip(headers, HOP_BY_HOP | {b"content-length"})
    return headers


def _strip(headers: Headers, names: frozenset[bytes], strip_ours: bool = False) -> None:
    dropped = names | _connection_tokens(headers)
    for name in [name for name, _ in headers.getAllRawHeaders()]:
        lower = name.lower()
        if lower in dropped or (strip_ours and lower.startswith(_OURS)):
            headers.removeHeader(name)


@implementer(IBodyProducer)
class BytesProducer:
    """
    A request body already in memory: its length is known, so it goes upstream with a
    Content-Length, in the same write as the request head (see L{OriginAgent}).
    """

    def __init__(self, body: bytes) -> None:
        self.body = body
        self.length = len(body)

    def startProducing(self, consumer: IConsumer) -> Deferred[None]:
        consumer.write(self.body)
        return succeed(None)

    def pauseProducing(self) -> None:
        pass

    def resumeProducing(self) -> None:
        pass

    def stopProducing(self) -> None:
        pass


def make_pool(reactor: object, per_host: int) -> HTTPConnectionPool:
    """
    The public-API path's persistent pool of one provider's connections (see
    L{IdleConnections} for what the sizes mean).
    """
    pool = HTTPConnectionPool(reactor, persistent=True)
    pool.maxPersistentPerHost = per_host
    pool.cachedConnectionTimeout = int(IdleConnections.idle_seconds)
    pool.retryAutomatically = False  # POSTs are not safe to retry
    return pool


def plain_agent(reactor: Any, pool: HTTPConnectionPool, connect_timeout: float, trust_root: Any = None) -> Agent:
    """
    The public-API upstream agent (no fast path): Twisted's C{Agent} over the pool,
    with the same certificate checks as L{OriginAgent}. L{Upstream} keeps it to the
    one configured origin.
    """
    return Agent(reactor, BrowserLikePolicyForHTTPS(trust_root), connectTimeout=connect_timeout, pool=pool)


class Upstream:
    """
    One provider's origin.

    @ivar origin: scheme, host and port as configured (the only place ever contacted).
    @ivar signer: signs each request with the proxy's own credentials (C{--bedrock-sign});
        its callers must then be named keys, since the proxy's identity pays.
    """

    def __init__(
        self, base_url: str, agent: IAgent, signer: Any = None, sockets: tuple[IStreamClientEndpoint, bytes] | None = None,
        uploads: IAgent | None = None,
    ) -> None:
        """
        @param sockets: the endpoint and C{Host} header WebSocket sessions connect with
            (L{origin_endpoint}); L{None}: this upstream serves none.
        @param uploads: the agent for bodies streamed as they arrive (Twisted's C{Agent},
            which streams a body producer; the fast path sends bodies from memory).
        """
        parts = urlsplit(base_url)
        self.origin = f"{parts.scheme}://{parts.netloc}"
        self._base = base_url.rstrip("/").encode("ascii")
        #: The path the origin's API is under, if any (an upstream at C{https://host/api}).
        self.base_path = parts.path.rstrip("/").encode("ascii")
        #: Twisted's C{Agent} on the public-API path, else an L{OriginAgent}.
        self.agent = agent
        self.uploads = uploads or agent
        self.signer = signer
        self.socket_endpoint: IStreamClientEndpoint | None = sockets[0] if sockets else None
        self.host = sockets[1] if sockets else b""

    def request(
        self, method: bytes, path_and_query: bytes, headers: Headers, body: bytes | IBodyProducer | None
    ) -> Deferred[IResponse]:
        url = self._base + path_and_query
        if not isinstance(body, (bytes, type(None))):  # a body streamed as it arrives
            return self.uploads.request(method, url, headers, body)
        if self.signer is not None:
            self.signer.sign(method, url, headers, body)
        producer = None if body is None else BytesProducer(body)
        return self.agent.request(method, url, headers, producer)


def origin_endpoint(
    reactor: Any, base_url: str, connect_timeout: float, trust_root: Any = None
) -> tuple[IStreamClientEndpoint, bytes]:
    """
    The endpoint that connects to C{base_url}'s origin (TLS for https, the hostname
    always verified, against C{trust_root} or the system's CAs), and the C{Host}
    header for it, as Agent computes it: the port only when not the default.
    """
    parts = urlsplit(base_url)
    hostname = parts.hostname or ""
    host = hostname.encode("idna")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    header = b"[" + host + b"]" if isIPv6Address(hostname) else host
    if (parts.scheme, port) not in (("http", 80), ("https", 443)):
        header += b":%d" % port
    endpoint: IStreamClientEndpoint
    if isIPAddress(hostname):
        endpoint = TCP4ClientEndpoint(reactor, hostname, port, timeout=connect_timeout)
    elif isIPv6Address(hostname):
        endpoint = TCP6ClientEndpoint(reactor, hostname, port, timeout=connect_timeout)
    else:
        # A name: resolved per new connection (idle connections are reused).
        endpoint = HostnameEndpoint(reactor, host, port, timeout=connect_timeout)
    if parts.scheme == "https":
        creator = BrowserLikePolicyForHTTPS(trust_root).creatorForNetloc(host, port)
        endpoint = wrapClientTLS(creator, endpoint)
    return endpoint, header


@implementer(IAgent)
class OriginAgent:
    """
    An L{IAgent} for the one origin an upstream may contact, over its own idle
    connections (L{IdleConnections}): the endpoint is built once (the TLS client
    context at start-up, not per connection), and a request is sent without
    re-parsing its URI, copying its headers or streaming a body that is already in
    memory. C{Agent} does all three per call, which made the relay slower than a bare
    forwarder. Responses are read by L{modeltrack.web.client.UpstreamConnection}.
    """

    def __init__(
        self, reactor: Any, base_url: str, connect_timeout: float, trust_root: Any = None, most_idle: int = 64
    ) -> None:
        """
        @param trust_root: the CAs an https origin's certificate must chain to (from
            C{--ca-bundle}); the system trust store when L{None}. The hostname is always
            verified (service-identity).
        @param most_idle: how many idle connections are kept for reuse (C{--pool-size}).
        """
        parts = urlsplit(base_url)
        self._origin = f"{parts.scheme}://{parts.netloc}".encode("ascii")
        endpoint, self._host = origin_endpoint(reactor, base_url, connect_timeout, trust_root)
        self.connections = IdleConnections(reactor, endpoint, most_idle)

    def request(
        self,
        method: bytes,
        uri: bytes,
        headers: Headers | None = None,
        bodyProducer: IBodyProducer | None = None,
    ) -> Deferred[IResponse]:
        """
        Send a request to this origin. C{headers} are the caller's to give away: the
        C{Host} header is set in them, in place.
        """
        if not uri.startswith(self._origin + b"/"):
            return fail(ValueError("modeltrack only contacts its configured upstream origins"))
        if bodyProducer is not None and not isinstance(bodyProducer, BytesProducer):
            return fail(TypeError("request bodies are sent from memory (BytesProducer)"))
        path = uri[len(self._origin):]
        if _TOKEN.fullmatch(method) is None or _VISIBLE_ASCII.fullmatch(path) is None:
            # What Twisted's client refuses to send (RFC 9110 9.1, RFC 9112 3.2).
            return fail(ValueError("the method is not a token, or the target holds bytes other than visible ASCII"))
        if headers is None:
            headers = Headers()
        headers.setRawHeaders(b"host", [self._host])
        data = [b"%s %s HTTP/1.1\r\n" % (method, path)]
        if bodyProducer is not None:
            data.append(b"Content-Length: %d\r\n" % bodyProducer.length)
        elif method in (b"POST", b"PUT", b"PATCH"):
            data.append(b"Content-Length: 0\r\n")
        for name, values in headers.getAllRawHeaders():
            data.extend([name + b": " + value + b"\r\n" for value in values])
        data.append(b"\r\n")
        if bodyProducer is not None:
            data.append(bodyProducer.body)
        return self.connections.get().addCallback(lambda connection: connection.request(method, data))


class IdleConnections(Factory):
    """
    The connections to one origin: each new one made over C{endpoint}, and those whose
    response has ended kept for the next request, most recently used first (the
    connections a server keeps alive longest are the ones it saw last). One is closed
    after L{idle_seconds} unused, the oldest when more than L{most} wait, and every
    one at stop.
    """

    noisy = False  # the default logs the start and stop of every connection's factory
    #: Below the providers' keep-alive idle timeouts, so a request is never written
    #: into a connection the server is about to close.
    idle_seconds = 50.0

    def __init__(self, clock: IReactorTime, endpoint: IStreamClientEndpoint, most: int) -> None:
        self._clock = clock
        self._endpoint = endpoint
        #: Not a limit on connections: how many idle ones are kept for reuse, sized for
        #: the expected concurrency so a burst leaves no trail of new TLS handshakes.
        self.most = most
        self._idle: list[UpstreamConnection] = []  # the oldest first
        self._expiries: dict[UpstreamConnection, IDelayedCall] = {}

    def get(self) -> Deferred[UpstreamConnection]:
        """
        A connection a request may be sent on: an idle one, or a new one.
        """
        while self._idle:
            connection = self._idle.pop()
            self._expiries.pop(connection).cancel()
            if connection.state is ConnectionState.IDLE:
                return succeed(connection)
        connecting: Deferred[UpstreamConnection] = self._endpoint.connect(self)  # type: ignore[assignment]
        return connecting

    def buildProtocol(self, addr: Any) -> UpstreamConnection:
        return UpstreamConnection(self._put, self._forget)

    def _put(self, connection: UpstreamConnection) -> None:
        if len(self._idle) >= self.most:
            oldest = self._idle.pop(0)
            self._expiries.pop(oldest).cancel()
            oldest.transport.loseConnection()
        self._idle.append(connection)
        self._expiries[connection] = self._clock.callLater(self.idle_seconds, self._expire, connection)

    def _expire(self, connection: UpstreamConnection) -> None:
        del self._expiries[connection]
        self._idle.remove(connection)
        connection.transport.loseConnection()

    def _forget(self, connection: UpstreamConnection) -> None:
        """
        A connection closed (by its server, say): if it was idle, it is no more.
        """
        expiry = self._expiries.pop(connection, None)
        if expiry is not None:
            expiry.cancel()
            self._idle.remove(connection)

    def close(self) -> Deferred[None]:
        """
        Close every idle connection; fires once they are closed.
        """
        idle, self._idle = self._idle, []
        expiries, self._expiries = self._expiries, {}
        for expiry in expiries.values():
            expiry.cancel()
        return gatherResults([connection.abort() for connection in idle]).addCallback(lambda _: None)


def load_trust_root(path: Path) -> Any:
    """
    A trust root from a PEM bundle of one or more CA certificates (C{--ca-bundle}).
    """
    pem = path.read_bytes()
    blocks = [block + b"-----END CERTIFICATE-----\n" for block in pem.split(b"-----END CERTIFICATE-----")[:-1]]
    certificates = [Certificate.loadPEM(block.strip() + b"\n") for block in blocks]
    if not certificates:
        raise ValueError("no PEM certificate in it")
    return trustRootFromCertificates(certificates)
