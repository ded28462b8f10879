"""
Transcriptions and translations metered through the openai SDK: multipart requests
read for their fields (the model is the request's), token usage and billed seconds
priced from the answer, streamed equal to unstreamed, and an answer with no usage
recorded unpriced with the reason, never as $0.
"""

from __future__ import annotations

import io
import json
import wave
from decimal import Decimal
from pathlib import Path
from typing import Any

import openai
import pytest
import pytest_twisted

from tests.conftest import start_proxy
from tests.memory import Harness, body_of, status_of
from tests.test_governance import raw
from tests.test_sdk import in_thread

AUDIO = ("hello.mp3", b"ID3" + bytes(range(256)) * 64, "audio/mpeg")
# genai-prices' list prices: gpt-4o-transcribe text in 2.50, audio in 6, out 10 per
# million tokens; whisper-1 $0.36 an hour of audio.
TRANSCRIBE = (10 * Decimal("2.5") + 4 * 6 + 101 * 10) / 10**6  # 0.001059
WHISPER_9S = Decimal("0.36") * 9 / 3600  # 0.0009
# tts-1: $15 per million input characters; gpt-4o-mini-tts: text in 0.60, audio out 12.
SPOKEN = "Good evening, and welcome to the shipping forecast."
TTS_1 = len(SPOKEN) * Decimal(15) / 10**6
MINI_TTS = (14 * Decimal("0.6") + 101 * 12) / 10**6


def client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=url + "/v1", api_key="sk-audio", max_retries=0)


def transcribe(url: str, **kwargs: Any) -> Any:
    kwargs.setdefault("file", AUDIO)
    result = client(url).audio.transcriptions.create(**kwargs)
    return [event.type for event in result] if kwargs.get("stream") else result


@pytest_twisted.ensureDeferred
async def test_transcriptions_priced_from_their_usage(reactor: Any, tmp_path: Path, upstream: Any) -> None:
    proxy = start_proxy(reactor, tmp_path, upstream.url)
    try:
        await in_thread(transcribe, proxy.url, model="gpt-4o-transcribe")
        kinds = await in_thread(transcribe, proxy.url, model="gpt-4o-transcribe", stream=True)
        assert kinds == ["transcript.text.delta", "transcript.text.done"]
        await in_thread(transcribe, proxy.url, model="whisper-1", response_format="verbose_json")
        plain = await in_thread(transcribe, proxy.url, model="whisper-1", response_format="srt")
        assert "hello there" in plain
        await in_thread(client(proxy.url).audio.translations.create, file=AUDIO, model="whisper-1", response_format="verbose_json")
        await in_thread(client(proxy.url).audio.translations.create, file=AUDIO, model="whisper-1")
        await proxy.flushed()
    finally:
        await proxy.service.stopService()
    tokens, streamed, seconds, srt, translated, bare = proxy.events()
    assert tokens["model"] == "gpt-4o-transcribe" and tokens["endpoint"] == "/v1/audio/transcriptions"
    assert tokens["usage"] == {"input_tokens": 14, "output_tokens": 101, "input_audio_tokens": 4}
    assert Decimal(str(tokens["cost_usd"])) == TRANSCRIBE
    assert streamed["streaming"] and streamed["cost_usd"] == tokens["cost_usd"]
    assert seconds["usage"] == {"audio_seconds": 9} and Decimal(str(seconds["cost_usd"])) == WHISPER_9S
    # No usage in a subtitle file: unpriced, and the event says why.
    assert srt["outcome"] == "ok" and srt["priced"] is False and srt["cost_usd"] is None
    assert "carries no usage" in srt["price_note"] and srt["route_class"] == "metered"
    # A translation says its duration (8.47 s) in verbose_json only; billed whole seconds.
    assert translated["endpoint"] == "/v1/audio/translations" and Decimal(str(translated["cost_usd"])) == WHISPER_9S
    assert bare["priced"] is False and "verbose_json" in bare["price_note"]


