"""
A fake OpenAI and Anthropic upstream: a twisted.web resource that answers in each
provider's wire format, streamed or not, with fixed usage, and records what it got.

The model name in a request picks a behaviour, so that tests driving the official SDKs
(which cannot send extra headers upstream: the proxy strips its own) can ask for one:
  - "fail-429": a rate-limit error in the provider's shape; "fail-500": a server error;
  - "reset-stream": a stream's headers and first event, then a TCP reset;
  - "stream-error": a stream that sends an error event after the 200;
  - "hang": never answers;
  - "hang-body": sends headers and one chunk, then goes silent;
  - "late-end": sends a whole stream but ends its body only when the test says;
  - "huge-usage" / "vast-usage": usage counts of 2**64 / 10**400 tokens;
  - anything else: a normal answer.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from tests.fake_realtime import FakeSockets

CHAT_USAGE = {
    "prompt_tokens": 1200,
    "completion_tokens": 300,
    "total_tokens": 1500,
    "prompt_tokens_details": {"cached_tokens": 1024, "audio_tokens": 0},
    "completion_tokens_details": {"reasoning_tokens": 64, "audio_tokens": 0},
}
#: An audio model's answer (asked for with a model whose name has "audio" in it): 600
#: of the input tokens and 400 of the output tokens are audio, at rates of their own.
AUDIO_CHAT_USAGE = {
    "prompt_tokens": 1000,
    "completion_tokens": 500,
    "total_tokens": 1500,
    "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 600, "text_tokens": 400, "image_tokens": 0},
    "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 400, "text_tokens": 100},
}
RESPONSES_USAGE = {
    "input_tokens": 900,
    "input_tokens_details": {"cached_tokens": 512},
    "output_tokens": 250,
    "output_tokens_details": {"reasoning_tokens": 100},
    "total_tokens": 1150,
}
ANTHROPIC_USAGE = {
    "input_tokens": 120,
    "cache_creation_input_tokens": 2000,
    "cache_read_input_tokens": 50000,
    "cache_creation": {"ephemeral_5m_input_tokens": 1500, "ephemeral_1h_input_tokens": 500},
    "output_tokens": 310,
    "service_tier": "standard",
}
EMBEDDING_USAGE = {"prompt_tokens": 8, "total_tokens": 8}
_METERED_PATHS = frozenset(
    ("/v1/chat/completions", "/v1/completions", "/v1/responses", "/v1/embeddings", "/v1/messages", "/v1/messages/count_tokens",
     "/v1/images/generations", "/v1/images/edits", "/v1/audio/transcriptions", "/v1/audio/translations", "/v1/audio/speech")
)
#: Usage counts no call has: a model named here is answered with one.
ABSURD_COUNTS = {"huge-usage": 2**64, "vast-usage": 10**400}
#: What the model names in requests resolve to, as the real APIs report them.
SNAPSHOTS = {"gpt-4o": "gpt-4o-2024-08-06", "claude-sonnet-4-5": "claude-sonnet-4-5-20250929"}


@dataclass
class Seen:
    method: bytes
    path: bytes
    headers: list[tuple[bytes, list[bytes]]]
    body: bytes  # its first MiB (an upload's size is C{size})
    size: int = 0

    @classmethod
    def of(cls, request: Request) -> Seen:
        """
        What a fake provider received (its body read).
        """
        return cls(request.method, request.uri, list(request.requestHeaders.getAllRawHeaders()), request.content.read())

    def header(self, name: bytes) -> list[bytes] | None:
        for key, values in self.headers:
            if key.lower() == name.lower():
                return values
        return None


def sse(event: str | None, data: Any) -> bytes:
    payload = data if isinstance(data, str) else json.dumps(data)
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {payload}\n\n".encode()


#: What an Azure deployment answers as its model, whatever the deployment is called.
AZURE_SNAPSHOT = "gpt-4o-2024-11-20"
#: Azure's stream opens with an empty chunk that carries only content-filter results.
AZURE_FIRST_CHUNK = sse(None, {
    "id": "", "object": "", "created": 0, "model": "", "choices": [],
    "prompt_filter_results": [{"prompt_index": 0, "content_filter_results": {"hate": {"filtered": False, "severity": "safe"}}}],
})


#: An image's usage as gpt-image-1.5 reports it: no output details.
IMAGE_USAGE = {
    "input_tokens": 23, "input_tokens_details": {"text_tokens": 23, "image_tokens": 0}, "output_tokens": 1056, "total_tokens": 1079,
}
#: An edit's: the input image's tokens among its input.
IMAGE_EDIT_USAGE = {
    "input_tokens": 346, "input_tokens_details": {"text_tokens": 23, "image_tokens": 323}, "output_tokens": 1056, "total_tokens": 1402,
}


def chat_usage(model: str) -> dict[str, Any]:
    return AUDIO_CHAT_USAGE if "audio" in model else CHAT_USAGE


def chat_stream(model: str, include_usage: bool, error: bool = False) -> list[bytes]:
    base = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": model}
    extra = {"usage": None} if include_usage else {}
    chunks = [
        sse(None, {**base, **extra, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]}),
        sse(None, {**base, **extra, "choices": [{"index": 0, "delta": {"content": "Hello"}, "finish_reason": None}]}),
        sse(None, {**base, **extra, "choices": [{"index": 0, "delta": {"content": " world"}, "finish_reason": None}]}),
    ]
    if error:
        chunks.append(sse(None, {"error": {"message": "overloaded", "type": "server_error", "code": None}}))
        return chunks
    chunks.append(sse(None, {**base, **extra, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}))
    if include_usage:
        chunks.append(sse(None, {**base, "choices": [], "usage": chat_usage(model), "service_tier": "default"}))
    chunks.append(b"data: [DONE]\n\n")
    return chunks


def chat_body(model: str, legacy: bool = False) -> dict[str, Any]:
    if legacy:
        choices = [{"index": 0, "text": "Hello world", "finish_reason": "stop", "logprobs": None}]
        return {"id": "cmpl-1", "object": "text_completion", "created": 1, "model": model, "choices": choices, "usage": chat_usage(model)}
    message = {"role": "assistant", "content": "Hello world"}
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1,
        "model": model,
        "choices": [{"index": 0, "message": message, "finish_reason": "stop", "logprobs": None}],
        "usage": chat_usage(model),
        "service_tier": "default",
    }


def response_object(model: str, status: str, usage: Any) -> dict[str, Any]:
    output = []
    if status == "completed":
        output = [{
            "type": "message", "id": "msg_1", "status": "completed", "role": "assistant",
            "content": [{"type": "output_text", "text": "Hello world", "annotations": []}],
        }]
    return {
        "id": "resp_1", "object": "response", "created_at": 1, "status": status, "model": model,
        "output": output, "usage": usage, "parallel_tool_calls": True, "tool_choice": "auto",
        "tools": [], "error": None, "incomplete_details": None, "instructions": None,
        "metadata": {}, "temperature": 1.0, "top_p": 1.0, "service_tier": "default",
    }


def responses_stream(model: str, error: bool = False) -> list[bytes]:
    created = response_object(model, "in_progress", None)
    chunks = [
        sse("response.created", {"type": "response.created", "sequence_number": 0, "response": created}),
        sse("response.output_text.delta", {"type": "response.output_text.delta", "sequence_number": 1, "item_id": "msg_1", "output_index": 0, "content_index": 0, "delta": "Hello world", "logprobs": []}),
    ]
    if error:
        chunks.append(sse("error", {"type": "error", "sequence_number": 2, "code": "server_error", "message": "boom", "param": None}))
        return chunks
    done = response_object(model, "completed", RESPONSES_USAGE)
    chunks.append(sse("response.completed", {"type": "response.completed", "sequence_number": 2, "response": done}))
    return chunks


def anthropic_usage(model: str) -> dict[str, Any]:
    """
    Claude 4.6 and later report where they ran: a model asked for with "-us" in its
    name ran in the US only (billed at 1.1 times).
    """
    if "-us" in model:
        return {**ANTHROPIC_USAGE, "inference_geo": "us"}
    if "-iter" in model:
        return ITERATED_USAGE
    return ANTHROPIC_USAGE


#: A call that ran a server-side tool loop: two turns, an advisor on another model and a
#: compaction, each billed on its own (asked for with "-iter" in the model's name). The
#: top level leaves the compaction out, as the API documents.
ITERATIONS = [
    {"type": "message", "input_tokens": 100, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 5000, "output_tokens": 200},
    {"type": "advisor_message", "model": "claude-opus-4-1-20250805", "input_tokens": 3000, "cache_creation_input_tokens": 0,
     "cache_read_input_tokens": 0, "output_tokens": 400},
    {"type": "compaction", "input_tokens": 8000, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0, "output_tokens": 1200},
    {"type": "message", "input_tokens": 150, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 5300, "output_tokens": 300},
]
ITERATED_USAGE = {
    "input_tokens": 3250, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 10300, "output_tokens": 900,
    "server_tool_use": {"web_search_requests": 2, "web_fetch_requests": 0}, "service_tier": "standard",
    "iterations": ITERATIONS,
}


def message_body(model: str) -> dict[str, Any]:
    return {
        "id": "msg_01", "type": "message", "role": "assistant", "model": model.replace("-us", "").replace("-iter", ""),
        "content": [{"type": "text", "text": "Hello world"}],
        "stop_reason": "end_turn", "stop_sequence": None, "usage": anthropic_usage(model),
    }


def messages_stream(model: str, error: bool = False) -> list[bytes]:
    start_usage = {**anthropic_usage(model), "output_tokens": 1}
    message = {**message_body(model), "content": [], "stop_reason": None, "usage": start_usage}
    chunks = [
        sse("message_start", {"type": "message_start", "message": message}),
        sse("content_block_start", {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
        sse("ping", {"type": "ping"}),
        sse("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hello"}}),
    ]
    if error:
        chunks.append(sse("error", {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}))
        return chunks
    delta_usage = {k: ANTHROPIC_USAGE[k] for k in ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens", "output_tokens")}
    chunks += [
        sse("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": " world"}}),
        sse("content_block_stop", {"type": "content_block_stop", "index": 0}),
        sse("message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": None}, "usage": delta_usage}),
        sse("message_stop", {"type": "message_stop"}),
    ]
    return chunks


def openai_batch_results() -> list[dict[str, Any]]:
    """
    Two results with usage (one on each model) and one that failed.
    """
    def ok(custom_id: str, model: str) -> dict[str, Any]:
        body = {**chat_body(model), "service_tier": "default"}
        return {"id": f"batch_req_{custom_id}", "custom_id": custom_id, "error": None,
                "response": {"status_code": 200, "request_id": "req_1", "body": body}}

    failed = {"id": "batch_req_3", "custom_id": "q-3", "response": None,
              "error": {"code": "invalid_request", "message": "bad"}}
    return [ok("q-1", "gpt-4o-2024-08-06"), ok("q-2", "gpt-4o-mini-2024-07-18"), failed]


def anthropic_batch_results() -> list[dict[str, Any]]:
    def ok(custom_id: str, model: str) -> dict[str, Any]:
        usage = {**ANTHROPIC_USAGE, "service_tier": "batch"}
        return {"custom_id": custom_id, "result": {"type": "succeeded", "message": {**message_body(model), "usage": usage}}}

    errored = {"custom_id": "m-3", "result": {"type": "errored", "error": {"type": "error", "error": {"type": "invalid_request_error", "message": "bad"}}}}
    return [ok("m-1", "claude-sonnet-4-5-20250929"), errored, ok("m-2", "claude-haiku-4-5-20251001")]


@dataclass
class FakeUpstream(Resource):
    """
    @ivar seen: every request received, in order.
    @ivar open_requests: requests answered with headers and a first chunk but not
        finished ("hang-body"), each with the chunks it has still to send.
    """

    seen: list[Seen] = field(default_factory=list)
    open_requests: list[tuple[Request, list[bytes]]] = field(default_factory=list)
    #: Like some OpenAI-compatible servers: no usage in a stream, whatever was asked.
    ignores_stream_options: bool = False
    #: The WebSocket APIs (tests/fake_realtime.py).
    sockets: FakeSockets = field(default_factory=FakeSockets)
    isLeaf = True

    def __post_init__(self) -> None:
        Resource.__init__(self)

    def render(self, request: Request) -> bytes | int:
        if request.requestHeaders.hasHeader(b"upgrade"):
            return self.sockets.render(request)
        body = request.content.read(1 << 20)
        size = len(body) + sum(len(chunk) for chunk in iter(lambda: request.content.read(1 << 20), b""))
        self.seen.append(Seen(request.method, request.uri, list(request.requestHeaders.getAllRawHeaders()), body, size))
        path = request.path.decode()
        # Azure's paths: /openai/deployments/{deployment}/X and /openai/v1/X are /v1/X.
        azure = path.startswith("/openai/")
        if azure:
            path = "/v1/" + (path[len("/openai/v1/") :] if path.startswith("/openai/v1/") else path.split("/", 4)[4])
        anthropic = path.startswith("/v1/messages")
        if path.startswith("/v1/models"):
            return self._json(request, 200, {"object": "list", "data": [{"id": "m", "object": "model", "created": 1, "owned_by": "x"}]})
        if path == "/v1/messages/count_tokens":
            return self._json(request, 200, {"input_tokens": 42})
        if path not in _METERED_PATHS:
            return self._rest_of_the_api(request, path)
        if path == "/v1/audio/speech":
            return self._speech(request, json.loads(body))
        if path.startswith("/v1/audio/"):
            return self._transcript(request, path)
        if path == "/v1/images/edits":  # a form: its image parts left out
            form = {k.decode(): v[0].decode() for k, v in request.args.items() if not k.startswith(b"image")}
            params = {**form, "n": int(form.get("n", 1)), "partial_images": int(form.get("partial_images", 0))}
            return self._image(request, params, form.get("stream") == "true", "image_edit")
        params = json.loads(body or b"{}")
        requested = params.get("model", "")
        model = AZURE_SNAPSHOT if azure else SNAPSHOTS.get(requested, requested)
        stream = params.get("stream") is True
        if requested == "hang":
            return NOT_DONE_YET
        if requested == "short-body":
            # Promises 1,000 bytes, sends 20, and drops the connection.
            request.setHeader(b"content-type", b"application/json")
            request.setHeader(b"content-length", b"1000")
            request.write(b'{"id":"cut","object"')
            request.transport.loseConnection()
            return NOT_DONE_YET
        if requested == "fail-500":
            return self._json(request, 500, {"error": {"message": "boom", "type": "server_error", "code": None, "param": None}})
        if requested == "reset-stream":
            # Headers and a first event, then a reset once they have been read.
            from twisted.internet import reactor

            request.setHeader(b"content-type", b"text/event-stream")
            request.write(chat_stream(model, True)[0])
            reactor.callLater(0.05, request.channel.transport.abortConnection)
            return NOT_DONE_YET
        if requested == "fail-429":
            error = (
                {"type": "error", "error": {"type": "rate_limit_error", "message": "slow down"}}
                if anthropic
                else {"error": {"message": "slow down", "type": "requests", "code": "rate_limit_exceeded", "param": None}}
            )
            request.setHeader(b"retry-after", b"0")
            request.setHeader(b"x-should-retry", b"false")
            return self._json(request, 429, error)
        if requested in ABSURD_COUNTS:
            tokens = ABSURD_COUNTS[requested]
            if stream:
                chunks = messages_stream(model)
                chunks[-2] = sse("message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": tokens}})
                return self._stream(request, chunks, requested)
            body = chat_body(model)
            body["usage"] = {**CHAT_USAGE, "prompt_tokens": tokens}
            return self._json(request, 200, body)
        error = requested == "stream-error"
        if path in ("/v1/chat/completions", "/v1/completions"):
            if stream:
                include = (params.get("stream_options") or {}).get("include_usage") is True
                if self.ignores_stream_options:
                    include = False
                chunks = chat_stream(model, include, error)
                if azure:
                    chunks.insert(0, AZURE_FIRST_CHUNK)
                return self._stream(request, chunks, requested)
            return self._json(request, 200, chat_body(model, legacy=path == "/v1/completions"))
        if path == "/v1/responses":
            if stream:
                return self._stream(request, responses_stream(model, error), requested)
            return self._json(request, 200, response_object(model, "completed", RESPONSES_USAGE))
        if path == "/v1/embeddings":
            data = [{"object": "embedding", "index": 0, "embedding": [0.1, 0.2, 0.3]}]
            return self._json(request, 200, {"object": "list", "data": data, "model": model, "usage": EMBEDDING_USAGE})
        if path == "/v1/images/generations":
            return self._image(request, params, stream)
        if path == "/v1/messages":
            if stream:
                return self._stream(request, messages_stream(model, error), requested)
            return self._json(request, 200, message_body(model))
        return self._json(request, 404, {"error": {"message": "not here", "type": "invalid_request_error"}})

    def _image(self, request: Request, params: dict[str, Any], stream: bool, kind: str = "image_generation") -> bytes | int:
        """
        GPT image models' answers: no model named; usage without output details (as
        gpt-image-1.5 and -2 send it) unless the model is gpt-image-1 (the spec's example).
        """
        usage: dict[str, Any] = dict(IMAGE_EDIT_USAGE if kind == "image_edit" else IMAGE_USAGE)
        if params.get("model") == "gpt-image-1":
            usage["output_tokens_details"] = {"text_tokens": 0, "image_tokens": usage["output_tokens"]}
        n = params.get("n") or 1
        if not stream:
            return self._json(request, 200, {
                "created": 1, "data": [{"b64_json": "aW1hZ2U="}] * n, "background": "opaque", "output_format": "png",
                "quality": "high", "size": "1024x1024", "usage": usage,
            })
        chunks = []
        for _ in range(n):
            for index in range(params.get("partial_images") or 0):
                partial = {"type": f"{kind}.partial_image", "b64_json": "cGFydA==" * 4096, "partial_image_index": index,
                           "created_at": 1, "size": "1024x1024", "quality": "high", "background": "opaque", "output_format": "png"}
                chunks.append(sse(f"{kind}.partial_image", partial))
            done = {"type": f"{kind}.completed", "b64_json": "aW1hZ2U=", "created_at": 1, "size": "1024x1024",
                    "quality": "high", "background": "opaque", "output_format": "png", "usage": usage}
            chunks.append(sse(f"{kind}.completed", done))
        return self._stream(request, chunks, "")

    def _speech(self, request: Request, params: dict[str, Any]) -> bytes | int:
        """Speech: raw audio (no usage), or events ending with the usage (sse)."""
        if params.get("stream_format") == "sse":
            chunks = [sse(None, {"type": "speech.audio.delta", "audio": "UklGRg=="}),
                      sse(None, {"type": "speech.audio.done", "usage": {"input_tokens": 14, "output_tokens": 101, "total_tokens": 115}})]
            return self._stream(request, chunks, "")
        request.setHeader(b"content-type", b"audio/mpeg")
        return b"ID3" + bytes(range(256)) * 16

    def _transcript(self, request: Request, path: str) -> bytes | int:
        """
        Transcriptions and translations as the API answers them: token usage for the
        gpt-4o models, seconds for whisper-1, plain text with no usage for text, srt
        and vtt, a translation's duration only in verbose_json.
        """
        form = {key.decode(): values[0].decode() for key, values in request.args.items() if key != b"file"}
        model, shape = form.get("model", ""), form.get("response_format", "json")
        tokens = {"type": "tokens", "input_tokens": 14, "input_token_details": {"text_tokens": 10, "audio_tokens": 4},
                  "output_tokens": 101, "total_tokens": 115}
        usage = {"type": "duration", "seconds": 9} if model == "whisper-1" else tokens
        if shape in ("text", "srt", "vtt"):
            request.setHeader(b"content-type", b"text/plain; charset=utf-8")
            return b"hello there\n"
        if form.get("stream") == "true":
            done = {"type": "transcript.text.done", "text": "hello there", "usage": {k: v for k, v in tokens.items() if k != "type"}}
            chunks = [sse(None, {"type": "transcript.text.delta", "delta": "hello"}), sse(None, done)]
            return self._stream(request, chunks, "")
        answer: dict[str, Any] = {"text": "hello there"}
        if shape == "verbose_json":
            answer.update(task="transcribe", language="english", duration=8.47, segments=[])
        if path.endswith("/transcriptions"):
            answer["usage"] = usage
        return self._json(request, 200, answer)

    def _rest_of_the_api(self, request: Request, path: str) -> bytes:
        """
        A few of the routes the proxy relays unmetered, answered in their APIs' shapes.
        """
        method = request.method
        parts = path.split("/")
        if method == b"GET" and path in ("/v1/files", "/v1/messages/batches"):
            return self._json(request, 200, {"object": "list", "data": [], "has_more": False, "first_id": None, "last_id": None})
        if method == b"POST" and path == "/v1/files":
            return self._json(request, 200, {"id": "file-1", "object": "file", "bytes": 5, "created_at": 1, "filename": "a.jsonl", "purpose": "batch", "status": "processed"})
        if method == b"DELETE" and path.startswith("/v1/files/"):
            return self._json(request, 200, {"id": parts[3], "object": "file", "deleted": True})
        if method == b"POST" and path == "/v1/fine_tuning/jobs":
            job = json.loads(request.content.getvalue() or b"{}")
            return self._json(request, 200, {
                "id": "ftjob-1", "object": "fine_tuning.job", "model": job.get("model", ""), "status": "validating_files",
                "created_at": 1, "training_file": job.get("training_file", ""), "validation_file": None,
                "hyperparameters": {"n_epochs": "auto"}, "result_files": [], "seed": 1, "organization_id": "org-1",
                "fine_tuned_model": None, "finished_at": None, "error": None, "trained_tokens": None,
            })
        if method == b"POST" and path == "/v1/moderations":
            return self._json(request, 200, {"id": "modr-1", "model": "omni-moderation-latest", "results": []})
        if method == b"GET" and path.startswith("/v1/batches/"):
            batch = {"id": parts[3], "object": "batch", "endpoint": "/v1/chat/completions", "status": "completed",
                     "input_file_id": "file-1", "completion_window": "24h", "created_at": 1,
                     "output_file_id": f"file-out-{parts[3]}", "error_file_id": None}
            return self._json(request, 200, batch)
        if method == b"GET" and path.startswith("/v1/files/") and path.endswith("/content"):
            # An output file: its batch's results (any other file: the same bytes,
            # which must not be metered unless a batch named the file).
            return self._lines(request, openai_batch_results())
        if method == b"GET" and path.startswith("/v1/messages/batches/") and path.endswith("/results"):
            return self._lines(request, anthropic_batch_results())
        if method == b"GET" and path.startswith("/v1/messages/batches/"):
            # As the API answers: the results at an absolute URL on its own origin.
            return self._json(request, 200, {
                "id": parts[4], "type": "message_batch", "processing_status": "ended",
                "request_counts": {"processing": 0, "succeeded": 2, "errored": 1, "canceled": 0, "expired": 0},
                "ended_at": "2026-11-30T00:00:00Z", "created_at": "2026-11-29T00:00:00Z",
                "expires_at": "2026-12-01T00:00:00Z", "archived_at": None, "cancel_initiated_at": None,
                "results_url": f"https://api.anthropic.com/v1/messages/batches/{parts[4]}/results",
            })
        return self._json(request, 404, {"error": {"message": "not here", "type": "invalid_request_error"}})

    def _lines(self, request: Request, lines: list[dict[str, Any]]) -> int:
        """
        JSONL, written in pieces that cut lines in two, the last line without a newline.
        """
        data = "\n".join(json.dumps(line) for line in lines).encode()
        request.setHeader(b"content-type", b"application/binary")
        for start in range(0, len(data), 97):
            request.write(data[start:start + 97])
        request.finish()
        return NOT_DONE_YET

    def _json(self, request: Request, code: int, body: Any) -> bytes:
        request.setResponseCode(code)
        request.setHeader(b"content-type", b"application/json")
        request.setHeader(b"x-request-id", b"req_fake")
        return json.dumps(body).encode()

    def _stream(self, request: Request, chunks: list[bytes], requested: str) -> int:
        request.setHeader(b"content-type", b"text/event-stream; charset=utf-8")
        request.setHeader(b"x-request-id", b"req_fake")
        if requested == "hang-body":
            request.write(chunks[0])
            self.open_requests.append((request, chunks[1:]))
            return NOT_DONE_YET
        if requested == "late-end":
            for chunk in chunks:
                request.write(chunk)
            self.open_requests.append((request, []))
            return NOT_DONE_YET
        for chunk in chunks:
            request.write(chunk)
        request.finish()
        return NOT_DONE_YET
