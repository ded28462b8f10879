"""
modeltrack as users run it: C{twistd -n --pidfile= modeltrack} in its own process.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import openai
import pytest
import pytest_twisted
from twisted.internet.threads import deferToThread

REPO = Path(__file__).resolve().parent.parent
TWISTD = [str(Path(sys.executable).parent / "twistd")]


def environment(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODELTRACK_")}
    # The source tree first: its twisted/plugins and modeltrack are what is tested.
    env["PYTHONPATH"] = str(REPO)
    # Each instance's admin listener on a port of its own, so instances never collide.
    env["MODELTRACK_ADMIN_LISTEN"] = "tcp:0:interface=127.0.0.1"
    env.update(extra)
    return env


def twistd(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*TWISTD, *args], capture_output=True, text=True, env=environment(**env), timeout=60, cwd="/tmp"
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_twistd_lists_and_documents_the_plugin() -> None:
    listing = twistd("--help")
    assert listing.returncode == 0
    assert "modeltrack" in listing.stdout
    help_text = twistd("modeltrack", "--help").stdout
    for option in ("--listen", "--data-dir", "--openai-url", "--anthropic-url", "--fsync", "--rotate-mb"):
        assert option in help_text


@pytest.mark.parametrize(
    "args, option",
    [
        (["--listen", "tcp:notaport"], "--listen"),
        (["--openai-url", "ftp://example.com"], "--openai-url"),
        (["--anthropic-url", "api.anthropic.com"], "--anthropic-url"),
        (["--data-dir", "/etc/hostname/data"], "--data-dir"),
        (["--fsync", "sometimes"], "--fsync"),
        (["--rotate-mb", "-1"], "--rotate-mb"),
        (["--listen-tls", "tcp:0"], "--listen-tls"),
        (["--tls-cert", "/etc/hostname", "--tls-key", "/etc/hostname"], "--tls-cert"),
        (["--log-format", "xml"], "--log-format"),
    ],
)
def test_bad_values_stop_start_up_with_one_line(args: list[str], option: str, tmp_path: Path) -> None:
    data = ["--data-dir", str(tmp_path)] if option != "--data-dir" else []
    result = twistd("-n", "--pidfile=", "modeltrack", *data, *args)
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"modeltrack: {option}")
    assert not (tmp_path / "events.jsonl").exists()


def test_port_in_use_is_one_line(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = twistd("-n", "--pidfile=", "modeltrack", "--data-dir", str(tmp_path), "--listen", f"tcp:{port}:interface=127.0.0.1")
    assert result.returncode != 0
    # By then twistd's logging has taken over stderr: the line arrives as a log line.
    [line] = [l for l in (result.stdout + result.stderr).splitlines() if "modeltrack: --listen" in l]
    assert "Address already in use" in line


def test_an_admin_port_in_use_names_its_option_and_nothing_serves(tmp_path: Path) -> None:
    proxy_port = free_port()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        admin = f"tcp:{taken.getsockname()[1]}:interface=127.0.0.1"
        result = twistd(
            "-n", "--pidfile=", "modeltrack", "--data-dir", str(tmp_path),
            "--listen", f"tcp:{proxy_port}:interface=127.0.0.1", "--admin-listen", admin,
        )
    output = (result.stdout + result.stderr).splitlines()
    assert result.returncode != 0
    [line] = [l for l in output if "modeltrack: --admin-listen" in l]
    assert "Address already in use" in line
    assert not [l for l in output if "--listen:" in l or "listening on" in l]


@pytest_twisted.ensureDeferred
async def test_run_serve_and_stop_gracefully(tmp_path: Path, upstream: Any) -> None:
    """
    Configured from the environment, serving the OpenAI SDK, then SIGTERM: exit 0 and
    the event on disk.
    """
    port = free_port()
    process = subprocess.Popen(
        [*TWISTD, "-n", "--pidfile=", "modeltrack", "--fsync", "never", "--access-log"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd="/tmp",
        env=environment(
            MODELTRACK_LISTEN=f"tcp:{port}:interface=127.0.0.1",
            MODELTRACK_DATA_DIR=str(tmp_path),
            MODELTRACK_OPENAI_URL=upstream.url,
        ),
    )
    output: list[str] = []
    try:
        assert process.stdout is not None
        while True:
            line = await deferToThread(process.stdout.readline)
            assert line, "twistd exited: " + "".join(output)
            output.append(line)
            if "modeltrack listening on" in line:
                break
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="sk-test", max_retries=0)
        completion = await deferToThread(
            client.chat.completions.create, model="gpt-4o", messages=[{"role": "user", "content": "hi"}]
        )
        assert completion.usage.total_tokens == 1500
        process.send_signal(signal.SIGTERM)
        rest = await deferToThread(process.stdout.read)
        output.append(rest)
        code = await deferToThread(process.wait, 30)
    finally:
        if process.poll() is None:
            process.kill()
    assert code == 0, "".join(output)
    assert "Server Shut Down." in "".join(output)
    [event] = [json.loads(l) for l in (tmp_path / "events.jsonl").read_text().splitlines()]
    assert event["outcome"] == "ok" and event["input_tokens"] == 1200
    log = "".join(output)
    assert "POST /v1/chat/completions 200" in log
    assert "sk-test" not in log


@pytest_twisted.ensureDeferred
async def test_json_logs(tmp_path: Path) -> None:
    port = free_port()
    process = subprocess.Popen(
        [*TWISTD, "-n", "--pidfile=", "modeltrack", "--log-format", "json", "--access-log",
         "--listen", f"tcp:{port}:interface=127.0.0.1", "--data-dir", str(tmp_path)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd="/tmp", env=environment(),
    )
    assert process.stdout is not None
    lines = []
    try:
        while True:
            line = await deferToThread(process.stdout.readline)
            assert line, "".join(lines)
            lines.append(line)
            if "listening on" in line:
                break
        import urllib.request

        await deferToThread(urllib.request.urlopen, f"http://127.0.0.1:{port}/healthz")
        process.send_signal(signal.SIGTERM)
        lines += (await deferToThread(process.stdout.read)).splitlines(keepends=True)
        await deferToThread(process.wait, 30)
    finally:
        if process.poll() is None:
            process.kill()
    records = [json.loads(line) for line in lines if line.strip()]
    access = [r for r in records if r.get("namespace") == "modeltrack.access"]
    assert access and access[0]["path"] == "/healthz" and access[0]["status"] == 200
    assert access[0]["message"].startswith("GET /healthz 200 ")
    for record in records:
        # One flat object: readable fields, no Twisted internals.
        assert list(record)[:4] == ["time", "level", "namespace", "message"]
        assert record["time"].endswith("Z") and "T" in record["time"]
        assert record["level"] in ("debug", "info", "warn", "error", "critical")
        assert not any(key.startswith(("log_", "__")) or key == "unpersistable" for key in record)
        assert all(not isinstance(value, (dict, list)) for value in record.values())
