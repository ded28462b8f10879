"""
mypy, with mypy-zope for Twisted's interfaces, over the package and the plugin (the
files and settings are in pyproject.toml). Versions pinned in setup.cfg, like ruff's.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_mypy_finds_nothing(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "mypy", "--cache-dir", str(tmp_path)],
        capture_output=True, text=True, cwd=REPO, timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
