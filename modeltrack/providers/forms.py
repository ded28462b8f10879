"""
The fields of a multipart/form-data request (audio uploads), read with the
C{multipart} parser: its text fields kept, its files streamed past and never held but
for the one whose audio is measured; the bytes themselves forwarded untouched.
"""

from __future__ import annotations

import io
from typing import NamedTuple

import multipart
import mutagen

#: A text field longer than this is no parameter the proxy reads (a prompt is kept whole
#: up to it): cut, so that no field can make the reading hold much.
FIELD_LIMIT = 64 * 1024


class Form(NamedTuple):
    """
    A form as read: its text fields (a repeated name keeps its first value), and the
    seconds of audio in the file part measured, where its metadata says.
    """

    fields: dict[str, str]
    seconds: float | None


def read_form(data: bytes, content_type: bytes, measure: str | None = None) -> Form | None:
    """
    The form in C{data}, the audio of its file part named C{measure} measured;
    L{None} if it is not a well-formed multipart/form-data body.
    """
    kind, options = multipart.parse_options_header(content_type.decode("latin-1"))
    boundary = options.get("boundary")
    if kind != "multipart/form-data" or not boundary:
        return None
    fields: dict[str, str] = {}
    parser = multipart.PushMultipartParser(boundary, max_header_count=16)
    name: str | None = None
    value = bytearray()
    audio: bytearray | None = None
    into: bytearray | None = None
    try:
        for chunk in (data, b""):
            for event in parser.parse(chunk):
                if isinstance(event, multipart.MultipartSegment):
                    is_file = event.filename is not None
                    name = None if is_file else event.name
                    into = None
                    if is_file and event.name == measure and audio is None:
                        into = audio = bytearray()
                    value.clear()
                elif event is None:
                    if name is not None and name not in fields:
                        fields[name] = value.decode("utf-8", "replace")
                    name = into = None
                elif into is not None:
                    into += event
                elif name is not None and len(value) < FIELD_LIMIT:
                    value += event[: FIELD_LIMIT - len(value)]
    except multipart.MultipartError:  # malformed, or past a limit
        return None
    if not parser.closed:
        return None
    return Form(fields, None if audio is None else duration(audio))


def duration(audio: bytes | bytearray) -> float | None:
    """
    The length in seconds of an audio file (mp3, m4a, wav, ogg, flac, webm ...) as its
    metadata says, read with mutagen; L{None} if it says nothing readable.
    """
    try:
        found = mutagen.File(io.BytesIO(audio))
        length = getattr(getattr(found, "info", None), "length", None)
    except Exception:  # a hostile or truncated file: mutagen raises many kinds
        return None
    if isinstance(length, (int, float)) and 0 < length < 10**7:
        return float(length)
    return None


# mutagen imports its format modules on first use: now, at start-up, not on the reactor
# thread in the middle of a request.
duration(b"")
