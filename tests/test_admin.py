"""
The admin listener as operators meet it: calls made through the official SDKs, then the
JSON API, /metrics, the token rules and the budget alerts, over real sockets.
"""

from __future__ import annotations

import json
import sqlite3
from decimal import Decimal
from pathlib import Path
from typing import Any

import openai
import pytest
import pytest_twisted
import treq
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import endpoints
from twisted.internet.defer import Deferred
from twisted.web.resource import Resource
from twisted.web.server import Site

from modeltrack.observe.metrics import Metrics
from modeltrack.ops.options import ConfigError, Options, settings_from
from tests.conftest import start_proxy
from tests.test_sdk import GPT4O_CHAT_COST, in_thread

USER = [{"role": "user", "content": "hi"}]
ADMIN = "tcp:0:interface=127.0.0.1"
TOKEN = b"admin-token-0123456789abcdef"


async def get(url: str, **kwargs: Any) -> tuple[int, Any]:
    response = await treq.get(url, **kwargs)
    body = await response.content()
    kind = (response.headers.getRawHeaders(b"content-type") or [b""])[0]
    return response.code, json.loads(body) if kind == b"application/json" else body.decode()


def calls(proxy: Any, plan: list[tuple[str, str]]) -> Deferred[None]:
    def run() -> None:
        for team, session in plan:
            client = openai.OpenAI(
                base_url=proxy.url + "/v1", api_key="sk-admin-test", max_retries=0,
                default_headers={"X-ModelTrack-Team": team, "X-ModelTrack-Session-Id": session},
            )
            client.chat.completions.create(model="gpt-4o", messages=USER, max_tokens=50)

    return in_thread(run)


@pytest_twisted.ensureDeferred
async def test_api_and_metrics_agree_with_the_log(reactor: Any, tmp_path: Path, upstream: Any) -> None:
    proxy = start_proxy(reactor, tmp_path, upstream.url, admin_listen=ADMIN)
    try:
        await calls(proxy, [("ml", "s1"), ("ml", "s1"), ("web", "s2"), ("ml", "s3"), ("web", "s2")])
        await proxy.flushed()
        code, rows = await get(proxy.admin_url + "/api/spend?by=team")
        assert code == 200
        assert {r["team"]: (r["requests"], Decimal(r["cost_usd"])) for r in rows} == {
            "ml": (3, 3 * GPT4O_CHAT_COST), "web": (2, 2 * GPT4O_CHAT_COST),
        }
        # The proxy's own index (built on its thread) holds what the log holds.
        db = sqlite3.connect(tmp_path / "modeltrack.db")
        assert db.execute("SELECT COUNT(*), SUM(cost_pico) FROM events").fetchone() == (5, int(5 * GPT4O_CHAT_COST * 10**12))
        code, summary = await get(proxy.admin_url + "/api/summary")
        assert summary["month_totals"]["requests"] == 5
        assert Decimal(summary["today_totals"]["cost_usd"]) == 5 * GPT4O_CHAT_COST
        assert [row["day"] for row in summary["by_day"]] == [summary["today"]]
        code, sessions = await get(proxy.admin_url + "/api/sessions?top=2")
        assert [(s["session_id"], s["requests"]) for s in sessions] == [("s1", 2), ("s2", 2)]
        code, events = await get(proxy.admin_url + "/api/events?limit=3")
        assert events == list(reversed(proxy.events()))[:3]
        code, fleet = await get(proxy.admin_url + "/api/fleet")  # no store: this instance, from its index
        assert fleet["store"] is False and fleet["instances"][0]["events"] == 5
        assert fleet["instances"][0]["last_event_at"] == max(event["timestamp"] for event in proxy.events())
        assert "sk-admin-test" not in json.dumps(events)
        assert (await get(proxy.admin_url + "/api/events?limit=0"))[0] == 400
        assert (await get(proxy.admin_url + "/api/spend?since=yesterday"))[0] == 400
        assert (await get(proxy.admin_url + "/api/nothing"))[0] == 404

        code, text = await get(proxy.admin_url + "/metrics")
        families = {f.name: f for f in text_string_to_metric_families(text)}
        requests = {(s.labels["model"], s.labels["outcome"]): s.value for s in families["modeltrack_requests"].samples if s.name.endswith("_total")}
        assert requests == {("gpt-4o-2024-08-06", "ok"): 5.0}
        cost = {s.labels["team"]: s.value for s in families["modeltrack_cost_usd"].samples if s.name.endswith("_total")}
        assert cost == pytest.approx({"ml": float(3 * GPT4O_CHAT_COST), "web": float(2 * GPT4O_CHAT_COST)})
        tokens = {s.labels["kind"]: s.value for s in families["modeltrack_tokens"].samples if s.name.endswith("_total")}
        assert tokens["input"] == 5 * 1200 and tokens["output"] == 5 * 300
        duration = [s for s in families["modeltrack_request_duration_seconds"].samples if s.name.endswith("_count")]
        assert duration[0].value == 5
        overhead = [s for s in families["modeltrack_proxy_overhead_seconds"].samples if s.name.endswith("_count")]
        assert overhead[0].value == 5
        assert "modeltrack_writer_queue_depth" in families and "modeltrack_write_errors" in families
        assert "sk-admin-test" not in text and "s1" not in text  # no keys, no session labels
    finally:
        await proxy.service.stopService()


