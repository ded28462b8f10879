"""
The admin listener (C{--admin-listen}), never the proxy's port: C{/healthz}, the JSON API,
C{/metrics} and the dashboard.

With a token configured (C{--admin-token-file}) everything but C{/healthz} needs it,
either as C{Authorization: Bearer TOKEN} (scripts, Prometheus) or, for a browser, as the
cookie the dashboard's sign-in form sets: an HMAC of the token, so the token itself is
never stored by the browser. Both are compared in constant time. Without a token the
listener must be loopback-only (checked at start-up, L{modeltrack.ops.options}).
"""

from __future__ import annotations

import hashlib
import hmac
import json
from importlib import resources
from io import BytesIO
from typing import Any
from urllib.parse import parse_qs

from twisted.internet.interfaces import ITransport
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import http, server
from twisted.web.resource import Resource

from modeltrack.admin.api import AdminAPI, BadQuery
from modeltrack.failures import log_failure

log = Logger()

#: Largest request body the admin listener reads (the sign-in form).
MAX_BODY = 16 << 10
COOKIE = b"modeltrack_admin"

_TYPES = {".html": b"text/html; charset=utf-8", ".js": b"text/javascript; charset=utf-8", ".css": b"text/css; charset=utf-8"}
_SECURITY_HEADERS = (
    (b"content-security-policy", b"default-src 'self'; img-src 'self' data:; frame-ancestors 'none'"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"cache-control", b"no-store"),
)


def load_assets() -> dict[bytes, tuple[bytes, bytes]]:
    """
    The dashboard's files, from the package (no CDN: it works without internet).
    """
    assets = {}
    for entry in resources.files("modeltrack.admin").joinpath("dashboard").iterdir():
        suffix = entry.name[entry.name.rfind("."):]
        if suffix in _TYPES:
            assets[b"/" + entry.name.encode()] = (entry.read_bytes(), _TYPES[suffix])
    assets[b"/"] = assets[b"/index.html"]
    return assets


class AdminRequest(server.Request):
    """
    Holds its body in memory up to L{MAX_BODY}; more closes the connection.
    """

    content: BytesIO  # type: ignore[assignment]  # Twisted's is None until gotLength
    transport: ITransport  # set for as long as the request is served

    def gotLength(self, length: int | None) -> None:
        self.content = BytesIO()
        if length is not None and length > MAX_BODY:
            self.transport.loseConnection()

    def handleContentChunk(self, data: bytes) -> None:
        if self.content.tell() + len(data) > MAX_BODY:
            self.transport.loseConnection()
            return
        self.content.write(data)


class AdminResource(Resource):
    isLeaf = True

    def __init__(self, api: AdminAPI, metrics: Any, token: bytes | None) -> None:
        super().__init__()
        self._api = api
        self._metrics = metrics
        self._assets = load_assets()
        self.set_token(token)

    def set_token(self, token: bytes | None) -> None:
        """
        Take a new token (SIGHUP re-reads the token file); signed-in browsers sign in again.
        """
        self._token = token
        self._cookie = None if token is None else hmac.new(token, b"modeltrack dashboard", hashlib.sha256).hexdigest().encode()

    def render(self, request: AdminRequest) -> bytes | int:
        for name, value in _SECURITY_HEADERS:
            request.setHeader(name, value)
        path = request.path
        if path == b"/healthz":
            return _json(request, 200, {"status": "ok"})
        if path == b"/login" and request.method == b"POST":
            return self._login(request)
        if not self._authorised(request):
            if path.startswith(b"/api/") or path == b"/metrics":
                request.setHeader(b"www-authenticate", b'Bearer realm="modeltrack"')
                return _json(request, 401, {"error": "unauthorised", "message": "an admin token is required"})
            request.setResponseCode(401)
            request.setHeader(b"content-type", _TYPES[".html"])
            return self._assets[b"/login.html"][0]
        if request.method not in (b"GET", b"HEAD"):
            return _json(request, 405, {"error": "method_not_allowed", "message": "the admin API is read-only"})
        if path == b"/metrics":
            request.setHeader(b"content-type", b"text/plain; version=0.0.4; charset=utf-8")
            return self._metrics.render()
        if path.startswith(b"/api/"):
            return self._answer(request, path[5:].decode("ascii", "replace"))
        asset = self._assets.get(path)
        if asset is None:
            return _json(request, 404, {"error": "not_found", "message": "no such page"})
        request.setHeader(b"content-type", asset[1])
        return asset[0]

    def _authorised(self, request: server.Request) -> bool:
        if self._token is None:
            return True
        header = request.getHeader(b"authorization") or b""
        scheme, _, credential = header.partition(b" ")
        if scheme.lower() == b"bearer" and hmac.compare_digest(credential.strip(), self._token):
            return True
        cookie = request.getCookie(COOKIE)
        return cookie is not None and self._cookie is not None and hmac.compare_digest(cookie, self._cookie)

    def _login(self, request: AdminRequest) -> bytes:
        form = parse_qs(request.content.getvalue().decode("utf-8", "replace"))
        given = (form.get("token") or [""])[-1].strip().encode()
        if self._token is None or not hmac.compare_digest(given, self._token):
            request.setResponseCode(401)
            request.setHeader(b"content-type", _TYPES[".html"])
            return self._assets[b"/login.html"][0].replace(b"<!--problem-->", b"<p class=problem>That token is not right.</p>")
        assert self._cookie is not None
        secure = b"; Secure" if request.isSecure() else b""
        request.setHeader(b"set-cookie", COOKIE + b"=" + self._cookie + b"; Path=/; HttpOnly; SameSite=Strict" + secure)
        request.setResponseCode(303)
        request.setHeader(b"location", b"/")
        return b""

    def _answer(self, request: server.Request, name: str) -> bytes | int:
        try:
            d = self._api.answer(name, request.args or {})
        except BadQuery as e:
            return _json(request, 400, {"error": "bad_query", "message": str(e)})
        if d is None:
            return _json(request, 404, {"error": "not_found", "message": f"no API endpoint {name!r}"})
        gone: list[Failure] = []
        request.notifyFinish().addErrback(gone.append)

        def answered(body: Any, code: int = 200) -> None:
            if not gone:  # the client may have left while the query ran
                request.write(_json(request, code, body))
                request.finish()

        def failed(failure: Failure) -> None:
            log_failure(log, "Admin API query failed", failure)
            answered({"error": "internal", "message": "the query failed; see the log"}, 500)

        d.addCallbacks(answered, failed)
        return server.NOT_DONE_YET


def _json(request: server.Request, code: int, body: Any) -> bytes:
    request.setResponseCode(code)
    request.setHeader(b"content-type", b"application/json")
    return json.dumps(body).encode("utf-8") + b"\n"


class AdminSite(server.Site):
    requestFactory = AdminRequest
    displayTracebacks = False
    noisy = False

    def log(self, request: http.Request) -> None:
        """
        No access log: dashboard polling would drown the proxy's own lines.
        """


def admin_site(api: AdminAPI, metrics: Any, token: bytes | None) -> AdminSite:
    return AdminSite(AdminResource(api, metrics, token))
