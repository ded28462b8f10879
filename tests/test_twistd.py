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


def _run_until_ready(tmp_path: Path, twistd_options: list[str], *options: str) -> subprocess.CompletedProcess[str]:
    """
    Run twistd with C{twistd_options}, wait for its READY=1 (systemd's notification,
    on a socket of the test's), make one call, stop it with SIGTERM; its output.
    """
    import urllib.request

    notify_path = tmp_path / "notify"
    notify_path.unlink(missing_ok=True)
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notified:
        notified.bind(str(notify_path))
        notified.settimeout(60)
        port = free_port()
        process = subprocess.Popen(
            [*TWISTD, *twistd_options, "--pidfile=", "modeltrack", "--log-format", "json", "--access-log",
             "--listen", f"tcp:{port}:interface=127.0.0.1", "--data-dir", str(tmp_path / "data"), *options],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=str(tmp_path),
            env=environment(NOTIFY_SOCKET=str(notify_path)),
        )
        try:
            while b"READY=1" not in notified.recv(4096):
                pass
            urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=30).read()
            process.send_signal(signal.SIGTERM)
            out, _ = process.communicate(timeout=60)
        finally:
            if process.poll() is None:
                process.kill()
    return subprocess.CompletedProcess(process.args, process.returncode, out, "")


@pytest.mark.parametrize("workers", ["1", "2"])
def test_logfile_is_where_twistd_says(tmp_path: Path, workers: str) -> None:
    """
    twistd's --logfile FILE: every line there (the workers' too), in the chosen
    format, nothing on standard output; --logfile - and none write to standard output.
    """
    logfile = tmp_path / "modeltrack.log"
    done = _run_until_ready(tmp_path, ["-n", "--logfile", str(logfile)], "--workers", workers)
    assert done.returncode == 0, done.stdout
    records = [json.loads(line) for line in logfile.read_text().splitlines()]
    assert any("listening on" in r["message"] for r in records)
    assert any(r.get("namespace") == "modeltrack.access" and r["path"] == "/healthz" for r in records)
    assert any("modeltrack stopped" in r["message"] for r in records)
    assert not [line for line in done.stdout.splitlines() if line.startswith("{")]
    for twistd_options in (["-n", "--logfile", "-"], ["-n"]):
        done = _run_until_ready(tmp_path, twistd_options)
        records = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
        assert done.returncode == 0 and any("listening on" in r["message"] for r in records)


def test_twistd_logging_options_that_cannot_work(tmp_path: Path) -> None:
    for argv, problem in (
        (["--logfile", "-"], "modeltrack: --logfile: daemons cannot log to stdout"),
        (["-n", "--syslog"], "modeltrack: --syslog: modeltrack writes its own log lines"),
    ):
        result = twistd(*argv, "--pidfile=", "modeltrack", "--data-dir", str(tmp_path))
        assert result.returncode == 2 and result.stderr.startswith(problem), result.stderr
