"""
The SQLite index and `modeltrack report`: incremental, idempotent, rotation-safe, a torn
last line left for the next pass, exact sums.
"""

from __future__ import annotations

import json
import os
import time
from datetime import date, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet.defer import Deferred

from modeltrack import cli
from modeltrack.store import event_lines, index, reports
from modeltrack.store.index_process import IndexProcess
from modeltrack.store.journal import SegmentFile


def event(n: int, team: str, cost: str | None, day: str = "2026-11-27") -> bytes:
    record = {
        "timestamp": f"{day}T10:00:{n % 60:02d}.000000Z", "request_id": f"mt_{n}", "provider": "openai",
        "endpoint": "/v1/chat/completions", "model": "gpt-4o-2024-08-06", "team": team, "app": "bot",
        "feature": None, "session_id": "s1", "outcome": "ok", "input_tokens": 1200, "output_tokens": 300,
        "cache_read_tokens": 1024, "cache_write_tokens": 0, "reasoning_tokens": 64,
        "cost_usd": None if cost is None else float(cost), "priced": cost is not None, "saved_usd": None,
        "cache_hit": False, "latency_ms": 5.0,
    }
    return json.dumps(record).encode() + b"\n"


def test_incremental_idempotent_rotation_safe(tmp_path: Path) -> None:
    segment = SegmentFile(tmp_path, rotate_bytes=2_000)
    segment.open()
    for n in range(10):
        segment.append(event(n, "ml" if n % 2 else "web", "0.00472"))
    db = index.connect(tmp_path)
    assert index.update(db, tmp_path) == 10
    with open(tmp_path / "events.jsonl", "ab") as f:
        f.write(event(10, "ml", None)[:40])  # being written: a torn line
    assert index.update(db, tmp_path) == 0
    assert db.execute("SELECT COUNT(*) FROM events").fetchone()[0] == 10
    with open(tmp_path / "events.jsonl", "ab") as f:
        f.write(event(10, "ml", None)[40:])
    for n in range(11, 20):
        segment.append(event(n, "ml", "0.00472"))  # seals and rotates along the way
    segment.close()
    # The live file read before, now a segment, is read on from where it was: each line once.
    assert index.update(db, tmp_path) == 10
    assert index.update(db, tmp_path) == 0
    assert db.execute("SELECT COUNT(*) FROM events").fetchone()[0] == 20
    rows = {r["team"]: r for r in reports.report(db, ["team"])}
    assert rows["ml"]["requests"] == 15 and rows["ml"]["unpriced"] == 1
    assert Decimal(rows["ml"]["cost_usd"]) == 14 * Decimal("0.00472")
    assert Decimal(rows["web"]["cost_usd"]) == 5 * Decimal("0.00472")


