"""
The listening side: a L{Site} whose requests keep their bodies in memory up to a cap and
whose access log never holds a query string, a header or a body.
"""

from __future__ import annotations

import re
import weakref
from collections.abc import Callable
from io import BytesIO
from typing import Any, cast

from twisted.internet.interfaces import IAddress, IProtocol, IReactorTime
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import http, server
from twisted.web.resource import IResource

from modeltrack.failures import log_failure, safe_method
from modeltrack.web.balance import WorkerLoads
from modeltrack.web.interfaces import IConnection
from modeltrack.web.status import STATUS_PATHS
from modeltrack.web.upload import STREAM_FROM, BodyPipe
from modeltrack.web.writethrough import WriteThroughServer

DEFAULT_MAX_BODY = 32 << 20
#: Methods whose requests carry a body (any other may come with one).
_WITH_BODY = frozenset((b"POST", b"PUT", b"PATCH"))
#: A Host header that may go into a URL given back to its client.
_HOST = re.compile(r"[A-Za-z0-9.-]+(:[0-9]{1,5})?|\[[0-9A-Fa-f:.]+\](:[0-9]{1,5})?")
#: Module level: a Logger that is a class attribute takes its class's name as namespace.
access_logger = Logger(namespace="modeltrack.access")


class ProxyRequest(server.Request):
    """
    A request whose body is held in memory, never spooled to a temporary file on disk
    (bodies are prompts: they must not reach the disk), and discarded past the site's
    cap, leaving C{too_large} set for the resource to answer 413.
    """

    too_large = False
    body_pipe: BodyPipe | None = None
    started = 0.0
    route: str | None = None
    channel: ProxyChannel
    transport: IConnection  # the channel's, while the request is served
    content: BytesIO  # type: ignore[assignment]  # Twisted's is None until gotLength

    def __repr__(self) -> str:
        # Twisted puts a request's repr in log lines; its own repr holds the whole
        # target, query (and any key in it) included.
        return f"<ProxyRequest {safe_method(self.method)} {self.route or '-'}>"

    def __init__(self, channel: ProxyChannel, *args: Any, **kwargs: Any) -> None:
        super().__init__(channel, *args, **kwargs)
        # From its first line on, so a stop waits for a request still arriving.
        track = channel.site.track
        if track is not None:
            track(self)

    @property
    def has_body(self) -> bool:
        """
        Its method carries a body to forward (any other does if it came with one).
        """
        return self.method in _WITH_BODY or self.content.tell() > 0

    def base_url(self, api_path: str) -> str | None:
        """
        The proxy's URL as this client called it, up to C{api_path} (where the path
        ends with it); L{None} if its Host header is not a plain host.
        """
        host = (self.requestHeaders.getRawHeaders(b"host") or [b""])[0].decode("latin-1")
        if _HOST.fullmatch(host) is None:
            return None
        path = self.path.decode("latin-1")
        prefix = path[: len(path) - len(api_path)] if path.endswith(api_path) else ""
        # Behind a TLS-terminating balancer the client called https: it says so.
        forwarded = (self.requestHeaders.getRawHeaders(b"x-forwarded-proto") or [b""])[-1].strip().lower()
        scheme = forwarded.decode() if forwarded in (b"http", b"https") else "https" if self.isSecure() else "http"
        return f"{scheme}://{host}{prefix}"

    def gotLength(self, length: int | None) -> None:
        site: ProxySite = self.channel.site
        self.started = site.clock.seconds()
        self.content = BytesIO()
        if site.stream_from is not None and (length is None or length >= site.stream_from):
            self._maybe_stream(site, length)
        if length is not None and length > site.max_body and self.body_pipe is None:
            self.too_large = True

    def _maybe_stream(self, site: ProxySite, length: int | None) -> None:
        """
        A large body (or one of unknown length) to a route whose bodies the proxy need
        not read goes on as it arrives: the request is rendered now, its head whole,
        with a L{BodyPipe} for a body.
        """
        method, _, rest = self.channel.request_line.partition(b" ")
        target, _, version = rest.rpartition(b" ")
        path = target.partition(b"?")[0]
        streams = getattr(site.resource, "streams", None)
        if streams is None or not streams(method, path, self.requestHeaders):
            return
        # What requestReceived sets once the body is in (the answer's status line needs the version).
        self.method, self.uri, self.path, self.clientproto = method, target, path, version
        self.body_pipe = BodyPipe(length, self.channel.transport, site.clock, site.upload_idle)
        self._render()

    def process(self) -> None:
        """
        Hand the request straight to the site's one resource. L{server.Request.process}
        would also unquote the path into C{postpath} for traversal and set C{Server}
        and C{Date} headers, all work a leaf resource relaying the provider's own
        headers does not need, on every request.
        """
        if self.body_pipe is not None:
            return self.body_pipe.finish()  # rendered when its head came (see _maybe_stream)
        self._render()

    def _render(self) -> None:
        self.site = self.channel.site
        self.prepath = []
        self.postpath = []
        try:
            self.render(self.site.resource)
        except BaseException:
            self.processingFailed(Failure())

    def finish(self) -> None:
        if self.body_pipe is not None and not self.body_pipe.complete:
            # Answered before its body was all here: the rest is not read (nor parsed as
            # a next request); the connection closes after the answer.
            self.channel.persistent = False
            self.channel.stop_reading()
        super().finish()

    def processingFailed(self, reason: Failure) -> None:
        """
        A bug: logged without the exception's text (see L{modeltrack.failures}), and
        answered with a fixed 500.
        """
        log_failure(access_logger, "Request processing failed", reason)
        if self.finished or self.startedWriting:
            self.channel.transport.abortConnection()
            return
        body = b'{"error":{"type":"api_error","message":"modeltrack failed to process the request"}}\n'
        self.setResponseCode(500)
        self.setHeader(b"content-type", b"application/json")
        self.setHeader(b"content-length", b"%d" % len(body))
        self.write(body)
        self.finish()

    def handleContentChunk(self, data: bytes) -> None:
        if self.body_pipe is not None:
            return self.body_pipe.write(data)
        if self.too_large:
            return
        if self.content.tell() + len(data) > self.channel.site.max_body:
            self.too_large = True
            self.content = BytesIO()
            return
        self.content.write(data)


