"""
OpenAI's API as the proxy serves it: Chat Completions, legacy Completions, Responses,
Embeddings, and the media routes (L{openai_media}); its billable routes and error
shape. Usage is inclusive: cached tokens are part of the prompt, reasoning tokens part
of the output.
"""

from __future__ import annotations

import json
import re
from typing import Any

from modeltrack.pricing.usage import dig, text
from modeltrack.providers.dialect import Billable, Dialect, Endpoint, Origin
from modeltrack.providers.meter import DROP, SSEMeter
from modeltrack.providers.openai_media import (
    PLAIN_TRANSCRIPT,
    ImageStreamMeter,
    SpeechStreamMeter,
    TranscriptStreamMeter,
    edit_bound,
    image_bound,
    read_image_body,
    read_transcription_body,
    speech_bound,
    speech_characters,
)
from modeltrack.providers.openai_sockets import LiveMeter, RealtimeMeter, ResponsesSocketMeter
from modeltrack.providers.openai_usage import chat_usage, read, read_chat_body, read_responses_body, responses_usage, served

NAME = "openai"

#: A chunk with a usage object (every other chunk of a usage-reporting chat stream
#: says C{"usage":null}). A quote inside a JSON string is escaped, so content cannot
#: match.
_USAGE_OBJECT = re.compile(rb'"usage"\s*:\s*\{')
_TERMINAL_RESPONSE_EVENTS = frozenset(
    (b"response.completed", b"response.incomplete", b"response.failed")
)


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
            reading = read(response, responses_usage)
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
    # dall-e-2's only (retired): priced per image, which its answer does not say.
    ("images/variations", "/images/variations", "image variations: per image (dall-e-2, whose answer carries no usage)"),
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
        _endpoint(
            "/v1/images/edits", form=True, read_body=read_image_body, stream_meter=ImageStreamMeter, bound=edit_bound,
            at_text_rate=frozenset(("output_image_tokens",)),
        ),
        *(
            _endpoint(path, form=True, read_body=read_transcription_body, stream_meter=TranscriptStreamMeter,
                      measure_audio="file", unmetered_answer=PLAIN_TRANSCRIPT)
            for path in ("/v1/audio/transcriptions", "/v1/audio/translations")
        ),
        _endpoint(
            "/v1/audio/speech", read_body=read_chat_body, stream_meter=SpeechStreamMeter, request_usage=speech_characters,
            read_request=lambda body: (text(body.get("model")), body.get("stream_format") == "sse"), bound=speech_bound,
            unmetered_answer="the audio answer carries no usage (stream_format sse has it)",
        ),
        _endpoint("/v1/models", method=b"GET", metered=False),
        # The WebSocket APIs: the upgrade is a GET.
        _endpoint("/v1/realtime", method=b"GET", socket=RealtimeMeter),
        _endpoint("/v1/responses", method=b"GET", socket=ResponsesSocketMeter),
        _endpoint("/v1/live/sessions", method=b"GET", socket=LiveMeter),
    ),
    error_body=error_body,
    credential_headers=(b"authorization",),
    relayed=("/v1/",),
    origin=Origin("openai-url", "https://api.openai.com", "OpenAI API origin"),
    billable=billable("/v1", "/v1"),
)
