"""
Which key paid: fingerprints, the keys file, the allow-list gate, budgets held to a key
name and to everything. Through the official SDKs against the fake upstream, and the
C{modeltrack keys} command as an operator runs it.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import signal
import subprocess
import sys
from decimal import Decimal
from pathlib import Path
from typing import Any

import anthropic
import openai
import pytest
import pytest_twisted
from twisted.internet.defer import gatherResults
from twisted.internet.task import deferLater
from twisted.web.http_headers import Headers

from modeltrack.controls.budgets import ConfigFileError
from modeltrack.controls.files import ControlFiles
from modeltrack.controls.gate import Gate
from modeltrack.controls.keys import Keyring, client, credential, fingerprint, install_secret, load_keys
from modeltrack.pricing.prices import PriceBook
from tests.conftest import start_proxy
from tests.test_sdk import GPT4O_CHAT_COST, in_thread

USER = [{"role": "user", "content": "hi"}]
REPO = Path(__file__).resolve().parent.parent


def key_id(data_dir: Path, key: str) -> str:
    return fingerprint(install_secret(data_dir / "state"), key.encode())


def write(path: Path, document: Any) -> None:
    path.write_text(json.dumps(document))


def every_file_under(directory: Path) -> bytes:
    return b"".join(path.read_bytes() for path in directory.rglob("*") if path.is_file())


def keys_cli(data_dir: Path, *args: str, key: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "modeltrack.cli", "keys", *args, "--data-dir", str(data_dir)],
        input=key, capture_output=True, text=True, timeout=60, env={**os.environ, "PYTHONPATH": str(REPO)},
    )


# -- fingerprints and programs ------------------------------------------------


def test_fingerprints_are_stable_keyed_and_do_not_collide(tmp_path: Path) -> None:
    secret = install_secret(tmp_path)
    assert (tmp_path / "cache.secret").stat().st_mode & 0o777 == 0o600
    assert install_secret(tmp_path) == secret  # made once, kept
    keys = [f"sk-proj-{n:08d}".encode() for n in range(10_000)]
    ids = {fingerprint(secret, key) for key in keys}
    assert len(ids) == 10_000
    assert fingerprint(secret, keys[7]) == fingerprint(secret, keys[7])
    # The definition, computed independently: HMAC-SHA256 under the secret, 16 hex digits.
    assert fingerprint(secret, keys[7]) == "k_" + hmac.new(secret, keys[7], hashlib.sha256).hexdigest()[:16]
    assert all(i.startswith("k_") and len(i) == 18 for i in ids)
    # Under another install's secret the same key has another id: not a plain hash.
    assert fingerprint(b"o" * 32, keys[7]) != fingerprint(secret, keys[7])


def test_a_short_secret_is_refused_not_replaced(tmp_path: Path) -> None:
    (tmp_path / "cache.secret").write_bytes(b"short")
    with pytest.raises(ValueError, match="shorter than 32 bytes"):
        install_secret(tmp_path)
    assert (tmp_path / "cache.secret").read_bytes() == b"short"


def test_the_credential_a_dialect_declares() -> None:
    headers = Headers({b"authorization": [b"Bearer sk-a"], b"x-api-key": [b"sk-b"]})
    assert credential(headers, (b"authorization",)) == b"sk-a"
    assert credential(headers, (b"x-api-key", b"authorization")) == b"sk-b"
    assert credential(Headers({b"authorization": [b"Basic abc"]}), (b"authorization",)) is None
    assert credential(Headers(), (b"authorization",)) is None


def test_client_programs_from_the_sdks_own_user_agents() -> None:
    major = {"openai": openai.__version__.split(".")[0], "anthropic": anthropic.__version__.split(".")[0]}
    assert client(openai.OpenAI(api_key="x").user_agent.encode()) == f"openai-python/{major['openai']}"
    assert client(openai.AzureOpenAI(api_key="x", api_version="2024-10-21", azure_endpoint="http://a").user_agent.encode()) == (
        f"openai-python/{major['openai']}"
    )
    assert client(anthropic.Anthropic(api_key="x").user_agent.encode()) == f"anthropic-python/{major['anthropic']}"
    assert client(b"claude-cli/2.0.14 (external, cli)") == "claude-code/2"
    assert client(b"curl/8.5.0") == "curl/8"
    assert client(b"Mozilla/5.0 whatever") == client(None) == "other"


def test_a_bad_keys_file_is_rejected_naming_the_entry_and_the_last_good_stays(tmp_path: Path) -> None:
    keys = Keyring(b"s" * 32)
    files = ControlFiles(tmp_path, Gate(PriceBook()), keys)
    good = {"keys": [{"key_id": "k_0123456789abcdef", "name": "ci"}], "unknown_keys": "deny"}
    write(tmp_path / "keys.json", good)
    files.reload()
    assert keys.book.unknown_keys == "deny" and keys.book.entries["k_0123456789abcdef"].name == "ci"
    write(tmp_path / "keys.json", {"keys": [good["keys"][0], {"key_id": "sk-not-a-fingerprint", "name": "oops"}]})
    with pytest.raises(ConfigFileError, match=r"keys.json: keys\[1\]: key_id must be"):
        load_keys(tmp_path / "keys.json")
    files.reload()
    assert keys.book.unknown_keys == "deny" and list(keys.book.entries) == ["k_0123456789abcdef"]


# -- through the SDKs -----------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_events_name_the_key_that_paid_and_a_header_cannot_move_its_team(
    reactor: Any, tmp_path: Path, upstream: Any
) -> None:
    search_key, other_key = "sk-proj-CANARY-search-0001", "sk-ant-CANARY-other-0002"
    done = keys_cli(tmp_path, "add", "--name", "search-prod", "--team", "search", key=search_key + "\n")
    assert done.returncode == 0, done.stderr
    proxy = start_proxy(reactor, tmp_path, upstream.url)
    try:
        openai_client = openai.OpenAI(
            base_url=proxy.url + "/v1", api_key=search_key, max_retries=0,
            default_headers={"X-ModelTrack-Team": "billing", "X-ModelTrack-App": "ranker"},
        )
        anthropic_client = anthropic.Anthropic(base_url=proxy.url, api_key=other_key, max_retries=0)
        for _ in range(2):
            await in_thread(openai_client.chat.completions.create, model="gpt-4o", messages=USER)
        await in_thread(anthropic_client.messages.create, model="claude-sonnet-4-5", max_tokens=50, messages=USER)
    finally:
        await proxy.service.stopService()
    first, second, third = proxy.events()
    assert first["key_id"] == second["key_id"] == key_id(tmp_path, search_key)
    assert (first["key_name"], first["team"], first["app"]) == ("search-prod", "search", "ranker")  # header fills app only
    assert first["client"] == f"openai-python/{openai.__version__.split('.')[0]}"
    assert third["key_id"] == key_id(tmp_path, other_key) != first["key_id"]
    assert third["key_name"] is None and third["team"] is None
    assert third["client"] == f"anthropic-python/{anthropic.__version__.split('.')[0]}"
    for key in (search_key, other_key):
        assert key.encode() not in every_file_under(tmp_path)
        assert key not in done.stdout + done.stderr


@pytest_twisted.ensureDeferred
async def test_deny_refuses_an_unlisted_key_before_anything_is_forwarded(reactor: Any, tmp_path: Path, upstream: Any) -> None:
    listed = "sk-listed-0001"
    write(tmp_path / "keys.json", {"keys": [{"key_id": key_id(tmp_path, listed), "name": "ci"}], "unknown_keys": "deny"})
    proxy = start_proxy(reactor, tmp_path, upstream.url)
    try:
        stranger = openai.OpenAI(base_url=proxy.url + "/v1", api_key="sk-stranger-0002", max_retries=0)
        with pytest.raises(openai.AuthenticationError) as refused:
            await in_thread(stranger.chat.completions.create, model="gpt-4o", messages=USER)
        assert refused.value.body["type"] == "unknown_key"
        with pytest.raises(openai.AuthenticationError):
            await in_thread(stranger.files.list)  # a relayed route is gated too
        with pytest.raises(anthropic.AuthenticationError):
            await in_thread(
                anthropic.Anthropic(base_url=proxy.url, api_key="sk-ant-stranger", max_retries=0).messages.create,
                model="claude-sonnet-4-5", max_tokens=5, messages=USER,
            )
        assert upstream.resource.seen == []  # nothing was contacted
        friend = openai.OpenAI(base_url=proxy.url + "/v1", api_key=listed, max_retries=0)
        await in_thread(friend.chat.completions.create, model="gpt-4o", messages=USER)
        assert len(upstream.resource.seen) == 1
    finally:
        await proxy.service.stopService()
    refused_chat, refused_files, refused_messages, allowed = proxy.events()
    for event in (refused_chat, refused_files, refused_messages):
        assert (event["outcome"], event["error_type"], event["status_code"]) == ("rejected", "unknown_key", 401)
    assert refused_files["endpoint"] == "/v1/files"
    assert allowed["outcome"] == "ok" and allowed["key_name"] == "ci"


@pytest_twisted.ensureDeferred
async def test_require_team_refuses_a_call_with_no_team(reactor: Any, tmp_path: Path, upstream: Any) -> None:
    write(tmp_path / "keys.json", {"keys": [{"key_id": key_id(tmp_path, "sk-team"), "name": "t", "team": "search"}],
                                   "require_team": True})
    proxy = start_proxy(reactor, tmp_path, upstream.url)
    try:
        anonymous = openai.OpenAI(base_url=proxy.url + "/v1", api_key="sk-nobody", max_retries=0)
        with pytest.raises(openai.BadRequestError) as refused:
            await in_thread(anonymous.chat.completions.create, model="gpt-4o", messages=USER)
        assert refused.value.body["type"] == "attribution_required"
        labelled = openai.OpenAI(base_url=proxy.url + "/v1", api_key="sk-nobody", max_retries=0,
                                 default_headers={"X-ModelTrack-Team": "ml"})
        await in_thread(labelled.chat.completions.create, model="gpt-4o", messages=USER)
        keyed = openai.OpenAI(base_url=proxy.url + "/v1", api_key="sk-team", max_retries=0)
        await in_thread(keyed.chat.completions.create, model="gpt-4o", messages=USER)
    finally:
        await proxy.service.stopService()
    assert [(e["outcome"], e["team"]) for e in proxy.events()] == [("rejected", None), ("ok", "ml"), ("ok", "search")]


@pytest_twisted.ensureDeferred
async def test_key_and_global_budgets_hold_under_concurrency_and_a_rotated_key_keeps_its_budget(
    reactor: Any, tmp_path: Path, upstream: Any
) -> None:
    old_key, new_key, unnamed_key = "sk-search-old-0001", "sk-search-new-0002", "sk-unnamed-0003"
    assert keys_cli(tmp_path, "add", "--name", "search-prod", key=old_key).returncode == 0
    key_limit, all_limit = Decimal("0.03"), Decimal("0.05")
    write(tmp_path / "budgets.json", {"budgets": [
        {"key": "search-prod", "monthly_limit": str(key_limit), "action": "block"},
        {"scope": "all", "monthly_limit": str(all_limit), "action": "block"},
    ]})
    proxy = start_proxy(reactor, tmp_path, upstream.url, config_poll_seconds=3600)
    # A body as long in bytes as the fake's answer is in input tokens, and room for its
    # output: each call's reservation covers what it then costs, so a limit is exact.
    long_user = [{"role": "user", "content": "x" * 1300}]

    def call(key: str) -> Any:
        def once() -> str:
            sdk = openai.OpenAI(base_url=proxy.url + "/v1", api_key=key, max_retries=0)
            try:
                sdk.chat.completions.create(model="gpt-4o", messages=long_user, max_tokens=300)
                return "ok"
            except openai.RateLimitError as e:
                return e.body["message"]
        return in_thread(once)

    try:
        first = await gatherResults([call(old_key) for _ in range(16)])
        refusals = [r for r in first if r != "ok"]
        assert refusals and all("budget for key=search-prod would be exceeded" in r for r in refusals)
        # Rotation: a new key under the same name carries on with the name's budget.
        assert keys_cli(tmp_path, "add", "--name", "search-prod", key=new_key).returncode == 0
        os.kill(os.getpid(), signal.SIGHUP)
        await deferLater(reactor, 0, lambda: None)
        rotated = await call(new_key)
        assert "budget for key=search-prod would be exceeded" in rotated
        second = await gatherResults([call(unnamed_key) for _ in range(16)])
        assert any("budget for all would be exceeded" in r for r in second)
    finally:
        await proxy.service.stopService()
    events = proxy.events()
    ok = [e for e in events if e["outcome"] == "ok"]
    by_name = sum((Decimal(str(e["cost_usd"])) for e in ok if e["key_name"] == "search-prod"), Decimal(0))
    total = sum((Decimal(str(e["cost_usd"])) for e in ok), Decimal(0))
    assert 0 < by_name <= key_limit and by_name + GPT4O_CHAT_COST > key_limit - Decimal("0.007")
    assert 0 < total <= all_limit
    assert {e["key_id"] for e in events if e["key_name"] == "search-prod"} == {
        key_id(tmp_path, old_key), key_id(tmp_path, new_key)
    }
    blocked = [e for e in events if e["outcome"] == "rejected"]
    assert {e["budget_scope"] for e in blocked} == {"key=search-prod", "all"}
    assert all(e["budget_status"] == "blocked" for e in blocked)


def test_keys_add_reads_stdin_only_and_never_echoes(tmp_path: Path) -> None:
    data_dir = tmp_path / "new"  # a data dir that does not exist yet
    key = "sk-proj-CANARY-add-0123456789"
    added = keys_cli(data_dir, "add", "--name", "ci", "--team", "platform", "--provider-key-id", "key_abc", key=key + "\n")
    assert added.returncode == 0, added.stderr
    entry = json.loads(added.stdout)
    assert entry == {"key_id": key_id(data_dir, key), "name": "ci", "team": "platform", "provider_key_id": "key_abc"}
    printed = keys_cli(data_dir, "fingerprint", key=key)
    assert printed.stdout.strip() == entry["key_id"]
    again = keys_cli(data_dir, "add", "--name", "other", key=key)
    assert again.returncode == 1 and "already listed, as 'ci'" in again.stderr
    listed = keys_cli(data_dir, "list")
    assert entry["key_id"] in listed.stdout and "platform" in listed.stdout
    assert keys_cli(data_dir, "add", "--name", "x", key="").returncode == 2
    for done in (added, printed, again, listed):
        assert key not in done.stdout + done.stderr
    assert key.encode() not in every_file_under(data_dir)
    assert (data_dir / "keys.json").stat().st_mode & 0o777 == 0o640


def test_check_validates_keys_and_the_budgets_held_to_them(tmp_path: Path) -> None:
    write(tmp_path / "keys.json", {"keys": [{"key_id": "k_0123456789abcdef", "name": "ci"}]})
    write(tmp_path / "budgets.json", {"budgets": [{"key": "ci", "monthly_limit": 5}, {"key": "cj", "monthly_limit": 5}]})
    done = subprocess.run(
        [sys.executable, "-m", "modeltrack.cli", "check", "--data-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=60, env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert done.returncode == 1
    assert "keys.json: ok" in done.stdout
    assert "budgets.json: budgets[1] (key cj): no key is named 'cj' in keys.json" in done.stdout
    write(tmp_path / "keys.json", {"keys": [], "unknown_keys": "block"})
    done = subprocess.run(
        [sys.executable, "-m", "modeltrack.cli", "check", "--data-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=60, env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert done.returncode == 1 and "keys.json: unknown_keys must be allow or deny" in done.stdout


def test_a_damaged_secret_stops_start_up_with_one_line(reactor: Any, tmp_path: Path, capsys: Any) -> None:
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / "cache.secret").write_bytes(b"short")
    with pytest.raises(SystemExit) as stopped:
        start_proxy(reactor, tmp_path, "http://127.0.0.1:9")
    assert stopped.value.code == 1
    err = capsys.readouterr().err
    assert err.startswith("modeltrack: --data-dir: ") and "shorter than 32 bytes" in err
