"""
What the fast path takes from Twisted beyond its public API, checked at start-up.

The fast path is two pieces, each measured to pay (bench/PROFILE.md):
  - L{modeltrack.web.writethrough}: writes sent at the end of the reactor's batch,
    straight to the socket (no epoll_ctl per write): it reads C{tcp.Connection}'s
    write buffers (C{dataBuffer}, C{_tempDataBuffer}, C{_writeDisconnected}) and
    swaps the class of C{tcp.Server}/C{tcp.Client} transports;
  - L{modeltrack.web.client.UpstreamConnection}, installed as C{HTTPConnectionPool.
    _factory}: upstream responses parsed once, no reference cycle per response
    (Twisted's client fed full collections that stalled every stream); it reuses
    C{twisted.web._newclient}'s exceptions and request checks.

A Twisted release may rename or change any of these; setup.cfg pins Twisted below its
next major version, and L{missing} names whatever this Twisted lacks, so that the
proxy falls back to the public API (C{Agent}, plain transports) with one warning
instead of reordering or losing bytes. C{--no-fast-path} forces that path.
"""

from __future__ import annotations

import inspect
import socket
from typing import Any

_NEWCLIENT_NAMES = ("ParseError", "RequestNotSent", "ResponseNeverReceived", "_ensureValidMethod", "_ensureValidURI")
_CONNECTION_ATTRIBUTES = (
    "dataBuffer", "_tempDataBuffer", "_writeDisconnected", "disconnecting", "connected", "TLS", "socket",
)


def missing(reactor: Any) -> list[str]:
    """
    The private parts of Twisted the fast path needs and this Twisted lacks (empty if
    it has them all).
    """
    gaps: list[str] = []
    try:
        from twisted.web import _newclient
    except ImportError:
        gaps.append("twisted.web._newclient")
    else:
        gaps += [f"twisted.web._newclient.{name}" for name in _NEWCLIENT_NAMES if not hasattr(_newclient, name)]
    from twisted.web.client import HTTPConnectionPool

    pool = HTTPConnectionPool(reactor, persistent=False)
    if not hasattr(pool, "_factory") or "self._factory(" not in _source(HTTPConnectionPool._newConnection):
        gaps.append("HTTPConnectionPool._factory")
    from twisted.internet import tcp
    from twisted.internet.protocol import Protocol

    for name in ("Server", "Client", "Connection"):
        if not isinstance(getattr(tcp, name, None), type):
            gaps.append(f"twisted.internet.tcp.{name}")
    if isinstance(getattr(tcp, "Connection", None), type):
        with socket.socket() as unconnected:
            connection = tcp.Connection(unconnected, Protocol(), reactor)
            gaps += [f"tcp.Connection.{name}" for name in _CONNECTION_ATTRIBUTES if not hasattr(connection, name)]
    return gaps


def _source(function: Any) -> str:
    try:
        return inspect.getsource(function)
    except (OSError, TypeError):
        return ""
