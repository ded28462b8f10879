"""
Every class of the package that declares an interface (with C{@implementer}), or
provides one of the package's own, is held to it by C{verifyObject}; and the idle
connections kept for each origin (L{IdleConnections}), on a clock.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.web.http_headers import Headers
from zope.interface import Interface, implementedBy
from zope.interface.verify import verifyObject

import modeltrack
from modeltrack.accounting import batches
from modeltrack.providers import anthropic, bedrock, google, meter, openai, openai_media, openai_sockets
from modeltrack.web.client import ConnectionState, UpstreamConnection, UpstreamResponse, _BodyTransport
from modeltrack.web.relay import Relay
from modeltrack.web.upload import BodyPipe
from modeltrack.web.upstream import BytesProducer, IdleConnections, OriginAgent
from tests.memory import Harness


def _tls(tmp_path: Path) -> Any:
    from cryptography.hazmat.primitives import serialization

    from modeltrack.web.tls import ReloadableServerTLS
    from tests.test_upstream_tls import make_ca, make_server

    ca_key, ca_cert = make_ca("test CA")
    pem = make_server(ca_key, ca_cert, "localhost")
    key_end = pem.index(b"-----END PRIVATE KEY-----") + len(b"-----END PRIVATE KEY-----\n")
    (tmp_path / "key.pem").write_bytes(pem[:key_end])
    (tmp_path / "cert.pem").write_bytes(pem[key_end:] + ca_cert.public_bytes(serialization.Encoding.PEM))
    return ReloadableServerTLS(tmp_path / "cert.pem", tmp_path / "key.pem")


def _relay() -> Relay:
    h = Harness()
    channel, _ = h.connect()
    request = h.site.requestFactory(channel)
    return Relay(exchange=None, request=request, clock=h.clock, holds=False)  # type: ignore[arg-type]


def _response() -> UpstreamResponse:
    return UpstreamResponse(b"HTTP/1.1", 200, b"OK", Headers(), 0, UpstreamConnection(lambda _: None))


_WATCH = batches.Watch("openai", "objects")
#: How to make one of each: a class that declares an interface and has no line here
#: fails the first test.
MAKERS: dict[type, Callable[[Path], Any]] = {
    meter.BodyMeter: lambda _: meter.BodyMeter(openai.read_chat_body),
    meter.SSEMeter: lambda _: meter.SSEMeter(),
    meter.FrameMeter: lambda _: meter.FrameMeter(),
    meter.RelayOnly: lambda _: meter.RelayOnly(),
    anthropic.MessagesStreamMeter: lambda _: anthropic.MessagesStreamMeter(),
    openai.ChatStreamMeter: lambda _: openai.ChatStreamMeter(strip=True),
    openai.ResponsesStreamMeter: lambda _: openai.ResponsesStreamMeter(),
    openai_media.ImageStreamMeter: lambda _: openai_media.ImageStreamMeter(),
    openai_media.TranscriptStreamMeter: lambda _: openai_media.TranscriptStreamMeter(),
    openai_media.SpeechStreamMeter: lambda _: openai_media.SpeechStreamMeter(),
    openai_media._EndsWithUsage: lambda _: openai_media._EndsWithUsage(),
    openai_sockets.RealtimeMeter: lambda _: openai_sockets.RealtimeMeter("gpt-realtime"),
    openai_sockets.ResponsesSocketMeter: lambda _: openai_sockets.ResponsesSocketMeter(None),
    openai_sockets.LiveMeter: lambda _: openai_sockets.LiveMeter(None),
    google.GenerateStreamMeter: lambda _: google.GenerateStreamMeter(),
    bedrock.ConverseStreamMeter: lambda _: bedrock.ConverseStreamMeter(),
    bedrock.InvokeStreamMeter: lambda _: bedrock.InvokeStreamMeter(),
    batches.ResultsMeter: lambda _: batches.ResultsMeter(batches.Watch("anthropic", "results", batch_id="b"), None),  # type: ignore[arg-type]
    batches.ObjectsMeter: lambda _: batches.ObjectsMeter(_WATCH, None),  # type: ignore[arg-type]
    batches._BatchMeter: lambda _: batches._BatchMeter(_WATCH, None),  # type: ignore[arg-type]
    batches.ResultsUrlMeter: lambda _: batches.ResultsUrlMeter(_WATCH, None),  # type: ignore[arg-type]
    UpstreamResponse: lambda _: _response(),
    _BodyTransport: lambda _: _BodyTransport(UpstreamConnection(lambda _: None)),
    Relay: lambda _: _relay(),
    BytesProducer: lambda _: BytesProducer(b"{}"),
    BodyPipe: lambda _: BodyPipe(10, StringTransport(), Clock(), 1.0),
    OriginAgent: lambda _: OriginAgent(MemoryReactorClock(), "https://api.example", 1),
    "modeltrack.web.tls.ReloadableServerTLS": _tls,
}


def _declaring() -> dict[str, type]:
    """
    The package's classes that declare an interface themselves, or provide one the
    package defines.
    """
    found = {}
    for module_info in pkgutil.walk_packages(modeltrack.__path__, "modeltrack."):
        if module_info.name.endswith("__main__"):
            continue
        module = importlib.import_module(module_info.name)
        for value in vars(module).values():
            if not inspect.isclass(value) or value.__module__ != module.__name__ or issubclass(value, Interface):
                continue
            provided = implementedBy(value)
            ours = [i for i in provided if i.__module__.startswith("modeltrack.")]
            if provided.declared or ours:
                found[f"{value.__module__}.{value.__qualname__}"] = value
    return found


def _name(cls: type | str) -> str:
    return cls if isinstance(cls, str) else f"{cls.__module__}.{cls.__qualname__}"


def test_every_class_that_declares_an_interface_has_a_maker() -> None:
    assert set(_declaring()) == {_name(cls) for cls in MAKERS}


def test_each_is_held_to_its_interfaces(tmp_path: Path) -> None:
    classes = _declaring()
    for cls, make in MAKERS.items():
        instance = make(tmp_path)
        assert type(instance) is classes[_name(cls)]
        for interface in implementedBy(type(instance)).declared or list(implementedBy(type(instance))):
            assert verifyObject(interface, instance), (cls, interface)


# -- the idle connections to one origin ------------------------------------------


class FakeEndpoint:
    def __init__(self) -> None:
        self.connecting: list[Deferred[Any]] = []

    def connect(self, factory: Any) -> Deferred[Any]:
        protocol = factory.buildProtocol(None)
        protocol.makeConnection(StringTransport())
        d: Deferred[Any] = Deferred()
        self.connecting.append(d)
        d.callback(protocol)
        return d


def _idle(most: int = 2) -> tuple[IdleConnections, Clock, FakeEndpoint]:
    clock, endpoint = Clock(), FakeEndpoint()
    return IdleConnections(clock, endpoint, most), clock, endpoint  # type: ignore[arg-type]


def _got(d: Deferred[Any]) -> Any:
    found: list[Any] = []
    d.addCallback(found.append)
    return found[0]


def test_the_last_connection_used_is_used_next() -> None:
    idle, clock, endpoint = _idle()
    first, second = _got(idle.get()), _got(idle.get())
    assert len(endpoint.connecting) == 2
    idle._put(first)
    idle._put(second)
    assert _got(idle.get()) is second and _got(idle.get()) is first
    assert len(endpoint.connecting) == 2 and clock.getDelayedCalls() == []


def test_an_idle_connection_closes_after_its_time_and_the_oldest_past_the_most() -> None:
    idle, clock, _ = _idle(most=2)
    one, two, three = (_got(idle.get()) for _ in range(3))
    for connection in (one, two, three):
        idle._put(connection)
    assert one.transport.disconnecting and not two.transport.disconnecting  # past the most: the oldest
    clock.advance(IdleConnections.idle_seconds)
    assert two.transport.disconnecting and three.transport.disconnecting
    assert clock.getDelayedCalls() == [] and idle._idle == []


def test_a_connection_lost_while_idle_is_forgotten_and_stop_closes_the_rest() -> None:
    from twisted.internet.error import ConnectionDone
    from twisted.python.failure import Failure

    idle, clock, endpoint = _idle()
    one, two = _got(idle.get()), _got(idle.get())
    idle._put(one)
    idle._put(two)
    one.connectionLost(Failure(ConnectionDone()))  # its server closed it
    assert one.state is ConnectionState.CLOSED and idle._idle == [two]
    closed = idle.close()
    assert two.transport.disconnecting and clock.getDelayedCalls() == []  # aborted
    two.connectionLost(Failure(ConnectionDone()))  # the abort's end
    assert _got(closed) is None and idle._idle == []
    assert _got(idle.get()) is not two and len(endpoint.connecting) == 3
