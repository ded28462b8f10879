"""
C{modeltrack reconcile}: the providers' usage and cost reports, from files or fetched
from their admin APIs, held against the event log (L{modeltrack.accounting.reconcile}).

An admin key is read from the environment only (C{ANTHROPIC_ADMIN_KEY},
C{OPENAI_ADMIN_KEY}), sent to its provider's origin and nowhere else, and never
printed, logged or stored; an error names the origin and the status, never the key.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from modeltrack.accounting.reconcile import (
    PROVIDERS,
    TOKEN_KINDS,
    Reported,
    ReportError,
    add_page,
    differs,
    load_json,
    logged,
    pages_of,
    reconcile,
    save_result,
)
from modeltrack.cli.arguments import add_store
from modeltrack.cli.output import reading, render
from modeltrack.controls.keys import KEYS_FILE, load_keys

ADMIN_KEYS = {"anthropic": "ANTHROPIC_ADMIN_KEY", "openai": "OPENAI_ADMIN_KEY"}
DEFAULT_URLS = {"anthropic": "https://api.anthropic.com", "openai": "https://api.openai.com"}
#: Paging ends here whatever the API says (a page that names itself as the next).
MOST_PAGES = 1000


def add_command(commands: Any) -> None:
    command = commands.add_parser("reconcile", help="the log against the providers' usage and cost reports")
    command.add_argument("--data-dir", type=Path, default=None, help="the proxy's data dir [env MODELTRACK_DATA_DIR]")
    command.add_argument("--report", action="append", type=Path, default=[], metavar="FILE",
                         help="a report page (or a JSON list of pages) from a provider's admin API; repeatable")
    command.add_argument("--fetch", action="append", choices=PROVIDERS, default=[],
                         help="fetch the reports with the admin key in ANTHROPIC_ADMIN_KEY / OPENAI_ADMIN_KEY")
    command.add_argument("--since", help="first day fetched, inclusive (YYYY-MM-DD; default: 7 days ago)")
    command.add_argument("--until", help="last day fetched, exclusive (YYYY-MM-DD; default: today)")
    command.add_argument("--anthropic-url", default=DEFAULT_URLS["anthropic"], help="the Anthropic API's origin")
    command.add_argument("--openai-url", default=DEFAULT_URLS["openai"], help="the OpenAI API's origin")
    command.add_argument("--format", choices=("table", "csv", "json"), default="table")
    command.add_argument("--tolerance", type=float, default=0.5, help="percent a token count may differ by (default 0.5)")
    add_store(command)
    command.add_argument("--fail-on-bypass", action="store_true", help="exit 1 when the provider reports traffic the log never saw")
    command.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    if not args.report and not args.fetch:
        print("modeltrack reconcile: give --report FILE or --fetch PROVIDER", file=sys.stderr)
        return 2
    reported = Reported()
    try:
        for path in args.report:
            for page in pages_of(load_json(path.read_text(encoding="utf-8"), str(path))):
                add_page(reported, page)
        if args.fetch:
            since = _day(args.since, date.today() - timedelta(days=7))
            until = _day(args.until, date.today())
            sources = []
            for provider in dict.fromkeys(args.fetch):
                key = os.environ.get(ADMIN_KEYS[provider], "")
                if not key:
                    print(f"modeltrack reconcile: --fetch {provider} needs an admin key in {ADMIN_KEYS[provider]}", file=sys.stderr)
                    return 2
                sources.append((provider, getattr(args, f"{provider}_url").rstrip("/"), key))
            for page in fetch(sources, since, until):
                add_page(reported, page)
            del sources
    except (OSError, ReportError, FetchError) as e:
        print(f"modeltrack reconcile: {e}", file=sys.stderr)
        return 2
    if not reported.days:
        print("modeltrack reconcile: the reports cover no day", file=sys.stderr)
        return 2
    db = reading(args, False)
    days = sorted(day for covered in reported.days.values() for day in covered)
    log = logged(db, sorted(reported.days), days[0], days[-1])
    book = load_keys(args.data_dir / KEYS_FILE)
    key_names = {e.provider_key_id: e.name for e in (book.entries.values() if book else ()) if e.provider_key_id}
    result = reconcile(reported, log, key_names)
    result["tolerance_pct"] = args.tolerance
    result["ran_at"] = datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
    save_result(args.data_dir, result)
    if args.format == "json":
        sys.stdout.write(json.dumps(result, indent=1) + "\n")
    else:
        columns = ["day", "provider", "model", "key", "bypass"]
        for kind in (*TOKEN_KINDS, "cost_usd"):
            columns += [f"{kind}_provider", f"{kind}_logged", f"{kind}_diff_pct"]
        sys.stdout.write(render([_flat(row) for row in result["rows"]], columns, args.format))
        if args.format == "table":
            for provider, figures in result["summary"].items():
                print(f"{provider}: the log saw {figures['seen_share']:.2%} of what the provider reports "
                      f"(by {figures['basis']}); {figures['bypass_rows']} row(s) of traffic that bypassed the proxy; "
                      f"known remainder: {figures['unpriced_calls']} call(s) it saw but could not price, "
                      f"{figures['billable_unmetered_calls']} of them to routes billed by what their answers do not say")
    if any(differs(row, args.tolerance) for row in result["rows"]):
        return 1
    if args.fail_on_bypass and any(row["bypass"] for row in result["rows"]):
        return 1
    return 0


def _flat(row: dict[str, Any]) -> dict[str, Any]:
    flat = {name: row[name] for name in ("day", "provider", "model", "key", "bypass")}
    for kind in (*TOKEN_KINDS, "cost_usd"):
        compared = row[kind] or {}
        flat[f"{kind}_provider"] = compared.get("provider")
        flat[f"{kind}_logged"] = compared.get("logged")
        flat[f"{kind}_diff_pct"] = compared.get("diff_pct")
    return flat


def _day(value: str | None, default: date) -> date:
    if value is None:
        return default
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise ReportError(f"not a day (YYYY-MM-DD): {value!r}") from None


class FetchError(Exception):
    """
    An admin API could not be read; the message names the origin, never the key.
    """


def fetch(sources: list[tuple[str, str, str]], since: date, until: date) -> list[Any]:
    """
    Every page of each source's (provider, origin, admin key) usage and cost reports
    for the days C{since} to C{until} (exclusive), fetched with treq in a reactor run
    for it (once: a reactor does not restart).
    """
    from twisted.internet.task import react

    pages: list[Any] = []
    failure: list[BaseException] = []

    async def run(reactor: Any) -> None:
        try:
            for provider, origin, key in sources:
                for path, query in _report_queries(provider, since, until):
                    pages.extend(await _all_pages(reactor, provider, origin, key, path, query))
        except Exception as e:  # shown as one line after the reactor stops
            failure.append(e)

    from twisted.internet.defer import Deferred

    try:
        react(lambda reactor: Deferred.fromCoroutine(run(reactor)))
    except SystemExit as e:
        if e.code not in (0, None):
            raise FetchError("fetching the reports failed") from None
    if failure:
        error = failure[0]
        raise FetchError(str(error) if isinstance(error, FetchError) else f"an admin API could not be read: {type(error).__name__}") from None
    return pages


def _report_queries(provider: str, since: date, until: date) -> list[tuple[str, list[tuple[str, str]]]]:
    if provider == "anthropic":
        span = [("starting_at", f"{since.isoformat()}T00:00:00Z"), ("ending_at", f"{until.isoformat()}T00:00:00Z")]
        return [
            ("/v1/organizations/usage_report/messages",
             [*span, ("bucket_width", "1d"), ("group_by[]", "model"), ("group_by[]", "api_key_id"), ("limit", "31")]),
            ("/v1/organizations/cost_report", [*span, ("group_by[]", "description"), ("limit", "31")]),
        ]
    start = int(datetime(since.year, since.month, since.day, tzinfo=UTC).timestamp())
    end = int(datetime(until.year, until.month, until.day, tzinfo=UTC).timestamp())
    span = [("start_time", str(start)), ("end_time", str(end)), ("bucket_width", "1d")]
    return [
        ("/v1/organization/usage/completions", [*span, ("group_by[]", "model"), ("group_by[]", "api_key_id"), ("limit", "31")]),
        ("/v1/organization/costs", [*span, ("group_by[]", "line_item"), ("limit", "180")]),
    ]


async def _all_pages(reactor: Any, provider: str, origin: str, key: str, path: str, query: list[tuple[str, str]]) -> list[Any]:
    import treq

    headers: dict[bytes | str, list[bytes | str]] = (
        {"x-api-key": [key], "anthropic-version": ["2023-06-01"]} if provider == "anthropic" else {"Authorization": [f"Bearer {key}"]}
    )
    pages: list[Any] = []
    page: str | None = None
    for _ in range(MOST_PAGES):
        url = f"{origin}{path}?{urlencode(query + ([('page', page)] if page else []))}"
        response = await treq.get(url, headers=headers, reactor=reactor, timeout=60)
        body = await response.content()
        if response.code != 200:
            # Whatever the answer says, the key is not repeated from it.
            raise FetchError(f"{origin}{path} answered {response.code}: {_said(body).replace(key, '[admin key]')}")
        try:
            document = json.loads(body)
        except ValueError:
            raise FetchError(f"{origin}{path} answered with something that is not JSON") from None
        pages.append(document)
        page = document.get("next_page") if isinstance(document, dict) and document.get("has_more") else None
        if not page:
            return pages
    raise FetchError(f"{origin}{path}: more than {MOST_PAGES} pages")


def _said(body: bytes) -> str:
    try:
        error = json.loads(body).get("error")
        message = error.get("message") if isinstance(error, dict) else error
    except (ValueError, AttributeError):
        message = None
    return str(message)[:200] if message else "(no error message)"
