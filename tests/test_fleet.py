"""
The fleet's store on a real PostgreSQL server: two instances' logs shipped exactly once
(sealed segments and a live file, shipped again and again, a batch that dies before its
commit, checkpoints set back to the start), the store's rollups equal to the sum of its
raw events and of both logs, raw events in monthly partitions.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
import treq
from twisted.internet.defer import ensureDeferred, gatherResults
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread

from modeltrack import cli
from modeltrack.store import fleet
from tests import postgres, processes
from tests.conftest import start_proxy
from tests.test_dashboard import CHROMIUM, OUTPUT, Found, chromium, shown
from tests.test_shared_ledger import CALL, free_port

pytestmark = pytest.mark.skipif(not postgres.available(), reason="tools/install-test-tools.sh installs postgresql")


@pytest.fixture(scope="module")
def server() -> Any:
    running = postgres.PostgresServer()
    yield running
    running.remove()


def event(n: int, instance: str, day: str, team: str, session: str | None, cost: str | None) -> str:
    return json.dumps({
        "timestamp": f"{day}T1{n % 10}:00:0{n % 10}.{n:06d}Z", "request_id": f"mt_{instance}_{n}", "provider": "openai",
        "endpoint": "/v1/chat/completions", "route_class": "metered", "model": "gpt-4o" if n % 3 else "gpt-4o-mini",
        "team": team, "app": "bot", "feature": None, "session_id": session, "key_id": f"k_{n % 4}", "key_name": None,
        "client": "openai-python/2", "outcome": "ok", "input_tokens": 100 + n, "output_tokens": 10 + n, "cache_read_tokens": 0,
        "cache_write_tokens": 0, "reasoning_tokens": 0, "cost_usd": None if cost is None else float(cost),
        "priced": cost is not None, "cache_hit": False, "latency_ms": 12.5,
    }) + "\n"


def write_log(data: Path, instance: str, count: int) -> tuple[int, Decimal]:
    """An instance's log over two months: a sealed segment per day, today's live file."""
    data.mkdir(parents=True, exist_ok=True)
    days = ["2026-11-29", "2026-11-30", "2026-12-01", "2026-12-02"]
    total = Decimal(0)
    for n in range(count):
        day = days[n * len(days) // count]
        cost = None if n % 17 == 0 else "0.00472"
        total += Decimal(cost or 0)
        name = "events.jsonl" if day == days[-1] else f"events-{day.replace('-', '')}T000000.000000Z.jsonl"
        with (data / name).open("a") as f:
            f.write(event(n, instance, day, ["ml", "web", None][n % 3], f"s{n % 9}" if n % 2 else None, cost))
    return count, total


def empty(server: postgres.PostgresServer) -> None:
    """The store's tables made, and emptied."""
    fleet.connect(server.url).close()
    server.query("TRUNCATE events, daily, daily_models, session_days, shipped, instances")


def store_totals(server: postgres.PostgresServer) -> dict[str, Any]:
    [(events, raw_cost)] = server.query("SELECT count(*), coalesce(sum(cost_pico), 0) FROM events")
    [(daily_requests, daily_cost)] = server.query("SELECT sum(requests), sum(cost_pico) FROM daily")
    [(models_requests, models_cost)] = server.query("SELECT sum(requests), sum(cost_pico) FROM daily_models")
    [(session_requests,)] = server.query("SELECT coalesce(sum(requests), 0) FROM session_days")
    [(raw_sessions,)] = server.query("SELECT count(*) FROM events WHERE session_id IS NOT NULL")
    return {
        "events": int(events), "raw_cost": int(raw_cost), "daily": (int(daily_requests), int(daily_cost)),
        "models": (int(models_requests), int(models_cost)), "sessions": (int(session_requests), int(raw_sessions)),
    }


