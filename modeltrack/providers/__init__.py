"""
The providers' APIs: one module per dialect (where a request names its model and stream
flag, how the answer reports usage, what errors look like), the registry of every
dialect, the route table, the meters and the wire parsers (SSE, AWS event stream).

May import: L{modeltrack.pricing}, L{modeltrack.failures}.
"""
