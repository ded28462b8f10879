"""
Usage meters: fed every response chunk on its way to the client, they return the bytes
to relay and keep a L{Reading} of what the provider reported. Every meter provides
L{IMeter}; the relay asks it what it needs to know, never what class it is.

Meters never raise into the relay: a provider sending malformed JSON where usage should
be is logged and leaves the reading incomplete, while the bytes still flow.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

from twisted.logger import Logger
from zope.interface import Attribute, Interface, implementer

from modeltrack.failures import log_failure
from modeltrack.pricing.usage import Reading, UnreadableUsage, text
from modeltrack.providers.aws_eventstream import EventStreamParser, Frame, FrameError
from modeltrack.providers.sse import SSEParser

log = Logger()

#: Non-streaming bodies larger than this are not decoded whole on the reactor thread:
#: their top-level fields are found by scanning from the end (see L{scan_fields}).
WHOLE_PARSE_LIMIT = 1 << 20
#: A non-streaming body is kept for metering up to this size; past it the bytes are
#: still relayed but usage is not read.
BODY_KEEP_LIMIT = 64 << 20

#: Returned by an SSE meter's event handler to keep that event from the client.
DROP = object()


class IMeter(Interface):
    """
    Reads usage out of one response body as it is relayed.
    """

    reading = Attribute("The L{Reading} of what the provider reported so far.")
    ended = Attribute(
        "True once the stream's own end marker has been read (and so relayed): the answer is "
        "complete whoever closes first."
    )
    rewrites = Attribute(
        "True if the bytes relayed may differ from the bytes received (events kept from the "
        "client, a body rewritten): the provider's Content-Length does not hold, and close() "
        "may return bytes held back."
    )
    one_body = Attribute(
        "True for an answer that is one JSON body, complete only at its last byte: under "
        "--fsync always its last chunk is held back until its event is on disk."
    )
    body = Attribute(
        "For a one_body meter, once closed: the whole body (what a response cache may keep). "
        "None for any other."
    )

    def feed(chunk: bytes) -> bytes:
        """
        The bytes to relay for C{chunk} (itself, or less: never raises).
        """

    def close() -> bytes:
        """
        The body has ended: the bytes still to relay (a tail held back), if any.
        """


@implementer(IMeter)
class BodyMeter:
    """
    Meters a non-streaming JSON response: the body is kept, and decoded once, when
    its reading is first asked for (after the answer has gone to the client: decoding
    a long completion takes a while, and the client need not wait for it).
    """

    rewrites = False
    ended = False
    one_body = True

    def __init__(self, read_body: Callable[[dict[str, Any]], Reading]) -> None:
        self._read_body = read_body
        self._chunks: list[bytes] = []
        self._size = 0
        self._closed = False
        self._reading: Reading | None = None
        self.body = b""  # the whole body, once closed (for the response cache)

    def feed(self, chunk: bytes) -> bytes:
        self._size += len(chunk)
        if self._size <= BODY_KEEP_LIMIT:
            self._chunks.append(chunk)
        else:
            self._chunks = []
        return chunk

    def close(self) -> bytes:
        self.body = b"".join(self._chunks)
        self._chunks = []
        self._closed = True
        return b""

    @property
    def reading(self) -> Reading:
        if self._reading is None:
            # Before close (a body cut off), nothing is decoded.
            self._reading = self._decode() if self._closed else Reading()
        return self._reading

    @reading.setter
    def reading(self, reading: Reading) -> None:
        self._reading = reading

    def _decode(self) -> Reading:
        obj = None
        try:
            obj = load_object(self.body)
            if obj is not None:
                return self._read_body(obj)
        except UnreadableUsage as e:
            return Reading(model=text(obj.get("model")) if obj else None, usage_error=str(e))
        except Exception:
            log_failure(log, "Could not read usage from a response body")
        return Reading()


@implementer(IMeter)
class SSEMeter:
    """
    Meters an event stream. Subclasses implement L{on_event}, called only for events
    that carry data; C{strip=True} lets L{on_event} drop events by returning L{DROP}.

    @ivar ended: the stream's own end marker has been read (and so relayed): the call
        is complete whoever closes first. L{on_event} sets it.
    """

    ended = False
    one_body = False
    body = None

    def __init__(self, strip: bool = False) -> None:
        self.rewrites = strip
        self._parser = SSEParser(keep_raw=strip)
        self.reading = Reading()

    def on_event(self, name: bytes, data: bytes) -> object:
        raise NotImplementedError()

    def wanted(self, chunk: bytes) -> bool:
        """
        Might C{chunk} hold an event that L{on_event} acts on (usage, an error, the
        stream's end marker)? A cheap byte search, allowed false positives, never a
        false negative.
        """
        raise NotImplementedError()

    def feed(self, chunk: bytes) -> bytes:
        if (
            chunk.endswith(b"\n\n")
            and self._parser.between_events
            and not self.wanted(chunk)
        ):
            # Whole events, none of which carries usage: relay them without parsing.
            return chunk
        events = self._parser.feed(chunk)
        if not self.rewrites:
            for event in events:
                self._handle(event.name, event.data)
            return chunk
        kept = [event.raw for event in events if self._handle(event.name, event.data) is not DROP]
        return b"".join(kept)

    def close(self) -> bytes:
        tail = self._parser.close()
        return tail if self.rewrites else b""

    def _handle(self, name: bytes, data: bytes) -> object:
        if not data:
            return None
        try:
            return self.on_event(name, data)
        except UnreadableUsage as e:
            self.reading.usage_error = str(e)
            return None
        except Exception:
            log_failure(log, "Could not read usage from a stream event")
            return None


@implementer(IMeter)
class FrameMeter:
    """
    Meters an AWS event stream (L{modeltrack.providers.aws_eventstream}): every chunk is relayed as
    it came while its frames are read beside it. Subclasses implement L{on_event} for
    event frames; exception and error frames after a 200 set the reading's
    C{error_type}. A frame that fails its checks ends the reading (C{error_type}
    C{invalid_event_stream}: the call is a C{stream_error}), never the relay.
    """

    rewrites = False
    ended = False
    one_body = False
    body = None

    def __init__(self, strip: bool = False) -> None:
        self._parser = EventStreamParser()
        self.reading = Reading()

    def on_event(self, event_type: str, payload: bytes) -> None:
        raise NotImplementedError()

    def feed(self, chunk: bytes) -> bytes:
        if self._parser.failed:
            return chunk
        try:
            frames = self._parser.feed(chunk)
        except FrameError:
            log.warn("An event stream failed its frame checks; its usage is no longer read")
            self.reading.error_type = "invalid_event_stream"
            return chunk
        for frame in frames:
            self._handle(frame)
        return chunk

    def close(self) -> bytes:
        return b""

    def _handle(self, frame: Frame) -> None:
        headers = frame.headers
        kind = headers.get(":message-type")
        try:
            if kind == "event":
                event_type = headers.get(":event-type")
                if isinstance(event_type, str):
                    self.on_event(event_type, frame.payload)
            elif kind in ("exception", "error"):
                named = headers.get(":exception-type") or headers.get(":error-code") or "error"
                self.reading.error_type = str(named)[:100]
        except UnreadableUsage as e:
            self.reading.usage_error = str(e)
        except Exception:
            log_failure(log, "Could not read usage from an event-stream frame")


@implementer(IMeter)
class RelayOnly:
    """
    The meter for unmetered routes: relays bytes, reads nothing (C{unmetered}: why,
    where the route is metered and this answer could not be).
    """

    rewrites = False
    ended = False
    one_body = False
    body = None

    def __init__(self, unmetered: str | None = None) -> None:
        self.reading = Reading(unmetered=unmetered)

    def feed(self, chunk: bytes) -> bytes:
        return chunk

    def close(self) -> bytes:
        return b""


def load_object(body: bytes) -> dict[str, Any] | None:
    """
    The top-level JSON object of a response body, or L{None} if it is not one.
    """
    if len(body) > WHOLE_PARSE_LIMIT:
        return scan_fields(body, ("usage", "model", "service_tier"))
    obj = json.loads(body)
    if isinstance(obj, list):
        # A stream sent as one JSON array (Gemini's, without ?alt=sse): its last
        # element reports the whole call.
        obj = next((item for item in reversed(obj) if isinstance(item, dict)), None)
    return obj if isinstance(obj, dict) else None


_decoder = json.JSONDecoder()


def scan_fields(body: bytes, names: tuple[str, ...]) -> dict[str, Any]:
    """
    Read a few fields of a large JSON object without decoding all of it.

    Providers put C{usage} and C{model} at the top level, after or before the bulk
    (embedding vectors). A key is the quoted name followed by a colon; a quote inside a
    JSON string is always escaped, so the pattern cannot match inside string content.
    The last occurrence is taken, as nested objects come before the top-level usage.
    """
    found: dict[str, Any] = {}
    for name in names:
        matches = list(re.finditer(rb'"%s"\s*:\s*' % name.encode(), body))
        if not matches:
            continue
        start = matches[-1].end()
        end = min(len(body), start + WHOLE_PARSE_LIMIT)
        try:
            value, _ = _decoder.raw_decode(body[start:end].decode("utf-8", "replace"))
        except ValueError:
            continue
        found[name] = value
    return found
