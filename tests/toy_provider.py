"""
A toy provider, added the way every provider is: this module (its dialect: routes, how
its answers report usage, its error shape, and the options it declares) and its line
in the registry's list (made in tests/test_toy_provider.py, which cannot edit
modeltrack/providers/registry.py). It speaks OpenAI's chat wire, so that the official
OpenAI SDK can call it, and reads its usage with a reader of its own.
"""

from __future__ import annotations

from typing import Any

from modeltrack.pricing.usage import Reading, Usage, count, text
from modeltrack.providers.dialect import Dialect, Endpoint, Origin

NAME = "toy"


def read_body(body: dict[str, Any]) -> Reading:
    """
    The toy counts its whole input and output, nothing cached or reasoned.
    """
    usage = body.get("usage")
    if not isinstance(usage, dict):
        return Reading(model=text(body.get("model")))
    counted = Usage(input_tokens=count(usage.get("prompt_tokens")), output_tokens=count(usage.get("completion_tokens")))
    return Reading(counted, model=text(body.get("model")), final=True)


def error_body(error_type: str, message: str) -> dict[str, Any]:
    return {"toy_error": {"kind": error_type, "text": message}}


DIALECT = Dialect(
    name=NAME,
    prefix="/toy",
    endpoints=(Endpoint(NAME, "/v1/chat/completions", error_body, read_body=read_body),),
    error_body=error_body,
    credential_headers=(b"authorization",),
    by_prefix_only=True,
    origin=Origin("toy-url", None, "The toy provider's origin, served under /toy"),
)