def test_report_command(tmp_path: Path, capsys) -> None:
    (tmp_path / "events.jsonl").write_bytes(
        event(1, "ml", "0.1", "2026-10-31") + event(2, "ml", "0.2", "2026-11-01") + event(3, "web", "0.3", "2026-11-02")
    )
    assert cli.main(["report", "--data-dir", str(tmp_path), "--month", "2026-11", "--by", "team,day", "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(r["team"], r["day"], r["cost_usd"]) for r in rows] == [("web", "2026-11-02", "0.3"), ("ml", "2026-11-01", "0.2")]
    assert cli.main(["report", "--data-dir", str(tmp_path), "--by", "colour"]) == 2
    assert "unknown --by key 'colour'" in capsys.readouterr().err
    assert cli.main(["report", "--data-dir", str(tmp_path / "missing")]) == 2
    assert cli.main(["report", "--data-dir", str(tmp_path), "--format", "csv"]) == 0
    assert capsys.readouterr().out.splitlines()[0] == "team,requests,input_tokens,output_tokens,cost_usd,saved_usd,unpriced,billable_unmetered"


def test_malformed_date_is_refused(tmp_path: Path, capsys) -> None:
    import pytest

    with pytest.raises(SystemExit) as exited:
        cli.main(["report", "--data-dir", str(tmp_path), "--since", "28/11/2026"])
    assert exited.value.code == 2
    assert "is not a date (YYYY-MM-DD)" in capsys.readouterr().err


def test_check_and_price(tmp_path: Path, capsys) -> None:
    (tmp_path / "budgets.json").write_text('{"budgets": [{"team": "ml", "monthly_limit": -5}]}')
    (tmp_path / "pricing.json").write_text('{"models": {"acme-llm": {"input_mtok": 1, "output_mtok": 2}}}')
    assert cli.main(["check", "--data-dir", str(tmp_path)]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out == [
        "budgets.json: budgets[0] (team ml): monthly_limit must be a non-negative number",
        "routing.json: absent (off)",
        "pricing.json: ok",
        "keys.json: absent (off)",
    ]
    assert cli.main(["price", "acme-llm", "--data-dir", str(tmp_path)]) == 0
    assert "acme-llm: pricing.json" in capsys.readouterr().out
    assert cli.main(["price", "claude-sonnet-4-5", "--data-dir", str(tmp_path)]) == 0
    shown = capsys.readouterr().out
    assert "genai-prices (anthropic claude-sonnet-4-5)" in shown
    assert "input_mtok: 3 (above 200000 input tokens: 6)" in shown
    assert cli.main(["price", "no-such-model", "--data-dir", str(tmp_path)]) == 1


def session_event(n: int, session: str, model: str, cost: str, second: int) -> bytes:
    record = json.loads(event(n, "ml", cost))
    record.update(session_id=session, model=model, timestamp=f"2026-11-27T10:{second // 60:02d}:{second % 60:02d}.000000Z")
    return json.dumps(record).encode() + b"\n"


def test_sessions_command(tmp_path: Path, capsys) -> None:
    (tmp_path / "events.jsonl").write_bytes(
        session_event(1, "cheap", "gpt-4o-mini", "0.001", 0)
        + session_event(2, "dear", "gpt-4o", "0.5", 10)
        + session_event(3, "dear", "gpt-4o-mini", "0.25", 130)
        + session_event(4, "middle", "gpt-4o", "0.1", 5)
    )
    assert cli.main(["sessions", "--data-dir", str(tmp_path), "--top", "2", "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(r["session_id"], r["requests"], r["cost_usd"]) for r in rows] == [("dear", 2, "0.75"), ("middle", 1, "0.1")]
    assert rows[0]["models"] == ["gpt-4o", "gpt-4o-mini"] and rows[0]["duration_seconds"] == 120.0
    assert cli.main(["sessions", "--data-dir", str(tmp_path), "--format", "csv"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("session_id,teams,models,first_call,duration_seconds,requests")
    assert lines[1].startswith("dear,ml,gpt-4o gpt-4o-mini,2026-11-27T10:00:10.000000Z,120.0,2,")
    with pytest.raises(SystemExit):
        cli.main(["sessions", "--data-dir", str(tmp_path), "--top", "0"])
    assert "is not a positive whole number" in capsys.readouterr().err


def test_index_progress_bar(tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.setattr(event_lines, "PIECE_BYTES", 4 << 20)
    log = b"".join(event(n, "ml", "0.001") for n in range(12_000))
    (tmp_path / "events.jsonl").write_bytes(log)
    assert cli.main(["index", "--data-dir", str(tmp_path), "--progress"]) == 0
    captured = capsys.readouterr()
    assert captured.out == "indexed 12000 event lines\n"
    steps = captured.err.strip("\n").split("\r")[1:]
    assert len(steps) == 3  # a piece of 4 MiB, the rest, then the end of the file
    assert steps[-1].startswith("indexing [" + "#" * 30 + "] 100%")
    first_piece = log.index(b"\n", event_lines.PIECE_BYTES - 1) + 1
    assert f"] {first_piece / len(log):4.0%} 4/" in steps[0]
    assert cli.main(["index", "--data-dir", str(tmp_path)]) == 0
    assert capsys.readouterr() == ("indexed 0 event lines\n", "")  # not a terminal, nothing new: no bar


def count(db) -> int:
    return db.execute("SELECT COUNT(*) FROM events").fetchone()[0]


@pytest_twisted.ensureDeferred
async def test_indexer_child_answers_after_update_and_comes_back(tmp_path: Path) -> None:
    """
    The proxy's index runs in a child process (`modeltrack index --follow`): a query sees
    every event written before it was asked; a child that dies is replaced; stopping
    ends it.
    """
    from twisted.internet import reactor

    indexer = IndexProcess(tmp_path, reactor, interval=0.05)
    spawned: list[Deferred[None]] = []
    spawn = indexer._spawn

    def counting_spawn() -> None:
        spawn()
        if spawned:
            spawned.pop().callback(None)

    indexer._spawn = counting_spawn
    indexer.start()
    try:
        with open(tmp_path / "events.jsonl", "ab") as f:
            f.write(event(1, "ml", "0.1") + event(2, "ml", "0.2"))
        assert await indexer.query(count) == 2
        with open(tmp_path / "events.jsonl", "ab") as f:
            f.write(event(3, "web", "0.3"))
        assert await indexer.query(count) == 3

        first = indexer._process
        respawned: Deferred[None] = Deferred()
        spawned.append(respawned)
        first.transport.signalProcess("KILL")
        await respawned.addTimeout(30, reactor)  # fails here if the child is not replaced
        assert indexer._process is not first
        with open(tmp_path / "events.jsonl", "ab") as f:
            f.write(event(4, "web", "0.4"))
        assert await indexer.query(count) == 4
    finally:
        process = indexer._process
        await indexer.stop()
    assert process.ended.called and indexer._pool.joined


def test_output_cut_short_by_its_reader_ends_quietly(tmp_path: Path) -> None:
    import subprocess
    import sys

    # `true` reads nothing and is gone long before Python has started: every write fails.
    command = f"{sys.executable} -m modeltrack.cli check --data-dir {tmp_path} | true"
    done = subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=60)
    assert done.stderr == ""


def test_price_needs_no_data_dir(tmp_path: Path) -> None:
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-m", "modeltrack.cli", "price", "gpt-4o"], capture_output=True, text=True, cwd=tmp_path, timeout=60,
        env={k: v for k, v in __import__("os").environ.items() if k != "MODELTRACK_DATA_DIR"},
    )
    assert done.returncode == 0 and "input_mtok: 2.5" in done.stdout
    missing = subprocess.run(
        [sys.executable, "-m", "modeltrack.cli", "price", "gpt-4o", "--data-dir", str(tmp_path / "nope")],
        capture_output=True, text=True, timeout=60,
    )
    assert missing.returncode == 2  # a data dir named but missing is still a mistake


def test_retention_drops_raw_rows_and_indexed_segments_never_rollups(tmp_path: Path, capsys) -> None:
    old_day = (date.today() - timedelta(days=45)).isoformat()
    new_day = (date.today() - timedelta(days=2)).isoformat()
    old = tmp_path / "events-20000101T000000.000000Z.jsonl"  # a sealed segment, 45 days old
    old.write_bytes(b"".join(event(n, "ml", "0.001", old_day) for n in range(5)))
    stamp = time.time() - 45 * 86400
    os.utime(old, (stamp, stamp))
    recent = tmp_path / "events-20990101T000000.000000Z.jsonl"  # sealed, recent
    recent.write_bytes(event(10, "ml", "0.001", new_day))
    (tmp_path / "events.jsonl").write_bytes(event(11, "web", "0.002", new_day))
    assert cli.main(["index", "--data-dir", str(tmp_path), "--retain-days", "30", "--log-retain-days", "30"]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "dropped 5 raw rows, deleted 1 sealed segments"
    assert not old.exists() and recent.exists() and (tmp_path / "events.jsonl").exists()
    db = index.connect(tmp_path)
    assert db.execute("SELECT COUNT(*) FROM events").fetchone()[0] == 2
    rows = {r["team"]: r for r in reports.report(db, ["team"])}  # the rollups keep every day
    assert rows["ml"]["requests"] == 6 and Decimal(rows["ml"]["cost_usd"]) == Decimal("0.006")
    index.update(db, tmp_path)  # the deleted segment is not read again, nor counted twice
    assert reports.report(db, [])[0]["requests"] == 7


def test_the_table_is_for_people_and_csv_json_stay_exact(tmp_path: Path, capsys) -> None:
    lines = [event(n, "ml", "0.72400974", "2026-11-02") for n in range(1000)] + [event(5000, "tiny", "0.000003", "2026-11-02")]
    (tmp_path / "events.jsonl").write_bytes(b"".join(lines))
    assert cli.main(["report", "--data-dir", str(tmp_path), "--by", "team", "--format", "table"]) == 0
    header, ml, tiny = capsys.readouterr().out.splitlines()
    assert header.split() == ["team", "requests", "input_tokens", "output_tokens", "cost_usd", "saved_usd", "unpriced",
                              "billable_unmetered"]
    assert ml.split() == ["ml", "1,000", "1,200,000", "300,000", "$724.01", "$0.00", "0", "0"]
    assert tiny.split()[4] == "<$0.01"
    assert len(ml) == len(header)  # the numbers line up on the right
    assert cli.main(["report", "--data-dir", str(tmp_path), "--by", "team", "--format", "csv"]) == 0
    assert capsys.readouterr().out.splitlines()[1] == "ml,1000,1200000,300000,724.00974,0,0,0"


def test_a_large_catch_up_reads_in_a_second_process_with_the_same_result(tmp_path: Path, monkeypatch: Any) -> None:
    lines = [event(n, "ml" if n % 3 else "web", "0.00472" if n % 5 else None) for n in range(12_345)]
    lines[100] = b"{not json\n"
    lines[7_000] = b'{"request_id": 7}\n'
    lines[9_000] = event(9_000, "ml", "1e300")  # a float, but no cost a row can hold
    results = {}
    for parallel in (False, True):
        data = tmp_path / str(parallel)
        data.mkdir()
        (data / "events.jsonl").write_bytes(b"".join(lines))
        monkeypatch.setattr(index, "PARALLEL_BYTES", 0 if parallel else 1 << 40)
        warned: list[str] = []
        db = index.connect(data)
        assert index.update(db, data, warn=warned.append) == 12_345
        results[parallel] = (
            reports.report(db, ["team"]), warned,
            db.execute("SELECT offset FROM skipped_lines ORDER BY offset").fetchall(),
            db.execute("SELECT COUNT(*) FROM events").fetchone()[0],
        )
    assert results[True] == results[False]
    assert results[True][3] == 12_342 and len(results[True][1]) == 3
    assert results[True][1][2].endswith("at offset " + str(sum(map(len, lines[:9_000]))) + ": a cost is out of range")
