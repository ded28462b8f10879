"""
A request head has a deadline and limits (issue 12, defect 5): in memory with a Clock
for the time, and over a real socket for what a client sees.
"""

from __future__ import annotations

from itertools import pairwise
from typing import Any

import pytest_twisted
from hypothesis import given, settings
from hypothesis import strategies as st

from tests import rawhttp
from tests.memory import Harness
from tests.test_sdk import in_thread


def test_a_trickled_head_gets_408_at_its_deadline() -> None:
    h = Harness()
    channel, transport = h.connect()
    head = b"POST /v1/chat/completions HTTP/1.1\r\nHost: p\r\nX-Slow: " + b"a" * 40
    for byte in head:
        channel.dataReceived(bytes([byte]))
        h.clock.advance(0.2)  # well inside the idle timeout, every time
        if transport.value():
            break
    # 10 s default: 50 bytes in, the deadline has passed.
    assert transport.value().startswith(b"HTTP/1.1 408 Request Timeout\r\n")
    assert transport.disconnecting
    assert h.journal.lines == [] and h.agent.calls == []


def test_the_deadline_runs_from_a_kept_alive_request_s_first_byte() -> None:
    h = Harness()
    channel, transport = h.connect()
    channel.dataReceived(b"GET /healthz HTTP/1.1\r\nHost: p\r\n\r\n")
    assert transport.value().startswith(b"HTTP/1.1 200")
    transport.clear()
    h.clock.advance(30)  # idle between requests (under the idle timeout): not the head's time
    channel.dataReceived(b"GET /healthz HTTP/1.1\r\n")
    h.clock.advance(9)
    channel.dataReceived(b"Host: p\r\n\r\n")
    assert transport.value().startswith(b"HTTP/1.1 200")
    transport.clear()
    channel.dataReceived(b"GET /healthz HTTP/1.1\r\n")
    h.clock.advance(10)
    assert transport.value().startswith(b"HTTP/1.1 408")


def test_a_whole_head_cancels_its_deadline() -> None:
    h = Harness()
    channel, transport = h.connect()
    channel.dataReceived(b"GET /healthz HTTP/1.1\r\nHost: p\r\n\r\n")
    h.clock.advance(11)
    assert b"408" not in transport.value()
    assert not transport.disconnecting


def test_bare_lfs_and_oversized_heads() -> None:
    cases = [
        (b"\n" * 200, 400),
        (b"GET /healthz HTTP/1.1\nHost: p\n\n", 400),
        (b"GET /healthz HTTP/1.1\r\nHost: p\nX: y\r\n\r\n", 400),
        (b"GET /healthz HTTP/1.1\r\nX-Big: " + b"a" * 70_000 + b"\r\n\r\n", 431),
        (b"GET /healthz HTTP/1.1\r\n" + b"X-A: b\r\n" * 201 + b"\r\n", 431),
        (b"GET /healthz HTTP/1.1\r\n" + b"".join(b"X-Big%d: %s\r\n" % (n, b"a" * 12_000) for n in range(6)) + b"\r\n", 431),
        (b"GET /healthz HTTP/1.1\r\nHost: p\r\n" + b"X-Big: " + b"a" * 8_000 + b"\r\n\r\n", 200),
        (b"GET /healthz HTTP/1.1\r\n" + b"X-Big: " + b"a" * 8_000 + b"\r\n\r\n", 400),  # no Host
    ]
    for data, code in cases:
        h = Harness()
        channel, transport = h.connect()
        channel.dataReceived(data)
        assert transport.value().startswith(b"HTTP/1.1 %d" % code), (data[:40], transport.value()[:60])
        if code != 200:
            assert transport.disconnecting


@pytest_twisted.ensureDeferred
async def test_over_a_socket_each_bad_head_is_answered_and_closed(proxy: Any) -> None:
    port = proxy.service.ports[0].getHost().port
    for data, code in [
        (b"\n" * 100, 400),
        (b"GET /healthz HTTP/1.1\r\nX-Big: " + b"a" * 70_000 + b"\r\n\r\n", 431),
    ]:
        answer = await in_thread(rawhttp.exchange, port, data)
        assert rawhttp.status_of(answer) == code
        assert b"connection: close" in answer.lower()


GOOD_HEAD = b"GET /healthz HTTP/1.1\r\nHost: p\r\nX-A: b\r\nX-Longer-Name: some value\r\n\r\n"


def _feed_cut(data: bytes, cuts: list[int]) -> bytes:
    h = Harness()
    channel, transport = h.connect()
    points = [0, *sorted({c % (len(data) + 1) for c in cuts}), len(data)]
    for a, b in pairwise(points):
        if data[a:b] and not transport.disconnecting:
            channel.dataReceived(data[a:b])
    return transport.value()


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(min_value=0), max_size=12))
def test_any_split_of_a_good_head_is_served(cuts: list[int]) -> None:
    assert _feed_cut(GOOD_HEAD, cuts).startswith(b"HTTP/1.1 200")


@settings(max_examples=200, deadline=None)
@given(
    st.integers(min_value=16, max_value=len(GOOD_HEAD) - 4),
    st.sampled_from([b"\n", b"\r", b"\r\n "]),
    st.lists(st.integers(min_value=0), max_size=12),
)
def test_any_split_of_a_head_with_a_bare_cr_lf_or_fold_is_refused(at: int, bad: bytes, cuts: list[int]) -> None:
    data = GOOD_HEAD[:at] + bad + GOOD_HEAD[at:]
    if bad == b"\r\n " and GOOD_HEAD[at - 1 : at + 1] == b"\r\n":
        return  # between a CR and its LF: not a fold
    if data.find(b"\r\n\r\n") != len(data) - 4:
        return  # the insertion ended the head early: a whole request, then another
    assert _feed_cut(data, cuts).startswith(b"HTTP/1.1 400"), data
