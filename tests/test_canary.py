"""
Fault suite: keys never reach the disk, the log, the metrics, the admin API, an OpenTelemetry
export or an error body. Seven canary keys, one in every place a key can travel (Authorization: Bearer,
x-api-key, api-key, x-goog-api-key, ?key=, ?api-key=, a WebSocket subprotocol), go together on every call, to
every provider (OpenAI, Anthropic, Azure, a compatible upstream, Bedrock, Gemini, Vertex,
relayed routes, an image edit's form, Veo, an upload streamed past the body cap), and
calls end every way a call can end. Then every byte under the data dirs (events, the
SQLite index, state, snapshots), every log line in both formats, /metrics, /stats, the
admin API and every answer received are searched for each canary.
"""

from __future__ import annotations

import io
import json
import socket
from pathlib import Path
from typing import Any

import pytest_twisted
from twisted.internet import ssl
from twisted.logger import globalLogPublisher

from modeltrack.observe.logs import observer
from tests import rawhttp
from tests.conftest import QuietSite, start_proxy
from tests.fake_bedrock import FakeBedrock
from tests.fake_google import FakeGoogle
from tests.fakes import FakeUpstream
from tests.test_otel import Collector
from tests.test_sdk import in_thread
from tests.test_upstream_tls import make_ca, make_server

CANARIES = {
    "bearer": "sk-canary-bearer-1a2b3c",
    "x-api-key": "sk-ant-canary-xapikey-4d5e6f",
    "api-key": "canary-azure-apikey-7a8b9c",
    "x-goog-api-key": "canary-goog-apikey-0d1e2f",
    "?key=": "canary-query-key-3a4b5c",
    "?api-key=": "canary-query-apikey-6d7e8f",
    "subprotocol": "sk-canary-subprotocol-9f8e7d",  # a browser's WebSocket key
}
#: Every canary header at once: two credentials for most dialects, refused (400).
KEY_HEADERS = (
    b"Authorization: Bearer %s\r\nx-api-key: %s\r\napi-key: %s\r\nx-goog-api-key: %s\r\n"
    % tuple(CANARIES[name].encode() for name in ("bearer", "x-api-key", "api-key", "x-goog-api-key"))
)
QUERY = b"?key=%s&api-key=%s" % (CANARIES["?key="].encode(), CANARIES["?api-key="].encode())
#: One credential per call (more is refused), in the place the path's dialect reads it;
#: the other canaries ride along where that dialect reads no key. Across the calls, each
#: canary travels as a credential and as a bystander.
_BY_DIALECT = (
    (b"/v1/messages", ("x-api-key", "api-key", "x-goog-api-key")),
    (b"/azure/", ("api-key", "x-api-key", "x-goog-api-key")),
    (b"/gemini/", ("x-goog-api-key", "bearer", "x-api-key", "api-key")),
    (b"/vertex/", ("bearer", "x-api-key", "api-key")),
    (b"", ("bearer", "api-key", "x-goog-api-key")),  # OpenAI's dialect, Bedrock's, an upstream's
)
_HEADER = {"bearer": b"Authorization: Bearer %s", "x-api-key": b"x-api-key: %s", "api-key": b"api-key: %s", "x-goog-api-key": b"x-goog-api-key: %s"}


def key_headers(path: bytes) -> bytes:
    names = next(names for prefix, names in _BY_DIALECT if path.startswith(prefix))
    return b"".join(_HEADER[name] % CANARIES[name].encode() + b"\r\n" for name in names)


def request(path: bytes, body: Any, team: bytes = b"ml", query: bytes | None = None, headers: bytes | None = None) -> bytes:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    if query is None:  # Gemini reads ?key=: only its canary for ?api-key= there
        query = b"?api-key=%s" % CANARIES["?api-key="].encode() if path.startswith(b"/gemini/") else QUERY
    keys = key_headers(path) if headers is None else headers
    return rawhttp.post(path + query, data, keys + b"X-ModelTrack-Team: " + team + b"\r\n")


