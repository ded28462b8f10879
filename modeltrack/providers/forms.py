"""
The fields of a multipart/form-data request (image edits, audio uploads), read with
the C{multipart} parser: its text fields kept, its files streamed past and never
held, the bytes themselves forwarded untouched.
"""

from __future__ import annotations

import multipart

#: A text field longer than this is no parameter the proxy reads (a prompt is kept whole
#: up to it): cut, so that no field can make the reading hold much.
FIELD_LIMIT = 64 * 1024


def form_fields(data: bytes, content_type: bytes) -> dict[str, str] | None:
    """
    The text fields of a multipart body (a repeated name keeps its first value);
    L{None} if it is not a well-formed form.
    """
    kind, options = multipart.parse_options_header(content_type.decode("latin-1"))
    boundary = options.get("boundary")
    if kind != "multipart/form-data" or not boundary:
        return None
    fields: dict[str, str] = {}
    parser = multipart.PushMultipartParser(boundary, max_header_count=16)
    name: str | None = None
    value = bytearray()
    try:
        for chunk in (data, b""):
            for event in parser.parse(chunk):
                if isinstance(event, multipart.MultipartSegment):
                    name = None if event.filename is not None else event.name
                    value.clear()
                elif event is None:
                    if name is not None and name not in fields:
                        fields[name] = value.decode("utf-8", "replace")
                    name = None
                elif name is not None and len(value) < FIELD_LIMIT:
                    value += event[: FIELD_LIMIT - len(value)]
    except multipart.ParserError:
        return None
    if not parser.closed:
        return None
    return fields
