"""
The WebSocket wire, as far as a relay needs it: whether an upgrade request is one
(RFC 6455 4.2.1), where the caller's key rides, the upgrade sent upstream, where each
frame ends (its header says; RFC 6455 5.2), and the upstream connection until its
answer to the upgrade has come. The frames' contents are read with wsproto, beside the
relay (L{modeltrack.web.socket_session}).
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Callable
from typing import Any

from twisted.internet.protocol import Protocol, connectionDone
from twisted.python.failure import Failure
from twisted.web.http_headers import Headers
from wsproto.frame_protocol import FrameProtocol, Opcode, ParseFailed

from modeltrack.web.chunked import BadResponse, ChunkedBody
from modeltrack.web.upstream import for_upstream

#: The largest frame relayed either way (a Realtime event with seconds of audio in it
#: is a few MiB); past it the session is closed with 1009.
MAX_FRAME = 16 << 20
#: The subprotocol a browser carries its key in (it cannot set headers).
KEY_SUBPROTOCOL = b"openai-insecure-api-key."
#: The most of an upgrade's answer read when it is not an upgrade (an error body).
MAX_REFUSAL = 1 << 20
MAX_HEAD = 64 * 1024

# RFC 6455 7.4.1 close codes.
GOING_AWAY = 1001
PROTOCOL_ERROR = 1002
POLICY_VIOLATION = 1008
TOO_BIG = 1009
BAD_GATEWAY = 1014


def _tokens(headers: Headers, name: bytes) -> list[bytes]:
    return [token.strip().lower() for value in headers.getRawHeaders(name, ()) for token in value.split(b",")]


def upgrade_problem(method: bytes, headers: Headers) -> str | None:
    """
    Why a request is not a WebSocket upgrade a server may accept (RFC 6455 4.2.1),
    or L{None}: a GET, C{Upgrade: websocket}, C{Connection: upgrade}, version 13 and
    a key of 16 bytes in base64, one of each.
    """
    if method != b"GET":
        return "a WebSocket upgrade is a GET"
    if _tokens(headers, b"upgrade") != [b"websocket"] or b"upgrade" not in _tokens(headers, b"connection"):
        return "this route is a WebSocket: send an upgrade (Upgrade: websocket, Connection: Upgrade)"
    if headers.getRawHeaders(b"sec-websocket-version") != [b"13"]:
        return "Sec-WebSocket-Version must be 13"
    keys = headers.getRawHeaders(b"sec-websocket-key") or []
    try:
        if len(keys) != 1 or len(base64.b64decode(keys[0].strip(), validate=True)) != 16:
            raise ValueError(keys)
    except (ValueError, binascii.Error):
        return "Sec-WebSocket-Key must be 16 bytes in base64"
    return None


def subprotocol_key(headers: Headers) -> bytes | None:
    """The key a browser sent as a subprotocol (C{openai-insecure-api-key.KEY}), if any."""
    for value in headers.getRawHeaders(b"sec-websocket-protocol", ()):
        for token in value.split(b","):
            token = token.strip()
            if token.startswith(KEY_SUBPROTOCOL):
                return token[len(KEY_SUBPROTOCOL):]
    return None


def upgrade_head(target: bytes, host: bytes, headers: Headers) -> bytes:
    """
    The upgrade sent upstream: the client's headers as for any call (its key and
    subprotocols, C{OpenAI-Beta} byte for byte), the upgrade's own, and no extension
    offered: compressed frames could not be read beside the relay.
    """
    for_upstream(headers)
    headers.removeHeader(b"sec-websocket-extensions")
    headers.removeHeader(b"accept-encoding")
    lines = [b"GET %s HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" % (target, host)]
    for name, values in headers.getAllRawHeaders():
        lines.extend(name + b": " + value + b"\r\n" for value in values)
    lines.append(b"\r\n")
    return b"".join(lines)


class FrameTooLarge(Exception):
    """
    A frame's header announced more than L{MAX_FRAME} bytes; C{ends}: where the
    frames before it ended.
    """

    def __init__(self, ends: list[int]) -> None:
        super().__init__()
        self.ends = ends


class FrameSplitter:
    """
    Where each frame of a byte stream ends, from the length its header gives; the
    payload itself is skipped. (wsproto reads the frames; this only says where the
    relay may cut the stream.)
    """

    def __init__(self, limit: int = MAX_FRAME) -> None:
        self._limit = limit
        self._head = b""
        self._left = 0  # payload bytes of the current frame still to come

    def feed(self, data: bytes) -> list[int]:
        """The offsets in C{data} just past each frame that ends in it."""
        ends: list[int] = []
        at, size = 0, len(data)
        while at < size:
            if self._left:
                step = min(self._left, size - at)
                at += step
                self._left -= step
                if not self._left:
                    ends.append(at)
                continue
            head = self._head + data[at:at + 14]
            if len(head) < 2:
                self._head = head
                break
            length = head[1] & 0x7F
            head_size = 2 + (2 if length == 126 else 8 if length == 127 else 0) + (4 if head[1] & 0x80 else 0)
            if len(head) < head_size:
                self._head = head
                break
            if length == 126:
                length = int.from_bytes(head[2:4], "big")
            elif length == 127:
                length = int.from_bytes(head[2:10], "big")
            if length > self._limit:
                raise FrameTooLarge(ends)
            at += head_size - len(self._head)
            self._head = b""
            self._left = length
            if not length:
                ends.append(at)
        return ends


#: The type of an event, where a message's first bytes name it (both APIs put it first).
_TYPE = re.compile(r'"type"\s*:\s*"([A-Za-z0-9_.]{1,80})"')
_HEAD = 512


def event_type(text: str) -> str | None:
    """The type a JSON event's first bytes name, if they do."""
    found = _TYPE.search(text[:_HEAD])
    return found.group(1) if found else None


