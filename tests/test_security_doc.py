"""
SECURITY.md's path of an API key is the code's: each piece it names exists, with the
number of lines it says, and the whole path stays within 1,500 lines of the package.
"""

from __future__ import annotations

import importlib
import inspect
import re
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
ROW = re.compile(r"^\| `([a-z_/]+)\.py` \| (?:`([A-Za-z0-9_.]+)`|\(the module\)) \| (\d+) \|", re.M)


def test_the_path_of_a_key_is_the_code() -> None:
    text = (REPO / "SECURITY.md").read_text()
    rows = ROW.findall(text)
    assert len(rows) >= 20
    total = 0
    for path, name, lines in rows:
        found: object = importlib.import_module("modeltrack." + path.replace("/", "."))
        for part in filter(None, name.split(".")):
            found = getattr(found, part)
        counted = len(inspect.getsourcelines(found)[0])  # type: ignore[arg-type]
        assert counted == int(lines), (path, name, counted)
        total += counted
    assert total <= 1500
    assert f"It is {total} lines of\nthe package, in {len(rows)} pieces." in text
