"""
Google: the Gemini API under C{/gemini} (provider C{google}) and Vertex AI under
C{/vertex} (provider C{vertex}: Gemini models, and Claude through Anthropic's Messages
body). The model is in the path (C{models/{model}:generateContent}).

Gemini usage (C{usageMetadata}) is cumulative in a stream: the last report wins, never
a sum. C{promptTokenCount} includes C{cachedContentTokenCount}; billed output is
C{candidatesTokenCount + thoughtsTokenCount} (thoughts are not inside candidates);
C{toolUsePromptTokenCount} is input.
"""

from __future__ import annotations

import json
import re
from dataclasses import replace
from typing import Any

from modeltrack.pricing.usage import Reading, Usage, count, dig, text
from modeltrack.providers import anthropic
from modeltrack.providers.dialect import Billable, Dialect, Endpoint, Origin, relayable, relayed_endpoint
from modeltrack.providers.meter import SSEMeter

#: The providers in events: the Gemini API is Google's own; Vertex AI is Google Cloud's.
GEMINI_PROVIDER = "google"
VERTEX_PROVIDER = "vertex"


#: Gemini's modalities other than text, by genai-prices' usage name per side (image
#: and video input are billed at the text rate: the price book knows).
_MODALITIES = {
    "input": {"AUDIO": "input_audio_tokens", "IMAGE": "input_image_tokens", "VIDEO": "input_video_tokens"},
    "cache": {"AUDIO": "cache_audio_read_tokens", "IMAGE": "cache_image_read_tokens", "VIDEO": "cache_video_read_tokens"},
    "output": {"AUDIO": "output_audio_tokens", "IMAGE": "output_image_tokens", "VIDEO": "output_video_tokens"},
}


def _by_modality(counts: dict[str, int], side: str, *lists: Any) -> None:
    names = _MODALITIES[side]
    for details in lists:
        for entry in details if isinstance(details, list) else ():
            name = names.get(str(entry.get("modality"))) if isinstance(entry, dict) else None
            if name is not None:
                n = count(entry.get("tokenCount"))
                if n:
                    counts[name] = counts.get(name, 0) + n


def usage_from(raw: dict[str, Any]) -> Usage:
    thoughts = count(raw.get("thoughtsTokenCount"))
    extra: dict[str, int] = {}
    _by_modality(extra, "input", raw.get("promptTokensDetails"), raw.get("toolUsePromptTokensDetails"))
    _by_modality(extra, "cache", raw.get("cacheTokensDetails"))
    _by_modality(extra, "output", raw.get("candidatesTokensDetails"))
    usage = Usage(
        input_tokens=count(raw.get("promptTokenCount")) + count(raw.get("toolUsePromptTokenCount")),
        cache_read_tokens=count(raw.get("cachedContentTokenCount")),
        output_tokens=count(raw.get("candidatesTokenCount")) + thoughts,
        reasoning_tokens=thoughts,
    )
    if extra:
        usage.extra = extra
    return usage


def _finished(obj: dict[str, Any]) -> bool:
    candidates = obj.get("candidates")
    return isinstance(candidates, list) and any(isinstance(c, dict) and c.get("finishReason") for c in candidates)


def read_body(obj: dict[str, Any]) -> Reading:
    """
    A generateContent answer, or an error body (C{{"error": {"status": ...}}}).
    """
    if isinstance(obj.get("error"), dict):
        return Reading(error_type=text(dig(obj, "error", "status")) or "error")
    raw = obj.get("usageMetadata")
    if not isinstance(raw, dict):
        return Reading(model=text(obj.get("modelVersion")))
    return Reading(usage_from(raw), text(obj.get("modelVersion")), final=True)