class ServerReader:
    """
    The server's side of a session, read with wsproto as its bytes are relayed: the
    text of each message whose type C{wanted} says is read (or whose first bytes name
    none); every other message (an audio delta: most of the bytes) is skipped.
    L{FrameTooLarge} or wsproto's C{ParseFailed} for a stream a server must not send.
    """

    def __init__(self, wanted: Callable[[bytes], bool]) -> None:
        self._wanted = wanted
        self._frames = FrameSplitter()
        self._reader = FrameProtocol(client=True, extensions=[])
        self._message: list[str] | None = None
        self._in_message = False
        self._decided = False  # whether the message under way is read

    def feed(self, data: bytes) -> tuple[list[str], int, int | None]:
        """
        The texts of the wanted messages C{data} ends, how many of its bytes may be
        relayed (all, unless a frame in it is one a server must not send: then those
        before it) and the close code that frame calls for, if any.
        """
        texts: list[str] = []
        problem = None
        try:
            ends = self._frames.feed(data)
        except FrameTooLarge as e:
            ends, problem = e.ends, TOO_BIG
            data = data[: ends[-1] if ends else 0]  # the frames before it are read and relayed
        self._reader.receive_bytes(data)
        finished = 0
        try:
            for frame in self._reader.received_frames():
                finished += frame.frame_finished
                if not frame.opcode.iscontrol():
                    self._read(frame, texts)
        except ParseFailed:
            return texts, ends[finished - 1] if finished else 0, BAD_GATEWAY
        return texts, len(data), problem

    def _read(self, frame: Any, texts: list[str]) -> None:
        # (wsproto gives every piece of a message its first frame's opcode.)
        payload: Any = frame.payload  # a text message's pieces are str (wsproto decodes them)
        if not self._in_message:
            self._in_message, self._decided = True, frame.opcode is not Opcode.TEXT
            self._message = None if self._decided else []
        if self._message is not None:
            self._message.append(payload)
            if not self._decided:
                head = "".join(self._message)[:_HEAD]
                if len(head) == _HEAD or frame.message_finished:
                    # Its first bytes are here: a type the meter reads, or none named.
                    self._decided = True
                    kind = event_type(head)
                    if kind is not None and not self._wanted(kind.encode()):
                        self._message = None
        if frame.message_finished:
            self._in_message = False
            if self._message is not None:
                texts.append("".join(self._message))
                self._message = None


class ClientReader:
    """
    The client's side of a session, cut into whole frames for the relay to send
    (or hold), each with the text of the message it ends, if it ends one. wsproto
    reads them: an unmasked frame is C{ParseFailed}, as RFC 6455 5.1 says.
    """

    def __init__(self) -> None:
        self._frames = FrameSplitter()
        self._reader = FrameProtocol(client=False, extensions=[])
        self._partial = bytearray()
        self._text: list[str] = []
        #: The client has sent its close frame (the session ends by its word).
        self.closing = False

    def feed(self, data: bytes) -> list[tuple[bytes, str | None]]:
        ends = iter(self._frames.feed(data))
        self._reader.receive_bytes(data)
        whole: list[tuple[bytes, str | None]] = []
        start = 0
        for frame in self._reader.received_frames():
            text = None
            self.closing = self.closing or frame.opcode is Opcode.CLOSE
            if frame.opcode is Opcode.TEXT:  # every piece of a text message says TEXT
                payload: Any = frame.payload  # str
                self._text.append(payload)
                if frame.message_finished:
                    text, self._text = "".join(self._text), []
            if frame.frame_finished:
                end = next(ends)
                self._partial += data[start:end]
                whole.append((bytes(self._partial), text))
                self._partial = bytearray()
                start = end
        self._partial += data[start:]
        return whole


