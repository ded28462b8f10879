"""
What the fast path takes from Twisted beyond its public API, checked at start-up.

The fast path is two pieces, each measured to pay (bench/PROFILE.md):
  - L{modeltrack.web.writethrough}: writes sent at the end of the reactor's batch,
    straight to the socket (no epoll_ctl per write). It reads C{tcp.Connection}'s
    write buffers (C{dataBuffer}, C{_tempDataBuffer}, C{_writeDisconnected}); the
    proxy's listeners are C{tcp.Port}s of its own (their C{transport} class), adopted
    sockets wrapped by C{Port._fromListeningDescriptor}; an upstream connection's
    class is swapped once it has connected (C{tcp.Client}: Twisted has no public way
    to choose it);
  - L{modeltrack.web.client.UpstreamConnection}, over its own idle connections
    (L{modeltrack.web.upstream.IdleConnections}) and public endpoints: upstream
    responses parsed once, no reference cycle per response (Twisted's client fed full
    collections that stalled every stream). It needs nothing private.

A Twisted release may rename or change any of these; setup.cfg pins Twisted below its
next major version, and L{missing} names whatever this Twisted lacks, so that the
proxy falls back to the public API (C{Agent}, plain transports) with one warning
instead of reordering or losing bytes. C{--no-fast-path} forces that path.
"""

from __future__ import annotations

import socket
from typing import Any

_CONNECTION_ATTRIBUTES = (
    "dataBuffer", "_tempDataBuffer", "_writeDisconnected", "disconnecting", "connected", "TLS", "socket",
)


def missing(reactor: Any) -> list[str]:
    """
    The private parts of Twisted the fast path needs and this Twisted lacks (empty if
    it has them all).
    """
    from twisted.internet import tcp
    from twisted.internet.protocol import Protocol

    gaps: list[str] = []
    for name in ("Server", "Client", "Connection", "Port"):
        if not isinstance(getattr(tcp, name, None), type):
            gaps.append(f"twisted.internet.tcp.{name}")
    if isinstance(getattr(tcp, "Connection", None), type):
        with socket.socket() as unconnected:
            connection = tcp.Connection(unconnected, Protocol(), reactor)
            gaps += [f"tcp.Connection.{name}" for name in _CONNECTION_ATTRIBUTES if not hasattr(connection, name)]
    port = getattr(tcp, "Port", None)
    if isinstance(port, type):
        if getattr(port, "transport", None) is not getattr(tcp, "Server", object()):
            gaps.append("tcp.Port.transport")
        if not callable(getattr(port, "_fromListeningDescriptor", None)):
            gaps.append("tcp.Port._fromListeningDescriptor")
    return gaps