def test_caller_chosen_labels_are_bounded() -> None:
    class Journal:
        queued = written = write_errors = 0

    class Gate:
        class ledger:  # noqa: N801 - stands in for an attribute
            @staticmethod
            def report(day: str) -> list[Any]:
                return []

    class Clock:
        @staticmethod
        def seconds() -> float:
            return 0.0

    metrics = Metrics(Journal(), Gate(), Clock(), label_values=3)
    for n in range(10):
        event = {
            "provider": "openai", "model": f"model-{n}", "outcome": "ok", "team": f"team-{n}", "cache_hit": False,
            "input_tokens": 1, "output_tokens": 1, "cache_read_tokens": 0, "cache_write_tokens": 0,
            "reasoning_tokens": 0, "latency_ms": 1.0,
        }
        metrics.observe(event, Decimal("0.01"), None, 0.001)
    families = {f.name: f for f in text_string_to_metric_families(metrics.render().decode())}
    teams = {s.labels["team"] for s in families["modeltrack_cost_usd"].samples}
    assert teams == {"team-0", "team-1", "team-2", "_other"}
    other = [s.value for s in families["modeltrack_cost_usd"].samples if s.labels["model"] == "_other" and s.name.endswith("_total")]
    assert sum(other) == pytest.approx(0.07)


@pytest_twisted.ensureDeferred
async def test_token_is_required_except_for_healthz(reactor: Any, tmp_path: Path, upstream: Any) -> None:
    proxy = start_proxy(reactor, tmp_path, upstream.url, admin_listen=ADMIN, admin_token=TOKEN)
    admin = proxy.admin_url
    try:
        assert await get(admin + "/healthz") == (200, {"status": "ok"})
        for path in ("/api/summary", "/metrics"):
            assert (await get(admin + path))[0] == 401
            assert (await get(admin + path, headers={"Authorization": "Bearer wrong-token-of-some-length"}))[0] == 401
            assert (await get(admin + path, headers={"Authorization": "Bearer " + TOKEN.decode()}))[0] == 200
        code, page = await get(admin + "/")
        assert code == 401 and 'action="/login"' in page
        assert (await get(admin + "/app.js"))[0] == 401
        refused = await treq.post(admin + "/login", data={"token": "not-it"}, allow_redirects=False)
        assert refused.code == 401 and "That token is not right." in (await refused.text())
        signed_in = await treq.post(admin + "/login", data={"token": TOKEN.decode()}, allow_redirects=False)
        assert signed_in.code == 303
        cookie = signed_in.headers.getRawHeaders(b"set-cookie")[0]
        assert b"HttpOnly" in cookie and b"SameSite=Strict" in cookie and TOKEN not in cookie
        value = cookie.split(b";")[0].split(b"=", 1)[1].decode()
        code, page = await get(admin + "/", cookies={"modeltrack_admin": value})
        assert code == 200 and '<script src="/app.js">' in page
        assert (await get(admin + "/api/budgets", cookies={"modeltrack_admin": value + "0"}))[0] == 401
        # The proxy's port serves none of it.
        assert (await get(proxy.url + "/api/summary"))[0] == 404
    finally:
        await proxy.service.stopService()


def settings(*argv: str, environ: dict[str, str] | None = None) -> Any:
    options = Options()
    options.parseOptions(list(argv))
    return options.settings


def test_admin_listener_off_loopback_needs_a_token(tmp_path: Path, capsys: Any) -> None:
    data = ["--data-dir", str(tmp_path)]
    assert settings(*data).admin_listen == "tcp:8081:interface=127.0.0.1"
    assert settings(*data, "--admin-listen", "none").admin_listen is None
    assert settings(*data, "--admin-listen", "unix:/run/modeltrack-admin.sock").admin_token is None
    for reachable in ("tcp:8081", "tcp:8081:interface=0.0.0.0", "tcp6:8081:interface=\\:\\:", "tcp6:8081"):
        with pytest.raises(SystemExit) as exited:
            settings(*data, "--admin-listen", reachable)
        assert exited.value.code == 2
        assert capsys.readouterr().err == (
            f"modeltrack: --admin-listen: {reachable!r} is reachable from other hosts; "
            "give --admin-token-file, or listen on 127.0.0.1\n"
        )
    token_file = tmp_path / "token"
    token_file.write_bytes(TOKEN + b"\n")
    chosen = settings(*data, "--admin-listen", "tcp:8081", "--admin-token-file", str(token_file))
    assert chosen.admin_token == TOKEN
    token_file.write_bytes(b"short")
    with pytest.raises(SystemExit):
        settings(*data, "--admin-listen", "tcp:8081", "--admin-token-file", str(token_file))
    assert "must hold one token of 16 or more printable characters" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        settings(*data, "--listen", "tcp:9000:interface=127.0.0.1", "--admin-listen", "tcp:9000:interface=127.0.0.1")
    assert "is also a proxy listener" in capsys.readouterr().err
    options = Options()
    options.parseOptions(data)
    with pytest.raises(ConfigError, match="reachable from other hosts"):
        settings_from(options, {"MODELTRACK_ADMIN_LISTEN": "tcp:8081"} | {"MODELTRACK_DATA_DIR": str(tmp_path)})


