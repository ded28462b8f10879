"""
Which client paths the proxy serves, which provider each goes to, and how each is
metered. Nothing outside this table is ever forwarded.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Callable

from twisted.web.http_headers import Headers

from modeltrack.providers import anthropic, openai
from modeltrack.providers.meter import SSEMeter
from modeltrack.usage import Reading


@dataclass(frozen=True, slots=True)
class Endpoint:
    """
    One upstream API route.

    @ivar metered: calls here cost money and each leaves a cost event.
    @ivar read_body: reads usage from a non-streaming response body.
    @ivar stream_meter: builds the meter for an event-stream response; it is called
        with C{strip=True} when the proxy added C{include_usage} for itself.
    @ivar injects_usage: streamed chat-style calls only report usage when asked to.
    """

    provider: str
    path: str
    method: bytes = b"POST"
    metered: bool = True
    read_body: Callable[[dict[str, Any]], Reading] | None = None
    stream_meter: Callable[..., SSEMeter] | None = None
    injects_usage: bool = False

    def error_body(self, error_type: str, message: str) -> dict[str, Any]:
        return error_body(self.provider, error_type, message)


_ENDPOINTS = (
    Endpoint(
        anthropic.NAME,
        "/v1/messages",
        read_body=anthropic.read_body,
        stream_meter=anthropic.MessagesStreamMeter,
    ),
    Endpoint(anthropic.NAME, "/v1/messages/count_tokens", metered=False),
    Endpoint(anthropic.NAME, "/v1/models", method=b"GET", metered=False),
    *(
        Endpoint(
            openai.NAME,
            path,
            read_body=openai.read_chat_body,
            stream_meter=openai.ChatStreamMeter,
            injects_usage=True,
        )
        for path in ("/v1/chat/completions", "/v1/completions")
    ),
    Endpoint(
        openai.NAME,
        "/v1/responses",
        read_body=openai.read_responses_body,
        stream_meter=openai.ResponsesStreamMeter,
    ),
    Endpoint(openai.NAME, "/v1/embeddings", read_body=openai.read_chat_body),
    Endpoint(openai.NAME, "/v1/models", method=b"GET", metered=False),
)

_BY_ROUTE = {(e.provider, e.method, e.path): e for e in _ENDPOINTS}
_PREFIXES = {"/anthropic": anthropic.NAME, "/openai": openai.NAME}
_ANTHROPIC_ONLY_PATHS = frozenset(e.path for e in _ENDPOINTS if e.provider == anthropic.NAME)
_MODELS = "/v1/models"
#: A model id in a path: no slash, so no way to reach any other upstream path.
_MODEL_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@-]{0,255}")


def provider_by_auth(headers: Headers) -> str:
    """
    The provider a caller speaks to, by its auth header style: C{x-api-key} or
    C{anthropic-version} mean Anthropic.
    """
    if headers.hasHeader(b"x-api-key") or headers.hasHeader(b"anthropic-version"):
        return anthropic.NAME
    return openai.NAME


def error_body(provider: str, error_type: str, message: str) -> dict[str, Any]:
    """
    An error in the provider's own shape.
    """
    shape = anthropic.error_body if provider == anthropic.NAME else openai.error_body
    return shape(error_type, message)


def match(method: bytes, path: str, headers: Headers) -> tuple[Endpoint, str] | None:
    """
    The endpoint serving C{method path}, with the path to send upstream, or L{None}.

    Without an explicit C{/anthropic} or C{/openai} prefix, the path decides, except for
    the model list, which both providers serve: there the auth header style decides
    (C{x-api-key} or C{anthropic-version} mean Anthropic).
    """
    provider = None
    for prefix, name in _PREFIXES.items():
        if path.startswith(prefix + "/"):
            provider = name
            path = path[len(prefix) :]
            break
    upstream_path = path
    if path.startswith(_MODELS + "/") and method == b"GET":
        if not _MODEL_ID.fullmatch(path[len(_MODELS) + 1 :]):
            return None
        path = _MODELS  # one model: GET /v1/models/{id}
    if provider is None:
        if path == _MODELS:
            provider = provider_by_auth(headers)
        else:
            provider = anthropic.NAME if path in _ANTHROPIC_ONLY_PATHS else openai.NAME
    endpoint = _BY_ROUTE.get((provider, method, path))
    return None if endpoint is None else (endpoint, upstream_path)
