"""
C{/healthz} (the process answers), C{/readyz} (listening and the event log writable)
and C{/stats} (running totals).
"""

from __future__ import annotations

import json
from typing import Any

from twisted.web.http import datetimeToString
from twisted.web.server import Request

from modeltrack.stats import Stats


class Readiness:
    """
    @ivar listening: every configured listener is up.
    """

    def __init__(self) -> None:
        self.listening = False


def json_response(request: Request, code: int, body: Any) -> bytes:
    """
    An answer of the proxy's own (not relayed from a provider).
    """
    request.setResponseCode(code)
    request.setHeader(b"date", datetimeToString())
    request.setHeader(b"content-type", b"application/json")
    request.setHeader(b"cache-control", b"no-store")
    return json.dumps(body).encode("utf-8") + b"\n"


def render_status(
    path: bytes, request: Request, stats: Stats, journal: Any, readiness: Readiness
) -> bytes | None:
    """
    The answer for a status path, or L{None} if C{path} is not one.
    """
    if path == b"/healthz":
        return json_response(request, 200, {"status": "ok"})
    if path == b"/readyz":
        problems = []
        if not readiness.listening:
            problems.append("not listening")
        if not journal.healthy:
            problems.append("event log not writable")
        if problems:
            return json_response(request, 503, {"status": "unavailable", "problems": problems})
        return json_response(request, 200, {"status": "ready"})
    if path == b"/stats":
        return json_response(request, 200, stats.snapshot(journal))
    return None
