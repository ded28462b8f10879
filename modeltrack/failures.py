"""
The one place that turns a failure into words for a log line or an error body.

Exception messages are never used: a request target, a header value, a query string or
a body can end up inside one (Twisted's URI checks quote the whole target, a parser
quotes the bytes it choked on), and with them a key. What is said is built from fixed
texts, the exception's class name and where it was raised (file, line, function).
"""

from __future__ import annotations

from typing import Any

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
