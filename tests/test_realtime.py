"""
The WebSocket APIs through the proxy, driven by the openai SDK: the Realtime API
(C{client.realtime.connect()}) and the Responses API's WebSocket mode
(C{client.responses.connect()}), relayed untouched, one event per response priced from
its usage at genai-prices' list rates (worked by hand below), held to block budgets per
response.
"""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import openai
import pytest_twisted
from twisted.internet.task import deferLater

from tests.conftest import start_proxy
from tests.fake_realtime import AUDIO_DELTA
from tests.test_sdk import in_thread

# gpt-realtime, USD per million tokens: text in 4, cached text 0.4, text out 16, audio
# in 32, audio out 64. The API reference's response.done: 132 in (13 audio, 64 cached
# text), 121 out (91 audio).
REALTIME_COST = (55 * Decimal(4) + 64 * Decimal("0.4") + 13 * 32 + 30 * 16 + 91 * 64) / 10**6
# gpt-4o-transcribe: 14 audio tokens in at 6, 9 text out at 10.
TRANSCRIPTION_COST = (14 * Decimal(6) + 9 * 10) / 10**6
# gpt-5 over the Responses socket: 900 in (512 cached) at 1.25 / 0.125, 250 out at 10.
RESPONSES_COST = (388 * Decimal("1.25") + 512 * Decimal("0.125") + 250 * 10) / 10**6


def realtime_session(url: str, responses: int, headers: dict[str, str] | None = None, commit: bool = False,
                     mode: str | None = None) -> list[str]:
    """One Realtime session through the SDK: C{responses} responses, each awaited to its end."""
    client = openai.OpenAI(base_url=url, api_key="sk-realtime-key", max_retries=0)
    seen: list[str] = []
    with client.realtime.connect(model="gpt-realtime", extra_headers=headers or {}) as connection:
        connection.session.update(session={"type": "realtime", "instructions": "Say hello."})
        if commit:
            connection.input_audio_buffer.commit()
        for _ in range(responses):
            metadata = {"mode": mode} if mode else None
            connection.response.create(response={"max_output_tokens": 200, **({"metadata": metadata} if metadata else {})})
            for event in connection:
                seen.append(event.type)
                if event.type == "response.output_audio.delta":
                    assert event.delta == AUDIO_DELTA
                if event.type == "error":
                    return seen
                if event.type == "response.done":
                    break
    return seen


def responses_session(url: str, turns: int) -> list[str]:
    client = openai.OpenAI(base_url=url, api_key="sk-responses-key", max_retries=0)
    seen: list[str] = []
    with client.responses.connect() as connection:
        for _ in range(turns):
            connection.response.create(model="gpt-5", input="Say hello.", max_output_tokens=300)
            for event in connection:
                seen.append(event.type)
                if event.type in ("response.completed", "error"):
                    break
    return seen


@pytest_twisted.ensureDeferred
async def test_a_realtime_session_is_relayed_and_each_response_priced(reactor: Any, tmp_path: Path, upstream: Any) -> None:
    proxy = start_proxy(reactor, tmp_path, upstream.url)
    try:
        seen = await in_thread(realtime_session, proxy.url + "/v1", 2, {"X-ModelTrack-Team": "voice", "OpenAI-Beta": "realtime=v1"}, True)
        await proxy.flushed()
    finally:
        await proxy.service.stopService()
    assert seen.count("response.done") == 2 and "response.output_audio.delta" in seen
    upgrade = upstream.resource.sockets.upgrades[0]
    assert upgrade.path == "/v1/realtime"
    assert upgrade.headers[b"authorization"] == [b"Bearer sk-realtime-key"]
    assert upgrade.headers[b"openai-beta"] == [b"realtime=v1"]  # as the client sent it, never added
    assert b"sec-websocket-extensions" not in upgrade.headers and b"x-modeltrack-team" not in upgrade.headers
    assert [m["type"] for m in upgrade.messages] == ["session.update", "input_audio_buffer.commit", "response.create", "response.create"]
    transcription, first, second = proxy.events()
    assert transcription["model"] == "gpt-4o-transcribe" and Decimal(str(transcription["cost_usd"])) == TRANSCRIPTION_COST
    for event in (first, second):
        assert event["endpoint"] == "/v1/realtime" and event["model"] == "gpt-realtime" and event["team"] == "voice"
        assert event["outcome"] == "ok" and event["status_code"] == 101 and event["streaming"]
        assert Decimal(str(event["cost_usd"])) == REALTIME_COST == Decimal("0.0069656")
        assert event["usage"]["input_audio_tokens"] == 13 and event["usage"]["output_audio_tokens"] == 91
        assert event["key_id"] and event["session_id"] == first["session_id"]
    assert "sk-realtime-key" not in "".join(path.read_text() for path in tmp_path.glob("*.jsonl"))


