"""
OpenAI's Chat Completions, legacy Completions, Responses, Embeddings and Images APIs.
Usage is inclusive: cached tokens are part of the prompt, reasoning tokens part of the
output.
"""

from __future__ import annotations

import json
import math
import re
from fractions import Fraction
from typing import Any

from modeltrack.pricing.usage import (
    MAX_COUNT,
    Reading,
    UnreadableUsage,
    Usage,
    count,
    dig,
    extras,
    limit_from,
    text,
    total,
)
from modeltrack.providers.dialect import Billable, Dialect, Endpoint, Origin
from modeltrack.providers.meter import DROP, SSEMeter

NAME = "openai"

#: A chunk with a usage object (every other chunk of a usage-reporting chat stream
#: says C{"usage":null}). A quote inside a JSON string is escaped, so content cannot
#: match.
_USAGE_OBJECT = re.compile(rb'"usage"\s*:\s*\{')
_TERMINAL_RESPONSE_EVENTS = frozenset(
    (b"response.completed", b"response.incomplete", b"response.failed")
)


class _UsageReader:
    """
    Chat calls its counts C{prompt_tokens}/C{completion_tokens}, Responses
    C{input_tokens}/C{output_tokens}; the details objects follow the same names. Audio
    and image tokens (audio and image models) are kept apart: they have rates of their
    own. (The field names are made once: this runs once a call.)
    """

    def __init__(self, inputs: str, outputs: str) -> None:
        self._inputs, self._input_details = f"{inputs}_tokens", f"{inputs}_tokens_details"
        self._outputs, self._output_details = f"{outputs}_tokens", f"{outputs}_tokens_details"

    def __call__(self, raw: dict[str, Any]) -> Usage:
        input_details = raw.get(self._input_details)
        output_details = raw.get(self._output_details)
        if not isinstance(input_details, dict):
            input_details = {}
        if not isinstance(output_details, dict):
            output_details = {}
        usage = Usage(
            input_tokens=count(raw.get(self._inputs)),
            cache_read_tokens=count(input_details.get("cached_tokens")),
            cache_write_tokens=count(input_details.get("cache_write_tokens")),
            output_tokens=count(raw.get(self._outputs)),
            reasoning_tokens=count(output_details.get("reasoning_tokens")),
        )
        # Most answers have no audio or image tokens, or report them as 0.
        if (
            input_details.get("audio_tokens") or input_details.get("image_tokens") or input_details.get("cached_tokens_details")
            or output_details.get("audio_tokens") or output_details.get("image_tokens")
        ):
            extra: dict[str, int] = {}
            extras(extra, input_details, _INPUT_MODALITIES)
            extras(extra, input_details.get("cached_tokens_details"), _CACHED_MODALITIES)
            extras(extra, output_details, _OUTPUT_MODALITIES)
            usage.extra = extra or None
        return usage


_INPUT_MODALITIES = (("audio_tokens", "input_audio_tokens"), ("image_tokens", "input_image_tokens"))
_CACHED_MODALITIES = (("audio_tokens", "cache_audio_read_tokens"), ("image_tokens", "cache_image_read_tokens"))
_OUTPUT_MODALITIES = (("audio_tokens", "output_audio_tokens"), ("image_tokens", "output_image_tokens"))
_CHAT_USAGE = _UsageReader("prompt", "completion")
_RESPONSES_USAGE = _UsageReader("input", "output")


def chat_usage(raw: dict[str, Any]) -> Usage:
    """
    Chat and legacy Completions usage (also Embeddings, which has only prompt tokens).
    """
    return _CHAT_USAGE(raw)


def responses_usage(raw: dict[str, Any]) -> Usage:
    return _RESPONSES_USAGE(raw)


def served(reading: Reading, obj: dict[str, Any]) -> None:
    """
    The tier that actually served the request, as the response reports it: it is
    also what selects the price.
    """
    tier = text(obj.get("service_tier"), 32)
    reading.price_context = reading.served = {"service_tier": tier} if tier else {}