class GenerateStreamMeter(SSEMeter):
    """
    C{:streamGenerateContent?alt=sse}: each event is a partial answer; those with
    C{usageMetadata} replace the reading (cumulative); the one with a C{finishReason}
    ends the stream.
    """

    def wanted(self, chunk: bytes) -> bool:
        return b"usageMetadata" in chunk or b"finishReason" in chunk or b'"error"' in chunk

    def on_event(self, name: bytes, data: bytes) -> object:
        obj = json.loads(data)
        if not isinstance(obj, dict):
            return None
        if isinstance(obj.get("error"), dict):
            self.reading.error_type = text(dig(obj, "error", "status")) or "error"
            return None
        raw = obj.get("usageMetadata")
        if isinstance(raw, dict):
            self.reading.usage = usage_from(raw)
            self.reading.model = text(obj.get("modelVersion")) or self.reading.model
        if _finished(obj):
            self.reading.final = self.reading.usage is not None
            self.ended = True
        return None


def error_body(error_type: str, message: str) -> dict[str, Any]:
    return {"error": {"message": message, "status": error_type}}


_METHOD = re.compile(r"/models/([A-Za-z0-9._@-]{1,200}):([A-Za-z]+)")
_GENERATE = Endpoint(GEMINI_PROVIDER, "/models/{model}:generateContent", error_body, read_body=read_body)
_STREAM = Endpoint(
    GEMINI_PROVIDER, "/models/{model}:streamGenerateContent", error_body,
    read_body=read_body, stream_meter=GenerateStreamMeter, streams=True,
)
#: Veo's default clip length, where a request names none.
VEO_DEFAULT_SECONDS = 8


def video_seconds(body: dict[str, Any]) -> Usage:
    """
    What a Veo request is billed by: seconds of video, C{durationSeconds} (else Veo's
    default, 8) for each of C{sampleCount} videos; its answer (a long-running
    operation) says nothing of it.
    """
    parameters: dict[str, Any] = body["parameters"] if isinstance(body.get("parameters"), dict) else {}
    duration = parameters.get("durationSeconds")
    duration = duration if type(duration) is int and duration > 0 else VEO_DEFAULT_SECONDS
    count = parameters.get("sampleCount")
    count = count if type(count) is int and count > 0 else 1
    return Usage(extra={"video_seconds": duration * count})


#: Veo: metered by the request (one event per operation; polling it is relayed, free).
_VIDEO = Endpoint(
    GEMINI_PROVIDER, "/models/{model}:predictLongRunning", error_body, request_usage=video_seconds,
    bound=lambda body, size: video_seconds(body),
    unmetered_answer="video generation: per second rendered, from the request",
)
_GEMINI_METHODS = {
    "generateContent": _GENERATE,
    "predictLongRunning": _VIDEO,
    "streamGenerateContent": _STREAM,
    "embedContent": Endpoint(GEMINI_PROVIDER, "/models/{model}:embedContent", error_body, read_body=read_body),
    "batchEmbedContents": Endpoint(GEMINI_PROVIDER, "/models/{model}:batchEmbedContents", error_body, read_body=read_body),
    "countTokens": Endpoint(GEMINI_PROVIDER, "/models/{model}:countTokens", error_body, metered=False),
}
_GEMINI_VERSION = re.compile(r"/(v1|v1beta|v1alpha)(/.*)")


def gemini_route(method: bytes, path: str) -> tuple[Endpoint, str] | None:
    """
    C{/{version}/models/{model}:{method}} below C{/gemini}; any other plain path of the
    API (the model list, files, cached contents) relayed.
    """
    versioned = _GEMINI_VERSION.fullmatch(path)
    if versioned is None:
        return None
    found = _METHOD.fullmatch(versioned.group(2))
    if found is not None and method == b"POST" and found.group(2) in _GEMINI_METHODS:
        endpoint = _GEMINI_METHODS[found.group(2)]
        return replace(endpoint, path="/" + versioned.group(1) + endpoint.path, model=found.group(1)), path
    if relayable(method, path):
        relayed = relayed_endpoint(GEMINI_DIALECT, method, path, 2)
        # A model's other methods are relayed only if known billable: an unknown one
        # could be a billed call the proxy would not see.
        if found is None or relayed.billing is not None:
            return relayed, path
    return None


