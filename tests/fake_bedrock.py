"""
A fake Bedrock runtime: InvokeModel and Converse, streamed as real AWS event-stream
frames (CRCs and all), answers shaped like the real ones. Model ids in the path choose
misbehaviour: C{bad-frames} sends a frame with a broken CRC mid-stream,
C{throttled} an exception frame after a 200, C{fail-400} a validation error.
"""

from __future__ import annotations

import base64
import json
from typing import Any
from urllib.parse import unquote

from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from modeltrack.providers.aws_eventstream import encode_frame
from tests.fakes import ANTHROPIC_USAGE, Seen, message_body, messages_stream

#: What Converse reports for a call (inputTokens excludes the cache).
CONVERSE_USAGE = {
    "inputTokens": 120, "outputTokens": 310, "totalTokens": 52430,
    "cacheReadInputTokens": 50000, "cacheWriteInputTokens": 2000,
    "cacheDetails": [{"ttl": "5m", "inputTokens": 1500}, {"ttl": "1h", "inputTokens": 500}],
}
#: The model a Bedrock answer names: without its profile or version suffix.
ANSWER_MODEL = "claude-sonnet-4-5-20250929"


def event(event_type: str, payload: dict[str, Any]) -> bytes:
    body = json.dumps({**payload, "p": "abcdefghij"}).encode()
    return encode_frame({":event-type": event_type, ":content-type": "application/json", ":message-type": "event"}, body)


def chunk(anthropic_event: dict[str, Any]) -> bytes:
    encoded = base64.b64encode(json.dumps(anthropic_event).encode()).decode()
    return encode_frame(
        {":event-type": "chunk", ":content-type": "application/json", ":message-type": "event"},
        json.dumps({"bytes": encoded, "p": "abcd"}).encode(),
    )


def invoke_stream() -> list[bytes]:
    """
    Anthropic's stream events, as Bedrock wraps them; the last carries Bedrock's metrics.
    """
    events = []
    for sse in messages_stream(ANSWER_MODEL):
        data = json.loads(sse.split(b"data: ", 1)[1])
        if data["type"] == "message_stop":
            data["amazon-bedrock-invocationMetrics"] = {
                "inputTokenCount": ANTHROPIC_USAGE["input_tokens"], "outputTokenCount": ANTHROPIC_USAGE["output_tokens"],
                "invocationLatency": 900, "firstByteLatency": 300,
            }
        events.append(chunk(data))
    return events


def converse_stream() -> list[bytes]:
    return [
        event("messageStart", {"role": "assistant"}),
        event("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": "Hello"}}),
        event("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": " world"}}),
        event("contentBlockStop", {"contentBlockIndex": 0}),
        event("messageStop", {"stopReason": "end_turn"}),
        event("metadata", {"usage": CONVERSE_USAGE, "metrics": {"latencyMs": 300}}),
    ]


def converse_body() -> dict[str, Any]:
    return {
        "output": {"message": {"role": "assistant", "content": [{"text": "Hello world"}]}},
        "stopReason": "end_turn", "usage": CONVERSE_USAGE, "metrics": {"latencyMs": 300},
    }


def signature_problem(request: Request, body: bytes, url: str, credentials: Any, region: str) -> str | None:
    """
    Check a request's SigV4 signature as AWS would, with botocore computing the
    expected one from the same credentials; the problem, or None if it is right.
    """
    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest

    authorization = (request.getHeader(b"authorization") or b"").decode()
    if not authorization.startswith("AWS4-HMAC-SHA256 "):
        return "not signed with SigV4"
    fields = dict(part.strip().split("=", 1) for part in authorization[len("AWS4-HMAC-SHA256 "):].split(","))
    if not fields["Credential"].startswith(credentials.access_key + "/") or f"/{region}/bedrock/" not in fields["Credential"]:
        return "signed by other credentials, region or service"
    signed = fields["SignedHeaders"].split(";")
    headers = {name: (request.getHeader(name.encode()) or b"").decode() for name in signed if name != "host"}
    replay = AWSRequest(request.method.decode(), url + request.uri.decode(), data=body, headers=headers)
    replay.context["timestamp"] = headers["x-amz-date"]
    auth = SigV4Auth(credentials, "bedrock", region)
    expected = auth.signature(auth.string_to_sign(replay, auth.canonical_request(replay)), replay)
    return None if expected == fields["Signature"] else "signature mismatch"


class FakeBedrock(Resource):
    isLeaf = True
    #: Set to botocore Credentials to have every request's signature checked.
    credentials: Any = None
    region = "us-east-1"
    url = ""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[Seen] = []

    def render(self, request: Request) -> bytes | int:
        self.seen.append(Seen.of(request))
        body = self.seen[-1].body
        if self.credentials is not None:
            problem = signature_problem(request, body, self.url, self.credentials, self.region)
            if problem is not None:
                request.setResponseCode(403)
                request.setHeader(b"x-amzn-errortype", b"InvalidSignatureException")
                return json.dumps({"message": problem}).encode()
        parts = request.path.decode().split("/")  # "", "model", id, operation
        model, operation = unquote(parts[2]), parts[3]
        if model == "fail-400":
            request.setResponseCode(400)
            request.setHeader(b"content-type", b"application/json")
            request.setHeader(b"x-amzn-errortype", b"ValidationException:http://internal.amazon.com/coral/com.amazon.bedrock/")
            return json.dumps({"message": "Malformed input request"}).encode()
        if operation == "count-tokens":
            return self._json(request, {"inputTokens": 42})
        if operation == "invoke" and model.startswith("meta."):
            # Llama's own body; its token counts are in Bedrock's headers as for every model.
            request.setHeader(b"x-amzn-bedrock-input-token-count", b"20")
            request.setHeader(b"x-amzn-bedrock-output-token-count", b"5")
            return self._json(request, {"generation": "Hello world", "prompt_token_count": 20, "generation_token_count": 5, "stop_reason": "stop"})
        if operation == "invoke":
            request.setHeader(b"x-amzn-bedrock-input-token-count", b"120")  # the body's split wins
            request.setHeader(b"x-amzn-bedrock-output-token-count", b"310")
            return self._json(request, message_body(ANSWER_MODEL))
        if operation == "converse":
            return self._json(request, converse_body())
        frames = invoke_stream() if operation == "invoke-with-response-stream" else converse_stream()
        if model == "throttled":
            frames = frames[:2] + [encode_frame(
                {":message-type": "exception", ":exception-type": "throttlingException", ":content-type": "application/json"},
                b'{"message":"Too many requests"}',
            )]
        if model == "bad-frames":
            broken = bytearray(frames[2])
            broken[-1] ^= 0xFF  # its message CRC
            frames = frames[:2] + [bytes(broken)] + frames[3:]
        request.setHeader(b"content-type", b"application/vnd.amazon.eventstream")
        request.setHeader(b"x-amzn-requestid", b"req-1")
        for frame in frames:
            request.write(frame)
        request.finish()
        return NOT_DONE_YET

    def _json(self, request: Request, obj: Any) -> bytes:
        request.setHeader(b"content-type", b"application/json")
        return json.dumps(obj).encode()