@pytest_twisted.ensureDeferred
async def test_the_responses_api_over_a_websocket_is_metered(reactor: Any, tmp_path: Path, upstream: Any) -> None:
    proxy = start_proxy(reactor, tmp_path, upstream.url)
    try:
        seen = await in_thread(responses_session, proxy.url + "/v1", 3)
        await proxy.flushed()
    finally:
        await proxy.service.stopService()
    assert seen.count("response.completed") == 3
    events = proxy.events()
    assert len(events) == 3
    for event in events:
        assert event["endpoint"] == "/v1/responses" and event["model"] == "gpt-5" and event["outcome"] == "ok"
        assert Decimal(str(event["cost_usd"])) == RESPONSES_COST


@pytest_twisted.ensureDeferred
async def test_a_block_budget_ends_a_session_at_its_limit(reactor: Any, tmp_path: Path, upstream: Any) -> None:
    """
    Each response is reserved before its response.create goes: 200 tokens out at the
    audio rate and the context so far at the audio input rate. Three sessions of five
    responses; team "tight" can pay for three of its session's responses, not four.
    """
    limit = Decimal("0.04")
    (tmp_path / "budgets.json").write_text(json.dumps({"budgets": [{"team": "tight", "monthly_limit": float(limit), "action": "block"}]}))
    proxy = start_proxy(reactor, tmp_path, upstream.url)
    try:
        from twisted.internet.defer import gatherResults

        sessions = await gatherResults([
            in_thread(realtime_session, proxy.url + "/v1", 5, {"X-ModelTrack-Team": team}) for team in ("tight", "free", "open")
        ])
        await proxy.flushed()
    finally:
        await proxy.service.stopService()
    tight, free, other = sessions
    assert free.count("response.done") == 5 and other.count("response.done") == 5
    assert tight.count("response.done") == 3 and tight[-1] == "error"
    events = proxy.events()
    spent = sum(Decimal(str(e["cost_usd"])) for e in events if e["team"] == "tight")
    assert spent <= limit and spent == 3 * REALTIME_COST
    refused = [e for e in events if e["outcome"] == "rejected"]
    assert len(refused) == 1 and refused[0]["team"] == "tight" and refused[0]["budget_status"] == "blocked"
    assert len([e for e in events if e["team"] == "tight" and e["outcome"] == "ok"]) == 3
    assert len(events) == 14 and len([e for e in events if e["outcome"] == "ok"]) == 13


# gpt-live-1: $3 an hour of session. 60.4 s billed as 61.
LIVE_COST = Decimal(3) * 61 / 3600


