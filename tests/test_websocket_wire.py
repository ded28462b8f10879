"""
The WebSocket wire as the relay reads it: where frames end (every length encoding,
any split of the bytes), the server's messages of the types a meter reads and no
other, the client's frames whole with the messages they end; what RFC 6455 forbids
refused.
"""

from __future__ import annotations

import json
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st
from twisted.web.http_headers import Headers
from wsproto.frame_protocol import FrameProtocol, ParseFailed

from modeltrack.web import websocket

SERVER = FrameProtocol(client=False, extensions=[])  # writes a server's frames: unmasked
CLIENT = FrameProtocol(client=True, extensions=[])  # writes a client's: masked


def server_stream() -> tuple[bytes, list[str]]:
    done = json.dumps({"type": "response.done", "response": {"usage": {"input_tokens": 1}}})
    delta = json.dumps({"type": "response.output_audio.delta", "delta": "A" * 70000})
    late = json.dumps({"event_id": "x" * 600, "type": "response.done"})  # no type in its first bytes
    frames = [
        SERVER.send_data(delta), SERVER.ping(b"hi"),
        SERVER.send_data(done[:10], fin=False), SERVER.send_data(done[10:200], fin=False), SERVER.send_data(done[200:]),
        SERVER.send_data(b"\x00binary"), SERVER.send_data(late),
    ]
    return b"".join(bytes(f) for f in frames), [done, late]


@given(st.lists(st.integers(min_value=1, max_value=4000), max_size=40))
def test_the_server_messages_read_are_the_wanted_ones_however_the_bytes_arrive(cuts: list[int]) -> None:
    data, wanted = server_stream()
    reader = websocket.ServerReader(lambda kind: kind == b"response.done")
    texts, at = [], 0
    for size in [*cuts, len(data)]:
        chunk = data[at:at + size]
        read, good, problem = reader.feed(chunk)
        assert (good, problem) == (len(chunk), None)
        texts += read
        at += size
    assert texts == wanted


@given(st.lists(st.integers(min_value=1, max_value=300), max_size=30))
def test_client_frames_come_whole_with_the_message_each_ends(cuts: list[int]) -> None:
    create = json.dumps({"type": "response.create", "response": {}})
    pieces = [CLIENT.send_data("x" * 200), CLIENT.send_data(create[:5], fin=False), CLIENT.ping(b""),
              CLIENT.send_data(create[5:]), CLIENT.send_data(b"\x01" * 70000)]
    frames = [bytes(p) for p in pieces]
    data = b"".join(frames)
    reader = websocket.ClientReader()
    whole, at = [], 0
    for size in [*cuts, len(data)]:
        whole += reader.feed(data[at:at + size])
        at += size
    assert [frame for frame, _ in whole] == frames
    assert [text for _, text in whole] == ["x" * 200, None, None, create, None]


def test_every_length_encoding_is_split_where_the_frame_ends() -> None:
    frames = [bytes(SERVER.send_data(b"a" * n)) for n in (0, 125, 126, 65535, 65536)]
    splitter = websocket.FrameSplitter()
    data = b"".join(frames)
    ends, total = splitter.feed(data), 0
    expected = []
    for frame in frames:
        total += len(frame)
        expected.append(total)
    assert ends == expected


def test_a_frame_over_the_limit_is_refused_from_its_header() -> None:
    with pytest.raises(websocket.FrameTooLarge):
        websocket.FrameSplitter().feed(b"\x81\x7f" + struct.pack("!Q", websocket.MAX_FRAME + 1))


def test_what_each_side_must_not_send_is_refused() -> None:
    with pytest.raises(ParseFailed):  # a client's frame unmasked
        websocket.ClientReader().feed(bytes(SERVER.send_data("{}")))
    # A server's frame masked: the frames before it may go on, not it.
    good = bytes(SERVER.send_data('{"type":"a"}'))
    assert websocket.ServerReader(lambda kind: True).feed(good + bytes(CLIENT.send_data("{}"))) == (
        ['{"type":"a"}'], len(good), websocket.BAD_GATEWAY,
    )
    too_big = b"\x81\x7f" + struct.pack("!Q", websocket.MAX_FRAME + 1)
    assert websocket.ServerReader(lambda kind: True).feed(too_big)[1:] == (0, websocket.TOO_BIG)


@pytest.mark.parametrize(("headers", "problem"), [
    ({}, "send an upgrade"),
    ({"upgrade": "websocket", "connection": "Upgrade", "sec-websocket-version": "8", "sec-websocket-key": "dGhlIHNhbXBsZSBub25jZQ=="},
     "Version must be 13"),
    ({"upgrade": "websocket", "connection": "keep-alive, Upgrade", "sec-websocket-version": "13", "sec-websocket-key": "c2hvcnQ="},
     "16 bytes"),
    ({"upgrade": "websocket", "connection": "Upgrade", "sec-websocket-version": "13", "sec-websocket-key": "not base64!"},
     "16 bytes"),
    ({"upgrade": "websocket", "connection": "Upgrade", "sec-websocket-version": "13", "sec-websocket-key": "dGhlIHNhbXBsZSBub25jZQ=="},
     None),
])
def test_an_upgrade_is_checked_as_rfc_6455_says(headers: dict[str, str], problem: str | None) -> None:
    found = websocket.upgrade_problem(b"GET", Headers({k: [v] for k, v in headers.items()}))
    assert (found is None) if problem is None else (problem in (found or ""))


def test_a_browser_key_in_a_subprotocol_is_found() -> None:
    headers = Headers({"sec-websocket-protocol": ["realtime, openai-insecure-api-key.sk-browser"]})
    assert websocket.subprotocol_key(headers) == b"sk-browser"
    assert websocket.subprotocol_key(Headers({"sec-websocket-protocol": ["realtime"]})) is None