def test_two_instances_ship_exactly_once(server: postgres.PostgresServer, tmp_path: Path, monkeypatch: Any, capsys: Any) -> None:
    calls_a, cost_a = write_log(tmp_path / "a", "a", 12_000)  # more than two batches
    calls_b, cost_b = write_log(tmp_path / "b", "b", 3_000)
    conn = fleet.connect(server.url)
    assert fleet.ship(conn, tmp_path / "a", "a") == calls_a
    # A batch that dies between its insert and its commit (a kill -9, a lost
    # connection): nothing of it stays, and its checkpoint did not move.
    real = fleet._ship_batch
    calls = {"n": 0}

    def dying(*args: Any) -> int:
        calls["n"] += 1
        if calls["n"] == 1:
            with args[0].transaction():
                args[0].execute("CREATE TEMP TABLE IF NOT EXISTS incoming (LIKE events) ON COMMIT DELETE ROWS")
                args[0].execute("INSERT INTO events_2026_11 SELECT * FROM events_2026_11 LIMIT 0")
                raise ConnectionError("killed mid-batch")
        return real(*args)

    monkeypatch.setattr(fleet, "_ship_batch", dying)
    with pytest.raises(ConnectionError):
        fleet.ship(conn, tmp_path / "b", "b")
    monkeypatch.setattr(fleet, "_ship_batch", real)
    assert fleet.ship(conn, tmp_path / "b", "b") == calls_b
    assert fleet.ship(conn, tmp_path / "a", "a") == 0 and fleet.ship(conn, tmp_path / "b", "b") == 0  # nothing new
    # Checkpoints lost (set back to the start): every line is read again, none counted again.
    server.query('UPDATE shipped SET "offset" = 0, sealed = false')
    assert fleet.ship(conn, tmp_path / "a", "a") == 0 and fleet.ship(conn, tmp_path / "b", "b") == 0
    # More lines in a's live file: only they go.
    with (tmp_path / "a" / "events.jsonl").open("a") as f:
        f.write(event(99_999, "a", "2026-12-02", "ml", "s1", "1.5"))
    assert fleet.ship(conn, tmp_path / "a", "a") == 1
    conn.close()

    totals = store_totals(server)
    expected_cost = int((cost_a + cost_b + Decimal("1.5")) * 10**12)
    assert totals["events"] == calls_a + calls_b + 1 and totals["raw_cost"] == expected_cost
    assert totals["daily"] == totals["models"] == (totals["events"], expected_cost)  # the rollups are the raw sums
    assert totals["sessions"][0] == totals["sessions"][1]
    partitions = {name for (name,) in server.query("SELECT tablename FROM pg_tables WHERE tablename LIKE 'events_2026_%'")}
    assert partitions == {"events_2026_11", "events_2026_12"}
    instances = dict(server.query("SELECT instance, events FROM instances"))
    assert instances == {"a": str(calls_a + 1), "b": str(calls_b)}
    # The fleet in one report, from the store's rollups (no data dir of its own).
    assert cli.main(["report", "--store", server.url, "--by", "team", "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert sum(row["requests"] for row in rows) == calls_a + calls_b + 1
    assert sum(Decimal(row["cost_usd"]) for row in rows) == cost_a + cost_b + Decimal("1.5")
    assert {row["team"] for row in rows} == {"ml", "web", None}
    assert cli.main(["sessions", "--store", server.url, "--top", "3", "--format", "json"]) == 0
    top = json.loads(capsys.readouterr().out)
    sessions = dict(server.query("SELECT session_id, sum(requests) FROM session_days GROUP BY 1"))
    assert len(top) == 3 and all(row["requests"] == int(sessions[row["session_id"]]) for row in top)
    models = dict(server.query("SELECT session_id, string_agg(DISTINCT model, ',' ORDER BY model) FROM events GROUP BY 1"))
    assert all(row["models"] == models[row["session_id"]].split(",") for row in top)


def child_of(pid: int) -> int:
    """The index process a proxy runs."""
    found = subprocess.run(["pgrep", "-P", str(pid), "-f", "modeltrack.cli index"], capture_output=True, text=True).stdout.split()
    return int(found[0])


def logged(data: Path) -> set[str]:
    return {json.loads(line)["request_id"] for path in data.glob("events*.jsonl") for line in path.read_text().splitlines()}


@pytest_twisted.ensureDeferred
async def test_a_fleet_ships_through_an_outage_and_a_kill(reactor: Any, tmp_path: Path, upstream: Any, server: Any) -> None:
    """
    Two instances run by twistd with --store while PostgreSQL is down: 5,000 calls
    served and logged; the server comes back and the store holds exactly the events of
    both logs. Then 3,000 more calls to one instance with the server down again, the
    server back and that instance's shipper and the instance itself killed with -9 as it
    ships, the instance started again: still exactly the events of both logs.
    """
    empty(server)
    server.stop()
    ports = {name: free_port() for name in ("a", "b")}
    options = ("--store", server.url, "--index-seconds", "0.2")
    running = {name: processes.proxy(port, tmp_path / name, upstream.url, *options) for name, port in ports.items()}

    def count() -> int:
        return int(server.query("SELECT count(*) FROM events")[0][0])

    async def calls(names: list[str], total: int) -> list[int]:
        async def one(n: int) -> int:
            response = await treq.post(f"http://127.0.0.1:{ports[names[n % len(names)]]}/v1/chat/completions", data=CALL,
                                       headers={"Authorization": "Bearer sk-x", "Content-Type": "application/json"})
            await response.content()
            return int(response.code)
        codes = []
        for start in range(0, total, 50):
            codes += await gatherResults([ensureDeferred(one(n)) for n in range(start, min(start + 50, total))])
        return codes

    async def until_stored(expected: int) -> None:
        for _ in range(600):
            try:
                if count() == expected:
                    return
            except subprocess.CalledProcessError:
                pass
            await deferLater(reactor, 0.1, lambda: None)
        raise AssertionError(f"the store holds {count()} events, not {expected}")

    try:
        for proxy in running.values():
            await deferToThread(proxy.wait_for, processes.listening)
        assert set(await calls(["a", "b"], 5000)) == {200}
        server.start()
        await until_stored(5000)
        stored = {row[0] for row in server.query("SELECT request_id FROM events")}
        assert stored == logged(tmp_path / "a") | logged(tmp_path / "b")
        # Down again; 3,000 calls to b; back, and b killed as it ships.
        server.stop()
        assert set(await calls(["b"], 3000)) == {200}
        shipper = child_of(running["b"].process.pid)
        server.start()
        await deferLater(reactor, 0.3, lambda: None)  # its next pass has begun: a batch of 3,000 lines
        os.kill(shipper, signal.SIGKILL)
        os.kill(running["b"].process.pid, signal.SIGKILL)
        await deferToThread(running["b"].stop, signal.SIGKILL)
        running["b"] = processes.proxy(ports["b"], tmp_path / "b", upstream.url, *options)
        await deferToThread(running["b"].wait_for, processes.listening)
        await until_stored(8000)
    finally:
        for proxy in running.values():
            await deferToThread(proxy.stop, signal.SIGTERM)
        if server.query("SELECT 1") is None:
            server.start()
    stored = server.query("SELECT request_id FROM events")
    assert len(stored) == len({row[0] for row in stored}) == 8000  # no duplicate, no gap
    assert {row[0] for row in stored} == logged(tmp_path / "a") | logged(tmp_path / "b")
    totals = store_totals(server)
    assert totals["daily"] == totals["models"] == (8000, totals["raw_cost"])


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is installed by tools/install-test-tools.sh")
@pytest_twisted.ensureDeferred
async def test_the_admin_api_and_dashboard_show_the_fleet(reactor: Any, tmp_path: Path, server: Any) -> None:
    """
    With --store, every page reads the fleet from the store: the teams page's total is
    both instances' spend, and the Fleet page lists each instance with what it shipped.
    """
    empty(server)
    today = date.today()
    for name, count in (("a", 400), ("b", 300)):
        data = tmp_path / name
        data.mkdir()
        with (data / "events.jsonl").open("w") as f:
            for n in range(count):
                f.write(event(n, name, today.isoformat(), ["ml", "web"][n % 2], None, "0.25"))
        conn = fleet.connect(server.url)
        assert fleet.ship(conn, data, name) == count
        conn.close()
    proxy = start_proxy(reactor, tmp_path / "mine", "http://127.0.0.1:9", admin_listen="tcp:0:interface=127.0.0.1",
                        store=server.url)
    profile = tmp_path / "chromium-profile"
    OUTPUT.mkdir(parents=True, exist_ok=True)
    try:
        answer = json.loads(await (await treq.get(proxy.admin_url + "/api/spend?by=team")).content())
        assert sum(row["requests"] for row in answer) == 700 and sum(Decimal(r["cost_usd"]) for r in answer) == 175
        fleet_answer = json.loads(await (await treq.get(proxy.admin_url + "/api/fleet")).content())
        assert fleet_answer["store"] is True
        assert {(row["instance"], row["events"]) for row in fleet_answer["instances"]} >= {("a", 400), ("b", 300)}
        found = {}
        for page in ("teams", "fleet"):
            url = f"{proxy.admin_url}/#{page}"
            dom = await chromium(f"--user-data-dir={profile}", "--dump-dom", url)
            await chromium(f"--user-data-dir={profile}", "--window-size=1280,900", f"--screenshot={OUTPUT}/fleet-{page}.png", url)
            found[page] = Found()
            found[page].feed(dom)
            assert found[page].by_id["page"]["data-state"] == "ready", dom[-2000:]
    finally:
        await proxy.service.stopService()
    assert shown(found["teams"], "total-cost") == Decimal(175)  # both instances' spend, not this one's (none)
    assert found["fleet"].by_id["fleet-events"]["data-value"] == "700"
    assert "Fleet: every instance shipping to the store" in found["fleet"].by_id["page"]["text"]


def test_reconcile_reads_the_store_as_it_reads_the_index(server: postgres.PostgresServer, tmp_path: Path) -> None:
    """The same reports against the same events: the same rows, whether read from this
    instance's index or from the fleet's store."""
    from tests import test_reconcile as r

    empty(server)
    data = tmp_path / "data"
    data.mkdir()
    (data / "keys.json").write_text(json.dumps({"keys": [{"key_id": r.SEARCH.key_id, "name": "search-prod",
                                                         "provider_key_id": "apikey_01search"}]}))
    logged = r.write_events(data, [
        *[("2026-11-20", "anthropic", r.claude(), r.SEARCH, False) for _ in range(3)],
        ("2026-11-20", "anthropic", r.claude(), r.SEARCH, True),
        *[("2026-11-21", "openai", r.gpt(), None, False) for _ in range(2)],
    ])
    conn = fleet.connect(server.url)
    assert fleet.ship(conn, data, "solo") == 6
    conn.close()
    usage_pages, cost = r.anthropic_pages(sum(Decimal(str(e["cost_usd"])) for e in logged[:3]))
    files = []
    for name, document in (("usage", usage_pages), ("cost", cost)):
        (tmp_path / name).write_text(json.dumps(document))
        files += ["--report", str(tmp_path / name)]
    local = r.run(data, *files, "--format", "json")
    stored = r.run(data, *files, "--format", "json", "--store", server.url)
    assert local.returncode == stored.returncode, stored.stderr
    assert json.loads(stored.stdout)["rows"] == json.loads(local.stdout)["rows"] != []


def test_retention_drops_whole_months_of_raw_events_never_rollups(server: postgres.PostgresServer, tmp_path: Path) -> None:
    empty(server)
    write_log(tmp_path / "r", "r", 400)  # November 29-30 and December 1-2
    conn = fleet.connect(server.url)
    assert fleet.ship(conn, tmp_path / "r", "r") == 400
    before = store_totals(server)
    # On 2027-01-15, keeping 20 days: November ended more than 20 days ago, December did not.
    assert fleet.drop_partitions(conn, 20, datetime(2027, 1, 15, tzinfo=UTC)) == ["events_2026_11"]
    conn.close()
    after = store_totals(server)
    assert after["events"] == 200 and after["daily"] == before["daily"] and after["models"] == before["models"]


def test_log_retention_waits_for_the_store_to_hold_a_segment(server: postgres.PostgresServer, tmp_path: Path, capsys: Any) -> None:
    empty(server)
    data = tmp_path / "k"
    write_log(data, "k", 300)
    sealed = sorted(data.glob("events-*.jsonl"))
    old = datetime.now(UTC).timestamp() - 45 * 86400
    for path in sealed:
        os.utime(path, (old, old))
    # Indexed whole, but the store is out of reach: every segment is kept.
    away = "postgresql://postgres@127.0.0.1:1/fleet"
    assert cli.main(["index", "--data-dir", str(data), "--log-retain-days", "30", "--store", away]) == 0
    out = capsys.readouterr()
    assert out.out.splitlines()[1:] == ["shipped 0 events to the fleet's store", "dropped 0 raw rows, deleted 0 sealed segments"]
    assert "cannot be reached" in out.err and all(path.exists() for path in sealed)
    # Shipped whole: now they go; the live file stays, and the store holds every event.
    assert cli.main(["index", "--data-dir", str(data), "--log-retain-days", "30", "--store", server.url]) == 0
    assert capsys.readouterr().out.splitlines()[1:] == [
        "shipped 300 events to the fleet's store", f"dropped 0 raw rows, deleted {len(sealed)} sealed segments"]
    assert len(sealed) == 3 and not any(path.exists() for path in sealed) and (data / "events.jsonl").exists()
    assert store_totals(server)["events"] == 300


def test_the_store_is_reached_over_tls_verified_against_the_ca_bundle(
    server: postgres.PostgresServer, tmp_path: Path, capsys: Any,
) -> None:
    from tests.test_listen_tls import ca_and_server

    bundle, cert, key, _, _ = ca_and_server(tmp_path, "store CA")
    empty(server)
    server.serve_tls(cert, key)
    try:
        url = f"postgresql://postgres@localhost:{server.port}/fleet?sslmode=verify-full"
        for name, trusted in (("untrusted", False), ("trusted", True)):
            write_log(tmp_path / name, name, 40)
            argv = ["index", "--data-dir", str(tmp_path / name), "--store", url]
            assert cli.main(argv + (["--ca-bundle", str(bundle)] if trusted else [])) == 0
            out = capsys.readouterr()
            # Without the CA, libpq's own roots do not know this certificate: nothing is sent.
            assert f"shipped {40 if trusted else 0} events" in out.out
            assert ("cannot be reached" in out.err) is not trusted
        assert store_totals(server)["events"] == 40
    finally:
        server.serve_tls(None)


def test_a_sealed_live_file_ships_on_from_its_checkpoint(server: postgres.PostgresServer, tmp_path: Path, monkeypatch: Any) -> None:
    empty(server)
    data = tmp_path / "c"
    data.mkdir()
    live = data / "events.jsonl"
    live.write_text("".join(event(n, "c", "2026-12-01", "ml", None, "0.001") for n in range(30)))
    conn = fleet.connect(server.url)
    assert fleet.ship(conn, data, "c") == 30
    shipped_to = live.stat().st_size
    # The journal seals the live file (a rename: same inode) and starts a new one.
    segment = data / "events-20261201T000000.000000Z.jsonl"
    with live.open("a") as f:
        f.write("".join(event(n, "c", "2026-12-01", "ml", None, "0.001") for n in range(30, 40)))
    live.rename(segment)
    live.write_text(event(40, "c", "2026-12-01", "ml", None, "0.001"))
    read_from: dict[str, int] = {}
    batches = fleet._batches

    def watched(path: Path, offset: int, instance: str) -> Any:
        read_from[path.name] = offset
        return batches(path, offset, instance)

    monkeypatch.setattr(fleet, "_batches", watched)
    assert fleet.ship(conn, data, "c") == 11
    conn.close()
    # The segment is read on from the live file's checkpoint, not again from its start.
    assert read_from == {segment.name: shipped_to, "events.jsonl": 0}
    assert store_totals(server)["events"] == 41
