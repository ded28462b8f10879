"""
AWS event-stream framing (C{application/vnd.amazon.eventstream}), read incrementally:
the streams of Bedrock's InvokeModelWithResponseStream and ConverseStream.

A frame is a 12-byte prelude (total length, headers length, CRC32 of those 8 bytes),
headers, a payload, and a CRC32 of everything before it. The proxy relays the bytes
untouched and reads frames beside them; a frame that fails its checks ends the
reading (L{FrameError}), never the relay.
"""

from __future__ import annotations

import struct
import zlib
from typing import NamedTuple

_PRELUDE = struct.Struct(">III")
#: botocore's limits: larger frames are not AWS's.
MAX_HEADERS = 128 * 1024
MAX_PAYLOAD = 24 * 1024 * 1024


class FrameError(ValueError):
    """
    Bytes that are not a well-formed frame; the message says what is wrong.
    """


class Frame(NamedTuple):
    headers: dict[str, object]
    payload: bytes


class EventStreamParser:
    """
    Frames from bytes fed in any pieces. After a L{FrameError} it reads nothing more.
    """

    def __init__(self) -> None:
        self._buffer = b""
        self.failed = False

    @property
    def between_frames(self) -> bool:
        return not self._buffer

    def feed(self, data: bytes) -> list[Frame]:
        if self.failed:
            return []
        buffer = self._buffer + data if self._buffer else data
        frames = []
        start = 0
        try:
            while len(buffer) - start >= 12:
                total, headers_length, prelude_crc = _PRELUDE.unpack_from(buffer, start)
                if zlib.crc32(buffer[start : start + 8]) != prelude_crc:
                    raise FrameError("prelude CRC mismatch")
                if headers_length > MAX_HEADERS or total - headers_length - 16 > MAX_PAYLOAD or total < headers_length + 16:
                    raise FrameError("frame lengths out of range")
                if len(buffer) - start < total:
                    break
                end = start + total
                (message_crc,) = struct.unpack_from(">I", buffer, end - 4)
                if zlib.crc32(buffer[start : end - 4]) != message_crc:
                    raise FrameError("message CRC mismatch")
                headers = _headers(buffer[start + 12 : start + 12 + headers_length])
                frames.append(Frame(headers, buffer[start + 12 + headers_length : end - 4]))
                start = end
        except FrameError:
            self.failed = True
            self._buffer = b""
            raise
        except (struct.error, UnicodeDecodeError, IndexError):
            self.failed = True
            self._buffer = b""
            raise FrameError("malformed frame headers") from None
        self._buffer = buffer[start:]
        return frames


_FIXED = {2: ">b", 3: ">h", 4: ">i", 5: ">q", 8: ">q"}


def _headers(data: bytes) -> dict[str, object]:
    headers: dict[str, object] = {}
    position = 0
    while position < len(data):
        length = data[position]
        name = data[position + 1 : position + 1 + length].decode("utf-8")
        position += 1 + length
        kind = data[position]
        position += 1
        value: object
        if kind in (0, 1):
            value = kind == 0
        elif kind in _FIXED:
            fixed = struct.Struct(_FIXED[kind])
            (value,) = fixed.unpack_from(data, position)
            position += fixed.size
        elif kind in (6, 7):
            (size,) = struct.unpack_from(">H", data, position)
            raw = data[position + 2 : position + 2 + size]
            value = raw.decode("utf-8") if kind == 7 else raw
            position += 2 + size
        elif kind == 9:
            value = data[position : position + 16]
            position += 16
        else:
            raise FrameError(f"unknown header type {kind}")
        if position > len(data):
            raise FrameError("header runs past its frame")
        headers[name] = value
    return headers


def encode_frame(headers: dict[str, str], payload: bytes) -> bytes:
    """
    One frame with string headers (what Bedrock sends; the tests' fake upstream and
    the proxy's own stream errors use it).
    """
    encoded = b""
    for name, value in headers.items():
        raw_name, raw_value = name.encode("utf-8"), value.encode("utf-8")
        encoded += bytes([len(raw_name)]) + raw_name + b"\x07" + struct.pack(">H", len(raw_value)) + raw_value
    total = 12 + len(encoded) + len(payload) + 4
    prelude = struct.pack(">II", total, len(encoded))
    prelude += struct.pack(">I", zlib.crc32(prelude))
    message = prelude + encoded + payload
    return message + struct.pack(">I", zlib.crc32(message))
