"""
The rollups every report reads equal a sum over the raw events, to the picodollar,
however the log is cut into batches, with events read twice (a replay) and sessions
that span days and batches: every grouping of `report`, `sessions` and `key_usage`
against the same query over the raw rows.
"""

from __future__ import annotations

import json
import sqlite3
from decimal import Decimal
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from modeltrack.store import index, reports

TEAMS = [None, "ml", "web"]
MODELS = [None, "gpt-4o", "claude-sonnet-4-5"]
events = st.lists(
    st.tuples(
        st.integers(0, 40),  # request number (repeats: the same event again)
        st.sampled_from(["2026-11-30", "2026-12-01", "2026-12-02"]),
        st.sampled_from(TEAMS), st.sampled_from(MODELS), st.sampled_from([None, "s1", "s2", "s3"]),
        st.sampled_from([None, "k_1", "k_2"]), st.sampled_from([None, "0.001", "0.0000031", "1.5"]),
        st.sampled_from(["ok", "rejected"]), st.booleans(), st.sampled_from(["metered", "billable"]),
    ),
    min_size=1, max_size=60,
)


def line(fields: tuple) -> str:
    n, day, team, model, session, key, cost, outcome, hit, route = fields
    return json.dumps({
        "request_id": f"mt_{n}", "timestamp": f"{day}T0{n % 10}:00:00Z", "provider": "openai", "endpoint": "/v1/chat/completions",
        "route_class": route, "model": model, "team": team, "session_id": session, "key_id": key,
        "key_name": "prod" if key == "k_1" else None, "client": "openai-python/1", "outcome": outcome,
        "input_tokens": n, "output_tokens": 2 * n, "cache_read_tokens": 0, "cache_write_tokens": 0, "reasoning_tokens": 0,
        "cost_usd": None if cost is None else float(cost), "priced": cost is not None, "cache_hit": hit, "latency_ms": 1.0,
    })


def raw(db: sqlite3.Connection, by: list[str]) -> list[tuple]:
    """The report as a query over the raw events (what the rollups replace)."""
    columns = {"team": "team", "model": "model", "day": "day", "key": "COALESCE(key_name, key_id)", "route_class": "route_class",
               "client": "client"}
    chosen = [columns[key] for key in by]
    query = (f"SELECT {', '.join([*chosen, 'COUNT(*), SUM(input_tokens), SUM(output_tokens), SUM(cost_pico), SUM(1 - priced)'])} "
             f"FROM events {'GROUP BY ' + ', '.join(chosen) if chosen else ''}")
    return sorted(map(tuple, db.execute(query).fetchall()), key=repr)


def from_rollups(rows: list[dict], by: list[str]) -> list[tuple]:
    return sorted(
        ((*(row[key] for key in by), row["requests"], row["input_tokens"], row["output_tokens"],
          round(Decimal(row["cost_usd"]) * 10**12),
          row["unpriced"]) for row in rows),
        key=repr,
    )


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(events, st.integers(1, 7))
def test_every_rollup_equals_the_raw_sum(tmp_path: Path, fields: list[tuple], cut: int) -> None:
    data = tmp_path / "data"
    for old in data.glob("*"):
        old.unlink()
    data.mkdir(exist_ok=True)
    db = index.connect(data)
    log = data / "events.jsonl"
    lines = [line(f) for f in fields]
    # Appended in pieces, indexed after each (a replayed event is read again).
    for start in range(0, len(lines), cut):
        with log.open("a") as f:
            f.write("".join(text + "\n" for text in lines[start:start + cut]))
        index.update(db, data)
    # Each rollup: the coarse one (by model), the one without models (by key, client), the full one.
    for by in ([], ["team"], ["model", "day"], ["key"], ["route_class", "team"], ["key", "day"], ["client", "team"],
               ["key", "model"]):
        want = [row for row in raw(db, by) if row[len(by)]]
        got = from_rollups(reports.report(db, by), by)
        assert [(*r[:-2], r[-2] or 0, r[-1]) for r in want] == got, by
    keys = {row["key"]: (row["requests"], round(Decimal(row["cost_usd"]) * 10**12)) for row in reports.key_usage(db)}
    assert keys == {key: (calls, cost or 0) for key, calls, cost in db.execute(
        "SELECT COALESCE(key_name, key_id) AS k, COUNT(*), SUM(cost_pico) FROM events WHERE k IS NOT NULL GROUP BY k")}
    sessions = {row["session_id"]: row for row in reports.sessions(db, 10)}
    for session, calls, cost, first, last, models in db.execute(
        "SELECT session_id, COUNT(*), SUM(cost_pico), MIN(timestamp), MAX(timestamp), GROUP_CONCAT(DISTINCT model) "
        "FROM events WHERE session_id IS NOT NULL GROUP BY session_id"
    ):
        row = sessions[session]
        assert (row["requests"], row["first_call"], row["last_call"]) == (calls, first, last)
        assert round(Decimal(row["cost_usd"]) * 10**12) == (cost or 0)
        assert row["models"] == sorted(set(models.split(","))) if models else row["models"] == []
    db.close()