def _read(obj: dict[str, Any], usage_reader: Any) -> Reading:
    reading = Reading(model=text(obj.get("model")))
    served(reading, obj)
    error = obj.get("error")
    if error:
        reading.error_type = text(dig(error, "type")) or text(dig(error, "code")) or "error"
    raw = obj.get("usage")
    if isinstance(raw, dict):
        reading.usage = usage_reader(raw)
        reading.final = True
    return reading


def read_chat_body(obj: dict[str, Any]) -> Reading:
    return _read(obj, chat_usage)


def read_responses_body(obj: dict[str, Any]) -> Reading:
    return _read(obj, responses_usage)


class ChatStreamMeter(SSEMeter):
    """
    A Chat or legacy Completions stream: C{data:} lines and a final C{[DONE]}. Usage
    comes in one chunk with C{"choices": []} before C{[DONE]}, and only when the request
    asked for C{stream_options.include_usage}. With C{strip=True} (the proxy asked for
    it, the client did not) that chunk is read and kept from the client.
    """

    def wanted(self, chunk: bytes) -> bool:
        return (
            _USAGE_OBJECT.search(chunk) is not None
            or b"[DONE]" in chunk
            or b'"error"' in chunk
            or (self.reading.model is None and b'"model"' in chunk)
        )

    def on_event(self, name: bytes, data: bytes) -> object:
        if data == b"[DONE]":
            self.ended = True
            return None
        reading = self.reading
        has_usage = _USAGE_OBJECT.search(data) is not None
        if not (has_usage or reading.model is None or b'"error"' in data):
            return None
        obj = json.loads(data)
        if not isinstance(obj, dict):
            return None
        if reading.model is None:
            # Azure's first chunk has an empty model; keep looking until one names it.
            reading.model = text(obj.get("model"))
        if obj.get("error"):
            reading.error_type = (
                text(dig(obj, "error", "type")) or text(dig(obj, "error", "code")) or "error"
            )
        raw = obj.get("usage")
        if isinstance(raw, dict):
            reading.usage = chat_usage(raw)
            served(reading, obj)
            reading.final = True
            if self.rewrites and obj.get("choices") == []:
                return DROP
        return None


class ResponsesStreamMeter(SSEMeter):
    """
    A Responses stream: named events; usage on the terminal C{response.completed},
    C{response.incomplete} or C{response.failed}; C{error} events may come after 200.
    """

    def wanted(self, chunk: bytes) -> bool:
        return (
            b"response.completed" in chunk
            or b"response.incomplete" in chunk
            or b"response.failed" in chunk
            or b"error" in chunk
            or (self.reading.model is None and b"response.created" in chunk)
        )

    def on_event(self, name: bytes, data: bytes) -> object:
        if name in _TERMINAL_RESPONSE_EVENTS:
            self.ended = True
            response = json.loads(data).get("response") or {}
            reading = _read(response, responses_usage)
            if name == b"response.failed":
                reading.error_type = (
                    text(dig(response, "error", "code")) or self.reading.error_type or "failed"
                )
            reading.model = reading.model or self.reading.model
            self.reading = reading
        elif name == b"response.created" and self.reading.model is None:
            self.reading.model = text(dig(json.loads(data), "response", "model"))
        elif name == b"error":
            obj = json.loads(data)
            self.reading.error_type = (
                text(obj.get("code")) or text(dig(obj, "error", "type")) or "error"
            )
        return None


def image_usage(raw: dict[str, Any]) -> Usage:
    """
    The Images API's usage (the Responses names). Output tokens with no details are
    image tokens, OpenAI's own definition: priced at the text rate, gpt-image-1.5's
    would come out 3.2 times under the bill.
    """
    usage = _RESPONSES_USAGE(raw)
    if usage.output_tokens and not isinstance(raw.get("output_tokens_details"), dict):
        usage.extra = {**(usage.extra or {}), "output_image_tokens": usage.output_tokens}
    return usage


