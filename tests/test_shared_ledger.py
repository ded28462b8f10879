"""
One budget across instances, held in a real Redis (Debian's redis-server, started on a
free port in a temp dir): two proxies under concurrency never pass a limit; a restart
sets its contribution again rather than adding it; reservations are idempotent and
expire; Redis out of reach behaves as --redis-failure says, and recovers.
"""

from __future__ import annotations

import json
import shutil
import signal
import socket
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
import treq
from twisted.internet.defer import Deferred, ensureDeferred, gatherResults
from twisted.internet.task import Clock, deferLater

from modeltrack.controls.budgets import Budget, Who
from modeltrack.controls.redis_client import connect
from modeltrack.controls.redis_ledger import (
    LEASE_CALLS,
    LEASE_SECONDS,
    LEASE_SHARE,
    NANO,
    RESERVATION_SECONDS,
    SETTLE_SECONDS,
    RedisLedger,
)
from tests.conftest import start_proxy
from tests.processes import Running
from tests.test_sdk import GPT4O_CHAT_COST

pytestmark = pytest.mark.skipif(shutil.which("redis-server") is None, reason="tools/install-test-tools.sh installs it")
#: A body as long in bytes as the fake's answer is in input tokens, with room for its
#: output: each call's reservation covers what it then costs, so a limit is exact.
CALL = json.dumps({"model": "gpt-4o", "max_tokens": 300, "messages": [{"role": "user", "content": "x" * 1300}]}).encode()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisServer:
    def __init__(self, directory: Path, port: int | None = None, *options: str) -> None:
        self.port = port or free_port()
        self.directory = directory
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.options = options
        self.start()

    def start(self) -> None:
        import os

        self.running = Running(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.directory), *self.options],
            env=dict(os.environ),
        )
        self.running.wait_for(lambda lines: any("Ready to accept connections" in line for line in lines))

    def stop(self) -> None:
        self.running.stop(signal.SIGKILL)

    def command(self, *args: str) -> str:
        import subprocess

        return subprocess.run(
            ["redis-cli", "-p", str(self.port), *args], capture_output=True, text=True, timeout=30, check=True
        ).stdout


@pytest.fixture
def redis(tmp_path: Path) -> Any:
    server = RedisServer(tmp_path)
    yield server
    server.stop()


def budget_file(data_dir: Path, limit: str) -> None:
    data_dir.mkdir(parents=True, exist_ok=True)
    (data_dir / "budgets.json").write_text(json.dumps({"budgets": [{"scope": "all", "monthly_limit": limit, "action": "block"}]}))


async def post(url: str) -> int:
    response = await treq.post(
        url + "/v1/chat/completions", data=CALL,
        headers={"Authorization": "Bearer sk-x", "Content-Type": "application/json"},
    )
    await response.content()
    return int(response.code)


async def admitted(ledger: RedisLedger, *args: Any) -> Any:
    """
    An admission, whether the ledger answers at once (from a lease) or after Redis.
    """
    result = ledger.admit(*args)
    return (await result) if isinstance(result, Deferred) else result


def spent(events: list[dict[str, Any]]) -> Decimal:
    return sum((Decimal(str(e["cost_usd"])) for e in events if e["outcome"] == "ok"), Decimal(0))


