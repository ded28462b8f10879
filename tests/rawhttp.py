"""
Raw HTTP/1.1 over a socket, for requests no SDK would send (hostile framing, bad
targets): the bytes go out as given, and the answer is read until the server closes.
"""

from __future__ import annotations

import socket


def exchange(port: int, data: bytes, timeout: float = 10.0, shutdown: bool = False) -> bytes:
    """
    Send C{data} to 127.0.0.1:C{port} and return everything received until the server
    closes the connection (or C{timeout} passes without a byte).
    """
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        if shutdown:
            s.shutdown(socket.SHUT_WR)
        received = b""
        try:
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                received += chunk
        except (TimeoutError, ConnectionResetError):
            pass
        return received


def status_of(answer: bytes) -> int:
    """
    The status code of the first response in C{answer} (0 if there is none).
    """
    if not answer.startswith(b"HTTP/1.1 "):
        return 0
    return int(answer[9:12])


def post(path: bytes, body: bytes, headers: bytes = b"", close: bool = True) -> bytes:
    return (
        b"POST " + path + b" HTTP/1.1\r\nHost: proxy\r\nContent-Type: application/json\r\n"
        + headers
        + b"Content-Length: %d\r\n" % len(body)
        + (b"Connection: close\r\n" if close else b"")
        + b"\r\n"
        + body
    )


def body_of(answer: bytes) -> bytes:
    """
    The body of the one response in C{answer}, de-chunked if it was sent chunked.
    """
    head, _, rest = answer.partition(b"\r\n\r\n")
    if b"transfer-encoding: chunked" not in head.lower():
        return rest
    body = b""
    while rest:
        size_line, _, rest = rest.partition(b"\r\n")
        size = int(size_line, 16)
        if size == 0:
            break
        body += rest[:size]
        rest = rest[size + 2 :]
    return body
