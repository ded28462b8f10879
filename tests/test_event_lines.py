"""
The index's reading of event lines, written for speed, says the same as the plain way:
a cost in picodollars as its text says, a row as the field-by-field checks make it (or
the same refusal), pieces cut at line ends that cover the file once.
"""

from __future__ import annotations

import os
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from modeltrack.store import event_lines, rollups
from modeltrack.store.event_lines import BadLine


def exact_pico(value: float) -> int:
    return int(Decimal(str(value)) * event_lines.PICO)


@settings(max_examples=3000, deadline=None)
@given(st.floats(min_value=-9e6, max_value=9e6, allow_nan=False))
def test_a_cost_in_picodollars_is_its_text_any_float(value: float) -> None:
    assert event_lines._pico(value) == exact_pico(value)


@settings(max_examples=3000, deadline=None)
@given(st.integers(-10**15, 10**15), st.integers(0, 15))
def test_a_cost_in_picodollars_is_its_text_as_the_log_writes_them(digits: int, decimals: int) -> None:
    value = float(Decimal(digits) / Decimal(10) ** decimals)  # e.g. 0.001143, 1e-05, 123.456789012345
    if abs(value) < 9e6:
        assert event_lines._pico(value) == exact_pico(value)


def test_a_cost_that_is_no_number_is_refused() -> None:
    for value in (float("nan"), float("inf"), "0.1", True, [1], 10**30, 1e300, -1e19):
        with pytest.raises(BadLine):
            event_lines._pico(value)


JUNK = st.one_of(st.none(), st.booleans(), st.integers(-5, 10**13), st.floats(allow_nan=True), st.text(max_size=3),
                 st.lists(st.integers(), max_size=1))
valid = st.fixed_dictionaries(
    {
        "request_id": st.just("mt_1"), "timestamp": st.just("2026-12-01T10:00:00Z"), "provider": st.just("openai"),
        "endpoint": st.just("/v1/chat/completions"), "outcome": st.sampled_from(["ok", "rejected"]),
        "route_class": st.sampled_from(["metered", "billable"]),
        "cost_usd": st.one_of(st.none(), st.floats(-1e3, 1e3), st.sampled_from([0.001143, 1e-05, 3])),
        "saved_usd": st.one_of(st.none(), st.floats(0, 1e3)),
        "priced": st.booleans(), "cache_hit": st.booleans(),
        "latency_ms": st.one_of(st.none(), st.floats(0, 1e4), st.integers(0, 9)),
        **{name: st.one_of(st.none(), st.text(max_size=3)) for name in event_lines._LABELS},
        **{name: st.integers(0, 10**6) for name in event_lines._COUNTS},
    },
)


def outcome(make: Any, event: Any) -> Any:
    try:
        return make(event)
    except BadLine as e:
        return str(e)


@settings(max_examples=2000, deadline=None)
@given(valid, st.dictionaries(st.sampled_from([*event_lines._FIELDS, "extra"]), JUNK, max_size=2),
       st.sets(st.sampled_from(event_lines._FIELDS), max_size=2))
def test_the_fast_row_is_the_checked_row(event: dict[str, Any], junk: dict[str, Any], left_out: set[str]) -> None:
    event.update(junk)
    for name in left_out:
        event.pop(name, None)
    fast, checked = outcome(event_lines.event_row, event), outcome(event_lines._checked_row, event)
    if isinstance(fast, tuple) and isinstance(checked, tuple):
        # The same row (a bool is the number it binds as in SQLite).
        assert [int(v) if type(v) is bool else v for v in fast] == list(checked)
        assert len(fast) == len(event_lines.ROW)
    else:
        assert fast == checked


def test_the_rollups_read_a_row_by_its_places() -> None:
    row = tuple(name or f"unstored{at}" for at, name in enumerate(event_lines.ROW))
    assert rollups._DAILY_KEY(row) == ("day", *rollups.DAILY_KEYS, "cache_hit")
    daily_key = rollups._DAILY_KEY(row)
    assert rollups._COARSE_OF_DAILY(daily_key) == ("day", *rollups.COARSE_KEYS, "cache_hit")
    assert rollups._LABELS_OF_DAILY(daily_key) == ("day", *rollups.LABEL_KEYS, "cache_hit")


def test_pieces_cut_at_line_ends_and_cover_the_file_once(tmp_path: Path, monkeypatch: Any) -> None:
    monkeypatch.setattr(event_lines, "PIECE_BYTES", 100)
    path = tmp_path / "events.jsonl"
    lines = [b"x" * (n % 37) + b"\n" for n in range(200)] + [b"torn"]
    path.write_bytes(b"".join(lines))
    size, inode = path.stat().st_size, os.stat(path).st_ino
    pieces = list(event_lines.pieces(path, inode, 0, size))
    assert pieces[0][0] == 0 and pieces[-1][1] == size
    assert all(a[1] == b[0] for a, b in zip(pieces, pieces[1:], strict=False))
    data = path.read_bytes()
    assert all(data[end - 1:end] == b"\n" for _, end in pieces[:-1])
    assert all(end - start >= 100 for start, end in pieces[:-1])
    with pytest.raises(event_lines.Replaced):
        list(event_lines.pieces(path, inode + 1, 0, size))
    last = event_lines.read_piece(path, inode, *pieces[-1])
    assert last.end == size - len(b"torn")  # the line being written is left for later
