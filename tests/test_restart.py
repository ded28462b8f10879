"""
A restart that loses nothing: one listening socket held outside modeltrack (as systemd's
socket unit holds it), instance A serving it under load, instance B started on the same
socket, then A stopped with SIGTERM mid-run. No client sees an error, and the events
written by A and B together equal the calls made.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import threading
from collections import Counter
from pathlib import Path
from typing import Any

import openai
import pytest_twisted
from twisted.internet.threads import deferToThread

from tests.test_twistd import environment

TWISTD = str(Path(sys.executable).parent / "twistd")
# systemd's protocol: the socket is fd 3, and LISTEN_PID names the process it is for,
# which is only known once the process exists.
ACTIVATE = (
    "import os, sys; os.dup2(int(sys.argv[1]), 3); os.environ['LISTEN_FDS'] = '1'; os.environ['LISTEN_FDNAMES'] = 'proxy'; "
    "os.environ['LISTEN_PID'] = str(os.getpid()); os.execv(sys.argv[2], sys.argv[2:])"
)


def start(listener: socket.socket, data_dir: Path, upstream_url: str) -> subprocess.Popen[str]:
    fd = listener.fileno()
    process = subprocess.Popen(
        [sys.executable, "-c", ACTIVATE, str(fd), TWISTD, "-n", "--pidfile=", "modeltrack",
         "--listen", "systemd:domain=INET:index=0", "--data-dir", str(data_dir),
         "--openai-url", upstream_url, "--anthropic-url", upstream_url, "--drain-seconds", "20"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, pass_fds=(fd,), cwd="/tmp",
        env=environment(),
    )
    assert process.stdout is not None
    for line in process.stdout:
        if "modeltrack listening on" in line:
            return process
    raise AssertionError("modeltrack did not start")


def events(data_dir: Path) -> list[dict[str, Any]]:
    found = []
    for path in sorted(data_dir.glob("events*.jsonl")):
        found += [json.loads(line) for line in path.read_text().splitlines()]
    return found


@pytest_twisted.ensureDeferred
async def test_sigterm_under_load_with_a_second_instance(tmp_path: Path, upstream: Any) -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(512)
    port = listener.getsockname()[1]
    a = await deferToThread(start, listener, tmp_path / "a", upstream.url)
    calls = {"made": 0}
    errors: list[BaseException] = []
    lock = threading.Lock()
    progress = threading.Semaphore(0)
    stop = threading.Event()

    def worker(streaming: bool) -> None:
        # The SDKs' own retry policy (2 retries, on connection errors only, before any
        # answer): what an application pointing at modeltrack gets.
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="sk-x")
        while not stop.is_set():
            try:
                if streaming:
                    chunks = list(client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}], stream=True))
                    assert chunks
                else:
                    client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
            except BaseException as e:
                errors.append(e)
                return
            with lock:
                calls["made"] += 1
            progress.release()

    threads = [threading.Thread(target=worker, args=(i % 2 == 0,)) for i in range(4)]
    for thread in threads:
        thread.start()
    try:
        for _ in range(40):  # some calls through A alone
            await deferToThread(progress.acquire)
        b = await deferToThread(start, listener, tmp_path / "b", upstream.url)
        a.send_signal(signal.SIGTERM)
        await deferToThread(a.wait, 60)
        for _ in range(40):  # and some through B alone
            await deferToThread(progress.acquire)
    finally:
        stop.set()
        for thread in threads:
            await deferToThread(thread.join, 120)
        for process in (a, locals().get("b")):
            if process is not None and process.poll() is None:
                process.send_signal(signal.SIGTERM)
                process.wait(60)
        listener.close()
    assert errors == []
    assert calls["made"] >= 80
    from_a, from_b = events(tmp_path / "a"), events(tmp_path / "b")
    assert from_a and from_b, "both instances served"
    outcomes = Counter((name, e["outcome"]) for name, found in (("a", from_a), ("b", from_b)) for e in found)
    assert len(from_a) + len(from_b) == calls["made"], outcomes
    assert {e["outcome"] for e in from_a + from_b} == {"ok"}
