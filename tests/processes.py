"""
Real processes for the fault suite: twistd running the proxy, and the load client, each
with its output drained by a thread (a full pipe would stall the process) and waited on
line by line.
"""

from __future__ import annotations

import subprocess
import threading
from pathlib import Path
from typing import Any

from tests.test_twistd import TWISTD, environment


class Running:
    def __init__(self, argv: list[str], env: dict[str, str] | None = None) -> None:
        self.lines: list[str] = []
        self._changed = threading.Condition()
        self.process = subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd="/tmp", env=env or environment()
        )
        self._drain = threading.Thread(target=self._read, daemon=True)
        self._drain.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            with self._changed:
                self.lines.append(line)
                self._changed.notify_all()
        with self._changed:
            self.lines.append("")  # the end
            self._changed.notify_all()

    def wait_for(self, predicate: Any, timeout: float = 60) -> None:
        """
        Block (a thread, not the reactor) until C{predicate(lines)} holds; fail if the
        process ended or C{timeout} passed first.
        """
        with self._changed:
            if not self._changed.wait_for(lambda: predicate(self.lines) or (self.lines and self.lines[-1] == ""), timeout):
                raise AssertionError(f"timed out; last output: {self.lines[-5:]}")
            if not predicate(self.lines):
                raise AssertionError(f"ended first: {''.join(self.lines[-20:])}")

    def count(self, prefix: str) -> int:
        with self._changed:
            return sum(1 for line in self.lines if line.startswith(prefix))

    def stop(self, signal_number: int, timeout: float = 60) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal_number)
        code = self.process.wait(timeout)
        self._drain.join(timeout)
        return code


def proxy(port: int, data_dir: Path, upstream_url: str, *options: str) -> Running:
    return Running([
        *TWISTD, "-n", "--pidfile=", "modeltrack", "--listen", f"tcp:{port}:interface=127.0.0.1",
        "--data-dir", str(data_dir), "--openai-url", upstream_url, "--anthropic-url", upstream_url,
        "--admin-listen", "none", *options,
    ])


def listening(lines: list[str]) -> bool:
    return any("modeltrack listening on" in line for line in lines)
