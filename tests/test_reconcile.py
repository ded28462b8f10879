"""
`modeltrack reconcile`: report pages crafted from known events give exactly the
expected differences (paging, cents strings, each provider's cached-token convention,
traffic that bypassed the proxy, a price other than the list price); `--fetch` against
a fake admin API on 127.0.0.1 with a canary admin key that then appears nowhere.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.web.resource import Resource
from twisted.web.server import Request

from modeltrack.accounting import cost_event as events
from modeltrack.controls.keys import NO_LABELS, Caller, KeyEntry
from modeltrack.pricing.prices import Price, PriceBook
from modeltrack.pricing.usage import Reading
from modeltrack.providers import anthropic, openai
from tests.conftest import serving
from tests.test_sdk import in_thread

BOOK = PriceBook()
SEARCH = KeyEntry("k_" + "1" * 16, "search-prod", None, None, "apikey_01search")
SONNET = "claude-sonnet-4-5-20250929"
GPT4O = "gpt-4o-2024-08-06"
ANTHROPIC_CALL = {
    "input_tokens": 100, "cache_creation_input_tokens": 2000, "cache_read_input_tokens": 5000,
    "cache_creation": {"ephemeral_5m_input_tokens": 1500, "ephemeral_1h_input_tokens": 500}, "output_tokens": 200,
}
OPENAI_CALL = {"prompt_tokens": 1200, "completion_tokens": 300, "prompt_tokens_details": {"cached_tokens": 1024}}
ADMIN_CANARY = "sk-ant-admin01-CANARY-reconcile-7f3a"


def write_events(data_dir: Path, calls: list[tuple[str, str, Reading, KeyEntry | None, bool]]) -> list[dict[str, Any]]:
    """
    The event log of C{calls} (day, provider, reading, key, cache hit), written by the
    proxy's own event code, priced by its own price book.
    """
    written = []
    with open(data_dir / "events.jsonl", "ab") as log:
        for i, (day, provider, reading, key, hit) in enumerate(calls):
            when = datetime.fromisoformat(f"{day}T12:00:00+00:00")
            price = BOOK.price(provider, reading.model, reading.usage, reading.price_context, when)
            event = events.cost_event(
                timestamp=when, request_id=f"mt_{i:024x}", provider=provider, endpoint="/v1/x", requested_model=None,
                model=reading.model, streaming=False, status_code=200, outcome=events.Outcome.OK, reading=reading,
                price=price, latency_ms=1.0, ttfb_ms=1.0, labels=NO_LABELS,
                caller=Caller(key.key_id if key else None, key, "other"),
            )
            event["cache_hit"] = hit
            log.write(events.encode(event))
            written.append(event)
    return written


def claude() -> Reading:
    return anthropic.read_body({"model": SONNET, "usage": ANTHROPIC_CALL})


def gpt() -> Reading:
    return openai.read_chat_body({"model": GPT4O, "usage": OPENAI_CALL, "service_tier": "default"})


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    data = tmp_path / "data"
    data.mkdir()
    (data / "keys.json").write_text(json.dumps({"keys": [
        {"key_id": SEARCH.key_id, "name": SEARCH.name, "provider_key_id": SEARCH.provider_key_id}
    ]}))
    return data


def run(data_dir: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "modeltrack.cli", "reconcile", "--data-dir", str(data_dir), *args],
        capture_output=True, text=True, env={**os.environ, **(env or {})}, timeout=120,
    )


def cents(usd: Decimal) -> str:
    return str(usd * 100)


def anthropic_pages(logged_cost: Decimal) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """
    Usage in two pages (the second after next_page): day 1 has three calls of
    search-prod through the proxy and one of another key that never came through it.
    """
    def usage(key: str, calls: int) -> dict[str, Any]:
        return {
            "uncached_input_tokens": 100 * calls, "cache_read_input_tokens": 5000 * calls, "output_tokens": 200 * calls,
            "cache_creation": {"ephemeral_5m_input_tokens": 1500 * calls, "ephemeral_1h_input_tokens": 500 * calls},
            "server_tool_use": {"web_search_requests": 0}, "model": SONNET, "api_key_id": key,
            "workspace_id": None, "service_tier": "standard", "context_window": "0-200k",
        }

    first = {"data": [{"starting_at": "2026-11-20T00:00:00Z", "ending_at": "2026-11-21T00:00:00Z", "results": [usage("apikey_01search", 3)]}],
             "has_more": True, "next_page": "page_2"}
    second = {"data": [{"starting_at": "2026-11-20T00:00:00Z", "ending_at": "2026-11-21T00:00:00Z", "results": [usage("apikey_02elsewhere", 1)]}],
              "has_more": False, "next_page": None}
    # Billed at 10 % under the list price (a negotiated rate), in cents, as a string.
    cost = {"data": [{"starting_at": "2026-11-20T00:00:00Z", "ending_at": "2026-11-21T00:00:00Z", "results": [
        {"currency": "USD", "amount": cents(logged_cost * Decimal("0.9")), "cost_type": "tokens", "model": SONNET,
         "token_type": None, "description": None, "service_tier": "standard", "workspace_id": None, "context_window": None},
    ]}], "has_more": False, "next_page": None}
    return [first, second], cost


def openai_pages(logged_cost: Decimal) -> tuple[dict[str, Any], dict[str, Any]]:
    def result(model: str, requests: int, **counts: int) -> dict[str, Any]:
        return {"object": "organization.usage.completions.result", "model": model, "api_key_id": None, "project_id": None,
                "batch": None, "num_model_requests": requests, **counts}

    start = int(datetime(2026, 11, 21, tzinfo=UTC).timestamp())
    usage = {"object": "page", "has_more": False, "next_page": None, "data": [
        {"object": "bucket", "start_time": start, "end_time": start + 86400, "results": [
            # Inclusive: input_tokens counts the cached ones too.
            result(GPT4O, 2, input_tokens=2400, input_cached_tokens=2048, output_tokens=600),
            result("gpt-4o-mini-2024-07-18", 5, input_tokens=5000, input_cached_tokens=0, output_tokens=100),
        ]},
    ]}
    input_part = logged_cost - Decimal("0.006")
    cost = {"object": "page", "has_more": False, "next_page": None, "data": [
        {"object": "bucket", "start_time": start, "end_time": start + 86400, "results": [
            {"object": "organization.costs.result", "amount": {"value": float(input_part), "currency": "usd"}, "line_item": f"{GPT4O}, input", "project_id": None},
            {"object": "organization.costs.result", "amount": {"value": 0.006, "currency": "usd"}, "line_item": f"{GPT4O}, output", "project_id": None},
            {"object": "organization.costs.result", "amount": {"value": 0.03, "currency": "usd"}, "line_item": "web search tool calls", "project_id": None},
        ]},
    ]}
    return usage, cost


def test_reports_against_the_log(data_dir: Path, tmp_path: Path) -> None:
    logged = write_events(data_dir, [
        *[("2026-11-20", "anthropic", claude(), SEARCH, False) for _ in range(3)],
        ("2026-11-20", "anthropic", claude(), SEARCH, True),  # a cache hit: the provider never saw it
        *[("2026-11-21", "openai", gpt(), None, False) for _ in range(2)],
        ("2026-11-25", "openai", gpt(), None, False),  # a day no report covers
    ])
    sonnet_cost = sum(Decimal(str(e["cost_usd"])) for e in logged[:3])
    gpt_cost = sum(Decimal(str(e["cost_usd"])) for e in logged[4:6])
    usage_pages, anthropic_cost = anthropic_pages(sonnet_cost)
    openai_usage, openai_cost = openai_pages(gpt_cost)
    files = []
    for name, document in (("a-usage", usage_pages), ("a-cost", anthropic_cost), ("o-usage", openai_usage), ("o-cost", openai_cost)):
        (tmp_path / name).write_text(json.dumps(document))
        files += ["--report", str(tmp_path / name)]
    done = run(data_dir, *files, "--format", "json")
    assert done.returncode == 0, done.stderr  # tokens match where the log saw the traffic
    result = json.loads(done.stdout)
    rows = {(r["day"], r["provider"], r["model"], r["key"]): r for r in result["rows"]}
    assert set(rows) == {
        ("2026-11-20", "anthropic", SONNET, "search-prod"),
        ("2026-11-20", "anthropic", SONNET, None),
        ("2026-11-21", "openai", GPT4O, None),
        ("2026-11-21", "openai", "gpt-4o-mini-2024-07-18", None),
        ("2026-11-21", "openai", None, None),
    }
    search = rows[("2026-11-20", "anthropic", SONNET, "search-prod")]
    assert search["input_tokens"] == {"provider": 21300, "logged": 21300, "diff": 0, "diff_pct": 0.0}
    assert search["cache_write_tokens"]["provider"] == search["cache_write_tokens"]["logged"] == 6000
    assert search["bypass"] is False
    elsewhere = rows[("2026-11-20", "anthropic", SONNET, None)]
    assert elsewhere["bypass"] is True and elsewhere["output_tokens"] == {"provider": 200, "logged": 0, "diff": -200, "diff_pct": -100.0}
    # The model's cost, billed 10 % under the list price: the log is 1/0.9 - 1 = 11.1 % over.
    assert elsewhere["cost_usd"]["provider"] == float(sonnet_cost * Decimal("0.9"))
    assert elsewhere["cost_usd"]["logged"] == float(sonnet_cost)
    assert elsewhere["cost_usd"]["diff_pct"] == pytest.approx(11.1111, abs=1e-4)
    gpt4o = rows[("2026-11-21", "openai", GPT4O, None)]
    assert {k: gpt4o[k]["diff"] for k in ("input_tokens", "cache_read_tokens", "output_tokens")} == dict.fromkeys(
        ("input_tokens", "cache_read_tokens", "output_tokens"), 0
    )
    assert gpt4o["cost_usd"]["diff"] == pytest.approx(0, abs=1e-12)  # line items naming the model, summed
    assert rows[("2026-11-21", "openai", "gpt-4o-mini-2024-07-18", None)]["bypass"] is True
    web = rows[("2026-11-21", "openai", None, None)]  # a line item without a model: by day
    assert web["cost_usd"]["provider"] == 0.03 and web["input_tokens"] is None
    summary = result["summary"]
    assert summary["anthropic"]["seen_share"] == pytest.approx(float(1 / Decimal("0.9")), abs=1e-6)
    assert summary["openai"]["seen_share"] == pytest.approx(float(gpt_cost / (gpt_cost + Decimal("0.03"))), abs=1e-6)
    assert summary["openai"]["bypass_rows"] == 1
    # The last run is kept for the dashboard.
    assert json.loads((data_dir / "state" / "reconcile.json").read_text())["rows"] == result["rows"]
    # Bypass alone fails only when asked to.
    assert run(data_dir, *files, "--fail-on-bypass").returncode == 1
    table = run(data_dir, *files)
    assert "search-prod" in table.stdout and "bypassed the proxy" in table.stdout


def test_a_token_difference_past_the_tolerance_fails(data_dir: Path, tmp_path: Path) -> None:
    write_events(data_dir, [("2026-11-22", "openai", gpt(), None, False)])
    start = int(datetime(2026, 11, 22, tzinfo=UTC).timestamp())

    def page(output: int) -> dict[str, Any]:
        return {"object": "page", "has_more": False, "next_page": None, "data": [
            {"object": "bucket", "start_time": start, "end_time": start + 86400, "results": [
                {"object": "organization.usage.completions.result", "model": GPT4O, "input_tokens": 1200,
                 "input_cached_tokens": 1024, "output_tokens": output, "num_model_requests": 1},
            ]}]}

    report = tmp_path / "usage.json"
    report.write_text(json.dumps(page(302)))  # 300 logged: 0.66 % under
    done = run(data_dir, "--report", str(report), "--format", "csv")
    assert done.returncode == 1
    assert "-0.6623" in done.stdout
    assert run(data_dir, "--report", str(report), "--tolerance", "1").returncode == 0
    report.write_text(json.dumps(page(301)))  # 0.33 %: within the default
    assert run(data_dir, "--report", str(report)).returncode == 0


def test_a_file_that_is_no_report(data_dir: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"data": [{"starting_at": "2026-11-20T00:00:00Z", "results": [{"what": 1}]}]}))
    done = run(data_dir, "--report", str(bad))
    assert done.returncode == 2 and "neither a usage nor a cost report" in done.stderr


class FakeAdmin(Resource):
    """
    Anthropic's and OpenAI's admin report endpoints, paged; answers only the canary key.
    """

    isLeaf = True

    def __init__(self, pages: dict[str, list[Any]]) -> None:
        super().__init__()
        self.pages = pages
        self.seen: list[tuple[bytes, dict[bytes, list[bytes]]]] = []

    def render_GET(self, request: Request) -> bytes:
        self.seen.append((request.path, request.args))
        key = request.getHeader(b"x-api-key") or (request.getHeader(b"authorization") or b"")[len(b"Bearer "):]
        request.setHeader(b"content-type", b"application/json")
        if key != ADMIN_CANARY.encode():
            request.setResponseCode(401)
            # A hostile or careless API might repeat the key it was sent.
            return json.dumps({"error": {"type": "authentication_error", "message": f"invalid key {key.decode()}"}}).encode()
        pages = self.pages.get(request.path.decode(), [])
        number = int((request.args.get(b"page") or [b"page_1"])[0].split(b"_")[1]) - 1
        return json.dumps(pages[number]).encode()


@pytest.fixture
def admin(reactor: Any) -> Any:
    yield from serving(reactor, FakeAdmin({}))


@pytest_twisted.ensureDeferred
async def test_fetch_pages_with_an_admin_key_that_appears_nowhere(admin: Any, data_dir: Path) -> None:
    logged = write_events(data_dir, [
        *[("2026-11-20", "anthropic", claude(), SEARCH, False) for _ in range(3)],
        *[("2026-11-21", "openai", gpt(), None, False) for _ in range(2)],
    ])
    usage_pages, cost = anthropic_pages(sum(Decimal(str(e["cost_usd"])) for e in logged[:3]))
    openai_usage, openai_cost = openai_pages(sum(Decimal(str(e["cost_usd"])) for e in logged[3:]))
    # OpenAI's usage in two pages: a day with nothing, then the day with the calls.
    empty = {**openai_usage, "has_more": True, "next_page": "page_2", "data": [
        {"object": "bucket", "start_time": openai_usage["data"][0]["start_time"] - 86400,
         "end_time": openai_usage["data"][0]["start_time"], "results": []},
    ]}
    admin.pages = {
        "/v1/organizations/usage_report/messages": usage_pages, "/v1/organizations/cost_report": [cost],
        "/v1/organization/usage/completions": [empty, openai_usage], "/v1/organization/costs": [openai_cost],
    }
    args = ["--fetch", "anthropic", "--anthropic-url", admin.url, "--since", "2026-11-20", "--until", "2026-11-22", "--format", "json"]
    both = [*args, "--fetch", "openai", "--openai-url", admin.url]
    keys = {"ANTHROPIC_ADMIN_KEY": ADMIN_CANARY, "OPENAI_ADMIN_KEY": ADMIN_CANARY}
    done = await in_thread(run, data_dir, *both, env=keys)
    refused = await in_thread(run, data_dir, *args, env={"ANTHROPIC_ADMIN_KEY": ADMIN_CANARY + "-wrong"})
    unset = await in_thread(run, data_dir, *args, env={"ANTHROPIC_ADMIN_KEY": ""})
    assert done.returncode == 0, done.stderr
    rows = json.loads(done.stdout)["rows"]
    assert [(r["provider"], r["model"], r["key"], r["bypass"]) for r in rows] == [
        ("anthropic", SONNET, None, True), ("anthropic", SONNET, "search-prod", False),
        ("openai", GPT4O, None, False), ("openai", "gpt-4o-mini-2024-07-18", None, True), ("openai", None, None, False),
    ]
    assert rows[2]["input_tokens"]["diff"] == 0 and rows[2]["cache_read_tokens"]["provider"] == 2048
    paths = [path for path, _ in admin.seen[:6]]
    assert paths == [b"/v1/organizations/usage_report/messages"] * 2 + [b"/v1/organizations/cost_report"] + [
        b"/v1/organization/usage/completions"] * 2 + [b"/v1/organization/costs"]
    assert admin.seen[0][1][b"starting_at"] == [b"2026-11-20T00:00:00Z"] and admin.seen[1][1][b"page"] == [b"page_2"]
    assert admin.seen[3][1][b"start_time"] == [str(int(datetime(2026, 11, 20, tzinfo=UTC).timestamp())).encode()]
    assert admin.seen[4][1][b"page"] == [b"page_2"]
    assert refused.returncode == 2 and "answered 401" in refused.stderr and "[admin key]" in refused.stderr
    assert unset.returncode == 2 and "ANTHROPIC_ADMIN_KEY" in unset.stderr
    written = b"".join(p.read_bytes() for p in data_dir.rglob("*") if p.is_file())
    for output in (done.stdout + done.stderr, refused.stdout + refused.stderr, written.decode("latin-1")):
        assert "CANARY" not in output


def unit_exec_start(venv: str) -> list[str]:
    """
    The reconcile unit's ExecStart as systemd runs it: continued lines joined, its
    escapes ("$$", "%%") undone, the install path pointed at this venv.
    """
    text = (Path(__file__).resolve().parent.parent / "systemd" / "modeltrack-reconcile.service").read_text()
    joined = text.replace("\\\n", " ")
    line = next(line for line in joined.splitlines() if line.startswith("ExecStart="))
    command = line[len("ExecStart="):].replace("$$", "$").replace("%%", "%").replace("/opt/modeltrack/venv", venv)
    return shlex.split(command)


@pytest_twisted.ensureDeferred
async def test_the_nightly_unit_reads_its_key_from_a_credential(admin: Any, data_dir: Path, tmp_path: Path) -> None:
    logged = write_events(data_dir, [("2026-11-20", "anthropic", claude(), SEARCH, False) for _ in range(3)])
    usage_pages, cost = anthropic_pages(sum(Decimal(str(e["cost_usd"])) for e in logged))
    admin.pages = {"/v1/organizations/usage_report/messages": usage_pages, "/v1/organizations/cost_report": [cost]}
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    (credentials / "anthropic-admin-key").write_text(ADMIN_CANARY + "\n")
    (credentials / "openai-admin-key").write_text("")  # empty: OpenAI is left out
    env = {
        "PATH": os.environ["PATH"], "CREDENTIALS_DIRECTORY": str(credentials), "MODELTRACK_DATA_DIR": str(data_dir),
        "MODELTRACK_RECONCILE_OPTIONS": f"--anthropic-url {admin.url} --format json",
    }
    argv = unit_exec_start(str(Path(sys.executable).parent.parent))
    done = await in_thread(subprocess.run, argv, capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert [(r["key"], r["bypass"]) for r in json.loads(done.stdout)["rows"]] == [(None, True), ("search-prod", False)]
    assert {path for path, _ in admin.seen} == {b"/v1/organizations/usage_report/messages", b"/v1/organizations/cost_report"}
    assert "CANARY" not in done.stdout + done.stderr
    assert (data_dir / "state" / "reconcile.json").exists()


@pytest.mark.parametrize("page", [
    {"data": [7]},
    {"data": [{"starting_at": "2026-11-20T00:00:00Z", "results": [1]}]},
    {"data": [{"starting_at": "2026-11-20T00:00:00Z", "results": {"x": 1}}]},
    {"object": "page", "data": [{"start_time": 1, "results": [{"object": "organization.costs.result", "amount": 5}]}]},
    {"data": [{"starting_at": "2026-11-20T00:00:00Z", "results": [{"uncached_input_tokens": -1}]}]},
    [{"data": [{"starting_at": "not a time", "results": [{"uncached_input_tokens": 1}]}]}],
])
def test_malformed_pages_are_refused_with_one_line(data_dir: Path, tmp_path: Path, page: Any) -> None:
    report = tmp_path / "report.json"
    report.write_text(json.dumps(page))
    done = run(data_dir, "--report", str(report))
    assert done.returncode == 2 and done.stderr.startswith("modeltrack reconcile: ") and "Traceback" not in done.stderr, done.stderr


def test_unpriced_and_billable_calls_are_the_known_remainder(data_dir: Path, tmp_path: Path) -> None:
    logged = write_events(data_dir, [("2026-11-21", "openai", gpt(), None, False)])
    when = datetime.fromisoformat("2026-11-21T13:00:00+00:00")
    with open(data_dir / "events.jsonl", "ab") as log:
        for i, (endpoint, reading, route_class, outcome) in enumerate((
            ("/v1/fine_tuning/jobs", Reading(), events.RouteClass.BILLABLE, events.Outcome.OK),
            ("/v1/fine_tuning/jobs", Reading(), events.RouteClass.BILLABLE, events.Outcome.REJECTED),  # never sent
            ("/v1/chat/completions", openai.read_chat_body({"model": "no-such-model", "usage": OPENAI_CALL}),
             events.RouteClass.METERED, events.Outcome.OK),
        )):
            event = events.cost_event(
                timestamp=when, request_id=f"mt_r{i:023x}", provider="openai", endpoint=endpoint, requested_model=None,
                model=reading.model, streaming=False, status_code=200, outcome=outcome, reading=reading,
                price=PriceBook().price("openai", reading.model, reading.usage, {}, when) if reading.usage else
                Price(None, None, "fine-tuning: per trained token"),
                latency_ms=1.0, ttfb_ms=1.0, labels=NO_LABELS, caller=Caller(None, None, "other"), route_class=route_class,
            )
            log.write(events.encode(event))
    usage, costs = openai_pages(Decimal(str(logged[0]["cost_usd"])))
    (tmp_path / "usage").write_text(json.dumps(usage))
    done = run(data_dir, "--report", str(tmp_path / "usage"), "--format", "json")
    summary = json.loads(done.stdout)["summary"]["openai"]
    assert (summary["unpriced_calls"], summary["billable_unmetered_calls"]) == (2, 1)
    table = run(data_dir, "--report", str(tmp_path / "usage"))
    assert "known remainder: 2 call(s) it saw but could not price, 1 of them" in table.stdout
