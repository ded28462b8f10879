"""
The log against the bill: the providers' own usage and cost reports (their admin APIs'
JSON pages) held against the events, per UTC day, provider, model and key.

Token kinds are compared first (they are what the log reads exactly), dollars second.
The conventions differ: OpenAI's C{input_tokens} includes cached and cache-write tokens,
Anthropic's C{uncached_input_tokens} is only the rest; here C{input_tokens} is always
the whole input, as in the events. A row the provider reports and the log has nothing
of is C{bypass}: traffic that did not go through modeltrack.
"""

from __future__ import annotations

import json
import sqlite3
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from modeltrack.pricing.usage import text
from modeltrack.store.datadir import state_dir, write_atomically
from modeltrack.store.event_lines import PICO

TOKEN_KINDS = ("input_tokens", "cache_read_tokens", "cache_write_tokens", "output_tokens")
#: The providers whose reports this reads, by their name in events.
PROVIDERS = ("anthropic", "openai")
#: The last run's result, in the state dir, for the dashboard.
RESULT_FILE = "reconcile.json"


class ReportError(ValueError):
    """
    A report page this cannot read; the message says which and why.
    """


@dataclass
class Reported:
    """
    What the reports say, summed: tokens per (day, provider, model, provider key id)
    and costs per (day, provider, model or L{None}), and the days they cover.
    """

    tokens: dict[tuple[str, str, str, str | None], dict[str, int]] = field(default_factory=dict)
    costs: dict[tuple[str, str, str | None], Decimal] = field(default_factory=dict)
    days: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))

    def add_tokens(self, day: str, provider: str, model: str, key: str | None, counts: dict[str, int]) -> None:
        row = self.tokens.setdefault((day, provider, model, key), dict.fromkeys(TOKEN_KINDS, 0))
        for kind, n in counts.items():
            row[kind] += n
        self.days[provider].add(day)

    def add_cost(self, day: str, provider: str, model: str | None, usd: Decimal) -> None:
        self.costs[(day, provider, model)] = self.costs.get((day, provider, model), Decimal(0)) + usd
        self.days[provider].add(day)


def _day_of_rfc3339(value: Any) -> str:
    if not isinstance(value, str):
        raise ReportError("a bucket has no starting_at")
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).astimezone(UTC).date().isoformat()
    except ValueError:
        raise ReportError(f"a bucket's starting_at is not a time: {value[:40]!r}") from None


def _day_of_unix(value: Any) -> str:
    if type(value) is not int or not 0 <= value < 2**40:
        raise ReportError("a bucket has no start_time")
    return datetime.fromtimestamp(value, UTC).date().isoformat()


def _n(value: Any) -> int:
    if value is None:
        return 0
    if type(value) is not int or value < 0:
        raise ReportError(f"a token count is not a whole number: {value!r}")
    return value


def kind_of(page: Any) -> str:
    """
    Which report a page is, from its shape: C{anthropic-usage}, C{anthropic-cost},
    C{openai-usage} or C{openai-cost}.
    """
    if not isinstance(page, dict) or not isinstance(page.get("data"), list):
        raise ReportError("not a report page (no data list)")
    results = [r for bucket in page["data"] if isinstance(bucket, dict) for r in bucket.get("results") or ()]
    if page.get("object") == "page":
        objects = {r.get("object") for r in results if isinstance(r, dict)}
        if objects <= {"organization.usage.completions.result"}:
            return "openai-usage"
        if objects <= {"organization.costs.result"}:
            return "openai-cost"
        raise ReportError(f"an OpenAI page of {sorted(map(str, objects))}, not completions usage or costs")
    first = next((r for r in results if isinstance(r, dict)), {})
    if "uncached_input_tokens" in first:
        return "anthropic-usage"
    if "amount" in first and "currency" in first:
        return "anthropic-cost"
    if not results and page["data"] and isinstance(page["data"][0], dict) and "starting_at" in page["data"][0]:
        return "anthropic-usage"  # empty buckets: nothing to add either way
    raise ReportError("neither a usage nor a cost report of Anthropic or OpenAI")


def add_page(reported: Reported, page: Any) -> str:
    """
    Add one report page to C{reported}; its kind.
    """
    kind = kind_of(page)
    for bucket in page["data"]:
        if not isinstance(bucket, dict) or not isinstance(bucket.get("results") or [], list):
            raise ReportError("a bucket is not an object with a list of results")
        if kind.startswith("anthropic"):
            day = _day_of_rfc3339(bucket.get("starting_at"))
        else:
            day = _day_of_unix(bucket.get("start_time"))
        provider = kind.split("-")[0]
        reported.days[provider].add(day)
        for result in bucket.get("results") or ():
            if not isinstance(result, dict):
                raise ReportError("a result is not an object")
            _add_result(reported, kind, day, result)
    return kind


