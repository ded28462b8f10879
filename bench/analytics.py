"""
Reports at scale: a realistic event log (by default 10 million events over 90 days, 40
teams, 300 keys, 200,000 sessions), indexed with `modeltrack index` as users run it,
then every report, admin API answer and dashboard page timed on it. Writes
bench/ANALYTICS.md.

    python bench/analytics.py [--events N] [--smoke] [--out bench/ANALYTICS.md] [--keep DIR]

The reports are timed through the query functions `modeltrack report` calls; the admin
API over HTTP from a proxy run under twistd on the same data dir; each dashboard page in
headless Chromium, from navigation until the page has drawn every answer it asked for.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from modeltrack.store import index, reports  # noqa: E402

MODELS = [("openai", "gpt-4o", 2.5, 10), ("openai", "gpt-4o-mini", 0.15, 0.6), ("anthropic", "claude-sonnet-4-5", 3, 15),
          ("anthropic", "claude-haiku-4-5", 1, 5), ("google", "gemini-2.5-flash", 0.3, 2.5), ("openai", "gpt-5", 1.25, 10)]
ENDPOINTS = {"openai": "/v1/chat/completions", "anthropic": "/v1/messages", "google": "/v1beta/models/{model}:generateContent"}


def generate(path: Path, events: int, days: int, seed: int = 7) -> None:
    """The log: events spread over C{days} ending yesterday, in time order, as the proxy writes them."""
    rng = random.Random(seed)
    teams = [f"team-{i:02d}" for i in range(40)]
    # A key belongs to one team and one of its apps, and calls two or three models;
    # an app has a handful of features; a session is a run of calls close in time.
    keys = []
    for i in range(300):
        team = teams[i % 40]
        models = rng.sample(range(len(MODELS)), rng.randrange(2, 4))
        keys.append((f"k_{rng.getrandbits(64):016x}", f"key-{i:03d}" if i % 3 else None, team, f"{team}-app-{i % 3}", models))
    per_session = 50  # 10 million events: 200,000 sessions
    start = datetime.combine(date.today() - timedelta(days=days), datetime.min.time(), UTC)
    step = days * 86400 / events
    with path.open("wb", buffering=1 << 20) as f:
        for n in range(events):
            session = n // per_session
            key_id, key_name, team, app, models = keys[session % 300]  # a session is one key's
            provider, model, rate_in, rate_out = MODELS[models[rng.randrange(len(models))]]
            tokens_in, tokens_out = rng.randrange(50, 8000), rng.randrange(10, 1500)
            cached = tokens_in // 2 if rng.random() < 0.3 else 0
            cost = ((tokens_in - cached) * rate_in + cached * rate_in / 10 + tokens_out * rate_out) / 1e6
            when = start + timedelta(seconds=n * step)
            ok = rng.random() > 0.02
            event = {
                # The id as the proxy makes it: the time in milliseconds, then random bits.
                "timestamp": when.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
                "request_id": f"mt_{int(when.timestamp() * 1000):012x}{rng.getrandbits(48):012x}", "provider": provider,
                "endpoint": ENDPOINTS[provider], "route_class": "metered", "model": model, "requested_model": model,
                "deployment": None, "streaming": n % 3 == 0, "status_code": 200 if ok else 429,
                "outcome": "ok" if ok else "rejected", "input_tokens": tokens_in, "output_tokens": tokens_out,
                "cache_read_tokens": cached, "cache_write_tokens": 0, "reasoning_tokens": 0,
                "usage": {"input_tokens": tokens_in, "output_tokens": tokens_out}, "service_tier": None,
                "inference_geo": None, "speed": None, "usage_complete": True, "cost_usd": round(cost, 9) if ok else 0.0,
                "priced": True, "price_source": "genai-prices", "price_note": None, "latency_ms": round(rng.uniform(200, 9000), 1),
                "ttfb_ms": 180.0, "team": team, "app": app, "feature": f"feature-{rng.randrange(5)}",
                "session_id": f"sess-{session}", "trace_id": None, "customer_tier": None,
                "prompt_template": None, "key_id": key_id, "key_name": key_name, "client": "openai-python/2",
                "error_type": None, "usage_error": None, "batch": False, "batch_id": None, "custom_id": None,
                "budget_scope": None, "budget_status": None, "routed": False, "routed_from": None, "routing_rule": None,
                "cache_hit": False, "saved_usd": None,
            }
            f.write(orjson.dumps(event) + b"\n")


def timed(what: Any, repeat: int = 3) -> float:
    """The best of C{repeat} runs, in seconds (the first may read the file from disk)."""
    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        what()
        best = min(best, time.perf_counter() - started)
    return best


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=10_000_000)
    parser.add_argument("--days", type=int, default=90)
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--keep", type=Path, help="a directory to build the log and index in, kept after")
    args = parser.parse_args()
    events = 20_000 if args.smoke else args.events
    work = args.keep or Path(tempfile.mkdtemp(prefix="mt-analytics-"))
    data = work / "data"
    data.mkdir(parents=True, exist_ok=True)
    log = data / "events.jsonl"
    try:
        if not any(data.glob("events*.jsonl")):  # (the proxy run below seals the live file into a segment)
            started = time.perf_counter()
            generate(log, events, args.days)
            print(f"generated {events:,} events in {time.perf_counter() - started:.0f} s", flush=True)
        (data / "modeltrack.db").unlink(missing_ok=True)
        started = time.perf_counter()
        subprocess.run([sys.executable, "-m", "modeltrack.cli", "index", "--data-dir", str(data)], check=True, cwd=REPO,
                       env={**os.environ, "PYTHONPATH": str(REPO)})
        ingest = time.perf_counter() - started
        os.sync()  # the index written back to disk before anything is timed on it
        db = index.connect(data)
        today = date.today()
        month = reports.month_bounds(today - timedelta(days=15))
        timings = {
            "report --month --by team": timed(lambda: reports.report(db, ["team"], *month)),
            "report --month --by model": timed(lambda: reports.report(db, ["model"], *month)),
            "report --by team,model (all time)": timed(lambda: reports.report(db, ["team", "model"])),
            "sessions --top 20 (all time)": timed(lambda: reports.sessions(db, 20)),
            "sessions --top 20 (a month)": timed(lambda: reports.sessions(db, 20, *month)),
        }
        rows = {table: db.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0] for table in ("events", "daily", "session_days")}
        db.close()
        sizes = {"log": sum(p.stat().st_size for p in data.glob("events*.jsonl")),
                 "index": sum(p.stat().st_size for p in data.glob("modeltrack.db*"))}
        served = served_timings(data, month[0][:7])
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)
    timings.update(served)
    result = {"events": events, "ingest_s": ingest, "rate": events / ingest, "timings": timings, "rows": rows, "sizes": sizes}
    for name, seconds in timings.items():
        print(f"{name}: {seconds * 1000:.1f} ms")
    print(f"indexed {events:,} in {ingest:.0f} s ({events / ingest:,.0f} events/s); rows {rows}; sizes {sizes}")
    if args.out:
        args.out.write_text(render(result))


API = ["summary", "spend?by=team", "spend?by=model", "spend?by=team,key,client", "spend?by=day,team", "sessions?top=50",
       "keys", "budgets", "fleet", "reconciliation", "events?limit=100"]
PAGES = ["overview", "teams", "apps", "models", "keys", "clients", "sessions", "budgets", "fleet"]


def served_timings(data: Path, month: str) -> dict[str, float]:
    """
    Every admin API answer over HTTP (best of 3), and every dashboard page in Chromium
    (best of 3, from navigation to drawn), from a proxy under twistd on C{data}.
    """
    import urllib.request

    from bench.run import free_port, wait_for_port

    admin = free_port()
    twistd = str(Path(sys.executable).parent / "twistd")
    proxy = subprocess.Popen(
        [twistd, "-n", "--pidfile=", "modeltrack", "--listen", f"tcp:{free_port()}:interface=127.0.0.1",
         "--data-dir", str(data), "--admin-listen", f"tcp:{admin}:interface=127.0.0.1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONPATH": str(REPO)}, cwd=data,
    )
    try:
        wait_for_port(admin, 120)
        base = f"http://127.0.0.1:{admin}"
        first, following = reports.month_bounds(date.fromisoformat(month + "-01"))
        period = f"since={first}&until={following}"

        def get(path: str) -> None:
            with urllib.request.urlopen(f"{base}/api/{path}", timeout=120) as answer:
                answer.read()

        get("summary")  # the index process has caught up with the log
        timings = {f"/api/{path}": timed(lambda path=path: get(f"{path}{'&' if '?' in path else '?'}{period}")) for path in API}
        chromium = shutil.which("chromium") or shutil.which("chromium-browser")
        if chromium is not None:
            timings.update({f"dashboard page: {page}": seconds for page, seconds in _pages(chromium, base, month).items()})
        return timings
    finally:
        proxy.terminate()
        proxy.wait(60)


def _pages(chromium: str, base: str, month: str) -> dict[str, float]:
    from twisted.internet import reactor
    from twisted.internet.defer import ensureDeferred

    from tests.browser import Browser

    drawn = """new Promise((resolve, reject) => {
      (function check() {
        const page = document.getElementById("page");
        if (page && page.dataset.state === "ready") resolve(performance.now());
        else if (page && page.dataset.state === "error") reject(new Error(page.textContent));
        else setTimeout(check, 5);
      })();
    })"""

    async def run() -> dict[str, float]:
        browser = Browser(reactor, chromium, Path(tempfile.mkdtemp(prefix="mt-chromium-")))
        best: dict[str, float] = {}
        try:
            for page in PAGES:
                for _ in range(3):
                    await browser.open(f"{base}/#{page}?month={month}")
                    best[page] = min(best.get(page, float("inf")), await browser.evaluate(drawn) / 1000)
        finally:
            await browser.close()
        return best

    outcome: list[Any] = []
    ensureDeferred(run()).addBoth(outcome.append).addBoth(lambda _: reactor.stop())
    reactor.run()
    if not isinstance(outcome[0], dict):
        outcome[0].raiseException()
    return outcome[0]


def render(r: dict[str, Any]) -> str:
    lines = [
        "# Reports at scale",
        "",
        f"`python bench/analytics.py --out bench/ANALYTICS.md` on this machine ({os.cpu_count()} cores): "
        f"{r['events']:,} events over 90 days (40 teams, 300 keys, {r['events'] // 50:,} sessions of 50 calls), "
        "indexed by `modeltrack index`.",
        "",
        f"- Ingest: {r['ingest_s']:.0f} s, **{r['rate']:,.0f} events/s** (lines decoded and checked, and their rollup sums made, "
        "in reader processes, each piece of 16 MiB handed over as a small SQLite database of its own; the index process "
        "merges each with INSERT ... SELECT, raw rows and rollups in one transaction). The log was in the page cache "
        "(just written, as a catch-up after an outage finds it); read from disk it needs "
        f"{r['sizes']['log'] / r['ingest_s'] / 1e6:,.0f} MB/s.",
        f"- Sizes: log {r['sizes']['log'] / 1e9:.2f} GB, index {r['sizes']['index'] / 1e9:.2f} GB; rows: "
        f"{r['rows']['events']:,} raw, {r['rows']['daily']:,} daily rollups, {r['rows']['session_days']:,} session-days.",
        "",
        "Reports through the functions `modeltrack report` calls; admin API answers over HTTP from the proxy under twistd; "
        "each dashboard page in headless Chromium, from navigation until it has drawn every answer it asked for "
        "(its API calls, its charts and tables). A month is the middle month of the 90 days. Timed once the index "
        "is written back to disk (`sync`).",
        "",
        "| query (best of 3) | time |",
        "| --- | --- |",
    ]
    lines += [f"| {name} | {seconds * 1000:,.1f} ms |" for name, seconds in r["timings"].items()]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
