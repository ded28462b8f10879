"""
--workers as users run it: real twistd processes, one supervisor binding the port and
two workers accepting on it. Both serve and each writes its own series of the event log,
which every reader sees whole; a worker killed with -9 is replaced; SIGHUP reaches every
worker; SIGTERM stops them all and the supervisor exits 0.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest_twisted
from twisted.internet.threads import deferToThread

from tests import rawhttp
from tests.processes import Running
from tests.test_shared_ledger import free_port
from tests.test_twistd import REPO, TWISTD, environment

CALL = json.dumps({"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}).encode()


def call(port: int) -> int:
    # A connection per call: the kernel hands each to whichever worker accepts first.
    answer = rawhttp.exchange(port, rawhttp.post(b"/v1/chat/completions", CALL, b"Authorization: Bearer sk-x\r\n"))
    return rawhttp.status_of(answer)


def worker_pids(supervisor: int) -> list[int]:
    found = subprocess.run(["pgrep", "-P", str(supervisor)], capture_output=True, text=True).stdout.split()
    return sorted(int(pid) for pid in found)


@pytest_twisted.ensureDeferred
async def test_workers_share_the_port_and_the_log(tmp_path: Path, upstream: Any) -> None:
    port, admin = free_port(), free_port()
    data = tmp_path / "data"
    proxy = Running(
        [*TWISTD, "-n", "--pidfile=", "modeltrack", "--listen", f"tcp:{port}:interface=127.0.0.1:backlog=512",
         "--data-dir", str(data), "--openai-url", upstream.url, "--anthropic-url", upstream.url,
         "--workers", "2", "--admin-listen", f"tcp:{admin}:interface=127.0.0.1", "--fsync", "always"],  # an answer is whole once its event is on disk
        env=environment(),
    )

    def scenario() -> None:
        # Blocking: on a thread, while the reactor serves the fake upstream.
        proxy.wait_for(lambda lines: any("with 2 workers" in line for line in lines))
        workers = worker_pids(proxy.process.pid)
        assert len(workers) == 2
        assert all(call(port) == 200 for _ in range(200))
        series = {path.name: len(path.read_text().splitlines()) for path in data.glob("events*.jsonl")}
        assert set(series) == {"events.jsonl", "events.w1.jsonl"} and sum(series.values()) == 200
        assert min(series.values()) > 20, series  # both workers served
        # /stats counts the whole tree, whichever worker answers (peers' totals are a
        # second old at most: asked until they have arrived).
        for _ in range(100):
            stats = json.loads(rawhttp.body_of(rawhttp.exchange(port, b"GET /stats HTTP/1.1\r\nHost: p\r\nConnection: close\r\n\r\n")))
            if stats["events"] == 200:
                break
            time.sleep(0.05)
        assert (stats["events"], stats["workers"], stats["outcomes"]) == (200, 2, {"ok": 200})
        for _ in range(100):  # worker 0's admin counts both, once the other's totals have arrived
            metrics = rawhttp.body_of(rawhttp.exchange(admin, b"GET /metrics HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"))
            served = [line for line in metrics.decode().splitlines() if line.startswith("modeltrack_requests_total{")]
            if sum(float(line.rsplit(" ", 1)[1]) for line in served) == 200:
                break
            time.sleep(0.05)
        assert sum(float(line.rsplit(" ", 1)[1]) for line in served) == 200
        # A worker killed: replaced, and the port keeps answering meanwhile.
        os.kill(workers[0], signal.SIGKILL)
        proxy.wait_for(lambda lines: any("ended" in line and "starting another" in line for line in lines))
        assert all(call(port) == 200 for _ in range(50))
        proxy.wait_for(lambda lines: any("worker 0 ready" in line for line in lines) or len(worker_pids(proxy.process.pid)) == 2)
        proxy.process.send_signal(signal.SIGHUP)
        proxy.wait_for(lambda lines: sum("SIGHUP: reloading" in line for line in lines) >= 2)

    try:
        await deferToThread(scenario)
    finally:
        code = await deferToThread(proxy.stop, signal.SIGTERM)
    assert code == 0, "".join(proxy.lines[-20:])
    assert any("2 workers ended" in line for line in proxy.lines)
    # Every reader sees every worker's events once: the report's request count.
    report = await deferToThread(
        subprocess.run,
        [sys.executable, "-m", "modeltrack.cli", "report", "--data-dir", str(data), "--by", "provider", "--format", "json"],
        capture_output=True, text=True, timeout=120, env=environment(), cwd=REPO,
    )
    assert sum(row["requests"] for row in json.loads(report.stdout)) == 250


def test_more_than_one_worker_under_a_block_budget_needs_redis(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "budgets.json").write_text(json.dumps({"budgets": [{"team": "ml", "monthly_limit": 5}]}))
    done = subprocess.run(
        [*TWISTD, "-n", "--pidfile=", "modeltrack", "--data-dir", str(data), "--workers", "2",
         "--listen", f"tcp:{free_port()}:interface=127.0.0.1"],
        capture_output=True, text=True, timeout=60, env=environment(), cwd="/tmp",
    )
    assert done.returncode != 0
    assert "modeltrack: --workers: more than one worker under a block budget needs a shared ledger: give --redis-url" in done.stderr


STREAM = json.dumps({"model": "hang-body", "stream": True, "messages": [{"role": "user", "content": "hi"}]}).encode()


def open_stream(port: int, opened: threading.Barrier) -> socket.socket:
    """A stream opened at the same instant as the others; returned once its first chunk came."""
    connection = socket.create_connection(("127.0.0.1", port), timeout=30)
    opened.wait()
    connection.sendall(rawhttp.post(b"/v1/chat/completions", STREAM, b"Authorization: Bearer sk-x\r\n"))
    received = b""
    while b"data:" not in received:
        received += connection.recv(65536)
    return connection


@pytest_twisted.ensureDeferred
async def test_a_burst_of_streams_spreads_across_workers(reactor: Any, tmp_path: Path, upstream: Any) -> None:
    """
    24 streams opened together through 2 workers: no worker takes more than 60 % of
    them (a worker accepts one connection each time it is woken, and none while it
    holds more than the least loaded worker, so a burst is not swallowed by the first
    worker awake).
    """
    port = free_port()
    data = tmp_path / "data"
    proxy = Running(
        [*TWISTD, "-n", "--pidfile=", "modeltrack", "--listen", f"tcp:{port}:interface=127.0.0.1:backlog=512",
         "--data-dir", str(data), "--openai-url", upstream.url, "--anthropic-url", upstream.url,
         "--workers", "2", "--admin-listen", "none"],
        env=environment(),
    )

    def burst() -> list[socket.socket]:
        proxy.wait_for(lambda lines: any("with 2 workers" in line for line in lines))
        opened = threading.Barrier(24)
        with ThreadPoolExecutor(24) as pool:
            return list(pool.map(lambda _: open_stream(port, opened), range(24)))

    def counted() -> dict[str, int]:
        series: dict[str, int] = {}
        for _ in range(200):
            series = {path.name: len(path.read_text().splitlines()) for path in data.glob("events*.jsonl")}
            if sum(series.values()) == 24:
                return series
            time.sleep(0.05)
        raise AssertionError(series)

    try:
        streams = await deferToThread(burst)
        for request, rest in upstream.resource.open_requests:  # every stream ends now
            for chunk in rest:
                request.write(chunk)
            request.finish()
        for connection in streams:
            connection.close()
        series = await deferToThread(counted)
    finally:
        await deferToThread(proxy.stop, signal.SIGTERM)
    assert max(series.values()) <= 24 * 0.6, series
