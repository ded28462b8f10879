"""
WebSocket sessions that go wrong, each ending cleanly with its events: a malformed
upgrade, an upgrade on a route that is no WebSocket, a frame over 16 MiB, a masked
frame from the provider, an unmasked one from the client, a provider or a client that
vanishes mid-response, a session gone idle; over the TLS listener and Azure's paths
too; the key never in a file or a close reason.
"""

from __future__ import annotations

import contextlib
import json
import socket
import ssl
import struct
from pathlib import Path
from typing import Any

import openai
import pytest
import pytest_twisted
import websockets.sync.client as ws_client
from twisted.internet.defer import Deferred
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import deferLater
from websockets.exceptions import ConnectionClosed
from wsproto.frame_protocol import FrameProtocol

from tests.conftest import start_proxy
from tests.rawhttp import exchange, status_of
from tests.test_listen_tls import ca_and_server
from tests.test_realtime import REALTIME_COST, realtime_session
from tests.test_sdk import in_thread

KEY = "sk-socket-secret-0123456789"
UPGRADE = (b"GET /v1/realtime?model=gpt-realtime HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
           b"Sec-WebSocket-Version: 13\r\nAuthorization: Bearer " + KEY.encode() + b"\r\n")


def ws_url(proxy: Any) -> str:
    return proxy.url.replace("http://", "ws://") + "/v1/realtime?model=gpt-realtime"


def until_closed(url: str, mode: str | None = None, send: bytes | None = None) -> tuple[list[str], Any]:
    """A session that asks for one response (with C{mode}), or sends raw C{send} bytes; what came, and the close."""
    got: list[str] = []
    with ws_client.connect(url, additional_headers={"Authorization": f"Bearer {KEY}"}, compression=None, max_size=None) as ws:
        got.append(json.loads(ws.recv())["type"])  # session.created
        if send is not None:
            ws.socket.sendall(send)
        else:
            ws.send(json.dumps({"type": "response.create", "response": {"metadata": {"mode": mode}}}))
        try:
            while True:
                got.append(json.loads(ws.recv())["type"])
        except ConnectionClosed as closed:
            return got, closed.rcvd


