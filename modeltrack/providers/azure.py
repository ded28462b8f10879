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
from modeltrack.providers.dialect import Dialect, Endpoint, Origin, relayable, relayed_endpoint

NAME = "azure"

_OPENAI = {endpoint.path[len("/v1") :]: endpoint for endpoint in openai.DIALECT.endpoints if endpoint.socket is None}
_AUDIO = ("/audio/transcriptions", "/audio/translations", "/audio/speech")
_CLASSIC = ("/chat/completions", "/completions", "/embeddings", "/responses", "/images/generations", "/images/edits", *_AUDIO)
_V1 = ("/chat/completions", "/responses", "/embeddings", "/images/generations", "/images/edits", *_AUDIO, "/models", "/realtime")
#: A deployment name as Azure allows it: letters, digits, dashes, underscores, dots.
_DEPLOYMENT = re.compile(r"/openai/deployments/(?!\.{1,2}/)([A-Za-z0-9._-]{1,64})(/.+)")
_V1_PREFIX = "/openai/v1"


def _endpoint(path: str, operation: str, model_names_deployment: bool = False) -> Endpoint:
    return replace(_OPENAI[operation], provider=NAME, path=path, model_names_deployment=model_names_deployment)


#: Routes named as templates (the event's C{endpoint}); the deployment is kept apart.
_CLASSIC_ENDPOINTS = {
    (_OPENAI[op].method, op): _endpoint("/openai/deployments/{deployment}" + op, op) for op in _CLASSIC
}
_V1_ENDPOINTS = {
    (endpoint.method, op): replace(endpoint, provider=NAME, path=_V1_PREFIX + op, model_names_deployment=endpoint.metered)
    for endpoint in openai.DIALECT.endpoints
    if (op := endpoint.path[len("/v1"):]) in _V1
}
#: The preview Realtime path: the deployment in its query (C{?deployment=}).
_CLASSIC_REALTIME = replace(_V1_ENDPOINTS[b"GET", "/realtime"], path="/openai/realtime", model_names_deployment=False)


def route(method: bytes, path: str) -> tuple[Endpoint, str] | None:
    """
    The endpoint for an Azure client path (below C{/azure}), and the path to send on:
    a metered route, or any other plain path of the API under C{/openai/}, relayed.
    """
    if method == b"GET" and path == _CLASSIC_REALTIME.path:
        return _CLASSIC_REALTIME, path
    if path.startswith(_V1_PREFIX + "/"):
        endpoint = _V1_ENDPOINTS.get((method, path[len(_V1_PREFIX) :]))
        if endpoint is not None:
            return endpoint, path
    else:
        found = _DEPLOYMENT.fullmatch(path)
        if found is not None:
            endpoint = _CLASSIC_ENDPOINTS.get((method, found.group(2)))
            if endpoint is not None:
                return replace(endpoint, deployment=found.group(1)), path
    if path.startswith("/openai/") and relayable(method, path):
        relayed = relayed_endpoint(DIALECT, method, path, 3)  # /openai/v1/files
        parts = path.split("/")
        if parts[2] == "deployments" and len(parts) > 4 and relayed.billing is None:
            # The deployment is the caller's word: out of the route's name.
            relayed = replace(relayed, path="/openai/deployments/{deployment}/" + parts[4])
        return relayed, path
    return None


DIALECT = Dialect(
    name=NAME,
    prefix="/azure",
    endpoints=(*_CLASSIC_ENDPOINTS.values(), *_V1_ENDPOINTS.values(), _CLASSIC_REALTIME),
    error_body=openai.error_body,
    credential_headers=(b"api-key", b"authorization"),
    by_prefix_only=True,
    route=route,
    origin=Origin("azure-url", None, "Azure OpenAI resource origin, e.g. https://myres.openai.azure.com, served under /azure"),
    billable=openai.billable("/openai(?:/v1|/deployments/[A-Za-z0-9._-]+)?", "/openai"),
)
