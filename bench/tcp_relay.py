"""
The reactor's own floor for a stream: a Twisted TCP relay that pipes bytes between a
client and the upstream, no HTTP at all (every client connection gets its own
upstream connection; the client's bytes wait until it is open).

    python bench/tcp_relay.py PORT UPSTREAM_PORT
"""

import sys

from twisted.internet import reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Factory, Protocol


class Upstream(Protocol):
    def __init__(self, client):
        self.client = client

    def dataReceived(self, data):
        self.client.transport.write(data)

    def connectionLost(self, reason):
        self.client.transport.loseConnection()


class Client(Protocol):
    upstream = None

    def connectionMade(self):
        self.transport.pauseProducing()
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", UPSTREAM_PORT)
        connectProtocol(endpoint, Upstream(self)).addCallbacks(self.upstream_ready, lambda _: self.transport.abortConnection())

    def upstream_ready(self, upstream):
        self.upstream = upstream
        self.transport.resumeProducing()

    def dataReceived(self, data):
        self.upstream.transport.write(data)

    def connectionLost(self, reason):
        if self.upstream is not None:
            self.upstream.transport.loseConnection()


if __name__ == "__main__":
    port, UPSTREAM_PORT = int(sys.argv[1]), int(sys.argv[2])
    factory = Factory.forProtocol(Client)
    factory.noisy = False
    reactor.listenTCP(port, factory, backlog=4096, interface="127.0.0.1")
    reactor.run()