@pytest_twisted.ensureDeferred
async def test_two_instances_hold_one_budget_under_concurrency(reactor: Any, tmp_path: Path, upstream: Any, redis: Any) -> None:
    limit = Decimal("0.1")
    for name in ("a", "b"):
        budget_file(tmp_path / name, str(limit))
    a = start_proxy(reactor, tmp_path / "a", upstream.url, redis_url=redis.url)
    b = start_proxy(reactor, tmp_path / "b", upstream.url, redis_url=redis.url)
    try:
        codes = await gatherResults([ensureDeferred(post((a, b)[n % 2].url)) for n in range(400)])
        assert set(codes) == {200, 429}
        await a.service.shared_ledger._settle_now()
        await b.service.shared_ledger._settle_now()
        # Either instance reports the budget as the fleet stands: every call's spend.
        standing = json.loads(await (await treq.get(a.url + "/budgets")).content())
    finally:
        await a.service.stopService()
        await b.service.stopService()
    events = a.events() + b.events()
    ok = [e for e in events if e["outcome"] == "ok"]
    assert len(ok) == codes.count(200)  # every admitted call has its event
    assert len(events) == 400
    assert 0 < spent(events) <= limit
    assert standing["shared"] is True and Decimal(standing["budgets"][0]["spend_usd"]) == sum(
        Decimal(int(Decimal(str(e["cost_usd"])) * NANO)) / NANO for e in ok
    )
    assert spent(events) + GPT4O_CHAT_COST > limit - Decimal("0.007")  # and it was spent, not refused early
    assert len(a.events()) == len(b.events()) == 200  # each instance took its half, under one limit
    keys = redis.command("--scan", "--pattern", "modeltrack:all|*").split()
    total = next(key for key in keys if key.endswith(":total"))
    assert redis.command("GET", total).strip() == "0"  # no reservation left open
    shares = redis.command("HVALS", next(key for key in keys if key.endswith(":spend"))).split()
    assert sum(int(x) for x in shares) == sum(int(Decimal(str(e["cost_usd"])) * NANO) for e in ok)


@pytest_twisted.ensureDeferred
async def test_a_restart_sets_its_contribution_again(reactor: Any, tmp_path: Path, upstream: Any, redis: Any) -> None:
    budget_file(tmp_path / "a", "5")
    for _ in range(2):
        proxy = start_proxy(reactor, tmp_path / "a", upstream.url, redis_url=redis.url)
        try:
            assert await post(proxy.url) == 200
        finally:
            await proxy.service.stopService()
    keys = redis.command("--scan", "--pattern", "modeltrack:all|*:spend").split()
    (share,) = redis.command("HVALS", keys[0]).split()
    assert Decimal(share) / NANO == 2 * GPT4O_CHAT_COST  # two calls, not three (1 + 1 + 1 re-added)
    redis.command("FLUSHALL")  # an emptied Redis: the next start puts the share back
    proxy = start_proxy(reactor, tmp_path / "a", upstream.url, redis_url=redis.url)
    try:
        await proxy.service.shared_ledger.publish()
    finally:
        await proxy.service.stopService()
    (share,) = redis.command("HVALS", keys[0]).split()
    assert Decimal(share) / NANO == 2 * GPT4O_CHAT_COST


@pytest_twisted.ensureDeferred
async def test_reservations_are_idempotent_and_expire(reactor: Any, redis: Any) -> None:
    clock = Clock()
    clock.advance(1_800_000_000)
    ledger = RedisLedger(connect(redis.url), clock, "test")
    budget = Budget("ml", Decimal("1"))
    ledger.replace([budget])
    day = "2027-01-15"
    try:
        first = await ledger.admit([budget], Decimal("0.4"), day, "mt_1")
        again = await ledger.admit([budget], Decimal("0.4"), day, "mt_1")  # a retry: held once
        assert first.status == again.status == "ok"
        assert (await ledger.admit([budget], Decimal("0.4"), day, "mt_2")).status == "ok"
        assert (await ledger.admit([budget], Decimal("0.4"), day, "mt_3")).status == "blocked"  # 0.8 held
        clock.advance(RESERVATION_SECONDS + 1)  # their processes crashed: nothing will release them
        assert (await ledger.admit([budget], Decimal("0.9"), day, "mt_4")).status == "ok"  # theirs are gone
        total = "modeltrack:team=ml|2027-01:total"
        assert redis.command("GET", total).strip() == str(int(Decimal("0.9") * NANO))
        fifth = await ledger.admit([budget], Decimal("0.05"), day, "mt_5")
        assert fifth.status == "warning"  # 90 % held before it
        ledger.release(fifth)
        ledger.release(fifth)  # idempotent
        # A call whose reservation expired (its process was thought gone) still counts.
        ledger.settle(first, Who("ml"), day, Decimal("0.3"))
        clock.advance(SETTLE_SECONDS)  # calls that ended are settled together
        await ledger.admit([budget], Decimal("0"), day, "mt_6")  # a round trip: the releases are done
        assert redis.command("GET", total).strip() == str(int(Decimal("0.9") * NANO))
        assert redis.command("HGET", "modeltrack:team=ml|2027-01:spend", "test").strip() == str(int(Decimal("0.3") * NANO))
    finally:
        ledger._redis.disconnect()


