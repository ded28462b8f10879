"""
Which client paths the proxy serves, which provider each goes to, and how each is
metered: a L{RouteTable} built from the providers' dialects
(L{modeltrack.providers.registry}). Nothing outside it is ever forwarded.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from twisted.web.http_headers import Headers

from modeltrack.providers.dialect import Dialect, Endpoint, relayable, relayed_endpoint
from modeltrack.providers.registry import DIALECTS

__all__ = ["ROUTES", "Endpoint", "RouteTable"]

_MODELS = "/v1/models"

#: A model id in a path: no slash, so no way to reach any other upstream path.
_MODEL_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@-]{0,255}")


class RouteTable:
    """
    The routes of some dialects. A provider prefix (C{/anthropic}, C{/openai}) names
    the provider; without one the path decides, and where several providers serve it
    (the model list) the auth header style does. The last dialect is the default.
    """

    def __init__(self, dialects: Iterable[Dialect]) -> None:
        self._dialects = tuple(dialects)
        self._by_name = {d.name: d for d in self._dialects}
        self._by_route = {(e.provider, e.method, e.path): e for d in self._dialects for e in d.endpoints}
        self._prefixes = {d.prefix: d for d in self._dialects}
        self._serving: dict[tuple[bytes, str], list[Dialect]] = {}
        self._unprefixed = tuple(d for d in self._dialects if not d.by_prefix_only)
        for dialect in self._unprefixed:
            for endpoint in dialect.endpoints:
                self._serving.setdefault((endpoint.method, endpoint.path), []).append(dialect)

    def _by_headers(self, dialects: Iterable[Dialect], headers: Headers) -> Dialect:
        candidates = tuple(dialects)
        for dialect in candidates:
            if dialect.claims is not None and dialect.claims(headers):
                return dialect
        default = self._unprefixed[-1]
        return default if default in candidates else candidates[-1]

    def provider_by_auth(self, headers: Headers) -> str:
        """
        The provider a caller speaks to, by its auth header style.
        """
        return self._by_headers(self._unprefixed, headers).name

    def credentials(self, provider: str) -> tuple[tuple[bytes, ...], bytes | None]:
        """
        Where a caller's key to C{provider} is: the request headers, in the order its
        dialect reads them, and a query parameter if it reads one.
        """
        dialect = self._by_name[provider]
        return dialect.credential_headers, dialect.credential_query

    def error_body(self, provider: str, error_type: str, message: str) -> dict[str, Any]:
        """
        An error in the provider's own shape.
        """
        return self._by_name.get(provider, self._dialects[-1]).error_body(error_type, message)

    def match(self, method: bytes, path: str, headers: Headers) -> tuple[Endpoint, str] | None:
        """
        The endpoint serving C{method path}, with the path to send upstream, or L{None}.
        A path that would be relayed but differs from a metered route only by a
        trailing slash, letter case, an empty or a repeated segment is L{None}: relayed,
        it would be a metered call the proxy does not meter, if the provider serves it.
        """
        found = self._match(method, path, headers)
        if found is None or found[0].metered:
            return found
        for near in {_normalised(path), _normalised(path.lower())} - {path}:
            metered = self._match(method, near, headers)
            if metered is not None and metered[0].metered:
                return None
        return found

    def _match(self, method: bytes, path: str, headers: Headers) -> tuple[Endpoint, str] | None:
        dialect = None
        for prefix, named in self._prefixes.items():
            if path.startswith(prefix + "/"):
                dialect = named
                path = path[len(prefix) :]
                break
        if dialect is not None and dialect.route is not None:
            return dialect.route(method, path)
        upstream_path = path
        if path.startswith(_MODELS + "/") and method == b"GET":
            if not _MODEL_ID.fullmatch(path[len(_MODELS) + 1 :]):
                return None
            path = _MODELS  # one model: GET /v1/models/{id}
        if dialect is None:
            serving = self._serving.get((method, path))
            if not serving:
                return self._relayed(method, path, upstream_path, None, headers)
            dialect = serving[0] if len(serving) == 1 else self._by_headers(serving, headers)
        endpoint = self._by_route.get((dialect.name, method, path))
        if endpoint is None:
            return self._relayed(method, path, upstream_path, dialect, headers)
        return endpoint, upstream_path

    def _relayed(
        self, method: bytes, path: str, upstream_path: str, named: Dialect | None, headers: Headers
    ) -> tuple[Endpoint, str] | None:
        """
        The rest of a provider's API: any other path under its relayed prefixes,
        relayed untouched and unmetered, under a route named for its first two
        segments (C{/v1/files}).
        """
        if not relayable(method, path):
            return None
        candidates = [d for d in ((named,) if named else self._unprefixed) if any(path.startswith(p) for p in d.relayed)]
        if not candidates:
            return None
        dialect = candidates[0] if named else self._by_headers(candidates, headers)
        return relayed_endpoint(dialect, method, path, 2), upstream_path


def _normalised(path: str) -> str:
    """
    C{path} as a lenient server might read it: no empty segment, no segment twice in a
    row, no trailing slash.
    """
    segments: list[str] = []
    for segment in path.split("/"):
        if segment and (not segments or segments[-1] != segment):
            segments.append(segment)
    return "/" + "/".join(segments)


#: Every built-in dialect's routes (the service builds its own, of the providers it serves).
ROUTES = RouteTable(DIALECTS)
