"""
The stack's own floor: a bare Twisted forwarder, no accounting. Agent + persistent
pool, the buffered request body sent upstream, the response relayed chunk by chunk.

    python bench/bare_forwarder.py PORT UPSTREAM_URL
"""

import sys

from twisted.internet import reactor
from twisted.internet.defer import succeed
from twisted.internet.protocol import Protocol
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.http_headers import Headers
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site

HOP = {b"connection", b"keep-alive", b"transfer-encoding", b"host", b"content-length", b"te", b"upgrade"}


class Body:
    def __init__(self, data):
        self.data, self.length = data, len(data)

    def startProducing(self, consumer):
        consumer.write(self.data)
        return succeed(None)

    def pauseProducing(self): pass
    def resumeProducing(self): pass
    def stopProducing(self): pass


class Relay(Protocol):
    def __init__(self, request):
        self.request = request

    def dataReceived(self, data):
        self.request.write(data)

    def connectionLost(self, reason):
        if not self.request._disconnected:
            self.request.finish()


class Forward(Resource):
    isLeaf = True

    def __init__(self, upstream, agent):
        super().__init__()
        self.upstream, self.agent = upstream, agent

    def render(self, request):
        headers = Headers({k: v for k, v in request.requestHeaders.getAllRawHeaders() if k.lower() not in HOP})
        body = request.content.read()
        d = self.agent.request(request.method, self.upstream + request.uri, headers, Body(body) if body else None)

        def respond(response):
            request.setResponseCode(response.code)
            for k, v in response.headers.getAllRawHeaders():
                if k.lower() not in HOP:
                    request.responseHeaders.setRawHeaders(k, v)
            response.deliverBody(Relay(request))

        def fail(failure):
            request.setResponseCode(502)
            request.finish()

        d.addCallbacks(respond, fail)
        return NOT_DONE_YET


def main(port, upstream):
    pool = HTTPConnectionPool(reactor, persistent=True)
    pool.maxPersistentPerHost = 256
    site = Site(Forward(upstream.encode(), Agent(reactor, pool=pool)))
    site.log = lambda request: None
    reactor.listenTCP(int(port), site, interface="127.0.0.1", backlog=1024)
    reactor.run()


if __name__ == "__main__":
    main(*sys.argv[1:3])