def chat(model: str, **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": "hi"}], **extra}


def form_request(path: bytes) -> bytes:
    """A multipart form (an image edit) with every canary where its dialect reads keys, and in the query."""
    body = (
        b'--canaryform\r\nContent-Disposition: form-data; name="model"\r\n\r\ngpt-image-1.5\r\n'
        b'--canaryform\r\nContent-Disposition: form-data; name="prompt"\r\n\r\na hat\r\n'
        b'--canaryform\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\nContent-Type: image/png\r\n\r\n'
        b"\x89PNG\r\n\x1a\n\r\n--canaryform--\r\n"
    )
    return (
        b"POST " + path + QUERY + b" HTTP/1.1\r\nHost: proxy\r\nContent-Type: multipart/form-data; boundary=canaryform\r\n"
        + key_headers(path) + b"X-ModelTrack-Team: ml\r\nContent-Length: %d\r\nConnection: close\r\n\r\n" % len(body) + body
    )


def socket_sessions(port: int) -> list[bytes]:
    """
    Realtime sessions with the key in each place one travels over a WebSocket (a
    header, a browser's subprotocol, Azure's query), and one refused by its budget:
    every message, close and refusal received.
    """
    import websockets.sync.client as ws_client
    from websockets.exceptions import ConnectionClosed, InvalidStatus

    bearer = {"Authorization": f"Bearer {CANARIES['bearer']}"}
    sessions = [
        ("/v1/realtime?model=gpt-realtime", {**bearer, "X-ModelTrack-Team": "ml"}, None),
        ("/v1/realtime?model=gpt-realtime", {"X-ModelTrack-Team": "ml"},
         ["realtime", "openai-insecure-api-key." + CANARIES["subprotocol"]]),
        ("/azure/openai/realtime?api-version=2025-04-01-preview&deployment=dep&api-key=" + CANARIES["?api-key="],
         {"X-ModelTrack-Team": "ml"}, None),
        ("/v1/realtime?model=gpt-realtime", {**bearer, "X-ModelTrack-Team": "broke"}, None),
    ]
    received: list[bytes] = []
    for path, headers, subprotocols in sessions:
        try:
            with ws_client.connect(f"ws://127.0.0.1:{port}{path}", additional_headers=headers,
                                   subprotocols=subprotocols, compression=None) as ws:  # type: ignore[arg-type]
                ws.send(json.dumps({"type": "response.create", "response": {"max_output_tokens": 50}}))
                while True:
                    message = ws.recv()
                    received.append(message.encode() if isinstance(message, str) else message)
                    if '"response.done"' in str(message):
                        break
        except ConnectionClosed as closed:
            received.append(repr(closed).encode())
        except InvalidStatus as refused:
            received.append(refused.response.body or b"")
            assert refused.response.status_code == 429
    return received


def cut_after_first_bytes(port: int, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(data)
        return s.recv(65536)  # then gone: client_closed


@pytest_twisted.ensureDeferred
async def test_no_key_reaches_any_output(reactor: Any, tmp_path: Path, upstream: Any) -> None:
    logs = {"text": io.StringIO(), "json": io.StringIO()}
    observers = [observer(name, out) for name, out in logs.items()]
    for each in observers:
        globalLogPublisher.addObserver(each)
    # An upstream whose certificate nobody trusts, for a TLS refusal.
    rogue_key, rogue_cert = make_ca("untrusted CA")
    options = ssl.PrivateCertificate.loadPEM(make_server(rogue_key, rogue_cert, "localhost")).options()
    tls_port = reactor.listenSSL(0, QuietSite(FakeUpstream()), options, interface="127.0.0.1")
    bedrock_port = reactor.listenTCP(0, QuietSite(FakeBedrock()), interface="127.0.0.1")
    google_port = reactor.listenTCP(0, QuietSite(FakeGoogle()), interface="127.0.0.1")
    collector = Collector()
    collector_port = reactor.listenTCP(0, QuietSite(collector), interface="127.0.0.1")
    bedrock_url = f"http://127.0.0.1:{bedrock_port.getHost().port}"
    google_url = f"http://127.0.0.1:{google_port.getHost().port}"
    data = tmp_path / "data"
    data.mkdir()
    (data / "budgets.json").write_text(json.dumps({"budgets": [{"team": "broke", "app": "", "monthly_limit": 0.000001, "action": "block"}]}))
    proxy = start_proxy(
        reactor, data, upstream.url, cache=True, headers_timeout=0.5, max_body=4096,
        admin_listen="tcp:0:interface=127.0.0.1", drain_seconds=0.2,
        azure_url=upstream.url, upstreams=(("groq", upstream.url),),
        bedrock_url=bedrock_url, gemini_url=google_url, vertex_url=google_url,
        otlp_endpoint=f"http://127.0.0.1:{collector_port.getHost().port}",
    )
    tls_proxy = start_proxy(reactor, tmp_path / "tls", f"https://localhost:{tls_port.getHost().port}")
    answers: list[bytes] = []
    try:
        port = proxy.service.ports[0].getHost().port
        calls = [
            (b"/v1/chat/completions", chat("gpt-4o")),  # ok
            (b"/v1/chat/completions", chat("gpt-4o", stream=True)),  # ok, streamed
            (b"/v1/messages", {**chat("claude-sonnet-4-5"), "max_tokens": 5, "temperature": 0}),  # ok, cached
            (b"/v1/messages", {**chat("claude-sonnet-4-5"), "max_tokens": 5, "temperature": 0}),  # cache hit
            (b"/v1/nowhere", chat("gpt-4o")),  # unknown route
            (b"/v1/chat/completions", b"{not json"),  # bad JSON
            (b"/v1/chat/completions", chat("gpt-4o", padding="x" * 5000)),  # 413
            (b"/v1/chat/completions", chat("fail-429")),  # upstream 4xx
            (b"/v1/chat/completions", chat("fail-500")),  # upstream 5xx
            (b"/v1/chat/completions", chat("reset-stream", stream=True)),  # reset mid-stream
            (b"/v1/chat/completions", chat("hang")),  # headers timeout
            (b"/azure/openai/deployments/my-gpt/chat/completions", chat("gpt-4o", stream=True)),  # Azure
            (b"/azure/openai/v1/chat/completions", chat("fail-500")),  # Azure v1, upstream 5xx
            (b"/groq/v1/chat/completions", chat("llama-3.3-70b-versatile")),  # a compatible upstream
            (b"/v1/files", chat("gpt-4o")),  # relayed, unmetered
            (b"/v1/images/generations", {"model": "gpt-image-1.5", "prompt": "a fox", "stream": True}),  # an image
            (b"/v1/fine_tuning/jobs", {"model": "gpt-4o-mini", "training_file": "file-1"}),  # billable, unmetered
            (b"/bedrock/model/global.anthropic.claude-sonnet-4-5-20250929-v1:0/invoke-with-response-stream",
             {"anthropic_version": "bedrock-2023-05-31", "max_tokens": 5, "messages": []}),  # Bedrock, event stream
            (b"/bedrock/model/throttled/converse-stream", {"messages": []}),  # an exception frame
            (b"/bedrock/model/fail-400/converse", {"messages": []}),  # Bedrock's error
            (b"/gemini/v1beta/models/gemini-2.5-flash:generateContent", {"contents": []}),  # Gemini
            (b"/vertex/v1/projects/p/locations/us-east5/publishers/anthropic/models/claude-sonnet-4-5@20250929:rawPredict",
             {"anthropic_version": "vertex-2023-10-16", "max_tokens": 5, "messages": []}),  # Claude on Vertex
        ]
        for path, body in calls:
            answers.append(await in_thread(rawhttp.exchange, port, request(path, body)))
        answers.append(await in_thread(rawhttp.exchange, port, request(b"/v1/chat/completions", chat("gpt-4o"), team=b"broke")))
        # An image edit (a form), a Veo operation, and an upload large enough to stream past the body cap.
        answers.append(await in_thread(rawhttp.exchange, port, form_request(b"/v1/images/edits")))
        veo = b"/gemini/v1beta/models/veo-3.0-generate-001:predictLongRunning"
        answers.append(await in_thread(rawhttp.exchange, port, request(veo, {"instances": [{"prompt": "a fox"}]})))
        answers.append(await in_thread(rawhttp.exchange, port, request(b"/v1/files", b"\0" * (2 << 20))))
        gemini_stream = b"/gemini/v1beta/models/gemini-2.5-flash:streamGenerateContent"
        # Gemini's key in its query, as the only credential.
        gemini_query = b"?key=%s&alt=sse" % CANARIES["?key="].encode()
        answers.append(await in_thread(rawhttp.exchange, port, request(gemini_stream, {"contents": []}, query=gemini_query, headers=b"")))
        # Every canary at once: more than one credential, refused before anything is forwarded.
        ambiguous = await in_thread(rawhttp.exchange, port, request(b"/v1/messages", chat("claude-sonnet-4-5"), headers=KEY_HEADERS))
        assert rawhttp.status_of(ambiguous) == 400 and b"ambiguous_credentials" in ambiguous
        answers.append(ambiguous)
        target = b"/v1/chat/completions" + QUERY + b"&x=\x7f"  # invalid target
        answers.append(await in_thread(rawhttp.exchange, port, request(target, chat("gpt-4o"), query=b"")))
        answers.append(await in_thread(cut_after_first_bytes, port, request(b"/v1/chat/completions", chat("hang-body", stream=True))))
        # Batches: looked up, results fetched (each result line an event), through both APIs.
        for path, headers in (
            (b"/openai/v1/batches/batch_1", b"Authorization: Bearer %s\r\n" % CANARIES["bearer"].encode()),
            (b"/openai/v1/files/file-out-batch_1/content", b"Authorization: Bearer %s\r\n" % CANARIES["bearer"].encode()),
            (b"/v1/messages/batches/msgbatch_1", key_headers(b"/v1/messages")),
            (b"/v1/messages/batches/msgbatch_1/results", key_headers(b"/v1/messages")),
        ):
            get = b"GET " + path + QUERY + b" HTTP/1.1\r\nHost: p\r\nConnection: close\r\n" + headers + b"\r\n"
            answers.append(await in_thread(rawhttp.exchange, port, get))
        await proxy.service.resource.batches.wait()
        answers += await in_thread(socket_sessions, port)
        tls = tls_proxy.service.ports[0].getHost().port
        answers.append(await in_thread(rawhttp.exchange, tls, request(b"/v1/messages", {**chat("claude-sonnet-4-5"), "max_tokens": 5})))
        admin = proxy.admin_url.encode().rsplit(b":", 1)[1]
        for path in (
            b"/metrics", b"/api/summary", b"/api/spend?by=team,key,client", b"/api/sessions", b"/api/budgets", b"/api/keys",
            b"/api/events?limit=1000",
        ):
            answers.append(await in_thread(rawhttp.exchange, int(admin), b"GET " + path + b" HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"))
        for path in (b"/stats", b"/budgets", b"/cache/stats"):
            answers.append(await in_thread(rawhttp.exchange, port, b"GET " + path + b" HTTP/1.1\r\nHost: p\r\nConnection: close\r\n\r\n"))
        await proxy.service.resource.drain(5)
        # A call still running at a stop that cannot wait: shutdown.
        hanging = in_thread(rawhttp.exchange, port, request(b"/v1/chat/completions", chat("hang-body", stream=True)))
        while not proxy.service.resource.in_flight:
            await in_thread(lambda: None)
    finally:
        await proxy.service.stopService()
        await tls_proxy.service.stopService()
        await tls_port.stopListening()
        await bedrock_port.stopListening()
        await google_port.stopListening()
        await collector_port.stopListening()
        for each in observers:
            globalLogPublisher.removeObserver(each)
    answers.append(await hanging)
    outcomes = {e["outcome"] for e in proxy.events() + tls_proxy.events()}
    assert outcomes >= {
        "ok", "rejected", "upstream_error", "upstream_unreachable", "upstream_timeout",
        "client_closed", "upstream_tls_error", "shutdown",
    }, outcomes
    assert {"openai", "anthropic", "azure", "groq", "bedrock", "google", "vertex"} <= {e["provider"] for e in proxy.events()}
    assert {"stream_error", "upstream_error"} <= {e["outcome"] for e in proxy.events() if e["provider"] == "bedrock"}
    assert any(e["cache_hit"] for e in proxy.events())
    assert {e["custom_id"] for e in proxy.events() if e["batch"]} == {"q-1", "q-2", "m-1", "m-2"}
    assert collector.spans and collector.metrics  # the export ran, and is searched below
    assert any(e["budget_status"] == "blocked" for e in proxy.events())
    assert any(seen.path.startswith(b"/v1/files?") and seen.size == 2 << 20 for seen in upstream.resource.seen)  # streamed
    endpoints = {e["endpoint"]: e for e in proxy.events()}
    assert endpoints["/v1/images/edits"]["priced"] and endpoints["/v1beta/models/{model}:predictLongRunning"]["outcome"] == "ok"
    realtime = [e for e in proxy.events() if e["endpoint"] in ("/v1/realtime", "/openai/realtime")]
    assert sorted(e["outcome"] for e in realtime) == ["ok"] * 3 + ["rejected"]
    assert len({e["key_id"] for e in realtime}) == 3  # the bearer twice, the subprotocol's, Azure's query's
    assert [rawhttp.status_of(a) for a in answers[4:8]] == [404, 400, 413, 429]
    assert (data / "modeltrack.db").exists() and (data / "state" / "cache.msgpack").exists()
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    searched = {
        **{f"file {p}": p.read_bytes() for p in files},
        **{f"{name} log": out.getvalue().encode() for name, out in logs.items()},
        **{f"answer {i}": answer for i, answer in enumerate(answers)},
        **{f"OTLP export {i}": body for i, body in enumerate(collector.bodies)},
    }
    assert "POST /v1/chat/completions" in logs["text"].getvalue(), "the access log was not captured"
    for where, content in searched.items():
        for place, canary in CANARIES.items():
            if canary.encode() in content:
                at = content.index(canary.encode())
                print(where, content[max(0, at - 300): at + 50])
            assert canary.encode() not in content, f"the {place} key is in {where}"
