"""
Budgets, routing and the response cache in the request path, in memory on a Clock.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from twisted.logger import LogLevel, globalLogPublisher

from modeltrack.controls.budgets import Budget, ConfigFileError, Who, load_budgets
from modeltrack.controls.cache import Entry, ResponseCache, load_snapshot
from modeltrack.controls.files import ControlFiles
from modeltrack.controls.gate import Gate
from modeltrack.controls.keys import Keyring
from modeltrack.controls.routing import Routing, Rule, load_routing
from modeltrack.pricing.prices import PriceBook
from modeltrack.pricing.usage import Usage
from tests.fakes import CHAT_USAGE
from tests.memory import Harness, answer, body_of, head_of, status_of

NOV_30_2359 = datetime(2026, 11, 30, 23, 59, tzinfo=UTC).timestamp()
CHAT = {"model": "gpt-4o", "max_tokens": 1000, "messages": [{"role": "user", "content": "hi"}]}
TEAM = {"X-ModelTrack-Team": "ml", "Authorization": "Bearer sk-tenant-a"}
PRICES = PriceBook()
WHEN = datetime(2026, 9, 21, tzinfo=UTC)
#: What one fake chat answer costs on gpt-4o-2024-08-06.
ACTUAL = (Decimal(176) * Decimal("2.5") + 1024 * Decimal("1.25") + 300 * 10) / 10**6


def reservation(body: dict, model: str = "gpt-4o") -> Decimal:
    """
    The documented worst case: a token per body byte, max_tokens output tokens.
    """
    raw = json.dumps(body).encode()
    usage = Usage(input_tokens=len(raw), output_tokens=body.get("max_tokens", 4096))
    return PRICES.price("openai", model, usage, {}, WHEN).cost_usd


def reply(model: str = "gpt-4o-2024-08-06") -> dict:
    return {"model": model, "choices": [], "usage": CHAT_USAGE, "service_tier": "default"}


# -- budgets -----------------------------------------------------------------


def test_concurrent_calls_admit_exactly_what_the_budget_affords() -> None:
    budget = Budget("ml", Decimal("0.05"))
    h = Harness(budgets=[budget])
    h.gate.ledger.spend(Who("ml"), "2026-09-21", Decimal("0.012"))  # nearly spent: 24 %
    estimate = reservation(CHAT)
    affordable = int((Decimal("0.05") - Decimal("0.012")) // estimate)
    transports = [h.send("POST", "/v1/chat/completions", CHAT, TEAM)[1] for _ in range(10)]
    assert len(h.agent.calls) == affordable
    refused = [t for t in transports if t.value()]
    assert len(refused) == 10 - affordable
    for transport in refused:
        assert status_of(transport) == 429
        error = json.loads(body_of(transport))["error"]
        assert error["type"] == "budget_exceeded"
        assert "team=ml" in error["message"] and "0.05" in error["message"]
    assert h.gate.ledger.open_reservations() == affordable * estimate
    for call in h.agent.calls:
        answer(call, reply())
    assert h.gate.ledger.open_reservations() == 0
    spend = h.gate.ledger.standing(budget, "2026-09-21")[0]
    assert spend == Decimal("0.012") + affordable * ACTUAL
    outcomes = [(e["outcome"], e["budget_status"]) for e in h.journal.events()]
    assert outcomes.count(("rejected", "blocked")) == 10 - affordable


@pytest.mark.parametrize("ending", ["upstream error", "client gone", "timeout", "unreachable"])
def test_every_other_end_releases_the_reservation(ending: str) -> None:
    from twisted.internet.error import ConnectionDone, ConnectionRefusedError
    from twisted.python.failure import Failure

    h = Harness(budgets=[Budget("ml", Decimal(1))])
    channel, _ = h.send("POST", "/v1/chat/completions", CHAT, TEAM)
    assert h.gate.ledger.open_reservations() > 0
    call = h.agent.calls[0]
    if ending == "upstream error":
        answer(call, {"error": {"type": "server_error", "message": "x"}}, code=500)
    elif ending == "client gone":
        channel.connectionLost(Failure(ConnectionDone()))
    elif ending == "timeout":
        h.clock.advance(30)
    else:
        call.deferred.errback(Failure(ConnectionRefusedError()))
    assert h.gate.ledger.open_reservations() == 0
    assert h.gate.ledger.standing(h.gate.ledger.budgets[0], "2026-09-21")[0] == 0


def test_month_boundary_resets_spend_without_restart() -> None:
    h = Harness(budgets=[Budget("ml", Decimal("0.005"))], start=NOV_30_2359)
    small = {**CHAT, "max_tokens": 100}
    _, first = h.send("POST", "/v1/chat/completions", small, TEAM)
    answer(h.agent.calls[0], reply())
    assert status_of(first) == 200
    _, second = h.send("POST", "/v1/chat/completions", small, TEAM)
    assert status_of(second) == 429  # 0.00472 spent + the reservation > 0.005
    h.clock.advance(120)  # 2026-12-01 00:01 UTC
    _, third = h.send("POST", "/v1/chat/completions", small, TEAM)
    assert third.value() == b"" and len(h.agent.calls) == 2  # admitted, forwarded


def test_daily_budget_and_most_specific_scope() -> None:
    team = Budget("ml", Decimal(100))
    app = Budget("ml", Decimal("0.001"), app="bot", period="daily")
    h = Harness(budgets=[team, app])
    _, blocked = h.send("POST", "/v1/chat/completions", CHAT, {**TEAM, "X-ModelTrack-App": "bot"})
    _, other_app = h.send("POST", "/v1/chat/completions", CHAT, {**TEAM, "X-ModelTrack-App": "web"})
    _, no_team = h.send("POST", "/v1/chat/completions", CHAT, {"Authorization": "Bearer k"})
    assert status_of(blocked) == 429
    assert "app=bot" in json.loads(body_of(blocked))["error"]["message"]
    assert other_app.value() == b"" and no_team.value() == b""


def test_warning_header_is_decided_before_headers() -> None:
    budget = Budget("ml", Decimal("0.1"), action="warn", warn_at_percent=Decimal(50))
    h = Harness(budgets=[budget])
    h.gate.ledger.spend(Who("ml"), "2026-09-21", Decimal("0.06"))
    _, transport = h.send("POST", "/v1/chat/completions", CHAT, TEAM)
    answer(h.agent.calls[0], reply())
    assert b"x-modeltrack-budget-warning: team=ml at 60.0% of 0.1 usd" in head_of(transport)
    [event] = h.journal.events()
    assert (event["budget_scope"], event["budget_status"]) == ("team=ml", "warning")


def test_a_warn_budget_past_its_limit_still_admits() -> None:
    h = Harness(budgets=[Budget("ml", Decimal("0.01"), action="warn")])
    h.gate.ledger.spend(Who("ml"), "2026-09-21", Decimal("0.02"))
    _, transport = h.send("POST", "/v1/chat/completions", CHAT, TEAM)
    answer(h.agent.calls[0], reply())
    assert status_of(transport) == 200
    assert h.journal.events()[0]["budget_status"] == "over"


def test_unpriced_models_are_admitted_and_flagged() -> None:
    h = Harness(budgets=[Budget("ml", Decimal("0"))])
    _, transport = h.send("POST", "/v1/chat/completions", {**CHAT, "model": "in-house-llm"}, TEAM)
    answer(h.agent.calls[0], reply("in-house-llm"))
    assert status_of(transport) == 200
    assert h.journal.events()[0]["budget_status"] == "unpriced"


@pytest.mark.parametrize(
    "document, problem",
    [
        ('{"budgets": [{"app": "x", "monthly_limit": 1}]}', 'budgets[0]: give one of team, key (a name in keys.json) or "scope": "all"'),
        ('{"budgets": [{"team": "ml", "monthly_limit": -1}]}', "budgets[0] (team ml): monthly_limit must be a non-negative number"),
        ('{"budgets": [{"team": "ml", "monthly_limit": 1, "action": "pray"}]}', "action must be one of block, warn"),
        ('{"budgets": [{"team": "ml", "monthly_limit": 1, "period": "yearly"}]}', "period must be one of monthly, daily"),
        ('{"budget": []}', 'expected an object with a "budgets" list'),
    ],
)
def test_bad_budgets_file(tmp_path: Path, document: str, problem: str) -> None:
    path = tmp_path / "budgets.json"
    path.write_text(document)
    with pytest.raises(ConfigFileError, match=re.escape(problem)):
        load_budgets(path)


def test_original_budgets_format(tmp_path: Path) -> None:
    path = tmp_path / "budgets.json"
    path.write_text(json.dumps({"budgets": [{"team": "ml-research", "app": "", "monthly_limit": 500.0, "action": "block"}]}))
    [budget] = load_budgets(path)
    assert (budget.team, budget.app, budget.limit, budget.action, budget.period) == ("ml-research", "", Decimal("500.0"), "block", "monthly")


# -- routing -----------------------------------------------------------------

CHEAPER = Rule("cheaper-when-over-half", Decimal(50), ("gpt-4o",), "gpt-4o-mini", "openai", "downgrade")


def test_downgrade_rewrites_the_model_and_reports_the_saving() -> None:
    h = Harness(budgets=[Budget("ml", Decimal("1"))], routing=Routing((CHEAPER,)))
    h.gate.ledger.spend(Who("ml"), "2026-09-21", Decimal("0.6"))
    _, transport = h.send("POST", "/v1/chat/completions", CHAT, TEAM)
    [call] = h.agent.calls
    assert json.loads(call.body)["model"] == "gpt-4o-mini"
    answer(call, reply("gpt-4o-mini-2024-07-18"))
    head = head_of(transport)
    for line in (b"x-modeltrack-routed: true", b"x-modeltrack-original-model: gpt-4o", b"x-modeltrack-routed-to: gpt-4o-mini"):
        assert line in head
    assert b"x-modeltrack-route-reason: cheaper-when-over-half" in head
    [event] = h.journal.events()
    assert (event["routed"], event["routed_from"], event["routing_rule"]) == (True, "gpt-4o", "cheaper-when-over-half")
    assert event["requested_model"] == "gpt-4o" and event["model"] == "gpt-4o-mini-2024-07-18"
    mini = PRICES.price("openai", "gpt-4o-mini-2024-07-18", Usage(1200, 1024, 0, 0, 300, 64), {"service_tier": "default"}, WHEN).cost_usd
    assert Decimal(str(event["saved_usd"])) == ACTUAL - mini
    assert h.gate.routing_stats.report()["routed"] == 1


def test_no_routing_below_threshold_or_when_opted_out() -> None:
    h = Harness(budgets=[Budget("ml", Decimal("1"))], routing=Routing((CHEAPER,)))
    h.send("POST", "/v1/chat/completions", CHAT, TEAM)  # 0 % spent
    h.gate.ledger.spend(Who("ml"), "2026-09-21", Decimal("0.9"))
    h.send("POST", "/v1/chat/completions", CHAT, {**TEAM, "X-ModelTrack-No-Route": "true"})
    assert [json.loads(c.body)["model"] for c in h.agent.calls] == ["gpt-4o", "gpt-4o"]


def test_block_expensive_names_the_cheaper_model() -> None:
    rule = Rule("no-big-models", Decimal(80), ("gpt-4o",), "gpt-4o-mini", "", "block_expensive")
    h = Harness(budgets=[Budget("ml", Decimal("1"))], routing=Routing((rule,)))
    h.gate.ledger.spend(Who("ml"), "2026-09-21", Decimal("0.85"))
    _, transport = h.send("POST", "/v1/chat/completions", CHAT, TEAM)
    assert status_of(transport) == 429
    assert "gpt-4o-mini" in json.loads(body_of(transport))["error"]["message"]
    assert h.agent.calls == []
    assert h.gate.routing_stats.report()["blocked"] == 1


def test_routing_file(tmp_path: Path) -> None:
    path = tmp_path / "routing.json"
    path.write_text(json.dumps({"rules": [{
        "name": "r", "trigger": "budget_percent_above", "threshold": 80, "from_models": ["claude-opus-4-1"],
        "to_model": "claude-sonnet-4-5", "provider": "anthropic", "action": "downgrade", "enabled": True,
    }]}))
    routing = load_routing(path)
    assert routing.rules[0].to_model == "claude-sonnet-4-5" and routing.opt_out_header == "X-ModelTrack-No-Route"
    path.write_text(json.dumps({"rules": [{"name": "r", "threshold": 80, "from_models": "x", "to_model": "y"}]}))
    with pytest.raises(ConfigFileError, match=r"rules\[0\] \(r\): from_models must be a list"):
        load_routing(path)


# -- cache -------------------------------------------------------------------

DETERMINISTIC = {**CHAT, "temperature": 0, "system": "be brief"}


def test_second_identical_call_is_a_hit() -> None:
    h = Harness(cache=True)
    _, first = h.send("POST", "/v1/chat/completions", DETERMINISTIC, TEAM)
    answer(h.agent.calls[0], reply())
    _, second = h.send("POST", "/v1/chat/completions", DETERMINISTIC, TEAM)
    assert len(h.agent.calls) == 1
    assert b"x-modeltrack-cache: miss" in head_of(first)
    assert b"x-modeltrack-cache: hit" in head_of(second)
    assert b"content-type: application/json" in head_of(second)
    assert body_of(second) == body_of(first)
    miss, hit = h.journal.events()
    assert (miss["cache_hit"], hit["cache_hit"]) == (False, True)
    assert hit["cost_usd"] == 0 and Decimal(str(hit["saved_usd"])) == Decimal(str(miss["cost_usd"]))
    assert h.cache.stats()["hits"] == 1


@pytest.mark.parametrize(
    "change",
    [
        {"body": {**DETERMINISTIC, "system": "be verbose"}},
        {"body": {**DETERMINISTIC, "tools": [{"type": "function", "function": {"name": "f"}}]}},
        {"headers": {**TEAM, "Authorization": "Bearer sk-tenant-b"}},
    ],
)
def test_any_difference_is_a_miss(change: dict) -> None:
    h = Harness(cache=True)
    h.send("POST", "/v1/chat/completions", DETERMINISTIC, TEAM)
    answer(h.agent.calls[0], reply())
    h.send("POST", "/v1/chat/completions", change.get("body", DETERMINISTIC), change.get("headers", TEAM))
    assert len(h.agent.calls) == 2


@pytest.mark.parametrize(
    "body, headers",
    [
        ({**CHAT, "temperature": 0.7}, TEAM),
        (CHAT, TEAM),  # no temperature: the provider's default is 1
        (DETERMINISTIC, {**TEAM, "X-ModelTrack-No-Cache": "true"}),
        ({**DETERMINISTIC, "stream": True}, TEAM),
    ],
)
def test_not_cached(body: dict, headers: dict) -> None:
    h = Harness(cache=True)
    for _ in range(2):
        _, transport = h.send("POST", "/v1/chat/completions", body, headers)
        answer(h.agent.calls[-1], reply())
        assert b"x-modeltrack-cache" not in head_of(transport)
    assert len(h.agent.calls) == 2


def test_only_200_answers_are_stored() -> None:
    h = Harness(cache=True)
    h.send("POST", "/v1/chat/completions", DETERMINISTIC, TEAM)
    answer(h.agent.calls[0], {"error": {"type": "server_error"}}, code=500)
    h.send("POST", "/v1/chat/completions", DETERMINISTIC, TEAM)
    assert len(h.agent.calls) == 2


def entry(body: bytes, at: float) -> Entry:
    return Entry(200, b"OK", [(b"Content-Type", [b"application/json"])], body, at, "0.001", "m")


def test_lru_bounds_and_ttl() -> None:
    from twisted.internet.task import Clock

    clock = Clock()
    cache = ResponseCache(b"s" * 32, clock, max_entries=2, max_bytes=10_000, ttl=60)
    cache.put(b"a", entry(b"1", 0))
    cache.put(b"b", entry(b"2", 0))
    assert cache.get(b"a") is not None  # a is now the most recent
    cache.put(b"c", entry(b"3", 0))
    assert cache.get(b"b") is None and cache.get(b"a") is not None
    cache.put(b"big", entry(b"x" * 9_000, 0))
    assert cache.stats()["bytes"] <= 10_000
    clock.advance(61)
    assert cache.get(b"big") is None


def test_snapshot_round_trip_holds_no_key(tmp_path: Path) -> None:
    from twisted.internet.task import Clock

    clock = Clock()
    h = Harness(cache=True)
    h.send("POST", "/v1/chat/completions", DETERMINISTIC, TEAM)
    answer(h.agent.calls[0], reply())
    data = h.cache.snapshot()
    assert b"sk-tenant-a" not in data
    restored = ResponseCache(b"s" * 32, h.clock)
    assert restored.restore(data) == 1
    expired = ResponseCache(b"s" * 32, clock)  # its clock is at 0: stored "in the future" is fine
    clock.advance(h.clock.seconds() + 3601)
    assert expired.restore(data) == 0
    path = tmp_path / "cache.msgpack"
    path.write_bytes(b"\x00garbage")
    logged = []
    globalLogPublisher.addObserver(logged.append)
    try:
        load_snapshot(restored, path)
    finally:
        globalLogPublisher.removeObserver(logged.append)
    assert any("corrupt cache snapshot" in e.get("log_format", "") for e in logged)


# -- config files ------------------------------------------------------------


def test_reload_keeps_the_last_good_configuration(tmp_path: Path) -> None:
    gate = Gate(PRICES)
    files = ControlFiles(tmp_path, gate, Keyring(b"s" * 32))
    files.reload()
    assert gate.ledger.budgets == [] and gate.routing is None
    (tmp_path / "budgets.json").write_text(json.dumps({"budgets": [{"team": "ml", "monthly_limit": 5}]}))
    files.reload()
    assert [b.team for b in gate.ledger.budgets] == ["ml"]
    (tmp_path / "budgets.json").write_text('{"budgets": [{"team": ""}]}')
    logged = []
    globalLogPublisher.addObserver(logged.append)
    try:
        files.reload()
    finally:
        globalLogPublisher.removeObserver(logged.append)
    assert [b.team for b in gate.ledger.budgets] == ["ml"]
    [error] = [e for e in logged if e.get("log_level") == LogLevel.error]
    assert "budgets.json: budgets[0]: give one of team, key" in error["problem"]
    (tmp_path / "budgets.json").unlink()
    files.reload()
    assert gate.ledger.budgets == []


# -- reservations are upper bounds -------------------------------------------


def _dense_usage(call: Any) -> dict:
    # The densest input there can be: a token for every byte the body holds.
    return {"prompt_tokens": len(call.body), "completion_tokens": json.loads(call.body)["max_tokens"], "total_tokens": 0}


@pytest.mark.parametrize(
    "content",
    [
        "漢字とかなの文" * 40,  # CJK: about a token a character, 3 bytes each
        [{"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}],
        [{"type": "file", "file": {"file_id": "file-abc"}}],
    ],
    ids=["cjk", "image-url", "file-id"],
)
def test_concurrent_calls_never_spend_past_a_block_budget(content: Any) -> None:
    limit = Decimal("0.02")
    h = Harness(budgets=[Budget("ml", limit)])
    body = {"model": "gpt-4o", "max_tokens": 50, "messages": [{"role": "user", "content": content}]}
    raw = json.dumps(body, ensure_ascii=False).encode()
    transports = [h.send("POST", "/v1/chat/completions", raw, TEAM)[1] for _ in range(48)]
    admitted = list(h.agent.calls)
    refused = [t for t in transports if t.value()]
    assert len(admitted) + len(refused) == 48 and refused
    by_url = not isinstance(content, str)
    for call in admitted:
        usage = _dense_usage(call)
        if by_url:
            usage["prompt_tokens"] = 128_000  # the fetched content fills gpt-4o's window
        answer(call, {"model": "gpt-4o-2024-08-06", "choices": [], "usage": usage})
    spend = h.gate.ledger.standing(h.gate.ledger.budgets[0], "2026-09-21")[0]
    assert spend <= limit
    assert h.gate.ledger.open_reservations() == 0


def test_a_reservation_past_what_is_left_refuses_only_under_block() -> None:
    image = [{"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}]
    body = {"model": "gpt-4o", "max_tokens": 50, "messages": [{"role": "user", "content": image}]}
    for action, forwarded in (("block", 0), ("warn", 1)):
        h = Harness(budgets=[Budget("ml", Decimal("0.02"), action=action)])
        _, transport = h.send("POST", "/v1/chat/completions", body, TEAM)
        assert len(h.agent.calls) == forwarded
        if not forwarded:
            assert status_of(transport) == 429


def test_what_counts_as_content_by_reference() -> None:
    from modeltrack.controls.gate import refers_to_content

    inline = [
        {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]}]},
        {"prompt": ["a legacy prompt"], "model": "x"},
        {"input": "hi", "previous_response_id": None},
    ]
    referring = [
        {"messages": [{"role": "user", "content": [{"type": "image", "source": {"type": "url", "url": "https://x/y.png"}}]}]},
        {"messages": [{"role": "user", "content": [{"type": "document", "source": {"type": "file", "file_id": "file_1"}}]}]},
        {"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "https://x/y.png"}]}]},
        {"input": "more", "previous_response_id": "resp_1"},
        {"input": "hi", "prompt": {"id": "pmpt_1"}},
        {"messages": [], "tools": [{"type": "web_search_20250305", "name": "web_search"}]},
        {"input": "hi", "tools": [{"type": "file_search", "vector_store_ids": ["vs_1"]}]},
    ]
    assert [refers_to_content(b) for b in inline] == [False] * len(inline)
    assert [refers_to_content(b) for b in referring] == [True] * len(referring)