#: The longest request line or header line, and the whole head, in bytes, and the most
#: header lines; past any of them a request gets 431. (The SDKs send about 1 KiB.)
MAX_HEAD_LINE = 16 * 1024
MAX_HEAD = 64 * 1024
MAX_HEADER_LINES = 200
DEFAULT_HEAD_TIMEOUT = 10.0

_REASONS = {400: b"Bad Request", 408: b"Request Timeout", 431: b"Request Header Fields Too Large"}
_MESSAGES = {
    400: b"the request head is malformed",
    408: b"the request head did not arrive in time",
    431: b"the request head is too large",
}


def _framing_is_clear(headers: Any, version: bytes | None) -> bool:
    """
    RFC 9112 3.2 and 6.1, as a proxy must read them: an HTTP/1.1 request has exactly
    one Host; a Transfer-Encoding is C{chunked} and nothing else (Twisted refuses the
    other ambiguities: Content-Length with Transfer-Encoding, two lengths, a length
    that is not digits).
    """
    hosts = headers.getRawHeaders(b"host") or []
    if version != b"HTTP/1.0" and len(hosts) != 1:
        return False
    codings = headers.getRawHeaders(b"transfer-encoding")
    if codings is None:
        return True
    # HTTP/1.0 has no transfer codings: its framing would be a guess (RFC 9112 6.1).
    return version != b"HTTP/1.0" and b",".join(codings).strip().lower() == b"chunked"


