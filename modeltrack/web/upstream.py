"""
Where one provider's calls go: an L{OriginAgent} over a persistent connection pool, with the
header hygiene of a reverse proxy.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import urlsplit

from twisted.internet.abstract import isIPAddress, isIPv6Address
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.endpoints import (
    HostnameEndpoint,
    TCP4ClientEndpoint,
    TCP6ClientEndpoint,
    wrapClientTLS,
)
from twisted.internet.interfaces import IConsumer, IStreamClientEndpoint
from twisted.internet.ssl import Certificate, trustRootFromCertificates
from twisted.web.client import Agent, BrowserLikePolicyForHTTPS, HTTPConnectionPool
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgent, IBodyProducer, IResponse
from zope.interface import implementer

if TYPE_CHECKING:
    from modeltrack.web.client import UpstreamConnection

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
    L{modeltrack.web.proxy.Exchange}).
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


def make_pool(reactor: object, per_host: int, fast: bool = True) -> HTTPConnectionPool:
    """
    The persistent pool of one provider's connections; on the fast path (see
    L{modeltrack.web.fastpath}) its connections are L{UpstreamConnection}s.
    """
    pool = HTTPConnectionPool(reactor, persistent=True)
    # Not a concurrency limit: how many idle connections are kept for reuse. Sized for
    # the expected concurrency so a burst does not leave a trail of new TLS handshakes.
    pool.maxPersistentPerHost = per_host
    # Below the providers' keep-alive idle timeouts, so a request is never written into
    # a connection the server is about to close.
    pool.cachedConnectionTimeout = 50
    pool.retryAutomatically = False  # POSTs are not safe to retry
    if fast:
        from modeltrack.web.client import ConnectionFactory

        # Twisted's private hook for the pool's protocol: the fast path (its presence is
        # checked at start-up by modeltrack.web.fastpath).
        pool._factory = ConnectionFactory  # type: ignore[assignment]  # not an _HTTP11ClientFactory
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

    def __init__(self, base_url: str, agent: IAgent, signer: Any = None) -> None:
        parts = urlsplit(base_url)
        self.origin = f"{parts.scheme}://{parts.netloc}"
        self._base = base_url.rstrip("/").encode("ascii")
        self._agent = agent
        self.signer = signer

    def request(
        self, method: bytes, path_and_query: bytes, headers: Headers, body: bytes | None
    ) -> Deferred[IResponse]:
        url = self._base + path_and_query
        if self.signer is not None:
            self.signer.sign(method, url, headers, body)
        producer = None if body is None else BytesProducer(body)
        return self._agent.request(method, url, headers, producer)


@implementer(IAgent)
class OriginAgent:
    """
    An L{IAgent} for the one origin an upstream may contact, over a persistent pool:
    the endpoint is built once (the TLS client context at start-up, not per
    connection), and a request is sent without re-parsing its URI, copying its
    headers or streaming a body that is already in memory. C{Agent} does all three
    per call, which made the relay slower than a bare forwarder. Responses are read
    by L{modeltrack.web.client.UpstreamConnection}.
    """

    def __init__(
        self,
        reactor: object,
        pool: HTTPConnectionPool,
        base_url: str,
        connect_timeout: float,
        trust_root: Any = None,
    ) -> None:
        """
        @param trust_root: the CAs an https origin's certificate must chain to (from
            C{--ca-bundle}); the system trust store when L{None}. The hostname is always
            verified (service-identity).
        """
        parts = urlsplit(base_url)
        hostname = parts.hostname or ""
        self._origin = f"{parts.scheme}://{parts.netloc}".encode("ascii")
        host = hostname.encode("idna")
        port = parts.port or (443 if parts.scheme == "https" else 80)
        # The Host header, as Agent computes it: the port only when not the default.
        self._host = b"[" + host + b"]" if isIPv6Address(hostname) else host
        if (parts.scheme, port) not in (("http", 80), ("https", 443)):
            self._host += b":%d" % port
        self._key = (parts.scheme.encode("ascii"), host, port)
        self._pool = pool
        # Twisted's own checks, as its client makes them (the fast path's: checked
        # present at start-up by modeltrack.web.fastpath).
        from twisted.web._newclient import _ensureValidMethod, _ensureValidURI

        self._valid_method = _ensureValidMethod
        self._valid_uri = _ensureValidURI
        endpoint: IStreamClientEndpoint
        if isIPAddress(hostname):
            endpoint = TCP4ClientEndpoint(reactor, hostname, port, timeout=connect_timeout)
        elif isIPv6Address(hostname):
            endpoint = TCP6ClientEndpoint(reactor, hostname, port, timeout=connect_timeout)
        else:
            # A name: resolved per new connection (pooled connections are reused).
            endpoint = HostnameEndpoint(reactor, host, port, timeout=connect_timeout)
        if parts.scheme == "https":
            creator = BrowserLikePolicyForHTTPS(trust_root).creatorForNetloc(host, port)
            endpoint = wrapClientTLS(creator, endpoint)
        self._endpoint = endpoint

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
        try:
            # A token; visible ASCII.
            self._valid_method(method)
            self._valid_uri(path)
        except ValueError:
            return fail()
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
        # The pool's connections are UpstreamConnections (see fast_pool).
        d = cast("Deferred[UpstreamConnection]", self._pool.getConnection(self._key, self._endpoint))
        return d.addCallback(lambda connection: connection.request(method, data))


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