@pytest_twisted.ensureDeferred
async def test_redis_out_of_reach_closed_refuses_open_admits_and_both_recover(
    reactor: Any, tmp_path: Path, upstream: Any, redis: Any
) -> None:
    budget_file(tmp_path / "closed", "5")
    budget_file(tmp_path / "open", "5")
    closed = start_proxy(reactor, tmp_path / "closed", upstream.url, redis_url=redis.url)
    opened = start_proxy(reactor, tmp_path / "open", upstream.url, redis_url=redis.url, redis_failure="open")
    try:
        assert [await post(closed.url), await post(opened.url)] == [200, 200]
        redis.stop()
        # Calls that fit in the lease taken before may still pass (it was reserved while
        # Redis could say); the first one that needs Redis is refused, and so is every
        # one after it, the lease dropped.
        answered = []
        while 503 not in answered and len(answered) <= LEASE_CALLS:
            answered.append(await post(closed.url))
        assert answered[-1] == 503 and answered.count(200) < LEASE_CALLS, answered
        assert [await post(closed.url), await post(opened.url)] == [503, 200]
        redis.start()
        for _ in range(300):  # txredisapi reconnects on its own, with a backoff
            if await post(closed.url) == 200:
                break
            await deferLater(reactor, 0.1, lambda: None)
        else:
            raise AssertionError("never recovered")
    finally:
        await closed.service.stopService()
        await opened.service.stopService()
    refused = [e for e in closed.events() if e["status_code"] == 503]
    assert refused and all((e["outcome"], e["error_type"]) == ("rejected", "overloaded_error") for e in refused)
    assert [e["outcome"] for e in opened.events()] == ["ok", "ok"]


@pytest_twisted.ensureDeferred
async def test_instances_share_the_response_cache(reactor: Any, tmp_path: Path, upstream: Any, redis: Any) -> None:
    # A fleet shares its install secret (so that key_ids, and cache tenants, agree).
    from modeltrack.controls.keys import install_secret

    secret = install_secret(tmp_path / "a" / "state")
    (tmp_path / "b" / "state").mkdir(parents=True)
    (tmp_path / "b" / "state" / "cache.secret").write_bytes(secret)
    options = {"redis_url": redis.url, "cache": True, "cache_backend": "redis"}
    a = start_proxy(reactor, tmp_path / "a", upstream.url, **options)
    b = start_proxy(reactor, tmp_path / "b", upstream.url, **options)
    body = json.dumps({"model": "claude-sonnet-4-5", "max_tokens": 5, "temperature": 0, "messages": [{"role": "user", "content": "hi"}]}).encode()

    async def ask(proxy: Any, key: str) -> str:
        response = await treq.post(proxy.url + "/v1/messages", data=body, headers={"x-api-key": key, "anthropic-version": "2023-06-01"})
        await response.content()
        return response.headers.getRawHeaders("x-modeltrack-cache", ["-"])[0]

    try:
        assert await ask(a, "sk-ant-one") == "MISS"
        assert await ask(b, "sk-ant-one") == "HIT"  # stored by a, answered by b
        assert await ask(b, "sk-ant-two") == "MISS"  # another tenant
    finally:
        await a.service.stopService()
        await b.service.stopService()
    assert len(upstream.resource.seen) == 2
    (hit,) = [e for e in b.events() if e["cache_hit"]]
    assert hit["cost_usd"] == 0 and hit["saved_usd"] > 0


