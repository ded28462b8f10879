"""
The connection to Redis (C{--redis-url}) that the shared ledger and the shared response
cache use: txredisapi, the Twisted-native client.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import unquote, urlsplit

#: How long a command may take before Redis counts as out of reach.
COMMAND_SECONDS = 2.0


def connect(url: str, password: str | None = None, trust_root: Any = None) -> Any:
    """
    A lazy, self-reconnecting txredisapi connection for C{redis://} or C{rediss://}
    (TLS, the server's certificate and name verified against C{trust_root}, the
    system's CAs if L{None}) URLs: C{redis://[:PASSWORD@]HOST:PORT/DB}.
    """
    import txredisapi
    from twisted.internet import ssl

    parts = urlsplit(url)
    tls: Any = False
    if parts.scheme == "rediss":
        tls = ssl.optionsForClientTLS(parts.hostname or "", trustRoot=trust_root)
    db = int(parts.path.strip("/") or 0)
    return txredisapi.lazyConnection(
        host=parts.hostname or "localhost",
        port=parts.port or 6379,
        dbid=db,
        password=password or (unquote(parts.password) if parts.password else None),
        ssl_context_factory=tls,
        connectTimeout=COMMAND_SECONDS,
        replyTimeout=COMMAND_SECONDS,
        convertNumbers=False,
        charset=None,  # replies as bytes: cached answers are binary
    )
