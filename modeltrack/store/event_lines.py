"""
The event log's lines as index rows: decoded, checked, and summed for the rollups, a
piece of a file at a time, in this process or in another (a catch-up reads in a second
process while the first writes).

This runs for every line of the log, so it is written for speed: the fields an index
row needs are taken in one C call and checked in bulk, and only a line that fails the
bulk check goes the long way (which says what is wrong with it).
"""

from __future__ import annotations

import gc
import json
import math
import os
import sqlite3
from collections.abc import Iterator
from decimal import Decimal
from operator import itemgetter
from pathlib import Path
from typing import Any, NamedTuple

import orjson

from modeltrack.pricing.usage import MAX_COUNT
from modeltrack.store import rollups

PICO = Decimal(10) ** 12
#: SQLite's INTEGER is 64 bits: a cost past this many picodollars (9.2 million USD)
#: cannot be stored, and is no real call's.
_MOST_PICO = 2**63 - 1


class BadLine(ValueError):
    """
    A line of the event log that is not an event the index can hold.
    """


def _refuse_constant(name: str) -> None:
    raise BadLine(f"{name} is not JSON")


#: json.loads takes NaN and Infinity; an event line never holds them.
_decode = json.JSONDecoder(parse_constant=_refuse_constant).decode


def decode_line(line: bytes) -> Any:
    """
    One event line's JSON: orjson's (a quarter of the time), else the standard
    library's, which also reads an escaped lone surrogate (the log writes one as
    JSON allows) and says what is wrong with a line that is not JSON.
    """
    try:
        return orjson.loads(line)
    except orjson.JSONDecodeError:
        return _decode(line.decode("utf-8"))


def _pico(value: Any) -> int | None:
    """A cost in whole picodollars, exactly as its text in the log says it (truncated past 12 decimals)."""
    if value is None:
        return None
    if type(value) is float:
        if not math.isfinite(value):
            raise BadLine("a cost is not a finite number")
        # The common case without Decimal: a cost of at most 12 decimals under $2,000
        # is the float's product rounded (proved by the division giving the float back).
        if -_EXACT_USD < value < _EXACT_USD:
            scaled = round(value * 1e12)
            if scaled / 1e12 == value:
                return scaled
    elif type(value) is not int:
        raise BadLine("a cost is not a finite number")
    pico = int(Decimal(str(value)) * PICO)
    if abs(pico) > _MOST_PICO:
        raise BadLine("a cost is out of range")
    return pico


#: Below this many dollars, a float cost times 10^12 is off by under half a picodollar.
_EXACT_USD = 2000.0


def _text(value: Any) -> str | None:
    if value is not None and not isinstance(value, str):
        raise BadLine("a label is not text")
    return value


_LABELS = ("model", "team", "app", "feature", "session_id", "key_id", "key_name", "client")
_COUNTS = ("input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens", "reasoning_tokens")
#: The fields an index row is made of, taken from an event in one call: a row is
#: these (the costs as written), then the day and the costs in picodollars.
_FIELDS = ("request_id", "timestamp", "provider", "endpoint", "outcome", "route_class", *_LABELS, *_COUNTS,
           "cost_usd", "saved_usd", "priced", "cache_hit", "latency_ms")
_TAKE = itemgetter(*_FIELDS)
#: What each place of a row is stored as in the index (L{None}: not stored).
ROW = (*_FIELDS[:19], None, None, *_FIELDS[21:], "day", "cost_pico", "saved_pico")
#: Where each stored column is in a row.
AT = {name: at for at, name in enumerate(ROW) if name is not None}
_LABEL_TYPES = frozenset((str, type(None)))
_NUMBER_TYPES = frozenset((int, float))


def event_row(event: Any) -> tuple[Any, ...]:
    """
    The index row of one event (its places named by L{ROW}); L{BadLine} if any field
    is not what an event holds.
    """
    try:
        fields = _TAKE(event)
    except (KeyError, TypeError):  # a field left out, or not an object: the long way
        return _checked_row(event)
    (request_id, timestamp, provider, endpoint, outcome, route_class, model, team, app, feature, session, key_id,
     key_name, client, input_tokens, output_tokens, cache_read, cache_write, reasoning, cost, saved, priced, cache_hit,
     latency) = fields
    if not (
        type(request_id) is type(timestamp) is type(provider) is type(endpoint) is type(outcome) is type(route_class) is str
        and route_class and type(event) is dict and type(priced) is type(cache_hit) is bool
        and _LABEL_TYPES.issuperset((type(model), type(team), type(app), type(feature), type(session), type(key_id),
                                     type(key_name), type(client)))
        and type(input_tokens) is type(output_tokens) is type(cache_read) is type(cache_write) is type(reasoning) is int
        and 0 <= min(input_tokens, output_tokens, cache_read, cache_write, reasoning)
        and max(input_tokens, output_tokens, cache_read, cache_write, reasoning) <= MAX_COUNT
        and (latency is None or (type(latency) in _NUMBER_TYPES and math.isfinite(latency)))
    ):
        return _checked_row(event)
    return fields + (timestamp[:10], _pico(cost), None if saved is None else _pico(saved))


