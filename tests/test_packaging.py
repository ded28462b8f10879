"""
What `pip install .` ships: every package of the source tree and the dashboard's files.
The tests import from the source tree, so a package left out of setup.cfg would pass
them all and still break every installed copy.
"""

from __future__ import annotations

import configparser
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_setup_cfg_lists_every_package_and_the_dashboard() -> None:
    config = configparser.ConfigParser()
    config.read(REPO / "setup.cfg")
    listed = set(config["options"]["packages"].split())
    found = {
        ".".join(path.parent.relative_to(REPO).parts)
        for path in (REPO / "modeltrack").rglob("__init__.py")
    }
    assert found - listed == set()
    shipped = config["options.package_data"]["modeltrack.admin"].replace(",", " ").split()
    dashboard = REPO / "modeltrack" / "admin"
    files = {p.relative_to(dashboard) for p in (dashboard / "dashboard").iterdir()}
    covered = {f for f in files if any(f.match(pattern) for pattern in shipped)}
    assert covered == files and len(files) == 4