@pytest_twisted.ensureDeferred
async def test_rediss_verifies_the_servers_certificate(reactor: Any, tmp_path: Path, upstream: Any) -> None:
    from tests.test_listen_tls import ca_and_server

    bundle, cert, key, _, _ = ca_and_server(tmp_path, "redis CA")
    tls_port = free_port()
    server = RedisServer(
        tmp_path, None, "--tls-port", str(tls_port), "--tls-cert-file", str(cert), "--tls-key-file", str(key),
        "--tls-ca-cert-file", str(bundle), "--tls-auth-clients", "no",
    )
    url = f"rediss://localhost:{tls_port}/0"
    try:
        for name, trusted in (("trusted", True), ("untrusted", False)):
            budget_file(tmp_path / name, "5")
            options = {"redis_url": url, **({"ca_bundle": bundle} if trusted else {})}
            proxy = start_proxy(reactor, tmp_path / name, upstream.url, **options)
            try:
                # Trusted: the budget is kept in Redis over TLS. Untrusted (the system's
                # CAs do not know this one): Redis is out of reach, closed refuses.
                assert await post(proxy.url) == (200 if trusted else 503)
            finally:
                await proxy.service.stopService()
        assert "modeltrack:all|" in server.command("--scan")
    finally:
        server.stop()


@pytest_twisted.ensureDeferred
async def test_a_password_from_a_file(reactor: Any, tmp_path: Path, upstream: Any) -> None:
    server = RedisServer(tmp_path, None, "--requirepass", "s3cret-redis-pass")
    try:
        for name, password in (("right", "s3cret-redis-pass"), ("wrong", "not-it")):
            budget_file(tmp_path / name, "5")
            proxy = start_proxy(
                reactor, tmp_path / name, upstream.url, redis_url=server.url, redis_password=password,
            )
            try:
                assert await post(proxy.url) == (200 if name == "right" else 503)
            finally:
                await proxy.service.stopService()
            assert password.encode() not in b"".join(p.read_bytes() for p in (tmp_path / name).rglob("*") if p.is_file())
    finally:
        server.stop()


def test_the_redis_options(tmp_path: Path, capsys: Any) -> None:
    from modeltrack.ops.options import Options

    (tmp_path / "pass").write_text("from-a-file\n")
    options = Options()
    options.parseOptions(["--data-dir", str(tmp_path / "d"), "--redis-url", "redis://127.0.0.1:1/0", "--redis-password-file", str(tmp_path / "pass")])
    assert options.settings.redis_password == "from-a-file"
    for argv, problem in (
        (["--redis-url", "http://x"], "--redis-url: 'http://x' is not a redis:// or rediss:// URL"),
        (["--redis-url", "redis://h:1/0", "--redis-failure", "maybe"], "--redis-failure: 'maybe' is not one of closed, open"),
        (["--cache-backend", "redis"], "--cache-backend: redis needs --redis-url"),
    ):
        with pytest.raises(SystemExit):
            Options().parseOptions(["--data-dir", str(tmp_path / "d"), *argv])
        assert capsys.readouterr().err.startswith("modeltrack: " + problem)