def test_a_body_that_is_not_a_form_is_refused_in_openai_shape() -> None:
    h = Harness()
    headers = [("Authorization", "Bearer sk-x"), ("Content-Type", "multipart/form-data; boundary=zz")]
    transport = raw(h, "/v1/audio/transcriptions", headers, b"--zz\r\nnot a part")
    assert status_of(transport) == 400 and h.agent.calls == []
    assert json.loads(body_of(transport))["error"]["message"] == "the request body must be multipart/form-data"
    [event] = h.journal.events()
    assert event["outcome"] == "rejected" and event["endpoint"] == "/v1/audio/transcriptions"


@pytest_twisted.ensureDeferred
async def test_speech_priced_by_characters_or_by_its_usage(reactor: Any, tmp_path: Path, upstream: Any) -> None:
    proxy = start_proxy(reactor, tmp_path, upstream.url)
    try:
        speech = client(proxy.url).audio.speech
        audio = await in_thread(lambda: speech.create(model="tts-1", voice="alloy", input=SPOKEN).read())
        assert audio.startswith(b"ID3")
        await in_thread(lambda: speech.create(model="tts-1-hd", voice="alloy", input=SPOKEN).read())
        await in_thread(lambda: speech.create(model="gpt-4o-mini-tts", voice="alloy", input=SPOKEN, stream_format="sse").read())
        await in_thread(lambda: speech.create(model="gpt-4o-mini-tts", voice="alloy", input=SPOKEN).read())
        await proxy.flushed()
    finally:
        await proxy.service.stopService()
    tts, hd, events, raw_tokens = proxy.events()
    assert tts["usage"] == {"input_characters": len(SPOKEN)} and Decimal(str(tts["cost_usd"])) == TTS_1
    assert Decimal(str(hd["cost_usd"])) == 2 * TTS_1
    assert Decimal(str(events["cost_usd"])) == MINI_TTS and events["streaming"] is True
    # Billed by tokens, answered with raw audio: nothing to read; unpriced, never $0.
    assert raw_tokens["priced"] is False and "input_characters" in raw_tokens["price_note"]


@pytest_twisted.ensureDeferred
async def test_a_block_budget_holds_speech(reactor: Any, tmp_path: Path, upstream: Any) -> None:
    # tts-1 reserves the body's bytes as characters ($15/M): a limit of $0.000001 holds.
    (tmp_path / "budgets.json").write_text(json.dumps({"budgets": [{"team": "voice", "monthly_limit": 0.000001, "action": "block"}]}))
    proxy = start_proxy(reactor, tmp_path, upstream.url)
    try:
        speech = client(proxy.url).audio.speech
        for model in ("tts-1", "gpt-4o-mini-tts"):
            with pytest.raises(openai.RateLimitError):
                await in_thread(lambda m=model: speech.create(model=m, voice="alloy", input=SPOKEN,
                                                               extra_headers={"X-ModelTrack-Team": "voice"}).read())
        await proxy.flushed()
    finally:
        await proxy.service.stopService()
    assert [event["outcome"] for event in proxy.events()] == ["rejected", "rejected"]
    assert not any(seen.path.startswith(b"/v1/audio") for seen in upstream.resource.seen)


def wav(seconds: float) -> bytes:
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes(b"\0\0" * int(16000 * seconds))
    return out.getvalue()


@pytest_twisted.ensureDeferred
async def test_a_plain_text_transcript_is_billed_by_the_uploads_length(reactor: Any, tmp_path: Path, upstream: Any) -> None:
    recording = wav(7.5)
    proxy = start_proxy(reactor, tmp_path, upstream.url)
    try:
        for name, data in (("talk.wav", recording), ("cut.wav", recording[:30])):
            text = await in_thread(transcribe, proxy.url, model="whisper-1", response_format="text", file=(name, data, "audio/wav"))
            assert text.strip() == "hello there"
        await proxy.flushed()
    finally:
        await proxy.service.stopService()
    measured, unreadable = proxy.events()
    # 7.5 s, billed as 8 whole seconds at $0.36 an hour.
    assert measured["usage"] == {"audio_seconds": 8} and Decimal(str(measured["cost_usd"])) == Decimal("0.36") * 8 / 3600
    assert unreadable["priced"] is False and "could not be read" in unreadable["price_note"]
    # The upload went on byte for byte.
    sent = [seen.body for seen in upstream.resource.seen if seen.path == b"/v1/audio/transcriptions"]
    assert recording in sent[0]
