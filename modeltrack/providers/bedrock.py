"""
Amazon Bedrock's runtime API under C{/bedrock}: InvokeModel and Converse, streamed or
not. The model is in the path (URL-encoded: a base id, a cross-region profile such as
C{us.} or C{global.}, or an ARN) and is the one a call is priced by: the profile sets the
price, and the answer names the model without it.

Usage: InvokeModel answers from Claude carry Anthropic's C{usage}; other models report
C{amazon-bedrock-invocationMetrics}. Converse reports C{usage.inputTokens} without the
cache reads and writes, which are added here (input includes cache, as everywhere).
Streams are AWS event-stream frames (L{modeltrack.providers.aws_eventstream}); InvokeModel's hold
Anthropic events, base64-encoded, in C{chunk} events; ConverseStream's usage comes in
its C{metadata} event. Errors are C{{"message": ...}} with the type in a header.
"""

from __future__ import annotations

import base64
import json
import re
from dataclasses import replace
from typing import Any
from urllib.parse import unquote

from twisted.web.http_headers import Headers

from modeltrack.pricing.usage import Reading, UnreadableUsage, Usage, count, text
from modeltrack.providers import anthropic
from modeltrack.providers.dialect import Dialect, Endpoint, Origin, Region, Signing
from modeltrack.providers.meter import FrameMeter

NAME = "bedrock"
EVENT_STREAM = b"application/vnd.amazon.eventstream"

#: A model id as it may appear in a path: a base id, a profile, or an ARN with its
#: slashes and colons percent-encoded. One segment: never another path upstream.
_PATH = re.compile(r"/model/([A-Za-z0-9._:%@+-]{1,512})/(invoke|invoke-with-response-stream|converse|converse-stream|count-tokens)")


def converse_usage(raw: dict[str, Any]) -> Usage:
    """
    Converse's C{TokenUsage}: C{inputTokens} excludes cache reads and writes.
    """
    read, write = count(raw.get("cacheReadInputTokens")), count(raw.get("cacheWriteInputTokens"))
    one_hour = 0
    for detail in raw.get("cacheDetails") or ():
        if isinstance(detail, dict) and detail.get("ttl") == "1h":
            one_hour += count(detail.get("inputTokens"))
    return Usage(
        input_tokens=count(raw.get("inputTokens")) + read + write,
        cache_read_tokens=read,
        cache_write_tokens=write,
        cache_write_1h_tokens=min(one_hour, write),
        output_tokens=count(raw.get("outputTokens")),
    )


def metrics_usage(metrics: dict[str, Any]) -> Usage:
    """
    C{amazon-bedrock-invocationMetrics}: what any model's InvokeModel stream reports.
    """
    read, write = count(metrics.get("cacheReadInputTokenCount")), count(metrics.get("cacheWriteInputTokenCount"))
    return Usage(
        input_tokens=count(metrics.get("inputTokenCount")) + read + write,
        cache_read_tokens=read,
        cache_write_tokens=write,
        output_tokens=count(metrics.get("outputTokenCount")),
    )


def read_invoke(obj: dict[str, Any]) -> Reading:
    """
    An InvokeModel answer: Claude's Messages body, or another model's body with
    Converse-style usage. An error body names no type (its header does).
    """
    raw = obj.get("usage")
    if isinstance(raw, dict) and "input_tokens" in raw:
        return anthropic.read_body(obj)
    if isinstance(raw, dict) and "inputTokens" in raw:
        return Reading(converse_usage(raw), final=True)
    return Reading()


def read_converse(obj: dict[str, Any]) -> Reading:
    raw = obj.get("usage")
    if not isinstance(raw, dict):
        return Reading()
    return Reading(converse_usage(raw), final=True)


class InvokeStreamMeter(FrameMeter):
    """
    InvokeModelWithResponseStream: each C{chunk} event's payload is
    C{{"bytes": base64 of one model event}}; Claude's are Anthropic's stream events.
    """

    def __init__(self, strip: bool = False) -> None:
        super().__init__(strip)
        self._messages = anthropic.MessagesStreamMeter()
        self._messages.reading = self.reading

    def on_event(self, event_type: str, payload: bytes) -> None:
        if event_type != "chunk":
            return
        data = base64.b64decode(json.loads(payload)["bytes"])
        if b"message_" in data or b"error" in data:  # the Anthropic events usage lives in
            name = json.loads(data).get("type")
            if isinstance(name, str):
                self._messages.on_event(name.encode("ascii", "replace"), data)
                self.ended = self._messages.ended
        if b"amazon-bedrock-invocationMetrics" in data:
            metrics = json.loads(data).get("amazon-bedrock-invocationMetrics")
            if isinstance(metrics, dict) and self.reading.usage is None:
                self.reading.usage = metrics_usage(metrics)  # a model that reports nothing else
                self.reading.final = True
            self.ended = True


