"""
AWS event-stream frames read incrementally: botocore's own decoder is the oracle, and
any split of a stream gives the same frames and the same reading.
"""

from __future__ import annotations

import pytest
from botocore.eventstream import EventStreamBuffer
from hypothesis import given, settings
from hypothesis import strategies as st

from modeltrack.providers.aws_eventstream import EventStreamParser, FrameError, encode_frame
from modeltrack.providers.bedrock import ConverseStreamMeter, InvokeStreamMeter
from tests.fake_bedrock import converse_stream, invoke_stream


def frames_of(data: bytes, cuts: list[int]) -> list[tuple[dict[str, object], bytes]]:
    parser = EventStreamParser()
    found = []
    last = 0
    for cut in sorted(cuts) + [len(data)]:
        found += [(frame.headers, frame.payload) for frame in parser.feed(data[last:cut])]
        last = cut
    assert parser.between_frames
    return found


def test_frames_read_as_botocore_reads_them() -> None:
    data = b"".join(invoke_stream() + converse_stream())
    oracle = EventStreamBuffer()
    oracle.add_data(data)
    expected = [(message.headers, message.payload) for message in oracle]
    assert frames_of(data, []) == expected
    assert frames_of(data, list(range(1, len(data)))) == expected  # a byte at a time


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_any_split_gives_the_same_reading(data: st.DataObject) -> None:
    for frames, meter_type in ((invoke_stream(), InvokeStreamMeter), (converse_stream(), ConverseStreamMeter)):
        stream = b"".join(frames)
        cuts = sorted(data.draw(st.lists(st.integers(1, len(stream) - 1), max_size=30, unique=True)))
        whole, split = meter_type(), meter_type()
        assert whole.feed(stream) == stream
        relayed = b""
        last = 0
        for cut in cuts + [len(stream)]:
            relayed += split.feed(stream[last:cut])
            last = cut
        assert relayed == stream
        assert split.reading == whole.reading and split.reading.usage is not None and split.reading.final
        assert split.ended and whole.ended


@pytest.mark.parametrize("damage", ["prelude", "message", "lengths"])
def test_a_bad_frame_ends_the_reading_not_the_relay(damage: str) -> None:
    frames = invoke_stream()
    broken = bytearray(frames[1])
    if damage == "prelude":
        broken[9] ^= 1
    elif damage == "message":
        broken[-1] ^= 1
    else:
        broken[0:4] = (5).to_bytes(4, "big")
    stream = frames[0] + bytes(broken) + b"".join(frames[2:])
    meter = InvokeStreamMeter()
    assert meter.feed(stream) == stream
    assert meter.reading.error_type == "invalid_event_stream"
    assert meter.feed(b"more") == b"more"
    with pytest.raises(FrameError):
        EventStreamParser().feed(stream)


def test_an_exception_frame_is_the_stream_error() -> None:
    meter = ConverseStreamMeter()
    exception = encode_frame({":message-type": "exception", ":exception-type": "modelStreamErrorException"}, b"{}")
    meter.feed(converse_stream()[0] + exception)
    assert meter.reading.error_type == "modelStreamErrorException"
