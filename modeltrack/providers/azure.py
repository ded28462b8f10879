"""
Azure OpenAI (C{--azure-url}, the resource's origin, e.g. C{https://myres.openai.azure.com}):
OpenAI's wire format under C{/azure/}, on the classic deployment paths
(C{/openai/deployments/{deployment}/chat/completions?api-version=...}) and the v1 API
(C{/openai/v1/...}). A call is priced by the model the response names (the
deployment's snapshot, e.g. C{gpt-4o-2024-11-20}) with genai-prices' Azure data; the
deployment is kept in the event.
"""

from __future__ import annotations

import re
from dataclasses import replace

from modeltrack.providers import openai
from modeltrack.providers.dialect import Dialect, Endpoint

NAME = "azure"

_OPENAI = {endpoint.path[len("/v1") :]: endpoint for endpoint in openai.DIALECT.endpoints}
_CLASSIC = ("/chat/completions", "/completions", "/embeddings", "/responses")
_V1 = ("/chat/completions", "/responses", "/embeddings", "/models")
#: A deployment name as Azure allows it: letters, digits, dashes, underscores, dots.
_DEPLOYMENT = re.compile(r"/openai/deployments/(?!\.{1,2}/)([A-Za-z0-9._-]{1,64})(/.+)")
_V1_PREFIX = "/openai/v1"


def _endpoint(path: str, operation: str, **fields: bool) -> Endpoint:
    return replace(_OPENAI[operation], provider=NAME, path=path, **fields)


#: Routes named as templates (the event's C{endpoint}); the deployment is kept apart.
_CLASSIC_ENDPOINTS = {
    (_OPENAI[op].method, op): _endpoint("/openai/deployments/{deployment}" + op, op) for op in _CLASSIC
}
_V1_ENDPOINTS = {
    (_OPENAI[op].method, op): _endpoint(_V1_PREFIX + op, op, model_names_deployment=_OPENAI[op].metered) for op in _V1
}


def route(method: bytes, path: str) -> tuple[Endpoint, str] | None:
    """
    The endpoint for an Azure client path (below C{/azure}), and the path to send on.
    """
    if path.startswith(_V1_PREFIX + "/"):
        endpoint = _V1_ENDPOINTS.get((method, path[len(_V1_PREFIX) :]))
        return None if endpoint is None else (endpoint, path)
    found = _DEPLOYMENT.fullmatch(path)
    if found is None:
        return None
    endpoint = _CLASSIC_ENDPOINTS.get((method, found.group(2)))
    if endpoint is None:
        return None
    return replace(endpoint, deployment=found.group(1)), path


DIALECT = Dialect(
    name=NAME,
    prefix="/azure",
    endpoints=(*_CLASSIC_ENDPOINTS.values(), *_V1_ENDPOINTS.values()),
    error_body=openai.error_body,
    credential_headers=(b"api-key", b"authorization"),
    by_prefix_only=True,
    route=route,
)
