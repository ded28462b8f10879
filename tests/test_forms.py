"""
The multipart reader on hostile and odd forms: fields cut at the limit, the first of
a repeated name kept, files never kept but the measured one, anything malformed None.
"""

from __future__ import annotations

import pytest

from modeltrack.providers.forms import FIELD_LIMIT, read_form
from tests.test_audio import wav

TYPE = b"multipart/form-data; boundary=b0undary"


def form(*parts: tuple[str, bytes, str | None]) -> bytes:
    out = b""
    for name, value, filename in parts:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        out += b"--b0undary\r\nContent-Disposition: " + disposition.encode() + b"\r\n\r\n" + value + b"\r\n"
    return out + b"--b0undary--\r\n"


def test_fields_are_read_and_files_passed_over() -> None:
    data = form(("model", b"whisper-1", None), ("model", b"other", None), ("file", b"\x00" * 100_000, "a.mp3"),
                ("prompt", b"p" * (FIELD_LIMIT + 10), None))
    read = read_form(data, TYPE)
    assert read is not None
    assert read.fields["model"] == "whisper-1" and "file" not in read.fields
    assert len(read.fields["prompt"]) == FIELD_LIMIT and read.seconds is None


def test_the_measured_file_is_measured() -> None:
    read = read_form(form(("model", b"whisper-1", None), ("file", wav(2.25), "talk.wav")), TYPE, measure="file")
    assert read is not None and read.seconds == 2.25
    garbage = read_form(form(("file", b"RIFF\xff\xff\xff\xffWAVEfmt ", "x.wav")), TYPE, measure="file")
    assert garbage is not None and garbage.seconds is None


@pytest.mark.parametrize(
    "data, content_type",
    [
        (form(("model", b"x", None))[:-5], TYPE),  # cut before its end
        (b"no parts at all", TYPE),
        (form(("model", b"x", None)), b"application/json"),
        (form(("model", b"x", None)), b"multipart/form-data"),  # no boundary
        (b"--b0undary\r\n" + b"X-H: v\r\n" * 40 + b"\r\n\r\n--b0undary--\r\n", TYPE),  # too many headers
    ],
)
def test_malformed_forms_are_none(data: bytes, content_type: bytes) -> None:
    assert read_form(data, content_type) is None