def live_session(url: str, appends: int, headers: dict[str, str] | None = None, audio: str = "UklGRg==",
                 close: bool = True) -> list[str]:
    """
    A Live session through the SDK: started, C{appends} audio appends, then closed; or,
    not C{close}, left once their usage updates came (unless the proxy ends it first).
    """
    client = openai.OpenAI(base_url=url, api_key="sk-live-key", max_retries=0)
    seen: list[str] = []
    with client.live.connect(extra_headers=headers or {}) as connection:
        connection.session.start(session={"model": "gpt-live-1"})
        seen.append(connection.recv().type)  # started, or refused
        if seen[0] == "error":
            return seen
        for _ in range(appends):
            connection.session.input_audio.append(audio=audio)
        if close:
            connection.session.close()
        for event in connection:
            seen.append(event.type)
            if event.type in ("session.closed", "error"):
                break
            if not close and audio != "HOUR" and seen.count("session.usage.updated") == appends:
                break
    return seen


@pytest_twisted.ensureDeferred
async def test_a_live_session_is_one_event_by_its_seconds_and_its_delegations_their_own(
    reactor: Any, tmp_path: Path, upstream: Any,
) -> None:
    # An hour of gpt-live-1 is $3: a team with $2 left cannot start a session.
    (tmp_path / "budgets.json").write_text(json.dumps({"budgets": [{"team": "small", "monthly_limit": 2, "action": "block"}]}))
    proxy = start_proxy(reactor, tmp_path, upstream.url)
    try:
        seen = await in_thread(live_session, proxy.url + "/v1", 3)
        refused = await in_thread(live_session, proxy.url + "/v1", 1, {"X-ModelTrack-Team": "small"})
        await proxy.flushed()
    finally:
        await proxy.service.stopService()
    assert seen[0] == "session.started" and seen[-1] == "session.closed" and seen.count("session.usage.updated") == 3
    assert refused == ["error"]
    delegated, session, rejected = proxy.events()
    assert delegated["model"] == "gpt-5" and Decimal(str(delegated["cost_usd"])) == RESPONSES_COST
    assert session["endpoint"] == "/v1/live/sessions" and session["model"] == "gpt-live-1"
    assert session["usage"] == {"audio_seconds": 61} and session["usage_complete"]
    assert abs(Decimal(str(session["cost_usd"])) - LIVE_COST) < Decimal("1e-15")  # 61/1200 USD, a repeating decimal
    assert session["session_id"] == delegated["session_id"] == "live_fake"
    assert rejected["outcome"] == "rejected" and rejected["team"] == "small"


@pytest_twisted.ensureDeferred
async def test_a_live_session_left_or_past_its_reservation_is_billed_by_its_last_seconds(
    reactor: Any, tmp_path: Path, upstream: Any,
) -> None:
    (tmp_path / "budgets.json").write_text(json.dumps({"budgets": [{"team": "hour", "monthly_limit": 10, "action": "block"}]}))
    proxy = start_proxy(reactor, tmp_path, upstream.url)
    try:
        left = await in_thread(live_session, proxy.url + "/v1", 2, None, "UklGRg==", False)
        # Held to a budget, a session that reaches the hour reserved for it is closed.
        past = await in_thread(live_session, proxy.url + "/v1", 1, {"X-ModelTrack-Team": "hour"}, "HOUR", False)
        for _ in range(300):
            await proxy.flushed()
            if len(proxy.events()) == 3:
                break
            await deferLater(reactor, 0.01, lambda: None)
    finally:
        await proxy.service.stopService()
    assert left.count("session.usage.updated") == 2
    assert past[-2:] == ["session.usage.updated", "error"]  # what it used, then why it ends
    delegated, left_event, past_event = proxy.events()  # the session delegated a task on its second append
    assert delegated["model"] == "gpt-5" and delegated["outcome"] == "ok"
    assert left_event["outcome"] == "client_closed" and left_event["usage"] == {"audio_seconds": 40}
    assert not left_event["usage_complete"] and abs(Decimal(str(left_event["cost_usd"])) - Decimal(3) * 40 / 3600) < Decimal("1e-15")
    assert past_event["outcome"] == "rejected" and past_event["usage"] == {"audio_seconds": 3600}
    assert Decimal(str(past_event["cost_usd"])) == 3 and past_event["team"] == "hour"
