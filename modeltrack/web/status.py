"""
C{/healthz} (the process answers), C{/readyz} (listening and the event log writable),
C{/stats} (running totals), and the controls' C{/budgets}, C{/cache/stats} and
C{/routing/stats}.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from http import HTTPStatus
from typing import Any

from twisted.web.http import datetimeToString
from twisted.web.server import NOT_DONE_YET, Request

from modeltrack.observe.peers import add_counts

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


def _answer_later(request: Request, standings: Any) -> int:
    """
    Answer with what C{standings} fires with (a shared ledger asks Redis first).
    """
    gone: list[object] = []
    request.notifyFinish().addErrback(gone.append)

    def answer(body: Any) -> None:
        if not gone:
            request.write(json_response(request, 200, body))
            request.finish()

    standings.addCallback(answer)
    return NOT_DONE_YET


class StatusPaths:
    """
    The answers for the status paths, from what they report on: the event log, the
    running totals, readiness, the controls and the clock.
    """

    def __init__(self, journal: Any, stats: Any, readiness: Readiness, gate: Any, clock: Any) -> None:
        self._journal = journal
        self._stats = stats
        self._readiness = readiness
        self._gate = gate
        self._clock = clock
        #: The other workers' totals (L{modeltrack.observe.peers.Peers}), with --workers.
        self.peers: Any = None

    def render(self, path: bytes, request: Request) -> bytes | int | None:
        """
        The answer for a status path, or L{None} if C{path} is not one.
        """
        if path not in STATUS_PATHS:
            return None
        journal, gate = self._journal, self._gate
        if path == b"/healthz":
            return json_response(request, 200, {"status": "ok"})
        if path == b"/readyz":
            problems = []
            if not self._readiness.listening:
                problems.append("not listening")
            if not journal.healthy:
                problems.append("event log not writable")
            if problems:
                return json_response(request, 503, {"status": "unavailable", "problems": problems})
            return json_response(request, 200, {"status": "ready"})
        if path == b"/stats":
            totals = self._stats.snapshot(journal)
            if self.peers is not None:
                for peer in self.peers.totals:
                    totals = add_counts(totals, peer.get("stats") or {})
                totals["workers"] = 1 + len(self.peers.totals)
            return json_response(request, 200, totals)
        if path == b"/budgets":
            today = datetime.fromtimestamp(self._clock.seconds(), UTC).strftime("%Y-%m-%d")
            return _answer_later(request, gate.ledger.standings(today))
        if path == b"/cache/stats":
            if gate.cache is None:
                return json_response(request, 200, {"enabled": False})
            return json_response(request, 200, {"enabled": True, **gate.cache.stats()})
        return json_response(request, 200, {"enabled": gate.routing is not None, **gate.routing_stats.report()})
