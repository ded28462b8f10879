"""
Fault suite: hostile request framing over raw sockets. None of it reaches the upstream,
each gets a 4xx and a closed connection, and the proxy answers /healthz after every one.
"""

from __future__ import annotations

from typing import Any

import pytest_twisted

from tests import rawhttp
from tests.test_sdk import in_thread

BODY = b'{"model":"gpt-4o","messages":[]}'
CL = b"Content-Length: %d\r\n" % len(BODY)
CHAT = b"POST /v1/chat/completions HTTP/1.1\r\nHost: p\r\n"

HOSTILE = {
    "content-length with transfer-encoding": CHAT + b"Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "two content-lengths": CHAT + b"Content-Length: 3\r\n" + CL + b"\r\n" + BODY,
    "two equal content-lengths": CHAT + CL + CL + b"\r\n" + BODY,
    "negative content-length": CHAT + b"Content-Length: -1\r\n\r\n" + BODY,
    "non-numeric content-length": CHAT + b"Content-Length: 3a\r\n\r\n" + BODY,
    "signed content-length": CHAT + b"Content-Length: +%d\r\n\r\n" % len(BODY) + BODY,
    "obs-fold": CHAT + b"X-ModelTrack-Team: a\r\n b\r\n" + CL + b"\r\n" + BODY,
    "transfer-encoding identity": CHAT + b"Transfer-Encoding: identity\r\n" + CL + b"\r\n" + BODY,
    "transfer-encoding gzip, chunked": CHAT + b"Transfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
    "space before the colon": CHAT + b"Transfer-Encoding : chunked\r\n\r\n0\r\n\r\n",
    "HTTP/1.0 with transfer-encoding": b"POST /v1/chat/completions HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "no Host": b"POST /v1/chat/completions HTTP/1.1\r\n" + CL + b"\r\n" + BODY,
    "two Hosts": CHAT + b"Host: q\r\n" + CL + b"\r\n" + BODY,
    "a bad chunk size": CHAT + b"Transfer-Encoding: chunked\r\n\r\nzz\r\n\r\n",
    "a space in a header name": CHAT + b"X Bad: 1\r\n" + CL + b"\r\n" + BODY,
    "a huge header": CHAT + b"X-Big: " + b"a" * 70_000 + b"\r\n" + CL + b"\r\n" + BODY,
    "many headers": CHAT + b"X-A: b\r\n" * 300 + CL + b"\r\n" + BODY,
    "absolute-form target": b"POST http://evil.example/v1/chat/completions HTTP/1.1\r\nHost: evil.example\r\n" + CL + b"\r\n" + BODY,
    "CONNECT": b"CONNECT evil.example:443 HTTP/1.1\r\nHost: evil.example:443\r\n\r\n",
    "a target with a control byte": b"POST /v1/chat/completions?x=\x01 HTTP/1.1\r\nHost: p\r\n" + CL + b"\r\n" + BODY,
    "pipelining with a smuggled request": CHAT + b"Transfer-Encoding: chunked\r\nContent-Length: 6\r\n\r\n0\r\n\r\n"
    b"POST /v1/chat/completions HTTP/1.1\r\nHost: p\r\n" + CL + b"\r\n" + BODY,
    "HTTP/2 preface": b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
    "bare LF line ends": b"POST /v1/chat/completions HTTP/1.1\nHost: p\n" + CL.replace(b"\r", b"") + b"\n" + BODY,
}


@pytest_twisted.ensureDeferred
async def test_hostile_framing_is_refused_and_the_proxy_serves_on(proxy: Any, upstream: Any) -> None:
    port = proxy.service.ports[0].getHost().port
    for name, data in HOSTILE.items():
        answer = await in_thread(rawhttp.exchange, port, data)
        assert 400 <= rawhttp.status_of(answer) < 500, (name, answer[:80])
        # One answer, then the connection closed: nothing after it was read as a request.
        assert answer.count(b"HTTP/1.") == 1, name
        assert upstream.resource.seen == [], name
        health = await in_thread(rawhttp.exchange, port, b"GET /healthz HTTP/1.1\r\nHost: p\r\nConnection: close\r\n\r\n")
        assert rawhttp.status_of(health) == 200, name
