"""
A short run of the benchmark harness (seconds): every contender but LiteLLM starts, every
phase runs, and every call is accounted for exactly. No timing is asserted.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_bench_smoke() -> None:
    done = subprocess.run(
        [sys.executable, str(REPO / "bench" / "run.py"), "--smoke", "--skip-litellm"],
        capture_output=True, text=True, timeout=300, cwd=REPO,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    phases = json.loads(done.stdout[done.stdout.index("["):])
    assert {p["phase"] for p in phases} == {"throughput", "latency", "streaming", "open streams", "soak (chat)", "soak (streams)"}
    for phase in phases:
        assert phase["exact"], phase
        assert phase["events_ok"] > 0