class ProxyChannel(http.HTTPChannel):
    """
    HTTP/1.1 (the SDKs' protocol; no HTTP/2 negotiation) on a connection that sends
    at the end of the reactor's batch (L{WriteThroughServer}), and reads a request that
    came with the connection as soon as it is accepted.

    A request head must arrive whole within the site's C{head_timeout} of its first
    byte (of the connection, for the first request): the idle timeout alone restarts
    on every byte, so a client trickling a byte a second would hold the connection
    for ever. A head too large gets 431, a malformed one (bare LFs included) 400, a
    late one 408, and the connection closes.
    """

    _host: object = None
    site: ProxySite  # set by the factory that built it
    transport: IConnection
    # Twisted's own head limits answer a bare 400 or close without a word: ours
    # (checked first) answer 431.
    MAX_LENGTH = MAX_HEAD_LINE
    totalHeadersSize = 1 << 30
    maxHeaders = 1 << 30
    _head_timer: Any = None
    _head_since: float | None = None
    _head_bytes = 0
    _head_lines = 0
    _tail = b""
    _first_line = b""
    _request_version: bytes | None = None
    _refused = False
    #: The request line of the request under way, once it has come.
    request_line = b""
    _tunnel: IProtocol | None = None

    def connectionMade(self) -> None:
        super().connectionMade()
        self._new_head()
        if isinstance(self.transport, WriteThroughServer):
            # A client sends its request as soon as it is connected, so it is usually
            # here by the time the connection is accepted: read it now rather than
            # after the reactor's next batch of events. (Nothing there: the read finds
            # the socket empty; the client gone: the reactor sees it on its next poll.)
            self.transport.doRead()

    def _new_head(self) -> None:
        self._head_bytes = self._head_lines = 0
        self._tail = self._first_line = b""
        self._request_version = None
        self.request_line = b""
        self._head_since = self.site.clock.seconds()
        # One timer per connection, not one per request: it is not cancelled when a
        # head is whole (a cancel and a new call per request cost more than a check),
        # and when it fires it looks at the head in progress, if any.
        if self._head_timer is None:
            self._head_timer = self.callLater(self.site.head_timeout, self._check_deadline)

    def _check_deadline(self) -> None:
        self._head_timer = None
        if self._head_since is None:
            return  # between requests: the next head starts the timer again
        late = self.site.clock.seconds() - self._head_since
        if late >= self.site.head_timeout:
            self._refuse(408)
        else:
            self._head_timer = self.callLater(self.site.head_timeout - late, self._check_deadline)

    def hand_over(self, tunnel: IProtocol) -> None:
        """
        The connection is no longer HTTP (a WebSocket upgraded): every byte from now
        on, and its end, go to C{tunnel}, which is also the transport's producer.
        """
        self._tunnel = tunnel
        self._head_since = None
        self.setTimeout(None)
        if self._head_timer is not None and self._head_timer.active():
            self._head_timer.cancel()
        self._head_timer = None
        self.transport.unregisterProducer()
        tunnel.makeConnection(self.transport)
        self.transport.resumeProducing()

    def rawDataReceived(self, data: bytes) -> None:
        if self._tunnel is not None:  # bytes that came with the upgrade's head
            self._tunnel.dataReceived(data)
        else:
            super().rawDataReceived(data)

    def dataReceived(self, data: bytes) -> None:
        if self._tunnel is not None:
            self._tunnel.dataReceived(data)
            return
        if self._refused:
            return
        if self.line_mode:  # a request head is arriving
            if self._head_since is None:
                self._new_head()
            problem = self._check_head(data)
            if problem:
                return self._refuse(problem)
        super().dataReceived(data)

    def _check_head(self, data: bytes) -> int:
        """
        What Twisted's parser lets through, checked on each read of a head with a few
        byte scans (not per line, which cost more than the rest of the parse): 431 for
        a head too large, 400 for a bare CR or LF or an obs-fold (RFC 9112 2.2 and
        5.2: a proxy must not pass them on); 0 if none.
        """
        buffer = self._tail + data  # the tail: a CRLF or a fold cut between two reads
        end = buffer.find(b"\r\n\r\n")
        head = buffer if end < 0 else buffer[: end + 4]
        self._head_bytes += len(head) - len(self._tail)
        self._head_lines += head.count(b"\n") - self._tail.count(b"\n")
        if self._head_bytes > MAX_HEAD or self._head_lines > MAX_HEADER_LINES + 2:  # + request line, blank line
            return 431
        crlf = head.count(b"\r\n")
        scanned = head[:-1] if head.endswith(b"\r") else head  # its LF may come next
        if head.count(b"\n") != crlf or scanned.count(b"\r") != crlf or b"\n " in head or b"\n\t" in head:
            return 400
        # The last bytes, for a CRLF or a fold cut between this read and the next; never
        # starting inside a CRLF (its LF alone would look bare).
        self._tail = head[-4:] if head[-3:-2] == b"\n" else head[-3:]
        if self._request_version is None:
            first = (self._first_line + data).lstrip(b"\r\n")
            line, found, _ = first.partition(b"\r\n")
            if found:
                self.request_line = line
                self._request_version = line.rpartition(b" ")[2]
            else:
                self._first_line = first[-MAX_HEAD_LINE:]
        return 0

    def stop_reading(self) -> None:
        """Read nothing more from this connection (a request answered before its body ended)."""
        self._refused = True

    def lineLengthExceeded(self, line: bytes) -> None:
        self._refuse(431)

    def allHeadersReceived(self) -> None:
        self._head_since = None
        if not _framing_is_clear(self.requests[-1].requestHeaders, self._request_version):
            return self._refuse(400)
        super().allHeadersReceived()

    def allContentReceived(self) -> None:
        if not self._refused:  # refused at the end of its head: nothing to process
            super().allContentReceived()

    def _refuse(self, code: int) -> None:
        """
        Answer a head that cannot be served, and close.
        """
        if self._refused:
            return
        self._refused = True
        if self._head_timer is not None and self._head_timer.active():
            self._head_timer.cancel()
        self._head_timer = None
        body = b'{"error":{"type":"invalid_request_error","message":"%s"}}\n' % _MESSAGES[code]
        self.transport.write(
            b"HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n"
            b"Connection: close\r\n\r\n%s" % (code, _REASONS[code], len(body), body)
        )
        self.loseConnection()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self.site.loads is not None:
            self.site.loads.closed()
        if self._tunnel is not None:
            self._tunnel.connectionLost(reason)
        if self._head_timer is not None and self._head_timer.active():
            self._head_timer.cancel()
        self._head_timer = None
        super().connectionLost(reason)

    def getHost(self) -> object:
        # Asked for by every request (a getsockname call each); it cannot change.
        if self._host is None:
            self._host = super().getHost()
        return self._host