def read_image_body(obj: dict[str, Any]) -> Reading:
    """An Images answer: no model in it (the request's is the call's), usage."""
    return _read(obj, image_usage)


class ImageStreamMeter(SSEMeter):
    """
    A streamed image (C{stream: true}): partial images, then one C{*.completed} event per
    image with its usage, summed (each event carries a whole image in base64: only
    those named completed are decoded).
    """

    def wanted(self, chunk: bytes) -> bool:
        return b".completed" in chunk or b"error" in chunk

    def on_event(self, name: bytes, data: bytes) -> object:
        if name.endswith(b".completed") or (not name and b'.completed"' in data[:200]):
            raw = json.loads(data).get("usage")
            if isinstance(raw, dict):
                usage = image_usage(raw)
                seen = self.reading.usage
                self.reading.usage = usage if seen is None else total([(None, seen), (None, usage)])
                self.reading.final = True
            self.ended = True
        elif name == b"error" or (not name and data.startswith(b'{"type":"error"')):
            obj = json.loads(data)
            self.reading.error_type = text(dig(obj, "error", "type")) or text(dig(obj, "error", "code")) or "error"
        return None


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
    reading = _read(obj, transcription_usage)
    if reading.usage is None and "duration" in obj:
        reading.usage, reading.final = Usage(extra={"audio_seconds": seconds(obj["duration"])}), True
    elif reading.usage is None and reading.error_type is None:
        reading.unmetered = "the answer carries no usage and no duration (verbose_json has it)"
    return reading


class TranscriptStreamMeter(SSEMeter):
    """
    A streamed transcription: C{transcript.text.delta} events (data only), then
    C{transcript.text.done} with the usage.
    """

    def wanted(self, chunk: bytes) -> bool:
        return b"transcript.text.done" in chunk or b"error" in chunk

    def on_event(self, name: bytes, data: bytes) -> object:
        if b'"transcript.text.done"' in data:
            raw = json.loads(data).get("usage")
            if isinstance(raw, dict):
                self.reading.usage, self.reading.final = transcription_usage(raw), True
            self.ended = True
        elif b'"error"' in data:
            obj = json.loads(data)
            self.reading.error_type = text(dig(obj, "error", "type")) or text(dig(obj, "error", "code")) or "error"
        return None


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


class SpeechStreamMeter(SSEMeter):
    """
    Speech as events (C{stream_format: sse}): C{speech.audio.delta} events, then
    C{speech.audio.done} with the usage (text in, audio out: the model's output rate).
    """

    def wanted(self, chunk: bytes) -> bool:
        return b"speech.audio.done" in chunk or b"error" in chunk

    def on_event(self, name: bytes, data: bytes) -> object:
        if b'"speech.audio.done"' in data[:200] or name == b"speech.audio.done":
            raw = json.loads(data).get("usage")
            if isinstance(raw, dict):
                self.reading.usage = Usage(input_tokens=count(raw.get("input_tokens")), output_tokens=count(raw.get("output_tokens")))
                self.reading.final = True
            self.ended = True
        elif b'"error"' in data:
            obj = json.loads(data)
            self.reading.error_type = text(dig(obj, "error", "type")) or text(dig(obj, "error", "code")) or "error"
        return None


#: A transcript asked for as C{text}, C{srt} or C{vtt} is plain text: no usage in it.
_PLAIN_TRANSCRIPT = "the answer (response_format text, srt or vtt) carries no usage"


def error_body(error_type: str, message: str) -> dict[str, Any]:
    return {"error": {"message": message, "type": error_type, "param": None, "code": None}}


def ask_for_usage(body: dict[str, Any]) -> bool:
    """
    A Chat or legacy Completions stream reports no usage at all unless asked with
    C{stream_options.include_usage}: ask, if the client did not.
    """
    options = body.setdefault("stream_options", {})
    if isinstance(options, dict) and options.get("include_usage") is not True:
        options["include_usage"] = True
        return True
    return False


