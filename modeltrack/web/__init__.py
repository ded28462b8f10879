"""
The proxy's HTTP side: the listening site, a call's phases (L{modeltrack.web.proxy}),
the relay (the only per-chunk code), the upstream client and its idle connections,
write-through sockets, TLS, and the status paths.

May import: L{modeltrack.observe} and everything below it; never L{modeltrack.admin}.
"""
