"""
Any OpenAI-compatible upstream an operator names (C{--upstream NAME=URL}: vLLM, Groq,
Mistral, DeepSeek, OpenRouter, Together, xAI, ...): OpenAI's wire format under
C{/NAME/v1/...}, its calls recorded as provider NAME and priced by genai-prices'
provider of that id when it has one, else by C{pricing.json}.
"""

from __future__ import annotations

import re
from dataclasses import replace

from modeltrack.providers import openai
from modeltrack.providers.dialect import Dialect

#: What an upstream's name may be: lower-case letters, digits and dashes.
UPSTREAM_NAME = re.compile(r"[a-z0-9][a-z0-9-]{0,39}")
#: Names an upstream cannot take: the built-in providers' prefixes (and those planned).
RESERVED = frozenset(("openai", "anthropic", "azure", "bedrock", "gemini", "google", "vertex", "v1"))
_SERVED = ("/v1/chat/completions", "/v1/completions", "/v1/responses", "/v1/embeddings", "/v1/images/generations",
           "/v1/images/edits", "/v1/audio/transcriptions", "/v1/audio/translations", "/v1/audio/speech", "/v1/models")


def dialect(name: str) -> Dialect:
    """
    The dialect of an OpenAI-compatible upstream called C{name}.
    """
    endpoints = tuple(
        replace(endpoint, provider=name)
        for endpoint in openai.DIALECT.endpoints
        if endpoint.path in _SERVED and endpoint.socket is None  # no WebSocket APIs
    )
    return Dialect(
        name=name,
        prefix="/" + name,
        endpoints=endpoints,
        error_body=openai.error_body,
        credential_headers=openai.DIALECT.credential_headers,
        by_prefix_only=True,
    )
