"""
The one place that turns a failure into words for a log line or an error body, and
the texts the proxy answers a refused call with.

Exception messages are never used: a request target, a header value, a query string or
a body can end up inside one (Twisted's URI checks quote the whole target, a parser
quotes the bytes it choked on), and with them a key. What is said is built from fixed
texts, the exception's class name and where it was raised (file, line, function).
"""

from __future__ import annotations

from typing import Any, NamedTuple

from twisted.internet import error as neterror
from twisted.internet.defer import CancelledError
from twisted.logger import Logger
from twisted.python.failure import Failure

#: Why an upstream request failed, by exception class name: a fixed text each.
_UPSTREAM_REASONS = {
    "ConnectionRefusedError": "connection refused",
    "DNSLookupError": "its host name could not be resolved",
    "NoRouteError": "no route to its host",
    "TCPTimedOutError": "the connection timed out",
    "TimeoutError": "the connection timed out",
    "ConnectError": "the connection failed",
    "ConnectingCancelledError": "connecting was cancelled",
    "CancelledError": "cancelled",
    "ConnectionLost": "the connection was lost",
    "ConnectionDone": "the connection was closed",
    "ResponseNeverReceived": "the connection closed before a response",
    "RequestNotSent": "the request could not be sent",
    "BadResponse": "the response was not valid HTTP/1.1",
    "ParseError": "the response was not valid HTTP/1.1",
    "ResponseFailed": "the response failed",
}


#: What the proxy answers a call it refuses with: fixed texts, no byte of the request.
INVALID_TARGET = "the request target holds bytes other than visible ASCII"
NOT_AN_OPEN_PROXY = "this is not an open proxy"
UNKNOWN_KEY = "this API key is not listed in modeltrack's keys file, which admits listed keys only"
NO_TEAM = "modeltrack needs a team for every call: send X-ModelTrack-Team, or use a key whose entry names one"
AMBIGUOUS_CREDENTIALS = (
    "this request carries more than one credential; send exactly one (the key modeltrack records must be the key the "
    "provider bills)"
)
NOT_A_JSON_OBJECT = "the request body must be a JSON object"
NOT_A_FORM = "the request body must be multipart/form-data"
LOG_NOT_WRITABLE = "the event log is not writable; no call is made that cannot be recorded"


#: An upgrade to a WebSocket on a route that is not one.
NOT_A_SOCKET = "this route is not a WebSocket: its upgrade is refused"


def unmetered_billable(route: str, basis: str, policy: str) -> str:
    return (
        f"{route} is billed ({basis}) but modeltrack cannot meter it from its answer, and refuses it "
        f"{'to every caller' if policy == 'deny' else 'to callers under a block budget'} (--unmetered-billable {policy})"
    )


def too_large(max_body: int) -> str:
    return f"request body is larger than {max_body} bytes"


def no_route(method: bytes) -> str:
    return f"modeltrack has no route for this path and method ({safe_method(method)})"


def no_response_headers(seconds: float) -> str:
    return f"the upstream sent no response headers within {seconds:g} seconds"


class UpstreamFailure(NamedTuple):
    """
    How a call whose request could not be made is answered and recorded.

    @ivar outcome: the cost event's C{outcome}.
    @ivar logged: the log line's start, or L{None} when it is not logged.
    """

    status: int
    error_type: str
    message: str
    outcome: str
    logged: str | None


def upstream_failure(failure: Failure, origin: str, connect_seconds: float) -> UpstreamFailure:
    """
    A request to C{origin} failed before any response: in words for the client.
    """
    if failure.check(neterror.TimeoutError):
        message = f"could not connect to {origin} within {connect_seconds:g} seconds"
        return UpstreamFailure(504, "timeout_error", message, "upstream_timeout", None)
    if _tls_failure(failure):
        message = f"the TLS certificate of {origin} could not be verified"
        return UpstreamFailure(502, "api_error", message, "upstream_tls_error", "Upstream TLS error")
    message = f"could not reach {origin}: {upstream_reason(failure)}"
    return UpstreamFailure(502, "api_error", message, "upstream_unreachable", "Upstream unreachable")


def _tls_failure(failure: Failure) -> bool:
    """
    Did the connection fail because the upstream's certificate was refused (untrusted,
    expired, or for another hostname)?
    """
    from OpenSSL.SSL import Error as SSLError
    from service_identity import VerificationError

    for reason in getattr(failure.value, "reasons", None) or [failure]:
        if reason.check(SSLError, VerificationError):
            return True
    return False


def _innermost(failure: Failure) -> Failure:
    """
    The first reason behind a wrapper (Twisted's client wraps failures in C{reasons}).
    """
    for _ in range(5):
        reasons = getattr(failure.value, "reasons", None)
        if not reasons or not isinstance(reasons[0], Failure):
            break
        failure = reasons[0]
    return failure


def upstream_reason(failure: Failure) -> str:
    """
    Why a request to an upstream failed, in a fixed text.
    """
    failure = _innermost(failure)
    if failure.check(CancelledError):
        return "cancelled"
    if failure.check(neterror.ConnectionRefusedError):
        return _UPSTREAM_REASONS["ConnectionRefusedError"]
    if failure.check(neterror.DNSLookupError):
        return _UPSTREAM_REASONS["DNSLookupError"]
    name = type(failure.value).__name__
    return _UPSTREAM_REASONS.get(name, f"the request failed ({name})")


def where(failure: Failure, depth: int = 6) -> str:
    """
    The innermost frames of a failure's traceback, as C{function (file:line)}: enough to
    find a bug, and nothing of the values involved.
    """
    frames = failure.frames[-depth:]
    if not frames:
        return "no traceback"
    parts = []
    for function, filename, line, *_ in reversed(frames):
        short = "/".join(str(filename).replace("\\", "/").split("/")[-2:])
        parts.append(f"{function} ({short}:{line})")
    return " < ".join(parts)


def log_failure(log: Logger, what: str, failure: Failure | None = None, **safe: Any) -> None:
    """
    Log an unexpected failure: C{what} (a fixed text, which may use C{safe} fields), the
    exception's class and where it was raised. Never its message.
    """
    if failure is None:
        failure = Failure()
    log.error(
        what + ": {error_class} at {where}",
        error_class=type(failure.value).__name__,
        where=where(failure),
        **safe,
    )


_METHODS = frozenset((b"GET", b"HEAD", b"POST", b"PUT", b"PATCH", b"DELETE", b"OPTIONS", b"TRACE"))


def safe_method(method: bytes) -> str:
    """
    A request's method for a log line or a message: a standard one by name, anything
    else unnamed (the method is the client's bytes).
    """
    return method.decode("ascii") if method in _METHODS else "other"