class UpgradeAnswer:
    """
    The upstream's answer to an upgrade: C{status}, its C{head} as sent (relayed
    as is when it is 101), and for any other status its headers and body.
    """

    def __init__(self, status: int, head: bytes, headers: list[tuple[bytes, bytes]], problem: str | None = None) -> None:
        self.status = status
        self.head = head
        self.headers = headers
        self.body = b""
        #: Why the answer could not be read (then C{status} is 502), if it could not.
        self.problem = problem

    def header(self, name: bytes) -> bytes | None:
        found = [value for key, value in self.headers if key == name]
        return found[-1] if found else None


class UpstreamSocket(Protocol):
    """
    The connection to the provider for one session: it sends the upgrade, reads the
    answer's head, and then hands every byte to C{relay} (a 101) or reads the error
    body, up to L{MAX_REFUSAL} bytes.

    @ivar answered: called once with the answer (and any bytes after a 101's head).
    @ivar relay: called with each read once upgraded.
    @ivar lost: called when the connection ends.
    """

    def __init__(
        self, head: bytes, answered: Callable[[UpgradeAnswer, bytes], None],
        relay: Callable[[bytes], None], lost: Callable[[Failure], None],
    ) -> None:
        self._request = head
        self._answered, self.relay, self._lost = answered, relay, lost
        self._buffer = b""
        self._answer: UpgradeAnswer | None = None
        self._body: ChunkedBody | None = None
        self._length: int | None = None
        self.upgraded = False
        self.transport: Any = None

    def connectionMade(self) -> None:
        self.transport.write(self._request)

    def dataReceived(self, data: bytes) -> None:
        if self.upgraded:
            self.relay(data)
        elif self._answer is None:
            self._read_head(data)
        else:
            self._read_body(data)

    def _read_head(self, data: bytes) -> None:
        self._buffer += data
        end = self._buffer.find(b"\r\n\r\n")
        if end < 0:
            if len(self._buffer) > MAX_HEAD:
                self._fail("the upstream's answer to the upgrade has a head too large")
            return
        head, rest = self._buffer[: end + 4], self._buffer[end + 4:]
        self._buffer = b""
        lines = head[:-4].split(b"\r\n")
        version, _, status = lines[0].partition(b" ")
        code = status[:3]
        if version != b"HTTP/1.1" or not code.isdigit():
            return self._fail("the upstream's answer to the upgrade is not HTTP/1.1")
        headers = []
        for line in lines[1:]:
            name, colon, value = line.partition(b":")
            if not colon:
                return self._fail("the upstream's answer to the upgrade has a malformed header")
            headers.append((name.strip().lower(), value.strip()))
        self._answer = answer = UpgradeAnswer(int(code), head, headers)
        if answer.status == 101:
            self.upgraded = True
            self._answered(answer, rest)
            return
        if (answer.header(b"transfer-encoding") or b"").lower() == b"chunked":
            self._body = ChunkedBody()
        else:
            length = answer.header(b"content-length")
            self._length = int(length) if length is not None and length.isdigit() else None
        self._read_body(rest)

    def _read_body(self, data: bytes) -> None:
        answer = self._answer
        assert answer is not None
        done = False
        if self._body is not None:
            try:
                payload, rest = self._body.feed(data)
            except BadResponse:
                return self._fail("the upstream's error answer is malformed")
            answer.body += payload
            done = rest is not None
        else:
            answer.body += data
            done = self._length is not None and len(answer.body) >= self._length
        if len(answer.body) > MAX_REFUSAL:
            answer.body = answer.body[:MAX_REFUSAL]
            done = True
        if done:
            self._finish_refusal()

    def _finish_refusal(self) -> None:
        answer, self._answer = self._answer, None
        self.upgraded = True  # nothing more is read
        self.relay = lambda data: None
        if answer is not None:
            self._answered(answer, b"")
        if self.transport is not None:
            self.transport.loseConnection()

    def _fail(self, message: str) -> None:
        self._answered(UpgradeAnswer(502, b"", [], message), b"")
        self._answered = lambda answer, rest: None
        self.relay = lambda data: None
        self.upgraded = True
        self.transport.abortConnection()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self._answer is not None and self._length is None and self._body is None:
            self._finish_refusal()  # a body read to the connection's end
        self._lost(reason)