class ProxySite(server.Site):
    """
    @ivar max_body: the largest request body accepted, in bytes.
    @ivar clock: the time source for request durations.
    @ivar head_timeout: seconds a request head has to arrive whole (see L{ProxyChannel}).
    @ivar fast_path: its listeners accept connections that write through
        (L{modeltrack.web.writethrough.WriteThroughListening}).
    @ivar track: told of every request from its first line (a stop waits for them).
    @ivar stream_from: bodies this large or more (or of unknown length) to routes whose
        bodies need no reading stream to the provider (L{BodyPipe}); L{None}: never.
    @ivar upload_idle: seconds a streamed body may go silent before its client is cut.
    """

    requestFactory = ProxyRequest
    # HTTP/1.1 only, without the wrapper that would negotiate HTTP/2.
    protocol = ProxyChannel  # type: ignore[assignment]  # Twisted types it as the wrapper

    def __init__(
        self,
        resource: IResource,
        clock: IReactorTime,
        max_body: int = DEFAULT_MAX_BODY,
        access_log: bool = False,
        head_timeout: float = DEFAULT_HEAD_TIMEOUT,
        fast_path: bool = True,
        track: Callable[[ProxyRequest], object] | None = None,
        stream_from: int | None = STREAM_FROM,
        upload_idle: float = 300.0,
    ) -> None:
        # No form parsing: bodies here are JSON, and parsing them as forms costs time.
        super().__init__(resource, reactor=clock, parsePOSTFormSubmission=False)
        self.clock = clock
        self.max_body = max_body
        self.head_timeout = head_timeout
        self.fast_path = fast_path
        self.track = track
        self.stream_from = stream_from
        self.upload_idle = upload_idle
        self.access_log_on = access_log
        self.displayTracebacks = False
        self.connections: weakref.WeakSet[ProxyChannel] = weakref.WeakSet()
        #: With --workers: the connections each worker holds (L{WorkerLoads}).
        self.loads: WorkerLoads | None = None

    def buildProtocol(self, addr: IAddress) -> ProxyChannel:  # type: ignore[override]  # see protocol
        protocol = cast(ProxyChannel, super().buildProtocol(addr))
        self.connections.add(protocol)
        if self.loads is not None:
            self.loads.opened()
        return protocol

    def close_idle_connections(self) -> None:
        """
        For a stop: close every client connection with no request in progress, and make
        the busy ones close once their response is done, so that no new request arrives
        on a kept-alive connection while the process drains (it would find the event log
        closing and be refused, and the client would retry it elsewhere: one call, two
        events).
        """
        for channel in list(self.connections):
            if channel.transport is None:
                continue
            if channel.requests:
                channel.persistent = False
            else:
                channel.transport.loseConnection()

    def log(self, request: http.Request) -> None:
        """
        One access line per finished request, if asked for: method, route, status,
        bytes, duration, request id. The route is the proxy's own name for the path
        (C{-} when none matched): a path and its query can carry keys.
        """
        if not self.access_log_on:
            return
        assert isinstance(request, ProxyRequest)
        request_id = request.responseHeaders.getRawHeaders(b"x-modeltrack-request-id", [b"-"])[0]
        access_logger.info(
            "{method} {path} {status} {bytes}B {duration_ms}ms {request_id}",
            method=safe_method(request.method),
            path=request.route or STATUS_PATHS.get(request.path, "-"),
            status=request.code,
            bytes=request.sentLength,
            duration_ms=round((self.clock.seconds() - request.started) * 1000, 1),
            request_id=request_id.decode("ascii", "replace"),
        )