def _add_result(reported: Reported, kind: str, day: str, result: dict[str, Any]) -> None:
    model = text(result.get("model"), 256)
    key = text(result.get("api_key_id"), 256)
    if kind == "anthropic-usage":
        creation = result.get("cache_creation")
        creation = creation if isinstance(creation, dict) else {}
        write = _n(creation.get("ephemeral_5m_input_tokens")) + _n(creation.get("ephemeral_1h_input_tokens"))
        read = _n(result.get("cache_read_input_tokens"))
        reported.add_tokens(day, "anthropic", model or "", key, {
            "input_tokens": _n(result.get("uncached_input_tokens")) + write + read,
            "cache_read_tokens": read,
            "cache_write_tokens": write,
            "output_tokens": _n(result.get("output_tokens")),
        })
    elif kind == "openai-usage":
        reported.add_tokens(day, "openai", model or "", key, {
            "input_tokens": _n(result.get("input_tokens")),  # cached and cache writes included
            "cache_read_tokens": _n(result.get("input_cached_tokens")),
            "cache_write_tokens": _n(result.get("input_cache_write_tokens")),
            "output_tokens": _n(result.get("output_tokens")),
        })
    elif kind == "anthropic-cost":
        if str(result.get("currency", "")).upper() != "USD":
            raise ReportError(f"a cost in {result.get('currency')!r}, not USD")
        reported.add_cost(day, "anthropic", model, _decimal(result.get("amount")) / 100)  # cents
    else:
        amount = result.get("amount")
        if not isinstance(amount, dict):
            raise ReportError("a cost has no amount object")
        if str(amount.get("currency", "")).lower() != "usd":
            raise ReportError(f"a cost in {amount.get('currency')!r}, not USD")
        line_item = text(result.get("line_item"), 256) or ""
        # "gpt-4o-2024-08-06, input": the model where the line item names one.
        named = line_item.split(",")[0].strip() if "," in line_item else None
        reported.add_cost(day, "openai", named or None, _decimal(amount.get("value")))


def _decimal(value: Any) -> Decimal:
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise ReportError(f"an amount is not a number: {value!r}")
    try:
        return Decimal(str(value))
    except ArithmeticError:
        raise ReportError(f"an amount is not a number: {value!r}") from None


def pages_of(document: Any) -> list[Any]:
    """
    A report file holds one page or a list of them (what paging fetched).
    """
    return document if isinstance(document, list) else [document]


def logged(db: sqlite3.Connection, providers: list[str], since: str, until: str) -> dict[tuple[str, str, str, str | None], dict[str, Any]]:
    """
    The log's totals per (day, provider, model, key name), cache hits left out (the
    provider never saw them); with the calls the proxy forwarded but could not price,
    and of those the ones to routes billed by what their answers do not say.
    """
    marks = ",".join("?" * len(providers))
    rows = db.execute(
        f"""SELECT day, provider, model, NULLIF(key_name, ''), SUM(input_tokens), SUM(cache_read_tokens),
                   SUM(cache_write_tokens), SUM(output_tokens), SUM(cost_pico), SUM(requests),
                   SUM(CASE WHEN outcome != 'rejected' THEN unpriced ELSE 0 END),
                   SUM(CASE WHEN route_class = 'billable' AND outcome != 'rejected' THEN requests ELSE 0 END)
            FROM daily WHERE provider IN ({marks}) AND cache_hit = 0 AND day >= ? AND day <= ?
            GROUP BY 1, 2, 3, 4""",
        (*providers, since, until),
    )
    found = {}
    for day, provider, model, key, inp, read, write, out, cost, calls, unpriced, billable in rows:
        found[(day, provider, model, key)] = {
            "input_tokens": inp, "cache_read_tokens": read, "cache_write_tokens": write, "output_tokens": out,
            "cost_usd": Decimal(cost or 0) / PICO, "calls": calls, "unpriced": unpriced or 0, "billable": billable or 0,
        }
    return found


def _compare(provider: int | Decimal, logged_: int | Decimal) -> dict[str, Any]:
    diff = logged_ - provider
    pct = None if not provider else float(Decimal(diff) / Decimal(provider) * 100)
    as_number = float if isinstance(provider, Decimal) else int
    return {"provider": as_number(provider), "logged": as_number(logged_), "diff": as_number(diff),
            "diff_pct": None if pct is None else round(pct, 4)}


