"""
The chunked transfer coding of an upstream response body (RFC 9112 7.1), decoded in
one loop over each read: the payload it carried, and where the body ended.
"""

from __future__ import annotations

from enum import Enum

#: Longest chunk-size or trailer line accepted.
MAX_LINE = 4096
_HEX = b"0123456789abcdefABCDEF"


class BadResponse(Exception):
    """
    A response that is not HTTP/1.1 as it must be. The message names the problem and
    carries no bytes of the response: it reaches the log and the client's error.
    """


class _At(Enum):
    """
    Where the decoder is in a chunked body.
    """

    SIZE = "size"  # a chunk-size line
    DATA = "data"  # a chunk's data
    DATA_END = "data end"  # the line break after a chunk's data
    TRAILER = "trailer"  # the trailer fields after the last chunk


# Read in the loop: module globals are read faster than enum members.
_SIZE, _DATA, _DATA_END, _TRAILER = _At


class ChunkedBody:
    """
    Decodes one chunked body, read by read.
    """

    __slots__ = ("_at", "_buffer", "_remaining")

    def __init__(self) -> None:
        self._at = _SIZE
        self._buffer = b""
        self._remaining = 0

    def feed(self, data: bytes) -> tuple[bytes, bytes | None]:
        """
        The payload in C{data}, and what follows the body if it ended there (else
        L{None}). Raises L{BadResponse} for framing that is not chunked coding.
        """
        if self._buffer:
            data = self._buffer + data
            self._buffer = b""
        payload: list[bytes] = []
        position, size = 0, len(data)
        while position < size:
            if self._at is _DATA:
                end = min(size, position + self._remaining)
                payload.append(data[position:end])
                self._remaining -= end - position
                position = end
                if self._remaining == 0:
                    self._at = _DATA_END
                continue
            eol = data.find(b"\n", position)
            if eol < 0:
                if size - position > MAX_LINE:
                    raise BadResponse("chunk line too long")
                self._buffer = data[position:]
                break
            line = data[position:eol].rstrip(b"\r")
            position = eol + 1
            if self._at is _SIZE:
                digits = line.partition(b";")[0].strip(b" \t")
                if not digits or len(digits) > 15 or digits.strip(_HEX):
                    raise BadResponse("invalid chunk size")
                self._remaining = int(digits, 16)
                self._at = _DATA if self._remaining else _TRAILER
            elif self._at is _DATA_END:
                if line:
                    raise BadResponse("chunk data longer than its size")
                self._at = _SIZE
            elif not line:  # the blank line after the trailer fields (which are dropped)
                return _joined(payload), data[position:]
        return _joined(payload), None


def _joined(parts: list[bytes]) -> bytes:
    return parts[0] if len(parts) == 1 else b"".join(parts)
