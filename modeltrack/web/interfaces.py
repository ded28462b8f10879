"""
What the web side asks of the objects Twisted hands it, declared for the type checker.
"""

from __future__ import annotations

from twisted.internet.interfaces import IConsumer, IPushProducer, ITCPTransport


class IConnection(ITCPTransport, IPushProducer, IConsumer):
    """
    A connection's transport as the proxy uses it: a TCP transport (TLS included) that
    is also the push producer of its reads, as Twisted's L{tcp.Connection} and
    L{TLSMemoryBIOProtocol} both are.
    """