class ConverseStreamMeter(FrameMeter):
    """
    ConverseStream: usage in the C{metadata} event, the stream's last.
    """

    def on_event(self, event_type: str, payload: bytes) -> None:
        if event_type == "metadata":
            raw = json.loads(payload).get("usage")
            if isinstance(raw, dict):
                self.reading.usage = converse_usage(raw)
                self.reading.final = True
            self.ended = True


def error_body(error_type: str, message: str) -> dict[str, Any]:
    # Bedrock puts the type in the x-amzn-ErrorType header; botocore also reads __type.
    return {"message": message, "__type": error_type}


def read_headers(headers: Headers, code: int) -> Reading | None:
    """
    Bedrock names an error's type in a header, not in its body; and it counts every
    InvokeModel call's tokens in headers, the only place some models report them.
    """
    if code >= 400:
        named = headers.getRawHeaders(b"x-amzn-errortype")
        # "ThrottlingException:http://internal.amazon.com/...": the name is the type.
        return Reading(error_type=named[-1].partition(b":")[0].decode("ascii", "replace")[:100]) if named else None
    counted = headers.getRawHeaders(b"x-amzn-bedrock-input-token-count")
    if not counted:
        return None

    def header(name: bytes) -> int:
        values = headers.getRawHeaders(name)
        if not values:
            return 0
        text = values[-1].strip()
        return count(int(text) if text.isdigit() and len(text) <= 13 else text)

    try:
        read = header(b"x-amzn-bedrock-cache-read-input-token-count")
        write = header(b"x-amzn-bedrock-cache-write-input-token-count")
        usage = Usage(
            input_tokens=header(b"x-amzn-bedrock-input-token-count") + read + write,
            cache_read_tokens=read,
            cache_write_tokens=write,
            output_tokens=header(b"x-amzn-bedrock-output-token-count"),
        )
    except UnreadableUsage as e:
        return Reading(usage_error=str(e))
    return Reading(usage, final=True)




_ENDPOINTS = {
    "invoke": Endpoint(NAME, "/model/{modelId}/invoke", error_body, read_body=read_invoke),
    "invoke-with-response-stream": Endpoint(
        NAME, "/model/{modelId}/invoke-with-response-stream", error_body,
        read_body=read_invoke, stream_meter=InvokeStreamMeter, stream_type=EVENT_STREAM, streams=True,
    ),
    "converse": Endpoint(NAME, "/model/{modelId}/converse", error_body, read_body=read_converse),
    "converse-stream": Endpoint(
        NAME, "/model/{modelId}/converse-stream", error_body,
        read_body=read_converse, stream_meter=ConverseStreamMeter, stream_type=EVENT_STREAM, streams=True,
    ),
    "count-tokens": Endpoint(NAME, "/model/{modelId}/count-tokens", error_body, metered=False),
}
_ENDPOINTS = {operation: replace(endpoint, read_headers=read_headers) for operation, endpoint in _ENDPOINTS.items()}


def route(method: bytes, path: str) -> tuple[Endpoint, str] | None:
    """
    The endpoint for a path below C{/bedrock}; the path is sent on as the client
    encoded it (a signature covers it as sent).
    """
    found = _PATH.fullmatch(path)
    if method != b"POST" or found is None:
        return None
    model = text(unquote(found.group(1)), 512)
    endpoint = _ENDPOINTS[found.group(2)]
    return replace(endpoint, model=model, priced_by_path=True), path


DIALECT = Dialect(
    name=NAME,
    prefix="/bedrock",
    endpoints=(),
    error_body=error_body,
    credential_headers=(b"authorization",),
    by_prefix_only=True,
    route=route,
    price_provider="aws",
    origin=Origin("bedrock-url", None, "Bedrock runtime origin instead (a VPC endpoint, tests)"),
    region=Region(
        "bedrock-region",
        re.compile(r"[a-z]{2}(-gov)?-[a-z]+-\d"),
        "https://bedrock-runtime.{region}.amazonaws.com",
        "Serve Bedrock under /bedrock, at https://bedrock-runtime.REGION.amazonaws.com",
        "an AWS region (e.g. us-east-1)",
    ),
    signing=Signing(
        "bedrock-sign",
        "bedrock",
        "Sign Bedrock calls with the proxy's own AWS credentials (botocore's chain: environment, profile, instance "
        "role); callers must be keys in keys.json. Needs modeltrack[aws].",
    ),
)