#: The Gemini API's billable routes whose answers report no usage.
_GEMINI_BILLABLE = (
    Billable(b"POST", re.compile(r"/v1\w*/models/[^/:]+:predict"), "/models/{model}:predict", "images: per image generated"),
    Billable(
        b"POST", re.compile(r"/v1\w*/models/[^/:]+:batchGenerateContent"), "/models/{model}:batchGenerateContent",
        "batch: per token, reported in the batch's operation",
    ),
    Billable(b"POST", re.compile(r"/v1\w*/cachedContents"), "/cachedContents", "context caching: per token-hour stored"),
    Billable(b"POST", re.compile(r"/v1\w*/tunedModels"), "/tunedModels", "tuning: per trained token"),
)


_VERTEX_PATH = re.compile(
    r"/(v1|v1beta1)/projects/([A-Za-z0-9._-]{1,100})/locations/([a-z0-9-]{1,40})/publishers/(google|anthropic)/models/"
    r"([A-Za-z0-9._@-]{1,200}):([A-Za-z]+)"
)
_VERTEX_METHODS = {
    ("google", "generateContent"): replace(_GENERATE, provider=VERTEX_PROVIDER),
    ("google", "streamGenerateContent"): replace(_STREAM, provider=VERTEX_PROVIDER),
    ("google", "countTokens"): replace(_GEMINI_METHODS["countTokens"], provider=VERTEX_PROVIDER),
    ("google", "predictLongRunning"): replace(_VIDEO, provider=VERTEX_PROVIDER),
    # Vertex polls a Veo operation with a POST to the model: free.
    ("google", "fetchPredictOperation"): Endpoint(VERTEX_PROVIDER, "fetchPredictOperation", error_body, metered=False),
    # Claude on Vertex: Anthropic's Messages body, answers and errors.
    ("anthropic", "rawPredict"): Endpoint(VERTEX_PROVIDER, "rawPredict", anthropic.error_body, read_body=anthropic.read_body),
    ("anthropic", "streamRawPredict"): Endpoint(
        VERTEX_PROVIDER, "streamRawPredict", anthropic.error_body, read_body=anthropic.read_body,
        stream_meter=anthropic.MessagesStreamMeter, streams=True,
    ),
    ("anthropic", "countTokens"): Endpoint(VERTEX_PROVIDER, "countTokens", anthropic.error_body, metered=False),
}


def vertex_route(method: bytes, path: str) -> tuple[Endpoint, str] | None:
    """
    A publisher model's method below C{/vertex}; the project and location stay in the
    path sent on, out of the route's name.
    """
    found = _VERTEX_PATH.fullmatch(path)
    if found is None or method != b"POST":
        return None
    version, _, _, publisher, model, name = found.groups()
    endpoint = _VERTEX_METHODS.get((publisher, name))
    if endpoint is None:
        return None
    route = f"/{version}/projects/{{project}}/locations/{{location}}/publishers/{publisher}/models/{{model}}:{name}"
    return replace(endpoint, path=route, model=model), path


GEMINI_DIALECT = Dialect(
    name=GEMINI_PROVIDER,
    prefix="/gemini",
    endpoints=(),
    error_body=error_body,
    credential_headers=(b"x-goog-api-key",),
    credential_query=b"key",
    by_prefix_only=True,
    route=gemini_route,
    billable=_GEMINI_BILLABLE,
    origin=Origin("gemini-url", "https://generativelanguage.googleapis.com", "Gemini API origin, served under /gemini"),
)
VERTEX_DIALECT = Dialect(
    name=VERTEX_PROVIDER,
    prefix="/vertex",
    endpoints=(),
    error_body=error_body,
    credential_headers=(b"authorization", b"x-goog-api-key"),
    by_prefix_only=True,
    route=vertex_route,
    price_provider="google-vertex",
    origin=Origin(
        "vertex-url", "https://aiplatform.googleapis.com",
        "Vertex AI origin (a regional one for regional endpoints), served under /vertex",
    ),
)
