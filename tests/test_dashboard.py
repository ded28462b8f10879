"""
The dashboard in a real browser: headless Chromium (Debian's) loads each page from the
admin listener over a seeded data dir; the totals it shows must equal the SQLite totals,
and each page is saved as a screenshot under tests/output/dashboard/.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet.utils import getProcessOutputAndValue

from modeltrack.accounting.reconcile import Reported, reconcile
from modeltrack.accounting.reconcile import save_result as store_reconciliation
from tests.conftest import start_proxy

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
OUTPUT = Path(__file__).parent / "output" / "dashboard"
PICO = Decimal(10) ** 12

pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="chromium is installed by tools/install-test-tools.sh")


def seed(data_dir: Path, today: date) -> None:
    """
    A month of calls by three teams, two apps and models, a few sessions, some unpriced
    calls, and last month's calls that no page of this month may count.
    """
    lines = []
    costs = ["0.00472", "0.0123", "1.5", "0.000731", None]
    n = 0
    for day in range(1, today.day + 1):
        for k in range(3 + day % 4):
            n += 1
            cost = costs[n % len(costs)]
            lines.append(event(n, today.replace(day=day), k, cost))
    previous = today.replace(day=1) - timedelta(days=1)
    for k in range(4):
        n += 1
        lines.append(event(n, previous, k, "9.99"))
    # As the journal leaves them: a sealed segment per earlier day, today's in the live file.
    for e in sorted(lines, key=lambda e: e["timestamp"]):
        day = e["timestamp"][:10]
        name = "events.jsonl" if day == today.isoformat() else f"events-{day.replace('-', '')}T000000.000000Z.jsonl"
        with open(data_dir / name, "a") as f:
            f.write(json.dumps(e) + "\n")
    (data_dir / "budgets.json").write_text(json.dumps({"budgets": [
        {"team": "research", "monthly_limit": 1, "action": "block"},
        {"team": "web", "monthly_limit": 1000, "action": "warn"},
        {"key": "search-prod", "monthly_limit": 500, "action": "block"},
    ]}))
    (data_dir / "keys.json").write_text(json.dumps({"keys": [
        {"key_id": "k_00000000000000a1", "name": "search-prod", "team": "research"},
        {"key_id": "k_00000000000000a2", "name": "search-prod", "team": "research"},  # rotated in
        {"key_id": "k_00000000000000b1", "name": "unused-key"},
    ]}))


def event(n: int, day: date, k: int, cost: str | None) -> dict[str, Any]:
    team = ("research", "web", "support")[n % 3]
    return {
        "timestamp": f"{day.isoformat()}T{8 + k:02d}:{n % 60:02d}:00.000000Z", "request_id": f"mt_{n:06d}",
        "provider": "anthropic" if n % 2 else "openai", "endpoint": "/v1/messages" if n % 2 else "/v1/chat/completions",
        "model": "claude-sonnet-4-5" if n % 2 else ("gpt-4o" if cost else "acme-private-llm"),
        "team": team, "app": ("chat", "search")[n % 2], "feature": ("answer", "summarise", None)[n % 3],
        "session_id": f"session-{n % 7}" if n % 5 else None, "outcome": "ok",
        "input_tokens": 1000 + n, "output_tokens": 200 + n, "cache_read_tokens": 0, "cache_write_tokens": 0,
        "reasoning_tokens": 0, "cost_usd": None if cost is None else float(cost), "priced": cost is not None,
        "saved_usd": 0.001 if n % 11 == 0 else None, "cache_hit": n % 11 == 0, "latency_ms": 12.5,
        # Every call has a key: a named one (under two fingerprints, as after a
        # rotation) or an unnamed one, known by its fingerprint only.
        "key_id": ("k_00000000000000a1", "k_00000000000000a2", "k_00000000000000c1")[n % 3],
        "key_name": ("search-prod", "search-prod", None)[n % 3],
        "client": ("openai-python/2", "anthropic-python/0", "curl/8", "other")[n % 4],
    }


class Found(HTMLParser):
    """
    Elements by id (their attributes and text), and what else a check needs.
    """

    def __init__(self) -> None:
        super().__init__()
        self.by_id: dict[str, dict[str, Any]] = {}
        self.bars = 0
        #: The stacked chart's bars (series, exact cost) and its legend.
        self.stacked: list[tuple[str, Decimal]] = []
        self.legend: list[str] = []
        self._open: list[dict[str, Any]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        if tag == "rect" and "data-day" in attributes:
            self.bars += 1
            if "data-series" in attributes:
                self.stacked.append((attributes["data-series"] or "", Decimal(attributes["data-usd"] or "0")))
        if tag == "li" and "data-series" in attributes:
            self.legend.append(attributes["data-series"] or "")
        element = {"tag": tag, **attributes, "text": ""}
        if "id" in attributes:
            self.by_id[attributes["id"] or ""] = element
        self._open.append(element)

    def handle_endtag(self, tag: str) -> None:
        while self._open and self._open.pop()["tag"] != tag:
            pass

    def handle_data(self, data: str) -> None:
        for element in self._open:
            element["text"] += data


async def chromium(*args: str) -> str:
    # Spawned by the reactor, which keeps serving the admin listener meanwhile.
    out, err, code = await getProcessOutputAndValue(
        CHROMIUM,
        ["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--virtual-time-budget=10000", *args],
    )
    assert code == 0, err.decode()[-2000:]
    return out.decode()


def sqlite_sum(db: sqlite3.Connection, where: str, *params: str) -> tuple[Decimal, int, int]:
    cost, requests, unpriced = db.execute(
        f"SELECT SUM(cost_pico), COUNT(*), SUM(1 - priced) FROM events WHERE {where}", params
    ).fetchone()
    return Decimal(cost or 0) / PICO, requests, unpriced or 0


def money(amount: Decimal) -> str:
    """A cost as the dashboard shows it: to the cent, half up, grouped; under a cent, <$0.01."""
    cents = (abs(amount) * 100).quantize(Decimal(1), rounding="ROUND_HALF_UP")
    if amount and not cents:
        return "<$0.01"
    return ("-" if amount < 0 else "") + f"${cents / 100:,.2f}"


def shown(found: Found, element_id: str) -> Decimal:
    element = found.by_id[element_id]
    exact = Decimal(element["data-usd"])
    assert element["text"].strip().endswith(money(exact))  # shown to the cent...
    assert element["title"] == f"${element['data-usd']}"  # ... the exact figure on hover
    return exact


def change(now: Decimal, before: Decimal) -> str:
    if not before:
        return "–" if not now else "new"
    tenths = int((now - before) * 1000 / before)  # toward zero, as BigInt division
    return f"{'+' if tenths > 0 else '-' if tenths < 0 else ''}{abs(tenths) // 10:,}.{abs(tenths) % 10}%"


@pytest_twisted.ensureDeferred
async def test_every_page_shows_the_sqlite_totals(reactor: Any, tmp_path: Path) -> None:
    today = datetime.now(UTC).date()
    seed(tmp_path, today)
    # The last reconciliation: the provider reports a model no call through the proxy used.
    reported = Reported()
    reported.add_tokens(today.isoformat(), "openai", "gpt-4o-mini-2024-07-18", None, {"input_tokens": 5000, "output_tokens": 10})
    reconciled = reconcile(reported, {}, {})
    reconciled.update(ran_at="2026-11-30T03:00:00Z", tolerance_pct=0.5)
    store_reconciliation(tmp_path, reconciled)
    proxy = start_proxy(reactor, tmp_path, "http://127.0.0.1:9", admin_listen="tcp:0:interface=127.0.0.1")
    OUTPUT.mkdir(parents=True, exist_ok=True)
    profile = tmp_path / "chromium-profile"
    try:
        pages = {}
        for page in ("overview", "teams", "apps", "models", "keys", "clients", "sessions", "budgets", "reconciliation"):
            url = f"{proxy.admin_url}/#{page}"
            dom = await chromium(f"--user-data-dir={profile}", "--dump-dom", url)
            await chromium(f"--user-data-dir={profile}", "--window-size=1280,900", f"--screenshot={OUTPUT / page}.png", url)
            assert (OUTPUT / f"{page}.png").stat().st_size > 10_000
            found = Found()
            found.feed(dom)
            assert found.by_id["page"]["data-state"] == "ready", dom[-3000:]
            assert found.by_id["page"]["data-page"] == page
            pages[page] = found

        # The proxy's index, read directly: the figures every page must show.
        db = sqlite3.connect(tmp_path / "modeltrack.db")
        first = today.replace(day=1).isoformat()
        following = (today.replace(day=28) + timedelta(days=4)).replace(day=1).isoformat()
        month_cost, month_requests, month_unpriced = sqlite_sum(db, "day >= ? AND day < ?", first, following)
        today_cost = sqlite_sum(db, "day = ?", today.isoformat())[0]
        sessions_cost = sqlite_sum(db, "day >= ? AND day < ? AND session_id IS NOT NULL", first, following)[0]
        assert month_unpriced > 0 and month_cost > 0 and today_cost > 0

        overview = pages["overview"]
        assert shown(overview, "spend-today") == today_cost
        assert shown(overview, "spend-month") == month_cost
        days_in_month = (date.fromisoformat(following) - date.fromisoformat(first)).days
        projection = (month_cost / today.day * days_in_month).quantize(Decimal("0.000001"))
        assert shown(overview, "projection") == projection
        assert overview.by_id["requests-month"]["data-value"] == str(month_requests)
        assert overview.by_id["requests-month"]["text"] == f"{month_requests:,}"
        assert overview.bars == days_in_month
        # Against the period of the same length just before this one (last month's calls fall in it).
        before_first = (date.fromisoformat(first) - timedelta(days=days_in_month)).isoformat()
        before_cost = sqlite_sum(db, "day >= ? AND day < ?", before_first, first)[0]
        assert before_cost == Decimal("39.96") and overview.by_id["change"]["text"] == change(month_cost, before_cost)
        for page in ("teams", "apps", "models", "keys", "clients"):
            found = pages[page]
            assert shown(found, "total-cost") == month_cost, page
            assert found.by_id["total-requests"]["data-value"] == str(month_requests)
            # The chart: spend by day stacked by the page's dimension, 8 at most and "other", summing to the total.
            assert found.stacked and sum(cost for _, cost in found.stacked) == month_cost, page
            assert 1 <= len(found.legend) <= 9 and {series for series, _ in found.stacked} <= set(found.legend)
            assert found.by_id["csv"]["href"].startswith("blob:")
        assert pages["teams"].by_id["change"]["text"] == change(month_cost, before_cost)
        assert shown(pages["sessions"], "total-cost") == sessions_cost
        for found in pages.values():  # the unpriced calls are called out on every page
            banner = found.by_id["unpriced"]
            month = today.isoformat()[:7]
            assert "hidden" not in banner and banner["text"].startswith(f"{month_unpriced} calls in {month} had no known price")
        budgets_page = pages["budgets"].by_id["page"]["text"]
        research_spend = sqlite_sum(db, "team = 'research' AND day >= ? AND day < ?", first, following)[0]
        assert money(research_spend) in budgets_page and "blocked" in budgets_page  # past its 1 USD limit
        assert "team=web" in budgets_page and "key=search-prod" in budgets_page

        keys_page = pages["keys"].by_id["page"]["text"]
        named_cost = sqlite_sum(db, "key_name = 'search-prod' AND day >= ? AND day < ?", first, following)[0]
        assert money(named_cost) in keys_page  # both fingerprints of the rotated key, under its name
        assert "k_00000000000000a1 k_00000000000000a2" in keys_page
        assert "k_00000000000000c1" in keys_page  # unnamed: known by its fingerprint
        assert "unused-key" in keys_page and "never" in keys_page  # listed, no call yet
        assert "of $500 (monthly, block)" in keys_page
        assert "openai-python/2" in pages["clients"].by_id["page"]["text"]
        reconciliation = pages["reconciliation"].by_id["page"]["text"]
        assert "run 2026-11-30T03:00:00Z" in reconciliation and "gpt-4o-mini-2024-07-18" in reconciliation
        assert "0 / 5000 (-100%)" in reconciliation and "bypassed the proxy" in reconciliation

        # Any past month, or a from/to range, by URL; the period stays as pages change.
        previous = today.replace(day=1) - timedelta(days=1)
        last_month = previous.isoformat()[:7]
        dom = await chromium(f"--user-data-dir={profile}", "--dump-dom", f"{proxy.admin_url}/#teams?month={last_month}")
        past = Found()
        past.feed(dom)
        assert past.by_id["page"]["data-state"] == "ready", dom[-3000:]
        assert shown(past, "total-cost") == Decimal("39.96")  # 4 calls at 9.99
        assert f'href="#keys?month={last_month}"' in dom
        dom = await chromium(f"--user-data-dir={profile}", "--dump-dom", f"{proxy.admin_url}/#overview?month={last_month}")
        past = Found()
        past.feed(dom)
        assert shown(past, "spend-month") == shown(past, "projection") == Decimal("39.96")
        assert past.bars == previous.day
        url = f"{proxy.admin_url}/#models?from={first}&to={today.isoformat()}"
        await chromium(f"--user-data-dir={profile}", "--window-size=1280,900", f"--screenshot={OUTPUT}/range.png", url)
        ranged = Found()
        ranged.feed(await chromium(f"--user-data-dir={profile}", "--dump-dom", url))
        assert shown(ranged, "total-cost") == month_cost
        assert f"{first} to {today.isoformat()}" in ranged.by_id["page"]["text"]
    finally:
        await proxy.service.stopService()


READY = """new Promise((resolve, reject) => {
  const started = Date.now();
  (function check() {
    const page = document.getElementById("page");
    if (page && page.dataset.state === "ready") resolve(true);
    else if (Date.now() - started > 20000) reject(new Error("the page never got ready"));
    else setTimeout(check, 20);
  })();
})"""
FIRST_COLUMN = '[...document.querySelectorAll("#spend tbody tr")].map((tr) => tr.children[0].textContent)'


@pytest_twisted.ensureDeferred
async def test_columns_sort_and_the_csv_is_the_api_exactly(reactor: Any, tmp_path: Path) -> None:
    """A browser driven as a person would: headings clicked, the CSV link's file read."""
    import csv
    import io

    from tests.browser import Browser

    today = datetime.now(UTC).date()
    seed(tmp_path, today)
    proxy = start_proxy(reactor, tmp_path, "http://127.0.0.1:9", admin_listen="tcp:0:interface=127.0.0.1")
    browser = Browser(reactor, CHROMIUM or "", tmp_path / "profile")
    try:
        await browser.open(f"{proxy.admin_url}/#teams")
        assert await browser.evaluate(READY)
        first = today.replace(day=1).isoformat()
        following = (today.replace(day=28) + timedelta(days=4)).replace(day=1).isoformat()
        api = await browser.evaluate(f'fetch("/api/spend?by=team&since={first}&until={following}").then((r) => r.json())')
        cost = {row["team"] or "–": Decimal(row["cost_usd"]) for row in api}
        assert len(cost) >= 3 and len(set(cost.values())) == len(cost)  # no ties: one right order

        clicks = {"cost": 'document.querySelector("#spend th[data-column=cost]").click()',
                  "team": 'document.querySelector("#spend th[data-column=team]").click()'}
        await browser.evaluate(clicks["cost"])  # a number: most first
        assert await browser.evaluate(FIRST_COLUMN) == sorted(cost, key=cost.__getitem__, reverse=True)
        await browser.evaluate(clicks["cost"])  # again: the other way
        assert await browser.evaluate(FIRST_COLUMN) == sorted(cost, key=cost.__getitem__)
        await browser.evaluate(clicks["team"])  # text: A to Z
        assert await browser.evaluate(FIRST_COLUMN) == sorted(cost)

        # The CSV link's file: every row of the API, with its exact figures.
        # The CSV link clicked: the file it saves holds every row of the API, with its exact figures.
        await browser.downloads_to(tmp_path / "downloads")
        started = browser.next_event("Browser.downloadWillBegin")
        done = browser.next_event("Browser.downloadProgress", lambda params: params["state"] != "inProgress")
        await browser.evaluate('document.getElementById("csv").click()')
        begun, finished = await started, await done
        assert begun["suggestedFilename"] == "modeltrack-teams.csv" and finished["state"] == "completed"
        text = (tmp_path / "downloads" / begun["guid"]).read_text()
        fields = ["team", "requests", "input_tokens", "output_tokens", "cost_usd", "saved_usd", "unpriced"]
        assert list(csv.DictReader(io.StringIO(text))) == [
            {field: "" if row[field] is None else str(row[field]) for field in fields} for row in api
        ]
    finally:
        await browser.close()
        await proxy.service.stopService()
