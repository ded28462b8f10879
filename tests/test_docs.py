"""
The docs stay true to the code: the README is a landing page with the two set-up
commands CI runs, every option and every event field is documented, every module is in
ARCHITECTURE.md's table, every page the README points to exists, and SECURITY.md's path
of a key stays inside its budget of lines.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_the_readme_is_a_landing_page_with_cis_command() -> None:
    readme = (REPO / "README.md").read_text()
    assert len(readme.splitlines()) <= 250
    ci = (REPO / ".ci" / "run").read_text().splitlines()[-1]
    assert ci in readme
    assert "python3 -m venv .venv && .venv/bin/pip install . && .venv/bin/twistd -n --pidfile= modeltrack" in readme
    for page in re.findall(r"`((?:docs/|bench/)?[A-Za-z_/.-]+\.md)`", readme):
        assert (REPO / page).is_file(), page


def test_every_option_is_documented() -> None:
    from modeltrack.ops.options import Options

    documented = (REPO / "docs" / "options.md").read_text()
    options = {name.rstrip("=") for name in Options().longOpt} - {"version", "help"}
    assert {name for name in options if f"`--{name}" not in documented} == set()


def test_every_event_field_is_documented() -> None:
    from modeltrack.accounting.cost_event import Outcome, cost_event
    from modeltrack.controls.keys import NO_LABELS
    from modeltrack.pricing.prices import UNPRICED
    from modeltrack.pricing.usage import Reading

    event = cost_event(
        timestamp=datetime.now(UTC), request_id="mt_1", provider="openai", endpoint="/v1/x", requested_model=None,
        model=None, streaming=False, status_code=200, outcome=Outcome.OK, reading=Reading(), price=UNPRICED,
        latency_ms=0.0, ttfb_ms=None, labels=NO_LABELS,
    )
    documented = (REPO / "docs" / "cost-event.md").read_text()
    assert {field for field in event if f"`{field}`" not in documented} == set()
    assert {str(outcome) for outcome in Outcome if f"`{outcome}`" not in documented} == set()


def test_architecture_lists_every_module() -> None:
    table = (REPO / "ARCHITECTURE.md").read_text()
    listed = set(re.findall(r"`([a-z_/]+\.py)`", table))
    modules = {
        str(path.relative_to(REPO / "modeltrack")) for path in (REPO / "modeltrack").rglob("*.py") if path.name != "__init__.py"
    }
    assert modules - listed == set()