@pytest_twisted.ensureDeferred
async def test_leases_near_the_limit(reactor: Any, tmp_path: Path, upstream: Any, redis: Any) -> None:
    """
    A budget with room for leases, another contributor having spent all but $0.60 of
    it: two instances, 400 concurrent calls (about $2 wanted). Calls come from leases;
    the limit still holds to the nano-dollar, and the leases go back.
    """
    limit = Decimal("10")
    for name in ("a", "b"):
        budget_file(tmp_path / name, str(limit))
    period = Budget("", limit, everything=True).period_of(datetime.now(UTC).date().isoformat())
    spend_key = f"modeltrack:all|{period}:spend"
    already = int((limit - Decimal("0.6")) * NANO)
    redis.command("HSET", spend_key, "elsewhere", str(already))
    a = start_proxy(reactor, tmp_path / "a", upstream.url, redis_url=redis.url)
    b = start_proxy(reactor, tmp_path / "b", upstream.url, redis_url=redis.url)
    try:
        # Sequential calls first: after the first, each comes from the lease (unless a
        # pause of a quarter of a second on a loaded machine let the lease go back).
        assert [await post(a.url) for _ in range(10)] == [200] * 10
        ledger = a.service.shared_ledger
        assert ledger.one_by_one + ledger.from_lease == 10 and ledger.from_lease >= 7, (ledger.one_by_one, ledger.from_lease)
        codes = await gatherResults([ensureDeferred(post((a, b)[n % 2].url)) for n in range(400)])
        assert set(codes) == {200, 429}
    finally:
        await a.service.stopService()
        await b.service.stopService()
    # (Whether b ever holds a usable lease depends on how much is left when it first
    # asks: near the limit a lease is at most a quarter of the rest.)
    ok = [e for e in a.events() + b.events() if e["outcome"] == "ok"]
    assert len(ok) == codes.count(200) + 10  # every admitted call has its event
    shares = [int(x) for x in redis.command("HVALS", spend_key).split()]
    assert sum(shares) - already == sum(int(Decimal(str(e["cost_usd"])) * NANO) for e in ok)
    assert sum(shares) <= limit * NANO  # never past the limit
    # (How close it came depends on how many calls were under way at once, each holding
    # its estimate, more than its cost; the unit test below holds leases to their word.)
    assert redis.command("GET", f"modeltrack:all|{period}:total").strip() == "0"  # reservations and leases gone
    assert redis.command("HLEN", f"modeltrack:all|{period}:held").strip() == "0"


#: The budget and day the ledger-level lease tests use.
ML = Budget("ml", Decimal("1"))
DAY = "2027-01-15"


def two_ledgers(redis: Any, *names: str) -> tuple[Clock, list[RedisLedger]]:
    """
    Processes named C{names} sharing C{ML} in C{redis}, on one fake clock.
    """
    clock = Clock()
    clock.advance(1_800_000_000)
    ledgers = [RedisLedger(connect(redis.url), clock, name) for name in names]
    for ledger in ledgers:
        ledger.replace([ML])
    return clock, ledgers


@pytest_twisted.ensureDeferred
async def test_a_crashed_processs_lease_expires(reactor: Any, redis: Any) -> None:
    budget, day = ML, DAY
    clock, (crashed, other) = two_ledgers(redis, "crashed", "other")
    try:
        first = await admitted(crashed, [budget], Decimal("0.001"), day, "mt_1")
        assert first.status == "ok" and not first.leased
        second = await admitted(crashed, [budget], Decimal("0.001"), day, "mt_2")
        assert second.leased  # from the lease taken with the first
        held = int(redis.command("HGET", "modeltrack:team=ml|2027-01:held", "lease|crashed"))
        assert held == int(LEASE_SHARE * NANO)  # 1 % of the limit: 16 calls would be more
        # The process dies holding it (and mt_1's own 0.001): the other process cannot
        # use what it holds...
        assert (await admitted(other, [budget], Decimal("0.99"), day, "mt_3")).status == "blocked"
        clock.advance(LEASE_SECONDS + 1)  # ... until it expires
        assert (await admitted(other, [budget], Decimal("0.99"), day, "mt_4")).status == "ok"
    finally:
        crashed._redis.disconnect()
        other._redis.disconnect()