def _checked_row(event: Any) -> tuple[Any, ...]:
    """L{event_row} field by field: a field left out is C{None}; one that is wrong is said."""
    if type(event) is not dict:
        raise BadLine("not a JSON object")
    get = event.get
    request_id, timestamp, provider, endpoint, outcome = (
        get("request_id"), get("timestamp"), get("provider"), get("endpoint"), get("outcome"),
    )
    if not (type(request_id) is type(timestamp) is type(provider) is type(endpoint) is type(outcome) is str):
        raise BadLine("a required field is missing or not text")
    labels = [_text(get(name)) for name in _LABELS]
    counts = [get(name) for name in _COUNTS]
    for value in counts:
        if type(value) is not int or not 0 <= value <= MAX_COUNT:
            raise BadLine("a token count is not an integer from 0 to 10^12")
    latency = get("latency_ms")
    if latency is not None and (type(latency) not in _NUMBER_TYPES or not math.isfinite(latency)):
        raise BadLine("latency_ms is not a finite number")
    cost, saved = get("cost_usd"), get("saved_usd")
    return (
        request_id, timestamp, provider, endpoint, outcome, _text(get("route_class")) or "metered", *labels, *counts,
        cost, saved, int(bool(get("priced"))), int(bool(get("cache_hit"))), latency, timestamp[:10], _pico(cost),
        _pico(saved),
    )


def whole_lines(path: Path, offset: int) -> Iterator[tuple[bytes, int]]:
    """
    Complete lines from C{offset} on, each with the offset just past it; a last line
    without its newline (being written) is not returned.
    """
    with open(path, "rb") as f:
        f.seek(offset)
        for line in f:
            if not line.endswith(b"\n"):
                return
            offset += len(line)
            yield line, offset


class Piece(NamedTuple):
    """
    What a piece of a file holds for the index: its rows and what they add to the
    rollups, as a small SQLite database of their own (L{stage}: the writing process
    merges it with SQLite's own INSERT ... SELECT, no row passing through Python); how
    many rows; the lines that are none (where each starts, and why); how many lines
    were read; and the offset past the last whole line.
    """

    staged: bytes
    rows: int
    bad: list[tuple[int, str]]
    lines: int
    end: int


#: A piece's rows, in its own database: as the index stores them, not yet keyed.
_PIECE_SCHEMA = f"CREATE TABLE rows ({', '.join(AT)});" + rollups.PIECE_SCHEMA
_STAGE_ROWS = f"INSERT INTO rows VALUES ({', '.join(f'?{at + 1}' for at in AT.values())})"


def stage(rows: list[tuple[Any, ...]], totals: rollups.Totals) -> bytes:
    """C{rows} and their sums as a database of their own, serialized."""
    piece = sqlite3.connect(":memory:")
    try:
        piece.executescript(_PIECE_SCHEMA)
        with piece:
            piece.executemany(_STAGE_ROWS, rows)
            totals.stage(piece)
        return piece.serialize()
    finally:
        piece.close()


class Replaced(OSError):
    """The file at a path is not the one being read any more (sealed and rotated)."""


#: Bytes per piece: some 15,000 lines, written in one transaction (progress is told after each).
PIECE_BYTES = 16 << 20


def pieces(path: Path, inode: int, start: int, size: int) -> Iterator[tuple[int, int]]:
    """
    C{path} from C{start} to C{size} cut at line ends into pieces of about
    L{PIECE_BYTES} (the last may end in a line still being written). L{Replaced} if
    the file at C{path} is not C{inode}.
    """
    with open(path, "rb") as f:
        if os.fstat(f.fileno()).st_ino != inode:
            raise Replaced(path)
        while start < size:
            end = size
            at = start + PIECE_BYTES - 1  # the piece ends just past the first newline from here
            f.seek(at)
            while at < size:
                block = f.read(65536)
                found = block.find(b"\n")
                if found >= 0 or not block:
                    end = min(at + found + 1, size) if found >= 0 else size
                    break
                at += len(block)
            yield start, end
            start = end


def read_piece(path: Path, inode: int, start: int, end: int) -> Piece:
    """
    The index rows of C{path}'s bytes from C{start} to C{end} (a line not yet whole at
    the end is left for later). L{Replaced} if the file at C{path} is not C{inode}.
    """
    with open(path, "rb") as f:
        if os.fstat(f.fileno()).st_ino != inode:
            raise Replaced(path)
        f.seek(start)
        data = f.read(end - start)
    lines = data.split(b"\n")
    torn = lines.pop()  # after the last newline: empty, or a line being written
    rows, bad = [], []
    at = start
    for line in lines:
        try:
            rows.append(event_row(orjson.loads(line)))
        except orjson.JSONDecodeError:
            try:
                rows.append(event_row(_decode(line.decode("utf-8"))))
            except (ValueError, ArithmeticError, RecursionError) as e:  # BadLine, JSON, UTF-8
                bad.append((at, str(e) if isinstance(e, BadLine) else "not a JSON line"))
        except (ValueError, ArithmeticError, RecursionError) as e:  # one line never stops the index
            bad.append((at, str(e) if isinstance(e, BadLine) else f"not an event ({type(e).__name__})"))
        at += len(line) + 1
    totals = rollups.Totals()
    totals.add(rows)
    return Piece(stage(rows, totals), len(rows), bad, len(lines), start + len(data) - len(torn))


def reader_started() -> None:
    """
    A reading process's start: its objects are short-lived and hold no cycles, so the
    cyclic collector (a third of its time, scanning rows it keeps a moment) is off; and
    it yields the processor to the proxy and to the writing process, which waits on it.
    """
    gc.disable()
    os.nice(10)