@pytest_twisted.ensureDeferred
async def test_a_malformed_upgrade_and_an_upgrade_elsewhere_are_refused(reactor: Any, tmp_path: Path, upstream: Any) -> None:
    proxy = start_proxy(reactor, tmp_path, upstream.url)
    port = proxy.service.ports[0].getHost().port
    try:
        bad_key = await in_thread(exchange, port, UPGRADE + b"Sec-WebSocket-Key: c2hvcnQ=\r\n\r\n")
        elsewhere = await in_thread(exchange, port, UPGRADE.replace(b"GET /v1/realtime?model=gpt-realtime", b"POST /v1/chat/completions")
                                    + b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nContent-Length: 2\r\n\r\n{}")
        plain_get = await in_thread(exchange, port, b"GET /v1/realtime HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer k\r\n\r\n")
        await proxy.flushed()
    finally:
        await proxy.service.stopService()
    assert status_of(bad_key) == 400 and b"Sec-WebSocket-Key must be 16 bytes" in bad_key
    assert status_of(elsewhere) == 400 and b"not a WebSocket" in elsewhere
    assert status_of(plain_get) == 400 and b"send an upgrade" in plain_get
    assert not upstream.resource.sockets.upgrades and not upstream.resource.seen
    events = proxy.events()
    assert [e["outcome"] for e in events] == ["rejected"] * 3
    assert {e["endpoint"] for e in events} == {"/v1/realtime", "/v1/chat/completions"}


@pytest.mark.parametrize(("mode", "client_code", "outcome"), [
    ("masked", 1014, "upstream_error"),
    ("huge", 1009, "upstream_error"),
    ("vanish", None, "upstream_unreachable"),
])
@pytest_twisted.ensureDeferred
async def test_a_provider_that_breaks_the_protocol_or_vanishes_ends_the_session(
    reactor: Any, tmp_path: Path, upstream: Any, mode: str, client_code: int | None, outcome: str,
) -> None:
    proxy = start_proxy(reactor, tmp_path, upstream.url)
    try:
        got, close = await in_thread(until_closed, ws_url(proxy), mode)
        await proxy.flushed()
    finally:
        await proxy.service.stopService()
    assert got[:2] == ["session.created", "response.created"]
    assert (close.code if close else None) == client_code
    [event] = proxy.events()  # the response started and never billed: unpriced, never $0
    assert event["outcome"] == outcome and event["priced"] is False and event["cost_usd"] is None


@pytest.mark.parametrize(("frame", "code"), [
    (FrameProtocol(client=False, extensions=[]).send_data("{}"), 1002),  # a client's frame unmasked
    (b"\x81\xff" + struct.pack("!Q", (16 << 20) + 1) + b"\0\0\0\0", 1009),  # over 16 MiB
])
@pytest_twisted.ensureDeferred
async def test_a_client_that_breaks_the_protocol_is_closed(
    reactor: Any, tmp_path: Path, upstream: Any, frame: bytes, code: int,
) -> None:
    proxy = start_proxy(reactor, tmp_path, upstream.url)
    try:
        got, close = await in_thread(until_closed, ws_url(proxy), send=bytes(frame))
        # The proxy still serves sessions.
        assert (await in_thread(realtime_session, proxy.url + "/v1", 1)).count("response.done") == 1
        await proxy.flushed()
    finally:
        await proxy.service.stopService()
    assert close.code == code
    assert len(upstream.resource.sockets.upgrades[0].messages) == 0  # nothing of it went on
    assert upstream.resource.sockets.upgrades[0].closed


def vanish_mid_response(url: str) -> None:
    """A client that asks for a response, sees it start, and drops its connection."""
    with contextlib.suppress(ConnectionClosed, OSError):
        with ws_client.connect(url, additional_headers={"Authorization": f"Bearer {KEY}"}, compression=None) as ws:
            ws.recv()
            ws.send(json.dumps({"type": "response.create", "response": {"metadata": {"mode": "hang"}}}))
            while json.loads(ws.recv())["type"] != "response.created":
                pass
            ws.socket.shutdown(socket.SHUT_RDWR)
            ws.socket.close()


async def events_when(reactor: Any, proxy: Any, count: int) -> list[dict[str, Any]]:
    """The proxy's events once there are C{count} on disk (each turn of the reactor looked at)."""
    for _ in range(500):
        await proxy.flushed()
        if len(proxy.events()) >= count:
            return proxy.events()
        await deferLater(reactor, 0.01, lambda: None)
    raise AssertionError(f"{count} events never came: {proxy.events()}")


@pytest_twisted.ensureDeferred
async def test_a_client_that_vanishes_and_a_session_gone_idle_are_accounted(reactor: Any, tmp_path: Path, upstream: Any) -> None:
    proxy = start_proxy(reactor, tmp_path, upstream.url, idle_timeout=0.3)
    try:
        await in_thread(vanish_mid_response, ws_url(proxy))
        [vanished] = await events_when(reactor, proxy, 1)
        got, close = await in_thread(until_closed, ws_url(proxy), "hang")  # then idle: closed by the proxy
        _, idle = await events_when(reactor, proxy, 2)
    finally:
        await proxy.service.stopService()
    assert vanished["outcome"] == "client_closed" and vanished["priced"] is False
    assert upstream.resource.sockets.upgrades[0].closed
    assert close.code == 1001 and close.reason == "idle for too long"
    assert idle["outcome"] == "upstream_timeout" and idle["priced"] is False


@pytest_twisted.ensureDeferred
async def test_a_stop_ends_open_sessions_with_their_events(reactor: Any, tmp_path: Path, upstream: Any) -> None:
    proxy = start_proxy(reactor, tmp_path, upstream.url, drain_seconds=0.2)
    session = in_thread(until_closed, ws_url(proxy), "hang")
    while not upstream.resource.sockets.upgrades or not upstream.resource.sockets.upgrades[0].messages:
        await deferLater(reactor, 0.01, lambda: None)
    await proxy.service.stopService()
    got, close = await session
    assert got[:2] == ["session.created", "response.created"]
    assert close.code == 1001 and close.reason == "the proxy is stopping"
    [event] = proxy.events()
    assert event["outcome"] == "shutdown" and event["priced"] is False


@pytest_twisted.ensureDeferred
async def test_realtime_over_the_tls_listener_and_azure(reactor: Any, tmp_path: Path, upstream: Any) -> None:
    bundle, cert, key, _, _ = ca_and_server(tmp_path, "socket CA")
    proxy = start_proxy(reactor, tmp_path / "data", upstream.url, azure_url=upstream.url, tls_cert=cert, tls_key=key,
                        listen_tls=("tcp:0:interface=127.0.0.1",))
    port = proxy.service.ports[1].getHost().port
    context = ssl.create_default_context(cafile=str(bundle))

    def openai_session() -> list[str]:
        client = openai.OpenAI(base_url=f"https://localhost:{port}/v1", api_key=KEY, max_retries=0)
        with client.realtime.connect(model="gpt-realtime", websocket_connection_options={"ssl": context}) as connection:
            connection.response.create()
            return [event.type for event in _until_done(connection)]

    def azure_session() -> list[str]:
        client = openai.AzureOpenAI(azure_endpoint=f"https://localhost:{port}/azure", api_key=KEY,
                                    api_version="2025-04-01-preview", max_retries=0)
        with client.realtime.connect(model="dep-voice", websocket_connection_options={"ssl": context}) as connection:
            connection.response.create()
            return [event.type for event in _until_done(connection)]

    try:
        assert (await in_thread(openai_session))[-1] == "response.done"
        assert (await in_thread(azure_session))[-1] == "response.done"
        await proxy.flushed()
    finally:
        await proxy.service.stopService()
    plain, azure = proxy.events()
    assert plain["provider"] == "openai" and float(plain["cost_usd"]) == float(REALTIME_COST)
    assert azure["provider"] == "azure" and azure["endpoint"] == "/openai/realtime" and azure["model"] == "gpt-realtime"
    assert upstream.resource.sockets.upgrades[1].headers[b"api-key"] == [KEY.encode()]
    assert upstream.resource.sockets.upgrades[1].path == "/openai/realtime"
    assert KEY not in "".join(p.read_text(errors="replace") for p in (tmp_path / "data").rglob("*") if p.is_file())


def _until_done(connection: Any) -> Any:
    for event in connection:
        yield event
        if event.type in ("response.done", "error"):
            return


@pytest_twisted.ensureDeferred
async def test_a_client_gone_before_the_upgrade_is_answered_ends_it_upstream(reactor: Any, tmp_path: Path) -> None:
    """A provider that never answers the upgrade, and a client that leaves meanwhile: the
    provider's connection is closed, not left waiting, and the upgrade has its event."""
    connected: list[Any] = []

    class Silent(Protocol):
        def connectionMade(self) -> None:
            self.gone: Deferred[None] = Deferred()
            connected.append(self)

        def connectionLost(self, reason: Any = None) -> None:
            self.gone.callback(None)

    silent = reactor.listenTCP(0, Factory.forProtocol(Silent), interface="127.0.0.1")
    proxy = start_proxy(reactor, tmp_path, f"http://127.0.0.1:{silent.getHost().port}")
    client = socket.create_connection(("127.0.0.1", proxy.service.ports[0].getHost().port))
    try:
        client.sendall(UPGRADE + b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")
        while not connected:  # the proxy has sent the upgrade on, and waits for its answer
            await deferLater(reactor, 0.01, lambda: None)
        client.close()
        await connected[0].gone
        [event] = await events_when(reactor, proxy, 1)
    finally:
        client.close()
        await proxy.service.stopService()
        await silent.stopListening()
    assert event["outcome"] == "client_closed" and event["endpoint"] == "/v1/realtime"