@pytest_twisted.ensureDeferred
async def test_a_lease_goes_back_when_the_budget_is_nearly_spent(reactor: Any, redis: Any) -> None:
    """
    An idle lease stands between another process and the last of a budget only until
    its holder hears, with its next batch, that the rest is less than a lease.
    """
    budget, day = ML, DAY
    _, (a, b) = two_ledgers(redis, "a", "b")
    cost = Decimal("0.001")

    async def settled(ledger: RedisLedger) -> None:
        # The batch due now, sent and answered (and what the answer decided, done).
        if ledger._settling is not None:
            ledger._settling.cancel()
        await ledger._settle_now()

    try:
        first = await admitted(a, [budget], cost, day, "a1")
        a.settle(first, Who("ml"), day, cost)
        await settled(a)  # a holds a lease of 0.01, none of it in use
        assert (await admitted(b, [budget], Decimal("0.985"), day, "b1")).status == "ok"
        assert (await admitted(b, [budget], Decimal("0.005"), day, "b2")).status == "blocked"  # a's lease is in the way
        second = await admitted(a, [budget], cost, day, "a2")
        assert second.leased
        a.settle(second, Who("ml"), day, cost)
        await settled(a)  # the rest (0.004) is less than a lease: a gives its idle part back
        await settled(a)
        assert redis.command("HGET", "modeltrack:team=ml|2027-01:held", "lease|a").strip() == ""
        assert (await admitted(b, [budget], Decimal("0.005"), day, "b3")).status != "blocked"
    finally:
        a._redis.disconnect()
        b._redis.disconnect()


@pytest.mark.parametrize("instances", [1, 2])
@pytest_twisted.ensureDeferred
async def test_back_to_back_calls_are_admitted_while_they_fit(
    reactor: Any, tmp_path: Path, upstream: Any, redis: Any, instances: int,
) -> None:
    """
    One client's calls one after another under a small block budget (no lease fits in
    1 % of it), through one instance or two in turn: each call is admitted exactly
    when its worst case fits beside what the calls before it cost, and once one is
    refused so is every one after it.
    """
    limit = Decimal("0.03")
    names = ["a", "b"][:instances]
    for name in names:
        budget_file(tmp_path / name, str(limit))
    proxies = [start_proxy(reactor, tmp_path / name, upstream.url, redis_url=redis.url) for name in names]
    try:
        codes = [await post(proxies[n % instances].url) for n in range(10)]
    finally:
        for proxy in proxies:
            await proxy.service.stopService()
    # The worst case of CALL: its bytes as gpt-4o input ($2.50/M), its max_tokens as output ($10/M).
    worst = len(CALL) * Decimal("2.5") / 10**6 + 300 * Decimal(10) / 10**6
    fits = max(k for k in range(1, 11) if (k - 1) * GPT4O_CHAT_COST + worst <= limit)
    assert codes == [200] * fits + [429] * (10 - fits)
    events = [e for proxy in proxies for e in proxy.events()]
    assert spent(events) == fits * GPT4O_CHAT_COST <= limit
    refusal = next(e for e in events if e["outcome"] == "rejected")
    assert refusal["budget_status"] == "blocked"


@pytest_twisted.ensureDeferred
async def test_a_call_that_fits_once_ended_calls_are_counted_is_admitted(reactor: Any, redis: Any) -> None:
    """
    The issue's case, on a clock that never lets the settle batch go by itself: a $0.01
    budget, calls of $0.001143 whose worst case is $0.00327, each asked right after
    the one before ended. Before refusing, the ledger settles what ended and asks
    again: six fit ($0.005715 spent + $0.00327 <= $0.01), the seventh does not, and its
    refusal says what was spent and what calls under way hold, apart.
    """
    budget = Budget("again", Decimal("0.01"))
    clock = Clock()
    clock.advance(1_800_000_000)
    ledger = RedisLedger(connect(redis.url), clock, "solo")
    ledger.replace([budget])
    cost, worst = Decimal("0.001143"), Decimal("0.00327")
    try:
        statuses = []
        for n in range(8):
            admission = await admitted(ledger, [budget], worst, DAY, f"call-{n}")
            statuses.append(admission.status)
            if admission.status != "blocked":
                ledger.settle(admission, Who("again"), DAY, cost)
        assert statuses == ["ok"] * 6 + ["blocked"] * 2, statuses
        assert admission.spend == 6 * cost and admission.held == 0
    finally:
        ledger._redis.disconnect()
