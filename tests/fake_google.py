"""
A fake Gemini API and Vertex AI: generateContent answers, C{?alt=sse} streams whose
usage is cumulative (the last report is the whole), Claude on Vertex (Anthropic's
Messages answers and SSE), and Google's error shape. C{fail-429} as the model fails.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from tests.fakes import Seen, message_body, messages_stream

GEMINI_USAGE = {
    "promptTokenCount": 1200, "cachedContentTokenCount": 1024, "candidatesTokenCount": 300,
    "thoughtsTokenCount": 64, "toolUsePromptTokenCount": 16, "totalTokenCount": 1580,
}


#: A model asked for with "media" in its name was sent image and audio: Google lists
#: each modality's share of the prompt, of the cached part and of the output.
MEDIA_USAGE = {
    **GEMINI_USAGE,
    "cachedContentTokenCount": 600,
    "promptTokensDetails": [{"modality": "TEXT", "tokenCount": 400}, {"modality": "IMAGE", "tokenCount": 300}, {"modality": "AUDIO", "tokenCount": 500}],
    "cacheTokensDetails": [{"modality": "TEXT", "tokenCount": 500}, {"modality": "AUDIO", "tokenCount": 100}],
    "candidatesTokensDetails": [{"modality": "TEXT", "tokenCount": 300}],
}


def usage_for(model: str) -> dict[str, Any]:
    return MEDIA_USAGE if "media" in model else GEMINI_USAGE


def answer(model: str, text: str, usage: dict[str, Any] | None, finished: bool) -> dict[str, Any]:
    candidate: dict[str, Any] = {"content": {"parts": [{"text": text}], "role": "model"}, "index": 0}
    if finished:
        candidate["finishReason"] = "STOP"
    body: dict[str, Any] = {"candidates": [candidate], "modelVersion": model.replace("-media", ""), "responseId": "resp-1"}
    if usage is not None:
        body["usageMetadata"] = usage
    return body


def gemini_stream(model: str) -> list[bytes]:
    """
    Three events, each reporting the usage so far: summed, they would triple the prompt.
    """
    partial = {"promptTokenCount": 1200, "cachedContentTokenCount": 1024, "totalTokenCount": 1200}
    events = [
        answer(model, "Hello", partial, False),
        answer(model, " wor", {**partial, "candidatesTokenCount": 150, "totalTokenCount": 1350}, False),
        answer(model, "ld", usage_for(model), True),
    ]
    return [b"data: " + json.dumps(event).encode() + b"\r\n\r\n" for event in events]


class FakeGoogle(Resource):
    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[Seen] = []

    def render(self, request: Request) -> bytes | int:
        self.seen.append(Seen.of(request))
        path = request.path.decode()
        operation = {"name": "models/veo/operations/op1", "done": True, "response": {"generateVideoResponse": {
            "generatedSamples": [{"video": {"uri": "https://example.invalid/v.mp4"}}]}}}
        if request.method == b"GET" and "/operations/" in path:  # a Veo operation, polled
            return self._json(request, 200, operation)
        if request.method == b"GET":
            return self._json(request, 200, {"models": [{"name": "models/gemini-2.5-flash"}]})
        model, _, method = path.rpartition("/")[2].partition(":")
        if method == "predictLongRunning":  # Veo: an operation, no usage
            resource = path.rpartition(":")[0].split("/", 2)[2]  # below its version: models/... or projects/...
            return self._json(request, 200, {"name": f"{resource}/operations/op1"})
        if method == "fetchPredictOperation":  # Vertex's way of polling one
            return self._json(request, 200, operation)
        if model == "fail-429":
            return self._json(request, 429, {"error": {"code": 429, "message": "Resource exhausted", "status": "RESOURCE_EXHAUSTED"}})
        if method == "countTokens":
            return self._json(request, 200, {"totalTokens": 42})
        if "/publishers/anthropic/" in path:
            if method == "streamRawPredict":
                return self._stream(request, messages_stream(model), b"text/event-stream")
            return self._json(request, 200, message_body(model))
        if method == "streamGenerateContent" and b"alt=sse" in request.uri:
            return self._stream(request, gemini_stream(model), b"text/event-stream")
        if method == "streamGenerateContent":
            # Without alt=sse: one JSON array, its elements sent as they come.
            events = [event.split(b"data: ", 1)[1].strip() for event in gemini_stream(model)]
            return self._stream(request, [b"[" + events[0]] + [b"," + e for e in events[1:]] + [b"]"], b"application/json")
        return self._json(request, 200, answer(model, "Hello world", usage_for(model), True))

    def _stream(self, request: Request, chunks: list[bytes], content_type: bytes) -> int:
        request.setHeader(b"content-type", content_type)
        for chunk in chunks:
            request.write(chunk)
        request.finish()
        return NOT_DONE_YET

    def _json(self, request: Request, code: int, obj: Any) -> bytes:
        request.setResponseCode(code)
        request.setHeader(b"content-type", b"application/json; charset=UTF-8")
        return json.dumps(obj).encode()
