"""
Readiness and stopping notices to systemd (C{Type=notify}), over the datagram socket it
names in C{$NOTIFY_SOCKET}. Twisted has no sd_notify; this is the protocol's whole client.
"""

from __future__ import annotations

import os
import socket

from twisted.logger import Logger

log = Logger()


def notify(message: bytes) -> bool:
    """
    Send one notice (e.g. C{b"READY=1"}); False when not run by systemd or it failed.
    """
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]  # an abstract socket
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.sendto(message, address)
    except OSError as e:
        log.warn("Could not notify systemd: {error}", error=str(e))
        return False
    return True