class Receiver(Resource):
    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.alerts: list[dict[str, Any]] = []

    def render_POST(self, request: Any) -> bytes:
        self.alerts.append(json.loads(request.content.read()))
        return b"ok"


@pytest_twisted.ensureDeferred
async def test_budget_alerts_reach_a_webhook_once_per_level(reactor: Any, tmp_path: Path, upstream: Any) -> None:
    receiver = Receiver()
    port = await endpoints.TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(Site(receiver))
    budgets = {"budgets": [{"team": "ml", "monthly_limit": float(3 * GPT4O_CHAT_COST), "action": "warn", "warn_at_percent": 50}]}
    (tmp_path / "budgets.json").write_text(json.dumps(budgets))
    proxy = start_proxy(
        reactor, tmp_path, upstream.url, alert_webhook=f"http://127.0.0.1:{port.getHost().port}/hooks/budget?key=abc"
    )
    try:
        for expected in (0, 1, 2, 2, 2):  # after 1, 2, 3, 4, 5 calls: none, warning (67%), limit (100%), no more
            await calls(proxy, [("ml", "s")])
            await pending_alerts(proxy)
            assert len(receiver.alerts) == expected
        warning, limit = receiver.alerts
        assert (warning["level"], limit["level"]) == ("warning", "limit")
        assert warning["scope"] == "team=ml" and Decimal(warning["spend_usd"]) == 2 * GPT4O_CHAT_COST
        assert warning["text"].startswith("modeltrack: budget team=ml passed 50% of its limit: spent 0.01 of")
        assert limit["text"].startswith("modeltrack: budget team=ml reached its limit")
    finally:
        await proxy.service.stopService()
        await port.stopListening()


async def pending_alerts(proxy: Any) -> None:
    from twisted.internet.defer import gatherResults

    await gatherResults(list(proxy.service.gate.alerts.pending))


def test_alert_delivery_retries_with_backoff() -> None:
    from treq.testing import StubTreq
    from twisted.internet.task import Clock

    from modeltrack.controls.alerts import BudgetAlerts
    from modeltrack.controls.budgets import Budget

    class Flaky(Resource):
        isLeaf = True
        answers = [500, 503, 200]
        seen: list[Any] = []

        def render_POST(self, request: Any) -> bytes:
            self.seen.append(json.loads(request.content.read()))
            request.setResponseCode(self.answers.pop(0))
            return b""

    flaky = Flaky()
    stub = StubTreq(flaky)
    clock = Clock()
    alerts = BudgetAlerts("http://hooks.example/alert", stub, clock, first_delay=2.0)
    budget = Budget("ml", Decimal(10))
    alerts.announce(budget, "2026-11", "warning", Decimal(9))
    alerts.announce(budget, "2026-11", "warning", Decimal(9.5))  # once per scope, period and level
    stub.flush()
    assert len(flaky.seen) == 1 and len(alerts.pending) == 1
    assert [call.getTime() for call in clock.getDelayedCalls()] == [2.0]
    clock.advance(2.0)
    stub.flush()
    assert len(flaky.seen) == 2
    assert [call.getTime() for call in clock.getDelayedCalls()] == [6.0]  # then 4 s later
    clock.advance(4.0)
    stub.flush()
    assert len(flaky.seen) == 3 and not alerts.pending and not clock.getDelayedCalls()
    assert flaky.seen[0] == flaky.seen[2] and flaky.seen[0]["percent"] == 90.0


@pytest_twisted.ensureDeferred
async def test_sighup_rereads_the_token_file(reactor: Any, tmp_path: Path, upstream: Any) -> None:
    token_file = tmp_path / "admin-token"
    token_file.write_bytes(TOKEN)
    proxy = start_proxy(reactor, tmp_path, upstream.url, admin_listen=ADMIN, admin_token=TOKEN, admin_token_file=token_file)
    url = proxy.admin_url + "/api/budgets"
    try:
        token_file.write_bytes(b"renewed-token-fedcba9876543210\n")
        proxy.service._reload_on_signal()  # what SIGHUP leads to, on the reactor thread
        assert (await get(url, headers={"Authorization": "Bearer " + TOKEN.decode()}))[0] == 401
        assert (await get(url, headers={"Authorization": "Bearer renewed-token-fedcba9876543210"}))[0] == 200
        token_file.write_bytes(b"x")  # unusable: the renewed token stays
        proxy.service._reload_on_signal()
        assert (await get(url, headers={"Authorization": "Bearer renewed-token-fedcba9876543210"}))[0] == 200
    finally:
        await proxy.service.stopService()
