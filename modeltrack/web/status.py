"""
C{/healthz} (the process answers), C{/readyz} (listening and the event log writable),
C{/stats} (running totals), and the controls' C{/budgets}, C{/cache/stats} and
C{/routing/stats}.
"""

from __future__ import annotations

import json
from http import HTTPStatus
from datetime import datetime, timezone
from typing import Any

from twisted.web.http import datetimeToString
from twisted.web.server import Request

_PHRASES = {status.value: status.phrase.encode("ascii") for status in HTTPStatus}

#: The status paths, by their bytes (named in the access log).
STATUS_PATHS = {
    path.encode(): path for path in ("/healthz", "/readyz", "/stats", "/budgets", "/cache/stats", "/routing/stats")
}


class Readiness:
    """
    @ivar listening: every configured listener is up.
    """

    def __init__(self) -> None:
        self.listening = False


def json_response(request: Request, code: int, body: Any) -> bytes:
    """
    An answer of the proxy's own (not relayed from a provider), with the status's
    standard reason phrase (Twisted knows none for 429).
    """
    request.setResponseCode(code, _PHRASES.get(code))
    request.setHeader(b"date", datetimeToString())
    request.setHeader(b"content-type", b"application/json")
    request.setHeader(b"cache-control", b"no-store")
    return json.dumps(body).encode("utf-8") + b"\n"


def render_status(path: bytes, request: Request, proxy: Any) -> bytes | None:
    """
    The answer for a status path, or L{None} if C{path} is not one. C{proxy} is the
    L{modeltrack.web.proxy.ProxyResource} (its journal, stats, readiness and controls).
    """
    journal = proxy.journal
    if path == b"/healthz":
        return json_response(request, 200, {"status": "ok"})
    if path == b"/readyz":
        problems = []
        if not proxy.readiness.listening:
            problems.append("not listening")
        if not journal.healthy:
            problems.append("event log not writable")
        if problems:
            return json_response(request, 503, {"status": "unavailable", "problems": problems})
        return json_response(request, 200, {"status": "ready"})
    if path == b"/stats":
        return json_response(request, 200, proxy.stats.snapshot(journal))
    gate = proxy.gate
    if path == b"/budgets":
        today = datetime.fromtimestamp(proxy.clock.seconds(), timezone.utc).strftime("%Y-%m-%d")
        body = {
            "budgets": gate.ledger.report(today),
            "open_reservations_usd": str(gate.ledger.open_reservations()),
        }
        return json_response(request, 200, body)
    if path == b"/cache/stats":
        if gate.cache is None:
            return json_response(request, 200, {"enabled": False})
        return json_response(request, 200, {"enabled": True, **gate.cache.stats()})
    if path == b"/routing/stats":
        return json_response(request, 200, {"enabled": gate.routing is not None, **gate.routing_stats.report()})
    return None
