"""
An incremental Server-Sent Events parser: bytes in, events out, no JSON.

It follows the HTML living standard's event-stream grammar: lines end in CRLF, LF or a
lone CR (a CR at the end of a chunk is held back in case its LF is in the next chunk),
lines starting with ":" are comments, several "data:" lines join with "\\n", and a
blank line dispatches the event.
"""

from __future__ import annotations

import re
from typing import NamedTuple

_END_OF_LINE = re.compile(rb"\r\n|\r|\n")
_CR = 13
_COLON = 58
_SPACE = 32


class Event(NamedTuple):
    """
    One dispatched event.

    @ivar name: the C{event:} field, C{b""} when the stream names none.
    @ivar data: the C{data:} lines joined by newlines.
    @ivar raw: the exact bytes of the event block, blank line included; only kept
        when the parser was asked to (see L{SSEParser.__init__}).
    """

    name: bytes
    data: bytes
    raw: bytes


class SSEParser:
    """
    Feed it chunks cut anywhere; it returns the events each chunk completes.
    """

    __slots__ = ("_pending", "_name", "_data", "_keep_raw", "_raw")

    def __init__(self, keep_raw: bool = False) -> None:
        """
        @param keep_raw: also collect each event's exact bytes, for a caller that
            re-emits some events and drops others.
        """
        self._pending = b""
        self._name = b""
        self._data: list[bytes] = []
        self._keep_raw = keep_raw
        self._raw: list[bytes] = []

    @property
    def between_events(self) -> bool:
        """
        Nothing is held over: the bytes fed so far ended exactly at an event boundary.
        """
        return not (self._pending or self._data or self._name or self._raw)

    def feed(self, chunk: bytes) -> list[Event]:
        buffer = self._pending + chunk if self._pending else chunk
        size = len(buffer)
        events: list[Event] = []
        start = 0
        for match in _END_OF_LINE.finditer(buffer):
            line_end, next_start = match.span()
            if next_start == size and next_start - line_end == 1 and buffer[line_end] == _CR:
                break  # maybe the first half of a CRLF split across chunks
            if self._keep_raw:
                self._raw.append(buffer[start:next_start])
            self._line(buffer[start:line_end], events)
            start = next_start
        self._pending = buffer[start:]
        return events

    def close(self) -> bytes:
        """
        End of stream: drop an event that never got its blank line and return the
        bytes that belonged to it (raw mode only), so a re-emitter can pass them on.
        """
        if self._keep_raw:
            self._raw.append(self._pending)
        tail = b"".join(self._raw)
        self._pending = b""
        self._raw = []
        self._name = b""
        self._data = []
        return tail

    def _line(self, line: bytes, events: list[Event]) -> None:
        if not line:
            if self._data:
                raw = b"".join(self._raw) if self._keep_raw else b""
                events.append(Event(self._name, b"\n".join(self._data), raw))
            elif self._keep_raw and self._raw:
                # A block of comments only: nothing to dispatch, but its bytes are
                # still part of the stream.
                events.append(Event(b"", b"", b"".join(self._raw)))
            self._name = b""
            self._data = []
            self._raw = []
            return
        if line[0] == _COLON:
            return
        field, colon, value = line.partition(b":")
        if colon and value[:1] == b" ":
            value = value[1:]
        if field == b"data":
            self._data.append(value)
        elif field == b"event":
            self._name = value
