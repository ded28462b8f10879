"""
ruff over the package, its tests, the bench and the plugin, with the rules in
pyproject.toml (pyflakes, pycodestyle's errors, import order, pyupgrade, bugbear). Its
version is pinned in setup.cfg, so that a new release's rules do not fail a build on
their own.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_ruff_finds_nothing() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "ruff", "check", "--no-cache", "modeltrack", "tests", "bench", "twisted"],
        capture_output=True, text=True, cwd=REPO, timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
