"""
systemd: the shipped units verify, and modeltrack started by systemd-socket-activate
serves through the inherited socket and tells systemd when it is ready and stopping.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import openai
import pytest_twisted
from twisted.internet.threads import deferToThread

from tests.test_twistd import environment, free_port

REPO = Path(__file__).resolve().parent.parent
TWISTD = str(Path(sys.executable).parent / "twistd")


def test_units_verify(tmp_path: Path) -> None:
    """
    systemd-analyze verify on every unit and the TLS and admin token drop-ins, with the install path
    pointing at this venv (verify checks that ExecStart's program exists).
    """
    venv = str(Path(sys.executable).parent.parent)
    for unit in (REPO / "systemd").glob("modeltrack*.*"):
        text = unit.read_text().replace("/opt/modeltrack/venv", venv)
        (tmp_path / unit.name).write_text(text)
    dropins = tmp_path / "modeltrack.service.d"
    dropins.mkdir()
    for dropin in ("tls.conf", "admin-token.conf"):
        (dropins / dropin).write_text((REPO / "systemd" / dropin).read_text().replace("/opt/modeltrack/venv", venv))
    units = sorted(str(p) for p in tmp_path.glob("modeltrack*.*") if p.is_file())
    assert len(units) == 4
    # The unit path makes verify read the drop-in directory too (a trailing ":" keeps
    # the system's own unit directories after it).
    env = {**os.environ, "SYSTEMD_UNIT_PATH": f"{tmp_path}:"}
    done = subprocess.run(["systemd-analyze", "verify", *units], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr
    problems = [line for line in done.stderr.splitlines() if "modeltrack" in line]
    assert problems == [], problems


@pytest_twisted.ensureDeferred
async def test_socket_activation_and_readiness(tmp_path: Path, upstream: Any) -> None:
    port = free_port()
    notify_path = tmp_path / "notify.sock"
    notify_socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify_socket.bind(str(notify_path))
    notify_socket.settimeout(30)
    process = subprocess.Popen(
        [
            shutil.which("systemd-socket-activate") or "systemd-socket-activate",
            "-l", f"127.0.0.1:{port}", "--fdname=proxy",
            "-E", "PYTHONPATH", "-E", "NOTIFY_SOCKET", "-E", "MODELTRACK_ADMIN_LISTEN",
            TWISTD, "-n", "--pidfile=", "modeltrack",
            "--listen", "systemd:domain=INET:name=proxy",
            "--data-dir", str(tmp_path / "data"), "--openai-url", upstream.url,
        ],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd="/tmp",
        env=environment(NOTIFY_SOCKET=str(notify_path)),
    )
    try:
        # systemd-socket-activate starts the service on the first connection: the
        # first call is served through the inherited socket by a process started for it.
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="sk-x", max_retries=0)
        completion = await deferToThread(client.chat.completions.create, model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
        assert completion.usage.total_tokens == 1500
        ready = await deferToThread(notify_socket.recv, 4096)
        assert ready.startswith(b"READY=1") and f"MAINPID={process.pid}".encode() in ready
        process.send_signal(signal.SIGTERM)
        stopping = await deferToThread(notify_socket.recv, 4096)
        assert stopping == b"STOPPING=1"
        await deferToThread(process.wait, 30)
    finally:
        if process.poll() is None:
            process.kill()
        notify_socket.close()
    [event] = [json.loads(l) for l in (tmp_path / "data" / "events.jsonl").read_text().splitlines()]
    assert event["outcome"] == "ok"
