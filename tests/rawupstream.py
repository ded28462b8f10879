"""
A misbehaving upstream at the TCP level: it reads one HTTP/1.1 request, then answers as
the request's model names, including in ways no HTTP library would let it.
"""

from __future__ import annotations

import json
import re
from typing import Any

from twisted.internet.protocol import Factory, Protocol

from tests.fakes import CHAT_USAGE, chat_stream

SSE_HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def _json(code: bytes, body: bytes) -> bytes:
    return b"HTTP/1.1 " + code + b"\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body) + body


RATE_LIMITED = b'{"error":{"message":"slow down","type":"requests","code":"rate_limit_exceeded"}}  \n'
OVERLOADED = b'{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}'


class MisbehavingUpstream(Protocol):
    def __init__(self) -> None:
        self.buffer = b""

    def dataReceived(self, data: bytes) -> None:
        self.buffer += data
        head, sep, body = self.buffer.partition(b"\r\n\r\n")
        if not sep:
            return
        length = int(re.search(rb"(?i)content-length: *(\d+)", head).group(1))
        if len(body) < length:
            return
        self.buffer = b""
        self.factory.seen.append(head)  # type: ignore[attr-defined]
        model = json.loads(body[:length])["model"]
        getattr(self, "answer_" + model.replace("-", "_"))()

    def answer_reset_mid_stream(self) -> None:
        events = chat_stream("gpt-4o", include_usage=True)
        self.transport.write(SSE_HEAD + chunk(events[0]) + chunk(events[1]))
        # Once those bytes are read: a reset drops whatever the receiver has not read.
        from twisted.internet import reactor

        reactor.callLater(0.05, self.transport.abortConnection)

    def answer_garbage_sse(self) -> None:
        junk = [b"\x00\xff\xfe garbage \r\r\n", b"data: {not json\n\n", b'data: {"usage": {"prompt_tokens": \n\n', b"::::\n\n"]
        self.transport.write(SSE_HEAD + b"".join(chunk(j) for j in junk) + b"0\r\n\r\n")

    def answer_no_headers(self) -> None:
        pass  # never answers

    def answer_silent_after_headers(self) -> None:
        self.transport.write(SSE_HEAD + chunk(chat_stream("gpt-4o", include_usage=True)[0]))

    def answer_short_body(self) -> None:
        self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"id\":\"cut\"")
        self.transport.loseConnection()

    def answer_bad_status_line(self) -> None:
        self.transport.write(b"HTTP/1.1 two hundred OK\r\nContent-Length: 2\r\n\r\n{}")

    def answer_rate_limited(self) -> None:
        self.transport.write(_json(b"429 Too Many Requests", RATE_LIMITED))

    def answer_overloaded(self) -> None:
        self.transport.write(_json(b"529 Site Overloaded", OVERLOADED))

    def answer_fine(self) -> None:
        body = json.dumps({"id": "c", "object": "chat.completion", "model": "gpt-4o-2024-08-06", "choices": [], "usage": CHAT_USAGE}).encode()
        self.transport.write(_json(b"200 OK", body))


class MisbehavingFactory(Factory):
    protocol = MisbehavingUpstream

    def __init__(self) -> None:
        self.seen: list[bytes] = []

    def buildProtocol(self, addr: Any) -> Protocol:
        protocol = super().buildProtocol(addr)
        return protocol
