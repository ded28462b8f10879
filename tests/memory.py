"""
In-memory plumbing for proxy tests: the real L{ProxySite} and L{ProxyResource} over a
L{StringTransport} client connection, a L{Clock}, and an upstream agent whose answers
and body transport the test controls.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.web.http_headers import Headers
from twisted.web.iweb import IResponse
from zope.interface import implementer

from modeltrack.controls.budgets import Budget, BudgetLedger
from modeltrack.controls.cache import ResponseCache
from modeltrack.controls.gate import Gate
from modeltrack.controls.keys import Keyring
from modeltrack.controls.routing import Routing
from modeltrack.observe.stats import Stats
from modeltrack.pricing.prices import PriceBook
from modeltrack.web.resource import ProxyResource
from modeltrack.web.serving import Timeouts
from modeltrack.web.site import ProxySite
from modeltrack.web.status import Readiness
from modeltrack.web.upstream import Upstream
from tests import rawhttp


class RecordingJournal:
    """
    Stands in for the writer thread: keeps the encoded events in a list.
    """

    def __init__(self) -> None:
        self.lines: list[bytes] = []
        self.holds_answers = False
        self.syncs: list[Deferred[None]] = []
        self.healthy = True
        self.accepting = True
        self.written = 0
        self.write_errors = 0
        self.queued = 0

    def append(self, line: bytes) -> None:
        self.lines.append(line)
        self.written += 1

    def flush(self) -> Deferred[None]:
        """
        Fires when the test calls L{sync}: the events appended so far are "on disk".
        """
        d: Deferred[None] = Deferred()
        self.syncs.append(d)
        return d

    def sync(self) -> None:
        syncs, self.syncs = self.syncs, []
        for d in syncs:
            d.callback(None)

    def events(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.lines]


class BodyTransport:
    """
    The upstream response body's transport, as the agent gives it to a body protocol.
    """

    def __init__(self) -> None:
        self.paused = False
        self.stopped = False

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False

    def stopProducing(self) -> None:
        self.stopped = True


@implementer(IResponse)
class FakeResponse:
    def __init__(self, code: int = 200, headers: dict[bytes, bytes] | None = None) -> None:
        self.code = code
        self.phrase = b"OK"
        self.version = (b"HTTP", 1, 1)
        self.headers = Headers({k: [v] for k, v in (headers or {}).items()})
        self.length = None
        self.transport = BodyTransport()
        self.protocol: Any = None

    def deliverBody(self, protocol: Any) -> None:
        self.protocol = protocol
        protocol.makeConnection(self.transport)

    def send(self, *chunks: bytes) -> None:
        for chunk in chunks:
            self.protocol.dataReceived(chunk)

    def end(self, reason: Failure | None = None) -> None:
        from twisted.web.client import ResponseDone

        self.protocol.connectionLost(reason or Failure(ResponseDone()))


@dataclass
class Call:
    method: bytes
    uri: bytes
    headers: Headers
    body: bytes | None
    deferred: Deferred[Any]
    cancelled: bool = False


@dataclass
class SpyAgent:
    calls: list[Call] = field(default_factory=list)

    def request(self, method: bytes, uri: bytes, headers: Headers, producer: Any = None) -> Deferred[Any]:
        body = None
        if producer is not None:
            parts: list[bytes] = []

            class Consumer:
                write = parts.append

            producer.startProducing(Consumer())
            body = b"".join(parts)

        def cancel(d: Deferred[Any]) -> None:
            call.cancelled = True

        call = Call(method, uri, headers, body, Deferred(cancel))
        self.calls.append(call)
        return call.deferred


TEST_TIMEOUTS = Timeouts(connect=5, headers=30, idle=10)


class Harness:
    def __init__(
        self,
        timeouts: Timeouts = TEST_TIMEOUTS,
        max_body: int = 1 << 20,
        *,
        budgets: list[Budget] | None = None,
        routing: Routing | None = None,
        cache: bool = False,
        start: float = 1_790_000_000,  # 2026-09-21, a date genai-prices has prices for
    ) -> None:
        self.clock = Clock()
        self.clock.advance(start)
        self.agent = SpyAgent()
        self.journal = RecordingJournal()
        self.stats = Stats()
        self.readiness = Readiness()
        upstreams = {
            name: Upstream(f"https://api.{name}.example", self.agent) for name in ("openai", "anthropic")
        }
        prices = PriceBook()
        self.cache = ResponseCache(b"s" * 32, self.clock) if cache else None
        self.gate = Gate(prices, BudgetLedger(budgets or []), routing, self.cache)
        self.keys = Keyring(b"s" * 32)
        self.resource = ProxyResource(
            upstreams=upstreams,
            journal=self.journal,  # type: ignore[arg-type]
            gate=self.gate,
            stats=self.stats,
            readiness=self.readiness,
            clock=self.clock,
            timeouts=timeouts,
            max_body=max_body,
            keys=self.keys,
        )
        self.site = ProxySite(self.resource, self.clock, max_body, track=self.resource.track)

    def connect(self) -> tuple[Any, StringTransport]:
        channel = self.site.buildProtocol(None)
        transport = StringTransport()
        channel.makeConnection(transport)
        return channel, transport

    def send(self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None) -> tuple[Any, StringTransport]:
        """
        Open a client connection and send one request on it.
        """
        channel, transport = self.connect()
        data = b"" if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
        lines = [f"{method} {path} HTTP/1.1", "Host: proxy.local"]
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        if body is not None:
            lines.append(f"Content-Length: {len(data)}")
        channel.dataReceived("\r\n".join(lines).encode() + b"\r\n\r\n" + data)
        return channel, transport


def status_of(transport: StringTransport) -> int:
    return int(transport.value().split(b" ", 2)[1])


def body_of(transport: StringTransport) -> bytes:
    """
    The response body, de-chunked if it was sent chunked.
    """
    return rawhttp.body_of(transport.value())


def answer(call: Call, body: Any, code: int = 200) -> FakeResponse:
    """
    Answer an upstream call with a JSON body, start to end.
    """
    response = FakeResponse(code, {b"content-type": b"application/json"})
    call.deferred.callback(response)
    response.send(json.dumps(body).encode())
    response.end()
    return response


def head_of(transport: StringTransport) -> bytes:
    return transport.value().partition(b"\r\n\r\n")[0].lower()
