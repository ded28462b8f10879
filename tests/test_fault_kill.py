"""
Fault suite: kill -9 of the proxy under 200 concurrent calls, again and again, with
--fsync always. Every call the client saw complete has its event; every line of every
segment parses; a restart serves, repairs a torn tail with one warning, and its budget
ledger matches the log.
"""

from __future__ import annotations

import json
import signal
import sys
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest_twisted
from twisted.internet.threads import deferToThread

from tests import processes, rawhttp
from tests.test_twistd import free_port

KILLS = 10
CONCURRENCY = 200
#: Calls completed between two kills: a kill lands with about 200 calls in flight.
CALLS_PER_ROUND = 400


def events(data_dir: Path) -> list[dict[str, Any]]:
    found = []
    for path in sorted(data_dir.glob("events-*.jsonl")) + [data_dir / "events.jsonl"]:
        if path.exists():
            text = path.read_text()
            assert text == "" or text.endswith("\n"), path
            found += [json.loads(line) for line in text.splitlines()]  # every line parses
    return found


@pytest_twisted.ensureDeferred
async def test_kill_9_under_load_loses_no_answered_call(tmp_path: Path, upstream: Any) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    budget = {"budgets": [{"team": "load", "app": "", "monthly_limit": 1_000_000, "action": "warn"}]}
    (data_dir / "budgets.json").write_text(json.dumps(budget))
    port = free_port()
    client = processes.Running([sys.executable, str(Path(__file__).parent / "loadclient.py"), str(port), str(CONCURRENCY)])
    cut_calls = 0
    try:
        for _ in range(KILLS):
            proxy = processes.proxy(port, data_dir, upstream.url, "--fsync", "always")
            await deferToThread(proxy.wait_for, processes.listening)
            target = client.count("ok ") + CALLS_PER_ROUND
            await deferToThread(client.wait_for, lambda lines, target=target: sum(l.startswith("ok ") for l in lines) >= target)
            assert proxy.stop(signal.SIGKILL) == -signal.SIGKILL
        answered = {line.split()[1] for line in client.lines if line.startswith("ok ")}
    finally:
        client.stop(signal.SIGTERM)
    recorded = events(data_dir)
    ids = [event["request_id"] for event in recorded]
    assert len(ids) == len(set(ids))  # each call once
    missing = answered - set(ids)
    assert not missing, f"{len(missing)} answered calls have no event"
    cut_calls = len(set(ids) - answered)  # recorded, but cut by a kill before the client saw them whole
    assert len(answered) >= KILLS * CALLS_PER_ROUND

    # A torn tail (a power cut mid-write) is cut off at the next start, with one warning.
    with open(data_dir / "events.jsonl", "ab") as live:
        live.write(b'{"timestamp":"2026-11-30T00:00:00.000000Z","request_id":"torn')
    proxy = processes.proxy(port, data_dir, upstream.url, "--fsync", "always")
    try:
        await deferToThread(proxy.wait_for, processes.listening)
        assert sum("Cut a torn last line" in line for line in proxy.lines) == 1
        answer = await deferToThread(rawhttp.exchange, port, b"GET /budgets HTTP/1.1\r\nHost: p\r\nConnection: close\r\n\r\n")
        standing = json.loads(rawhttp.body_of(answer))
        spend = Decimal(standing["budgets"][0]["spend_usd"])
        logged = sum(Decimal(str(e["cost_usd"])) for e in events(data_dir) if e["team"] == "load" and e["cost_usd"])
        assert spend == logged
        chat = json.dumps({"model": "gpt-4o", "messages": []}).encode()
        served = await deferToThread(rawhttp.exchange, port, rawhttp.post(b"/v1/chat/completions", chat))
        assert rawhttp.status_of(served) == 200
    finally:
        assert proxy.stop(signal.SIGTERM) == 0
    print(f"{KILLS} kills: {len(answered)} calls answered, all recorded; {cut_calls} recorded but cut by a kill")