#: OpenAI's billable routes whose answers say nothing of the bill: (method, path below
#: the API's root, its route, what it is billed by).
_BILLABLE = (
    ("fine_tuning/jobs", "/fine_tuning/jobs", "fine-tuning: per trained token, reported later on the job"),
    ("vector_stores", "/vector_stores", "vector store storage: per GB-day"),
    ("vector_stores/[^/]+/(?:files|file_batches)", "/vector_stores/{id}/files", "vector store storage: per GB-day"),
    ("containers", "/containers", "containers: per session, by memory"),
    ("containers/[^/]+/files", "/containers/{id}/files", "containers: per session, by memory"),
    ("evals/[^/]+/runs", "/evals/{id}/runs", "evals runs: per model token, reported later on the run"),
    ("threads/runs|threads/[^/]+/runs", "/threads/{id}/runs", "assistant runs: per model token, reported later on the run"),
    ("realtime/calls(?:/[^/]+/accept)?", "/realtime/calls", "WebRTC and SIP calls: per token, on the peer connection only"),
    ("realtime/client_secrets", "/realtime/client_secrets", "an ephemeral key: its sessions are billed per token, past the proxy"),
    ("videos|videos/[^/]+/remix|videos/(?:extensions|edits|characters)", "/videos", "video generation: per second rendered"),
    # Metered by their answers or uploads in time; until then governed like the rest.
    ("images/edits", "/images/edits", "image edits: per text and image token (multipart, not yet metered)"),
    ("images/variations", "/images/variations", "image variations: per image (not yet metered)"),
)


def billable(root: str, route: str) -> tuple[Billable, ...]:
    """
    OpenAI's billable-unmetered routes below C{root} (a pattern: C{/v1}; Azure's
    C{/openai(?:/v1)?}), named below C{route}.
    """
    return tuple(
        Billable(b"POST", re.compile(f"{root}/(?:{pattern})"), route + name, basis) for pattern, name, basis in _BILLABLE
    )


def _endpoint(path: str, **kwargs: Any) -> Endpoint:
    return Endpoint(NAME, path, error_body, **kwargs)


DIALECT = Dialect(
    name=NAME,
    prefix="/openai",
    endpoints=(
        *(
            _endpoint(path, read_body=read_chat_body, stream_meter=ChatStreamMeter, ask_for_usage=ask_for_usage)
            for path in ("/v1/chat/completions", "/v1/completions")
        ),
        _endpoint("/v1/responses", read_body=read_responses_body, stream_meter=ResponsesStreamMeter),
        _endpoint("/v1/embeddings", read_body=read_chat_body),
        _endpoint(
            "/v1/images/generations", read_body=read_image_body, stream_meter=ImageStreamMeter, bound=image_bound,
            at_text_rate=frozenset(("output_image_tokens",)),
        ),
        *(
            _endpoint(path, form=True, read_body=read_transcription_body, stream_meter=TranscriptStreamMeter,
                      unmetered_answer=_PLAIN_TRANSCRIPT)
            for path in ("/v1/audio/transcriptions", "/v1/audio/translations")
        ),
        _endpoint(
            "/v1/audio/speech", read_body=read_chat_body, stream_meter=SpeechStreamMeter, request_usage=speech_characters,
            read_request=lambda body: (text(body.get("model")), body.get("stream_format") == "sse"), bound=speech_bound,
            unmetered_answer="the audio answer carries no usage (stream_format sse has it)",
        ),
        _endpoint("/v1/models", method=b"GET", metered=False),
    ),
    error_body=error_body,
    credential_headers=(b"authorization",),
    relayed=("/v1/",),
    origin=Origin("openai-url", "https://api.openai.com", "OpenAI API origin"),
    billable=billable("/v1", "/v1"),
)