def reconcile(reported: Reported, log: dict[tuple[str, str, str, str | None], dict[str, Any]], key_names: dict[str, str]) -> dict[str, Any]:
    """
    The rows and the summary. C{key_names}: provider key id -> the key's name in
    keys.json. Where a report names keys this maps, its rows are per key (the rest of
    that day and model together, C{key} null); otherwise per day and model.
    """
    named = set(key_names.values())
    tokens: dict[tuple[str, str, str, str | None], dict[str, int]] = defaultdict(lambda: dict.fromkeys(TOKEN_KINDS, 0))
    for (day, provider, model, key_id), counts in reported.tokens.items():
        name = key_names.get(key_id) if key_id else None
        counted = tokens[(day, provider, model, name)]
        for kind in TOKEN_KINDS:
            counted[kind] += counts[kind]
    keyed = {(day, provider, model) for day, provider, model, name in tokens if name is not None}
    sums: dict[tuple[str, str, str, str | None], dict[str, Any]] = defaultdict(
        lambda: {**dict.fromkeys(TOKEN_KINDS, 0), "cost_usd": Decimal(0), "calls": 0}
    )
    for (day, provider, model, key_name), entry in log.items():
        if day not in reported.days.get(provider, ()):
            continue  # a day the reports do not cover
        name = key_name if (day, provider, model) in keyed and key_name in named else None
        total = sums[(day, provider, model, name)]
        for kind in (*TOKEN_KINDS, "cost_usd", "calls"):
            total[kind] += entry[kind]
    logged_cost: dict[tuple[str, str, str | None], Decimal] = defaultdict(Decimal)
    for (day, provider, model, _), entry in log.items():
        logged_cost[(day, provider, model)] += entry["cost_usd"]
        logged_cost[(day, provider, None)] += entry["cost_usd"]
    rows: list[dict[str, Any]] = []
    for where in sorted(set(tokens) | set(sums), key=lambda k: (k[0], k[1], k[2], k[3] or "")):
        day, provider, model, name = where
        ours = sums.get(where) or {**dict.fromkeys(TOKEN_KINDS, 0), "cost_usd": Decimal(0), "calls": 0}
        theirs = tokens.get(where) or dict.fromkeys(TOKEN_KINDS, 0)
        row: dict[str, Any] = {"day": day, "provider": provider, "model": model or None, "key": name}
        for kind in TOKEN_KINDS:
            row[kind] = _compare(theirs[kind], ours[kind])
        row["cost_usd"] = None
        row["bypass"] = sum(theirs.values()) > 0 and ours["calls"] == 0
        rows.append(row)
    # Costs: per day and model (on that model's row without a key, or a row of their
    # own), or per day only where the report names no model: against the log's whole.
    for (day, provider, named_model), cost in sorted(reported.costs.items(), key=lambda kv: (kv[0][0], kv[0][1], kv[0][2] or "")):
        compared = _compare(cost, logged_cost.get((day, provider, named_model), Decimal(0)))
        home = next((r for r in rows if (r["day"], r["provider"], r["model"], r["key"]) == (day, provider, named_model, None)), None)
        if home is not None and named_model is not None:
            home["cost_usd"] = compared
            continue
        rows.append({
            "day": day, "provider": provider, "model": named_model, "key": None, **{kind: None for kind in TOKEN_KINDS},
            "cost_usd": compared, "bypass": cost > 0 and compared["logged"] == 0,
        })
    return {"rows": rows, "summary": _summary(reported, log, rows)}


def _summary(reported: Reported, log: dict[Any, dict[str, Any]], rows: list[dict[str, Any]]) -> dict[str, Any]:
    summary = {}
    for provider in sorted(reported.days):
        days = reported.days[provider]
        ours = [row for (d, p, _, _), row in log.items() if p == provider and d in days]
        cost = sum((c for (d, p, _), c in reported.costs.items() if p == provider), Decimal(0))
        if cost:
            share = sum((row["cost_usd"] for row in ours), Decimal(0)) / cost
            basis = "cost"
        else:
            theirs = sum(t["input_tokens"] + t["output_tokens"] for (d, p, _, _), t in reported.tokens.items() if p == provider)
            share = Decimal(sum(row["input_tokens"] + row["output_tokens"] for row in ours)) / theirs if theirs else Decimal(0)
            basis = "tokens"
        summary[provider] = {
            "days": sorted(days),
            "seen_share": round(float(share), 6),
            "basis": basis,
            "bypass_rows": sum(1 for row in rows if row["provider"] == provider and row["bypass"]),
            # The known remainder: calls the log holds whose cost it cannot say.
            "unpriced_calls": sum(row["unpriced"] for row in ours),
            "billable_unmetered_calls": sum(row["billable"] for row in ours),
        }
    return summary


def differs(row: dict[str, Any], tolerance_pct: float) -> bool:
    """
    A row (not bypass) whose tokens differ by more than C{tolerance_pct} percent.
    """
    if row["bypass"]:
        return False
    for kind in TOKEN_KINDS:
        compared = row[kind]
        if compared is None or compared["diff"] == 0:
            continue
        if compared["diff_pct"] is None or abs(compared["diff_pct"]) > tolerance_pct:
            return True
    return False


def load_json(text_: str, name: str) -> Any:
    try:
        return json.loads(text_)
    except ValueError as e:
        raise ReportError(f"{name}: not JSON: {e}") from None


def save_result(data_dir: Path, result: dict[str, Any]) -> None:
    """
    The last run's result, for the dashboard (see L{write_atomically}).
    """
    write_atomically(state_dir(data_dir) / RESULT_FILE, json.dumps(result).encode(), 0o640)
