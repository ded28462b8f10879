"""
OpenAI's media APIs: Images (token usage in the answer, the model in the request; a
request's most by its size, quality and count) and Audio (transcriptions and
translations by tokens or seconds, speech by characters or tokens).
"""

from __future__ import annotations

import json
import math
import re
from fractions import Fraction
from typing import Any

from modeltrack.pricing.usage import MAX_COUNT, Reading, UnreadableUsage, Usage, count, dig, extras, limit_from, text, total
from modeltrack.providers.meter import SSEMeter
from modeltrack.providers.openai_usage import read, responses_usage


def image_usage(raw: dict[str, Any]) -> Usage:
    """
    The Images API's usage (the Responses names). Output tokens with no details are
    image tokens, OpenAI's own definition: priced at the text rate, gpt-image-1.5's
    would come out 3.2 times under the bill.
    """
    usage = responses_usage(raw)
    if usage.output_tokens and not isinstance(raw.get("output_tokens_details"), dict):
        usage.extra = {**(usage.extra or {}), "output_image_tokens": usage.output_tokens}
    return usage


def read_image_body(obj: dict[str, Any]) -> Reading:
    """An Images answer: no model in it (the request's is the call's), usage."""
    return read(obj, image_usage)


#: Image output tokens of a 1024x1024 image at high quality; a size's count scales
#: with its pixels (OpenAI's table: 1024x1536 is 6,240), lower qualities by their share.
_HIGH_TOKENS_PER_MEGAPIXEL = 4160
_QUALITY_SHARE = {"low": Fraction(272, 4160), "medium": Fraction(1056, 4160), "high": Fraction(1), "auto": Fraction(1)}
#: A quality the table has no count for (xhigh, max): bounded at twice high's.
_UNLISTED_QUALITY_SHARE = Fraction(2)
#: C{auto} (or no size): the largest of the sizes C{auto} picks from; a size that does
#: not parse: the largest any model takes.
_AUTO_PIXELS, _LARGEST_PIXELS = 1536 * 1024, 3840 * 2160
#: Each partial image streamed adds this many image output tokens.
_PARTIAL_IMAGE_TOKENS = 100
_SIZE = re.compile(r"([1-9][0-9]{1,4})x([1-9][0-9]{1,4})")


def image_bound(body: dict[str, Any], body_bytes: int) -> Usage:
    """
    The most an image request can use: its text (a token covers at least a byte) and
    C{n} images at the tokens of their size and quality, partial images included.
    """
    size, quality = body.get("size"), body.get("quality") or "auto"
    found = _SIZE.fullmatch(size) if isinstance(size, str) else None
    pixels = int(found[1]) * int(found[2]) if found else _AUTO_PIXELS if size in (None, "auto") else _LARGEST_PIXELS
    share = _QUALITY_SHARE.get(quality, _UNLISTED_QUALITY_SHARE) if isinstance(quality, str) else _UNLISTED_QUALITY_SHARE
    per_image = math.ceil(Fraction(pixels * _HIGH_TOKENS_PER_MEGAPIXEL, 1024 * 1024) * share)
    partial = limit_from(body.get("partial_images")) * _PARTIAL_IMAGE_TOKENS
    output = max(1, limit_from(body.get("n"))) * (per_image + partial)
    return Usage(input_tokens=body_bytes, output_tokens=output, extra={"output_image_tokens": output})


def edit_bound(fields: dict[str, Any], body_bytes: int) -> Usage:
    """
    The most an image edit can use: a form's fields are text (C{n}, C{partial_images}
    read as numbers), and its input, images and all, at most a token per byte, at
    the image input rate.
    """
    numbers = {name: int(fields[name]) for name in ("n", "partial_images") if str(fields.get(name, "")).isdigit()}
    bound = image_bound({**fields, **numbers}, body_bytes)
    assert bound.extra is not None
    bound.extra["input_image_tokens"] = body_bytes
    return bound


def transcription_usage(raw: dict[str, Any]) -> Usage:
    """
    A transcription's usage: tokens (audio input apart), or the seconds of audio
    billed (C{type: duration}), counted whole, up.
    """
    if raw.get("type") == "duration":
        return Usage(extra={"audio_seconds": seconds(raw.get("seconds"))})
    usage = Usage(input_tokens=count(raw.get("input_tokens")), output_tokens=count(raw.get("output_tokens")))
    extra: dict[str, int] = {}
    extras(extra, raw.get("input_token_details"), (("audio_tokens", "input_audio_tokens"),))
    usage.extra = extra or None
    return usage


