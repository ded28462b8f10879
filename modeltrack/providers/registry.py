"""
Every provider the proxy can serve, in one place: the built-in dialects (L{DIALECTS}),
each declaring the options an operator gives it (its origin, a region, signing), and
one OpenAI-compatible dialect per C{--upstream NAME=URL} (L{modeltrack.providers.compat}).
twistd's options, the service and the route table all read this list; adding a
provider is its module, its line in L{DIALECTS}, and its tests.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from modeltrack.providers import anthropic, azure, bedrock, compat, google, openai
from modeltrack.providers.dialect import Dialect

#: In the order a request is matched against them where several serve a path (the
#: last is the default for a bare path).
DIALECTS: tuple[Dialect, ...] = (
    azure.DIALECT,
    bedrock.DIALECT,
    google.GEMINI_DIALECT,
    google.VERTEX_DIALECT,
    anthropic.DIALECT,
    openai.DIALECT,
)


def served(
    urls: Mapping[str, str], upstreams: Iterable[tuple[str, str]] = (), dialects: Iterable[Dialect] = DIALECTS
) -> list[tuple[Dialect, str]]:
    """
    The dialects served, each with its origin, in matching order: the operator's
    C{upstreams} (name, origin) first, then every one of C{dialects} that has an
    origin (given in C{urls} by provider name, else its default).
    """
    found = [(compat.dialect(name), url) for name, url in upstreams]
    for dialect in dialects:
        url = urls.get(dialect.name) or (dialect.origin.default if dialect.origin is not None else None)
        if url is not None:
            found.append((dialect, url))
    return found
