"""
What a call through the proxy is served with: the parts (L{Serving}), how long the
upstream may take (L{Timeouts}), and the phases a call moves through (L{Phase}).
"""

from __future__ import annotations

from enum import IntEnum
from typing import Any, NamedTuple, Protocol

from twisted.internet.interfaces import IReactorTime

from modeltrack.accounting.accountant import Accountant
from modeltrack.accounting.batches import BatchBook
from modeltrack.controls.gate import Gate
from modeltrack.controls.keys import Keyring
from modeltrack.observe.stats import Stats
from modeltrack.providers.routes import RouteTable
from modeltrack.store.journal import Journal
from modeltrack.web.upstream import Upstream


class Phase(IntEnum):
    """
    Where a call is, in the only order a call moves through them (a later phase is
    never left for an earlier one).
    """

    RECEIVED = 1  # its request is whole, nothing decided yet
    ADMITTED = 2  # let through by the controls (a refusal or a cached answer ends it here)
    FORWARDED = 3  # sent upstream, waiting for the response head
    STREAMING = 4  # the response body is being relayed
    ENDING = 5  # ended, its answer held until its event is on disk (--fsync always)
    ENDED = 6  # ended and answered: nothing more happens to it


class Timeouts(NamedTuple):
    """
    Seconds. C{connect} is given to the agent; the others are ours.

    @ivar headers: from sending the request to the upstream's response headers.
    @ivar idle: the longest gap between two chunks of the response body.
    """

    connect: float = 10.0
    headers: float = 600.0
    idle: float = 300.0


DEFAULT_TIMEOUTS = Timeouts()


class Serving(Protocol):
    """
    What an exchange (L{modeltrack.web.proxy.Exchange}) is served with: the parts it
    calls out to, and the calls in flight. The L{modeltrack.web.resource.ProxyResource}.
    """

    upstreams: dict[str, Upstream]
    journal: Journal
    gate: Gate
    stats: Stats
    keys: Keyring
    routes: RouteTable
    batches: BatchBook | None
    accountant: Accountant
    clock: IReactorTime
    timeouts: Timeouts
    max_body: int
    draining: bool
    #: The exchanges not yet ended.
    in_flight: set[Any]
    #: Every request from its first line to its end (a WebSocket's until it is upgraded).
    open_requests: set[Any]

    def forget(self, exchange: Any) -> None:
        """An exchange has ended and been accounted."""