def seconds(value: Any) -> int:
    """Seconds of audio billed: a non-negative number, whole seconds up."""
    if type(value) in (int, float) and 0 <= value <= MAX_COUNT:
        return math.ceil(value)
    raise UnreadableUsage()


def read_transcription_body(obj: dict[str, Any]) -> Reading:
    """
    A transcription or translation as JSON: its usage; else (a translation, whisper's
    C{json}) the C{duration} of C{verbose_json}; else nothing, and why.
    """
    reading = read(obj, transcription_usage)
    if reading.usage is None and "duration" in obj:
        reading.usage, reading.final = Usage(extra={"audio_seconds": seconds(obj["duration"])}), True
    elif reading.usage is None and reading.error_type is None:
        reading.unmetered = "the answer carries no usage and no duration (verbose_json has it)"
    return reading


def speech_characters(body: dict[str, Any]) -> Usage | None:
    """
    Speech as raw audio (no usage in it): the input's characters, what tts-1 and
    tts-1-hd bill by (a model billed by tokens has no rate for them: unpriced, noted).
    """
    spoken = body.get("input")
    return Usage(extra={"input_characters": len(spoken)}) if isinstance(spoken, str) and spoken else None


#: Speech's audio output tokens reserved under a budget: as many as a call that names
#: no maximum (the API has no output limit to read).
_SPEECH_OUTPUT_TOKENS = 4096


def speech_bound(body: dict[str, Any], body_bytes: int) -> Usage:
    """
    The most speech can use: its body's bytes as characters (tts-1) or as text tokens,
    and audio out as a call with no maximum.
    """
    return Usage(input_tokens=body_bytes, output_tokens=_SPEECH_OUTPUT_TOKENS, extra={"input_characters": body_bytes})


class _EndsWithUsage(SSEMeter):
    """
    A media stream: events (a partial image, a transcript's words, audio), then one
    marking the end and carrying the usage (one per image: summed). Only those and
    errors are decoded: the others may carry megabytes of base64.

    @cvar end: the end event's type as its data spells it, closing quote included (a
        quote inside a JSON string is escaped, so no content matches it).
    """

    end = b""

    def usage(self, raw: dict[str, Any]) -> Usage:
        raise NotImplementedError()

    def wanted(self, chunk: bytes) -> bool:
        return self.end in chunk or b"error" in chunk

    def on_event(self, name: bytes, data: bytes) -> object:
        if self.end in data:
            raw = json.loads(data).get("usage")
            if isinstance(raw, dict):
                usage, seen = self.usage(raw), self.reading.usage
                self.reading.usage = usage if seen is None else total([(None, seen), (None, usage)])
                self.reading.final = True
            self.ended = True
        elif name == b"error" or b'"error"' in data:
            obj = json.loads(data)
            self.reading.error_type = text(dig(obj, "error", "type")) or text(dig(obj, "error", "code")) or "error"
        return None


class ImageStreamMeter(_EndsWithUsage):
    """A streamed image (C{stream: true}): one C{image_generation.completed} (or
    C{image_edit.completed}) per image."""

    end = b'.completed"'

    def usage(self, raw: dict[str, Any]) -> Usage:
        return image_usage(raw)


class TranscriptStreamMeter(_EndsWithUsage):
    """A streamed transcription: C{transcript.text.delta} events, then C{transcript.text.done}."""

    end = b'"transcript.text.done"'

    def usage(self, raw: dict[str, Any]) -> Usage:
        return transcription_usage(raw)


class SpeechStreamMeter(_EndsWithUsage):
    """
    Speech as events (C{stream_format: sse}): C{speech.audio.delta} events, then
    C{speech.audio.done} with the usage (text in, audio out: the model's output rate).
    """

    end = b'"speech.audio.done"'

    def usage(self, raw: dict[str, Any]) -> Usage:
        return Usage(input_tokens=count(raw.get("input_tokens")), output_tokens=count(raw.get("output_tokens")))


#: A transcript asked for as C{text}, C{srt} or C{vtt} is plain text: no usage in it;
#: the upload's length bills it, where its metadata says it.
PLAIN_TRANSCRIPT = "the answer (response_format text, srt or vtt) carries no usage, and the upload's length could not be read"
